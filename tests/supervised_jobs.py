"""Jobs for tests/test_supervisor.py that end the worker process the ways a framework can: a native
crash, an exit without a result, a hang that ignores signals, or an ordinary refusal.

``compress_failing_at_step`` is the real compress job with such an ending at the moment the
pipeline enters a step; tests/crashing_cli.py puts it in place of edgeopt's own, in that program
only. The step and the ending come from the environment, which only those tests set.
"""

from __future__ import annotations

import os
import signal
import time

from edgeopt import jobs
from edgeopt.errors import InputRejected

AT = "EDGEOPT_TEST_FAIL_AT"  # a progress message prefix, such as "Converting to tflite"
HOW = "EDGEOPT_TEST_FAIL_HOW"  # a key of ENDINGS
PID_FILE = "EDGEOPT_TEST_PID_FILE"  # where the worker writes its pid, once in the step

REFUSAL = "The model 'digits_cnn.h5' is refused by this test [on purpose]."
REFUSAL_HINT = "Nothing to fix: the test checks that the message arrives unchanged."

_real_compress = jobs.compress


def _hang_deaf() -> None:
    # What a framework's C++ loop looks like from outside: no signal gets a Python handler run.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    time.sleep(600)


def _refuse() -> None:
    raise InputRejected(REFUSAL, hint=REFUSAL_HINT)


ENDINGS = {
    "abort": os.abort,
    "segv": lambda: os.kill(os.getpid(), signal.SIGSEGV),
    "exit": lambda: os._exit(3),
    "reject": _refuse,
    "bug": lambda: int("not a number"),
    "sleep": lambda: time.sleep(600),
    "hang": _hang_deaf,
}


def end(how: str) -> None:
    if os.environ.get(PID_FILE):
        with open(os.environ[PID_FILE], "w") as fh:
            fh.write(str(os.getpid()))
    ENDINGS[how]()


def compress_failing_at_step(config, progress):
    at, how = os.environ[AT], os.environ[HOW]

    def step(message: str) -> None:
        progress(message)
        if message.startswith(at):
            end(how)

    return _real_compress(config, step)


def in_step(payload, progress):
    """``payload`` is (step message, ending)."""
    message, how = payload
    progress(message)
    end(how)


def echo(payload, progress):
    progress("Loading the model")
    print("a line a framework printed", flush=True)
    return payload
