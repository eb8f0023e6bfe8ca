"""Running the CLI and judging its outcome: in-process (fast: TensorFlow and friends are imported
once) or as a real subprocess (signals, a full disk, isolation, exactly what CI runs)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

_SCRIPT = Path(sys.executable).with_name("edgeopt")
EDGEOPT = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "edgeopt.cli"]
MARKER = "PAYLOAD_RAN"  # what a hostile payload would create; it must never appear


def snapshot(root: Path) -> dict[str, str]:
    """Every file, folder and link under ``root`` (hidden ones too), with a digest of each file."""
    result = {}
    for p in sorted(root.rglob("*")):
        if p.is_symlink():
            result[str(p.relative_to(root))] = "link:" + os.readlink(p)
        elif p.is_file():
            result[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
        else:
            result[str(p.relative_to(root))] = "dir"
    return result


class Outcome:
    def __init__(self, code: int, stdout: str, stderr: str) -> None:
        self.code, self.stdout, self.stderr = code, stdout, stderr

    @property
    def message(self) -> str:
        """The error line and hint, joined: rich may wrap long lines."""
        return " ".join(self.stderr.split())


def cli(*args, cwd: Path | None = None) -> Outcome:
    """``edgeopt ARGS`` in this process: the same code path as the command, without the start-up
    cost of a new interpreter (TensorFlow alone takes seconds to import)."""
    from click.testing import CliRunner

    from edgeopt.cli import main

    old = Path.cwd()
    if cwd is not None:
        os.chdir(cwd)
    try:
        result = CliRunner(env={"COLUMNS": "200", "EDGEOPT_DEBUG": None}).invoke(main, [str(a) for a in args])
    finally:
        os.chdir(old)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"edgeopt {args} raised instead of exiting") from result.exception
    return Outcome(result.exit_code, result.stdout, result.stderr)


def run_cli(*args, cwd: Path, env: dict[str, str] | None = None, timeout: float = 300) -> Outcome:
    """``edgeopt ARGS`` as a real process, as CI runs it."""
    full = {k: v for k, v in os.environ.items() if k != "EDGEOPT_DEBUG"}
    full.update({"COLUMNS": "200", **(env or {})})
    proc = subprocess.run([*EDGEOPT, *map(str, args)], capture_output=True, text=True, cwd=cwd, env=full,
                          timeout=timeout)
    return Outcome(proc.returncode, proc.stdout, proc.stderr)


def assert_outcome(outcome: Outcome, code: int, *phrases: str) -> None:
    output = outcome.stdout + outcome.stderr
    assert outcome.code == code, output
    assert "Traceback" not in output, output
    assert "unexpected" not in outcome.stderr, output  # the CLI's words for an unmapped exception
    if code:
        assert "error:" in outcome.stderr, output
    for phrase in phrases:
        assert phrase in outcome.message, f"{phrase!r} not in:\n{outcome.stderr}"
