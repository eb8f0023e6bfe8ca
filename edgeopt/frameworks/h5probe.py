"""Read an HDF5 file's model config and check its contents in a child process.

libhdf5 is a large C library; a crafted or damaged file can make it loop forever or crash, and
no Python-level timeout can interrupt C code. So the first reading of an .h5 file (or of the
model.weights.h5 inside a .keras archive) happens in a child process with a time and memory
limit: it reads the config, checks every link and dataset, and reads every dataset once. Only a
file that survives that is handed to Keras in this process.

    python -m edgeopt.frameworks.h5probe FILE [MEMBER]   # prints one JSON object
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

# Ratio of declared to stored bytes beyond which a dataset is treated as a decompression bomb;
# the same bound as for zip containers (edgeopt.formats.MAX_ZIP_RATIO), repeated so that the
# child imports nothing from edgeopt.
MAX_RATIO = 200
MEMORY_LIMIT = 8 << 30  # bytes of address space for the child, beyond twice the file's size
BASE_SECONDS = 60.0  # time allowed for any file; it grows with the file's size
SECONDS_PER_BYTE = 1 / 20e6


def probe(fh: Any) -> dict[str, Any]:
    """The model config and the first problem found in an open h5py file, reading everything."""
    import h5py

    problems: list[str] = []

    def visit_link(name: str, link: Any) -> None:
        if isinstance(link, h5py.ExternalLink):
            problems.append(f"'{name}' links to '{link.path}' in the file '{link.filename}'")

    def visit(name: str, obj: Any) -> None:
        if problems or not isinstance(obj, h5py.Dataset):
            return
        if obj.external or obj.is_virtual:
            problems.append(f"the dataset '{name}' keeps its data in other files")
            return
        declared = int(obj.size or 0) * obj.dtype.itemsize
        stored = obj.id.get_storage_size()
        if declared > (1 << 20) and declared > MAX_RATIO * max(stored, 1):
            problems.append(f"the dataset '{name}' declares {declared} bytes but stores {stored}, as a "
                            f"decompression bomb would (limit {MAX_RATIO}:1)")
            return
        obj[()]  # read once here: a read that hangs or crashes does so in this process

    fh.visititems_links(visit_link)
    if not problems:
        fh.visititems(visit)
    raw = fh.attrs.get("model_config")
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", "replace")
    return {"config": raw if isinstance(raw, str) else None, "config_type": type(raw).__name__,
            "problem": problems[0] if problems else None}


def _main(argv: list[str]) -> int:
    path, member = argv[1], (argv[2] if len(argv) > 2 else None)
    _limit_memory(os.path.getsize(path))  # here rather than in a preexec_fn, unsafe beside threads
    import h5py

    try:
        if member is None:
            with h5py.File(path, "r") as fh:
                result = probe(fh)
        else:
            with zipfile.ZipFile(path) as zf, zf.open(member) as raw, h5py.File(raw, "r") as fh:
                result = probe(fh)
    except Exception as exc:  # any failure to read is the file's: report it, do not crash
        result = {"error": f"{type(exc).__name__}: {exc}"}
    sys.stdout.write(json.dumps(result))
    return 0


def _limit_memory(size: int) -> None:
    """Cap this process's address space, so that a file declaring huge objects fails to allocate
    here instead of exhausting the machine."""
    try:
        import resource

        limit = MEMORY_LIMIT + 2 * size
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (ImportError, ValueError, OSError):  # not on this platform: the time limit still holds
        pass


class ProbeFailed(Exception):
    """The child did not answer: it crashed, ran out of memory, or took too long."""


def run_probe(path: Path, member: str | None = None) -> dict[str, Any]:
    """``probe`` of ``path`` (or of ``member`` inside the zip ``path``) in a child process."""
    size = path.stat().st_size
    timeout = BASE_SECONDS + size * SECONDS_PER_BYTE
    package_root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH"))
                                                         if p)}
    command = [sys.executable, "-m", "edgeopt.frameworks.h5probe", str(path), *([member] if member else [])]
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        raise ProbeFailed(f"reading it did not finish within {timeout:.0f} s") from None
    if proc.returncode != 0:
        detail = proc.stderr.strip().splitlines()[-1:] or [f"exit status {proc.returncode}"]
        raise ProbeFailed(f"the HDF5 library failed reading it ({detail[0][:200]})")
    try:
        return json.loads(proc.stdout)
    except ValueError:
        raise ProbeFailed("the HDF5 reader gave no answer") from None


if __name__ == "__main__":
    sys.exit(_main(sys.argv))
