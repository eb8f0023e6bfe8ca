"""The work that `edgeopt compress`, `run` and `validate` hand to a supervised child process
(edgeopt.supervisor), and the checks the command makes itself before handing it over."""

from __future__ import annotations

from pathlib import Path
from typing import Any

# Per job, what the child imports while the command checks the request: the two overlap.
PRELOAD = {"compress": ("edgeopt.pipeline",), "validate": ("edgeopt.validate.job",)}


def compress(config, progress) -> Any:
    from edgeopt.pipeline import compress as run

    return run(config, progress)


def check_compress(config) -> None:
    """Refusals that need no framework (output folder, methods and budgets the targets lack),
    made before the child runs: a mistyped flag costs no framework import, and no model loading."""
    from edgeopt.outputs import check_output_dir
    from edgeopt.pipeline import check_plan

    check_output_dir(config.output_dir())
    check_plan(config)


def validate(request: tuple[Any, Path], progress) -> dict[str, Any]:
    from edgeopt.validate.job import run

    config, out_dir = request
    return run(config, out_dir, progress)
