"""The child process of edgeopt.supervisor: runs one job and reports on it over a socket.

Started by the supervisor only, as ``python -c BOOTSTRAP SOCKET_FD FAULT_FILE PARENT_PID``. It
receives ``("start", "module:function")``, imports the job (and the modules its module's
PRELOAD names for it) while the parent checks the request, then ``("run", payload)``; it sends
``("step", message)`` for every progress message and, last, one of ``("result", value)``,
``("error", EdgeoptError, traceback)``, ``("failure", type name, text, disk full, traceback)``
or ``("interrupted",)``. A job is ``function(payload, progress)``.
"""

from __future__ import annotations

import faulthandler
import importlib
import io
import os
import signal
import sys
import traceback
from typing import Any, Callable

# Run with ``-c``, before anything else, so that the child imports exactly what the parent would.
BOOTSTRAP = ("import sys; sys.path[:] = {path!r}; "
             "from edgeopt.worker import exit_now, main; exit_now(main(sys.argv[1:]))")


def main(argv: list[str]) -> int:
    fd, fault_file, parent = int(argv[0]), argv[1], int(argv[2])
    # First of all, so that a crash while a framework is imported is caught too. The file stays
    # open for the process's life: faulthandler writes to its descriptor from a signal handler.
    faults = open(fault_file, "w", encoding="utf-8")  # noqa: SIM115
    faulthandler.enable(file=faults, all_threads=True)
    _end_with_parent(parent)
    debug = bool(os.environ.get("EDGEOPT_DEBUG"))
    interrupted = _interrupt_handlers(debug)
    if not debug:
        from edgeopt.deps import quiet_warnings

        quiet_warnings()
    from multiprocessing.connection import Connection

    conn = Connection(fd)
    event: tuple = ("interrupted",)
    try:
        try:
            _kind, reference = conn.recv()
            job = _load(reference)
            try:
                _kind, payload = conn.recv()
            except EOFError:  # the parent refused the request itself
                return 0
            result = job(payload, lambda message: _send(conn, ("step", message)))
        except BaseException as exc:  # everything goes back to the parent, which decides the exit code
            event = _error_event(exc, interrupted)
        else:
            event = ("result", result)
        _send(conn, event)
    except KeyboardInterrupt:  # an interrupt held back while the last message went out; the parent reads the first
        event = ("interrupted",)
        _send(conn, event)
    return 130 if event[0] == "interrupted" else 0


def exit_now(code: int) -> None:
    """End the process without tearing the interpreter down: that takes TensorFlow about a second,
    and is where frameworks' destructors crash, after the result is out. atexit handlers still
    run: frameworks remove their temporary files there."""
    import atexit

    try:
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)


def _load(reference: str) -> Callable[[Any, Callable[[str], None]], Any]:
    module_name, _, qualname = reference.partition(":")
    found: Any = importlib.import_module(module_name)
    for name in getattr(found, "PRELOAD", {}).get(qualname, ()):
        importlib.import_module(name)
    for part in qualname.split("."):
        found = getattr(found, part)
    return found


def _error_event(exc: BaseException, interrupted: list[int]) -> tuple:
    from edgeopt.errors import EdgeoptError
    from edgeopt.outputs import disk_full

    # A KeyboardInterrupt raised inside a framework's C code can come out as another exception.
    if interrupted or isinstance(exc, KeyboardInterrupt):
        return ("interrupted",)
    trace = "".join(traceback.format_exception(exc))
    if isinstance(exc, EdgeoptError):
        return ("error", exc, trace)
    return ("failure", type(exc).__name__, str(exc), disk_full(exc), trace)


def _send(conn, event: tuple) -> None:
    """Send one message whole: an interrupt that arrives meanwhile waits until it is out, so that
    the parent never reads half a message."""
    blocked = {signal.SIGINT, signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
    try:
        conn.send(event)
    except BrokenPipeError:  # the parent is gone; there is no one left to tell
        pass
    except Exception as exc:  # a value that does not pickle: pickling fails before any byte is sent
        conn.send(_plain(event, exc))
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, blocked)


def _plain(event: tuple, exc: Exception) -> tuple:
    """What the parent can be told about an event that does not pickle."""
    from edgeopt.errors import EdgeoptError

    if event[0] == "error":
        plain = EdgeoptError(event[1].message, hint=event[1].hint)
        plain.exit_code = event[1].exit_code
        return ("error", plain, event[2])
    return ("failure", type(exc).__name__, f"the job's {event[0]} could not be sent back: {exc}", False,
            "".join(traceback.format_exception(exc)))


def _interrupt_handlers(debug: bool) -> list[int]:
    """Ctrl-C reaches the child with the rest of the terminal's process group; the supervisor sends
    SIGTERM when it is interrupted alone. Either unwinds the job, which removes its staged files.
    Only the first raises: a second one must not cut that clean-up short."""
    from edgeopt.outputs import interrupt_requested

    interrupted: list[int] = []

    def on_signal(signum: int, frame: object) -> None:
        first = not interrupted
        interrupted.append(signum)
        interrupt_requested.set()
        if first:
            if not debug:  # frameworks print tracebacks of their own as the interrupt unwinds through them
                sys.stderr = io.StringIO()
            raise KeyboardInterrupt

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, on_signal)
    return interrupted


def _end_with_parent(parent: int) -> None:
    """Have Linux send SIGTERM to this process when the parent dies, even by SIGKILL: a job must
    not go on, unseen, after the command that started it has gone."""
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # it died before the request above took effect
        os._exit(1)
