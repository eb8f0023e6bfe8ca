"""Atomic outputs: a run's files appear together at the end, or not at all.

Files are written into a hidden staging folder on the same file system as the output folder,
then moved into place with ``os.replace`` (atomic per file) under a journal (see
:meth:`OutputStage.commit`), so that a run killed while moving can be undone as a whole. A failed,
interrupted or killed run leaves earlier artifacts untouched; stale staging folders of dead runs
are removed, and their half-done commits undone, by the next run.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

from edgeopt.errors import EnvironmentProblem, UsageError

STAGE_PREFIX = ".edgeopt-stage-"
# Inside a stage: the list of names being committed, and hard links to the files they replace.
JOURNAL = ".commit.json"
PREVIOUS = ".previous"
DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
# Set by the CLI's SIGINT/SIGTERM handler. The handler also raises KeyboardInterrupt, but a
# framework running Python callbacks from C code (a calibration data reader) can swallow it and
# carry on; commit() checks this, so such a run still ends without replacing anything.
interrupt_requested = threading.Event()


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
    """Remove staging folders left by runs that were killed, first undoing a commit one of them
    was in the middle of; returns what was removed."""
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for entry in folder.glob(STAGE_PREFIX + "*"):
        try:
            pid = int(entry.name[len(STAGE_PREFIX):].split("-")[0])
        except ValueError:
            continue
        if pid == os.getpid() or _pid_alive(pid):
            continue
        if (entry / JOURNAL).exists():
            try:
                _roll_back(entry)
            except (OSError, ValueError, KeyError, TypeError):
                continue  # keep it: its .previous folder may hold the only copy of earlier outputs
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
    return removed


def _group_key(name: str) -> str:
    # Files of one multi-file artifact share the part of the name before the first dot:
    # model_int8.xml with model_int8.bin.
    return name.split(".", 1)[0]


def _roll_back(stage: Path) -> None:
    """Put back the files an interrupted commit replaced, and remove the ones it added."""
    journal = json.loads((stage / JOURNAL).read_text(encoding="utf-8"))
    out_dir = Path(journal["out_dir"])
    # The journal sits in a folder edgeopt wrote; still, never let it point anywhere else.
    if not out_dir.resolve().is_relative_to(stage.parent.resolve()):
        raise ValueError(f"journal in '{stage}' names '{out_dir}', outside '{stage.parent}'")
    for name in journal["names"]:
        if Path(name).name != name or name in ("", ".", ".."):
            raise ValueError(f"journal in '{stage}' names '{name}', which is not a plain file name")
        kept = stage / PREVIOUS / name
        if os.path.lexists(kept):
            os.replace(kept, out_dir / name)
        elif not (stage / name).exists():  # moved in by the interrupted run, with nothing before it
            (out_dir / name).unlink(missing_ok=True)
    (stage / JOURNAL).unlink()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class OutputStage:
    """Collects the files of one run and moves them into ``out_dir`` on :meth:`commit`."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = Path(out_dir)
        self.dir: Path | None = None
        self._names: list[str] = []

    def __enter__(self) -> OutputStage:
        check_output_dir(self.out_dir)
        anchor = nearest_existing(self.out_dir)
        # A killed run staged in the nearest folder that existed then: usually this one, or its
        # parent when this one was new.
        for folder in dict.fromkeys((self.out_dir, self.out_dir.parent, anchor)):
            clean_stale_stages(folder)
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
        """Move every staged file into place; returns name -> final path.

        A multi-file artifact (an OpenVINO .xml and its .bin) must never be seen as a new half
        beside an old half, and per-file renames alone cannot promise that. So:

        1. each earlier file about to be replaced is hard-linked into the stage's ``.previous``;
        2. the journal (the names being committed) is written into the stage;
        3. files sharing a name before the first dot form a group: the group's earlier files are
           removed, then its new ones moved in. A reader sees the old group, an incomplete group
           (which fails loudly), or the new group, never a mix;
        4. the journal is removed.

        An exception in step 3 (Ctrl-C included) puts the earlier files back at once; a run
        killed in step 3 leaves the journal, and the next run puts them back (clean_stale_stages).
        """
        assert self.dir is not None
        if interrupt_requested.is_set():
            raise KeyboardInterrupt
        names = [n for n in self._names if (self.dir / n).exists()]
        final = {n: self.out_dir / n for n in names}
        previous = self.dir / PREVIOUS
        try:
            for name in names:
                _fsync(self.dir / name)  # the data is on disk before any name points at it
            self.out_dir.mkdir(parents=True, exist_ok=True)
            previous.mkdir()
            for name in names:
                # The entry itself, never what a symlink there points at.
                if os.path.lexists(final[name]) and not final[name].is_dir():
                    try:
                        os.link(final[name], previous / name, follow_symlinks=False)
                    except OSError:  # no hard links on this file system
                        shutil.copy2(final[name], previous / name, follow_symlinks=False)
            # Written aside and renamed, so that a journal that exists is complete.
            journal, draft = self.dir / JOURNAL, self.dir / (JOURNAL + ".draft")
            draft.write_text(json.dumps({"out_dir": str(self.out_dir.absolute()), "names": names}),
                             encoding="utf-8")
            _fsync(draft)
            os.replace(draft, journal)
            try:
                groups: dict[str, list[str]] = {}
                for name in names:
                    groups.setdefault(_group_key(name), []).append(name)
                for group in groups.values():
                    if len(group) > 1:
                        for name in group:
                            final[name].unlink(missing_ok=True)
                    for name in group:
                        os.replace(self.dir / name, final[name])
            except BaseException:
                _roll_back(self.dir)
                raise
            journal.unlink()
        except OSError as exc:
            raise _as_environment_problem(exc, self.out_dir) from exc
        return final

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.dir is not None:
            # A journal still here means a commit could not be undone: keep the stage, whose
            # .previous folder holds the earlier files, for the next run to put back.
            if not (self.dir / JOURNAL).exists():
                shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None
        if isinstance(exc, Exception) and not isinstance(exc, EnvironmentProblem) and disk_full(exc):
            # Converters report a full disk in their own words; the user needs exit 5 and the reason.
            raise _as_environment_problem(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), self.out_dir) from exc


def disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` or an exception it was raised from says the disk (or quota) is full."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in DISK_FULL_ERRNOS:
            return True
        text = str(current)
        if any(os.strerror(code) in text for code in DISK_FULL_ERRNOS):
            return True
        current = current.__cause__ or current.__context__
    return False


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
    if exc.errno in DISK_FULL_ERRNOS:
        return EnvironmentProblem(f"No space left on the device holding '{out_dir}' ({exc.strerror}); "
                                  "earlier outputs there are untouched.",
                                  hint="Free some space or choose another -o/--output folder, then run again.")
    return EnvironmentProblem(f"Cannot write to '{out_dir}': {exc.strerror or exc}.")


@contextlib.contextmanager
def working_dir(folder: Path) -> Iterator[None]:
    """Run the block from ``folder``: some tools drop temporary files into the working folder,
    and the user's must stay clean."""
    previous = Path.cwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(previous)


def sha256_of(path: Path) -> str:
    """The SHA-256 of a file, or of a folder's files in name order."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        with f.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()
