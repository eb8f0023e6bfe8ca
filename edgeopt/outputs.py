"""Atomic outputs: a run's files appear together at the end, or not at all.

Files are written into a hidden staging folder on the same file system as the output folder,
then each is moved into place with ``os.replace`` (atomic per file). A failed, interrupted or
killed run leaves earlier artifacts untouched; stale staging folders of dead runs are removed
by the next run.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path

from edgeopt.errors import EnvironmentProblem, UsageError

STAGE_PREFIX = ".edgeopt-stage-"


def nearest_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path("/")


def check_output_dir(out_dir: Path) -> None:
    """Fail before any work when ``out_dir`` cannot become a writable folder."""
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"The output path '{out_dir}' exists and is not a folder.",
                         hint="Pass -o with a folder path.")
    anchor = nearest_existing(out_dir)
    if not anchor.is_dir():
        raise UsageError(f"Cannot create the output folder '{out_dir}': '{anchor}' is a file.",
                         hint="Choose another -o/--output folder.")
    if not os.access(anchor, os.W_OK | os.X_OK):
        raise UsageError(f"Cannot write to the output folder '{out_dir}': '{anchor}' is not writable.",
                         hint="Choose a writable -o/--output folder or fix its permissions.")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_stages(folder: Path) -> list[Path]:
    """Remove staging folders left by runs that were killed; returns what was removed."""
    removed = []
    if not folder.is_dir():
        return removed
    for entry in folder.glob(STAGE_PREFIX + "*"):
        try:
            pid = int(entry.name[len(STAGE_PREFIX):].split("-")[0])
        except ValueError:
            continue
        if pid != os.getpid() and not _pid_alive(pid):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


class OutputStage:
    """Collects the files of one run and moves them into ``out_dir`` on :meth:`commit`."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = Path(out_dir)
        self.dir: Path | None = None
        self._names: list[str] = []

    def __enter__(self) -> OutputStage:
        check_output_dir(self.out_dir)
        anchor = nearest_existing(self.out_dir)
        clean_stale_stages(anchor)
        if self.out_dir.is_dir():
            clean_stale_stages(self.out_dir)
        try:
            self.dir = Path(tempfile.mkdtemp(prefix=f"{STAGE_PREFIX}{os.getpid()}-", dir=anchor))
        except OSError as exc:
            raise _as_environment_problem(exc, self.out_dir) from exc
        return self

    def path(self, name: str) -> Path:
        """Where to write ``name`` now; it lands in the output folder on commit."""
        assert self.dir is not None, "OutputStage used outside 'with'"
        if name not in self._names:
            self._names.append(name)
        return self.dir / name

    def commit(self) -> dict[str, Path]:
        """Move every staged file into place; returns name -> final path."""
        assert self.dir is not None
        final = {}
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            for name in self._names:
                src = self.dir / name
                if src.exists():
                    os.replace(src, self.out_dir / name)
                    final[name] = self.out_dir / name
        except OSError as exc:
            raise _as_environment_problem(exc, self.out_dir) from exc
        return final

    def __exit__(self, *exc_info) -> None:
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None


def write_text(path: Path, text: str) -> None:
    """Write a text file atomically (temp file in the same folder, then rename)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _as_environment_problem(exc: OSError, out_dir: Path) -> EnvironmentProblem:
    if exc.errno == errno.ENOSPC:
        return EnvironmentProblem(f"No space left on the device holding '{out_dir}'.",
                                  hint="Free some space or choose another -o/--output folder.")
    return EnvironmentProblem(f"Cannot write to '{out_dir}': {exc.strerror or exc}.")
