"""Run a command's job in a child process, so that a framework that brings its interpreter down
(a native crash in training, in a converter, in a runtime's first load) ends the run with one
clear error instead of killing it silently.

The child (edgeopt.worker) reports every step it enters and, last, the job's result or error;
its stdout and stderr are passed on here. An EdgeoptError comes back as it was raised (class,
message, hint, exit code). When the child dies without a result, the error names the step it was
in and the model, with faulthandler's dump of its stack as the cause that --debug shows. Outputs
are staged and committed at the end of a run (edgeopt.outputs), so earlier outputs are untouched;
the dead child's staging folder is removed here, as the next run would remove it.

Cost: an interpreter start and edgeopt's imports, about 0.1 s, mostly overlapped with the
command's own checks of the request (``preflight``). The child ends without tearing its
interpreter down (edgeopt.worker.exit_now), which saves about a second once TensorFlow is loaded.
"""

from __future__ import annotations

import codecs
import os
import pickle
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from edgeopt.errors import Crashed

T = TypeVar("T")
Progress = Callable[[str], None]

# How long an interrupted child may take to remove its staged files before it is killed: it
# notices an interrupt only between Python bytecodes, not inside a framework's C++ code.
STOP_GRACE_S = 5.0
# After the result: how long the child may take to shut its interpreter down.
EXIT_GRACE_S = 30.0
FAULT_FILE = "faulthandler.txt"


class ChildTraceback(Exception):
    """The child's traceback, or faulthandler's dump of its stack: the cause --debug shows."""

    def __str__(self) -> str:
        return "\n" + self.args[0].rstrip()


class ChildFailure(Exception):
    """Stands for an exception of the child that edgeopt did not expect (a bug, a framework's own
    error), under that exception's class name, which the command line prints."""


def supervise(job: Callable[[Any, Progress], T], payload: Any, progress: Progress | None = None, *,
              subject: str | Sequence[str], output_dir: Path | None = None,
              preflight: Callable[[], None] | None = None, stop_grace_s: float = STOP_GRACE_S) -> T:
    """``job(payload, progress)`` in a child process; returns its result or raises its error.

    ``job`` is a module-level function, imported by the child. ``preflight`` runs here while the
    child starts up; an error from it ends the child unused. ``subject`` (the model) and
    ``output_dir`` (whose staging folders a dead child leaves) are for the crash report."""
    reference = f"{job.__module__}:{job.__qualname__}"
    if "<" in job.__qualname__:
        raise TypeError(f"a supervised job must be a module-level function, not {reference}")
    with tempfile.TemporaryDirectory(prefix="edgeopt-worker-") as scratch:
        fault_file = Path(scratch) / FAULT_FILE
        child = _Child(reference, fault_file)
        started = False
        try:
            if preflight is not None:
                preflight()
            child.send(("run", payload))
            started = True
            outcome = child.follow(progress or (lambda _msg: None))
        except BaseException:
            child.stop(stop_grace_s)
            if started and output_dir is not None:
                _remove_stages_of_dead_runs(output_dir)
            raise
        finally:
            child.close()
        if outcome[0] == "result":
            return outcome[1]
        if output_dir is not None:
            _remove_stages_of_dead_runs(output_dir)
        if outcome[0] == "interrupted":
            raise KeyboardInterrupt
        if outcome[0] == "error":
            raise outcome[1] from ChildTraceback(outcome[2])
        if outcome[0] == "failure":
            raise _failure(*outcome[1:])
        raise _crashed(child.returncode, child.step, _quoted(subject)) from _fault_dump(fault_file)


def _quoted(subject: str | Sequence[str]) -> str:
    return ", ".join(f"'{s}'" for s in ([subject] if isinstance(subject, str) else subject))


class _Child:
    def __init__(self, reference: str, fault_file: Path) -> None:
        from multiprocessing.connection import Connection

        ours, theirs = socket.socketpair()
        try:
            with theirs:
                self.proc = subprocess.Popen(
                    [sys.executable, *subprocess._args_from_interpreter_flags(), "-c", _worker_bootstrap(),
                     str(theirs.fileno()), str(fault_file), str(os.getpid())],
                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                    pass_fds=(theirs.fileno(),))
        except BaseException:
            ours.close()
            raise
        self.conn = Connection(ours.detach())
        self.step: str | None = None
        self.returncode: int | None = None
        self.send(("start", reference))

    def send(self, message: tuple) -> None:
        try:
            self.conn.send(message)
        except OSError:  # the child has died already; follow() says how
            pass

    def follow(self, progress: Progress) -> tuple:
        """Pass steps and output on until the child exits; returns its first final message, or
        ("died",) when it sent none."""
        outcome: tuple = ("died",)
        streams = {self.proc.stdout: ("stdout", codecs.getincrementaldecoder("utf-8")(errors="replace")),
                   self.proc.stderr: ("stderr", codecs.getincrementaldecoder("utf-8")(errors="replace"))}
        exited, deadline = False, None
        with selectors.DefaultSelector() as selector:
            selector.register(self.conn.fileno(), selectors.EVENT_READ, None)
            for stream in streams:
                os.set_blocking(stream.fileno(), False)
                selector.register(stream, selectors.EVENT_READ, stream)
            while selector.get_map():
                # Once the child has exited, only what is left is read: a process it forked may
                # hold the pipes open long after.
                ready = selector.select(timeout=0 if exited else 0.25)
                if exited and not ready:
                    break
                for key, _ in ready:
                    if key.data is not None:
                        self._relay(key.data, *streams[key.data], selector)
                        continue
                    message = self._receive(selector)
                    if message is None:
                        continue
                    if message[0] == "step":
                        self.step = message[1]
                        progress(message[1])
                    elif outcome[0] == "died":
                        outcome = message
                        deadline = time.monotonic() + (EXIT_GRACE_S if message[0] == "result" else STOP_GRACE_S)
                if not exited:
                    exited = self.proc.poll() is not None
                if not exited and deadline is not None and time.monotonic() > deadline:
                    self.proc.kill()  # done, but stuck shutting its interpreter down
        try:
            self.returncode = self.proc.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:  # closed every pipe, yet still running
            self.proc.kill()
            self.returncode = self.proc.wait()
        return outcome

    def _receive(self, selector) -> tuple | None:
        try:
            data = self.conn.recv_bytes()
        except (EOFError, OSError):  # the child is gone, perhaps mid-message
            selector.unregister(self.conn.fileno())
            return None
        try:
            return pickle.loads(data)
        except Exception as exc:  # e.g. a class of the child's that does not import here
            return ("failure", type(exc).__name__, f"a message from the worker process could not be read: {exc}",
                    False, "".join(traceback.format_exception(exc)))

    @staticmethod
    def _relay(stream, name: str, decoder, selector) -> None:
        try:
            data = os.read(stream.fileno(), 1 << 16)
        except BlockingIOError:
            return
        if not data:
            selector.unregister(stream)
        text = decoder.decode(data, final=not data)
        if text:
            sink = getattr(sys, name)  # looked up now: the command line swaps sys.stderr on Ctrl-C
            sink.write(text)
            sink.flush()

    def stop(self, grace_s: float) -> None:
        """End the child: SIGTERM first (it removes its staged files), SIGKILL after ``grace_s``
        or at a second Ctrl-C. Never leaves it running."""
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGTERM)
                self.proc.wait(grace_s)
            except (subprocess.TimeoutExpired, KeyboardInterrupt):
                self.proc.kill()
            finally:
                self.proc.wait()
        self.returncode = self.proc.returncode

    def close(self) -> None:
        self.conn.close()
        for stream in (self.proc.stdout, self.proc.stderr):
            stream.close()


def _worker_bootstrap() -> str:
    from edgeopt.worker import BOOTSTRAP

    return BOOTSTRAP.format(path=list(sys.path))


def _remove_stages_of_dead_runs(output_dir: Path) -> None:
    """A child that died cannot remove its staging folder, nor undo a commit it was in the middle of."""
    from edgeopt.outputs import clean_stale_stages, nearest_existing

    output_dir = Path(output_dir)
    for folder in dict.fromkeys((output_dir, output_dir.parent, nearest_existing(output_dir))):
        clean_stale_stages(folder)


def _failure(type_name: str, text: str, disk_full: bool, trace: str) -> Exception:
    failure = type(type_name, (ChildFailure,), {})(text) if type_name.isidentifier() else ChildFailure(text)
    cause = ChildTraceback(trace)
    if disk_full:  # for the command line's test of a full disk, which reads the causes
        import errno

        cause.__cause__ = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    failure.__cause__ = cause
    return failure


# Progress messages -> the name of their step in a crash report; the first match wins.
_STEP_NAMES = (
    ("Loading the model", "model loading step"), ("Loading", "loading step"),
    ("Checking", "data checking step"), ("Pruning", "pruning step"), ("Distilling", "distillation step"),
    ("Converting to ", "{} conversion step"), ("Quantizing to ", "{} quantization step"),
    ("Writing fp32", "fp32 export step"), ("Ranking", "sensitivity ranking step"),
    ("Searching", "budget search step"), ("Validating", "validation step"), ("Running", "validation step"),
    ("Measuring latency", "latency measurement step"), ("Writing outputs", "output writing step"),
)


def step_name(message: str | None) -> str:
    if message is None:
        return "worker process, starting up,"
    for prefix, name in _STEP_NAMES:
        if message.startswith(prefix):
            return name.format(message[len(prefix):].split()[0] if "{}" in name else "")
    return f"step '{message}'"


def _crashed(returncode: int | None, step: str | None, subject: str) -> Crashed:
    signal_name = None
    if returncode is not None and returncode < 0:
        try:
            signal_name = signal.Signals(-returncode).name
        except ValueError:
            signal_name = f"signal {-returncode}"
    where = f" in '{step}'" if step else ""
    if signal_name == "SIGKILL":
        how = "was killed (SIGKILL)"
        hint = (f"The process was killed{where}: by the system when memory runs out, most often. Give the run "
                "more memory, or fewer samples (--calib-samples).")
    elif signal_name:
        how = f"crashed natively ({signal_name})"
        hint = (f"The process died{where}, inside a framework's native code, where edgeopt cannot catch "
                "errors. Run again with --debug for its stack at the crash; report it with the versions "
                "`edgeopt doctor` lists.")
    else:
        how = f"ended without a result (exit status {returncode})"
        hint = f"Something in the process ended it{where}. Run again with --debug for all of its output."
    return Crashed(f"The {step_name(step)} {how} while working on {subject}; no output was written; "
                   "earlier outputs are untouched.", hint=hint)


def _fault_dump(path: Path) -> ChildTraceback | None:
    """faulthandler's dump, cut to what says where it crashed: the fatal error and the Python stack
    of the crashing thread (the other threads and the list of extension modules are left out)."""
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    kept = [line for line in lines[:2] if line.startswith("Fatal Python error")]
    start = next((i for i, line in enumerate(lines) if line.startswith("Current thread")), None)
    if start is not None:
        stack = [lines[start]]
        for line in lines[start + 1:]:
            if not line.startswith("  "):
                break
            stack.append(line)
        kept += stack
    elif lines:
        kept += lines[-20:]
    return ChildTraceback("faulthandler:\n" + "\n".join(kept)) if kept else None
