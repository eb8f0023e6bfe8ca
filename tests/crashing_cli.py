"""`edgeopt` whose compress job fails in a step that the environment names (see
supervised_jobs.py): ``python tests/crashing_cli.py compress MODEL ...``. For tests only."""

import supervised_jobs

from edgeopt import jobs
from edgeopt.cli import main

jobs.compress = supervised_jobs.compress_failing_at_step

if __name__ == "__main__":
    main()
