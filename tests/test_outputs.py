"""Atomic outputs: files appear together on commit, or not at all."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgeopt import outputs
from edgeopt.errors import UsageError
from edgeopt.outputs import STAGE_PREFIX, OutputStage


def _stages(*folders: Path) -> list[Path]:
    return [p for f in folders if f.is_dir() for p in f.iterdir() if p.name.startswith(STAGE_PREFIX)]


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_commit_moves_every_file_into_a_new_folder(tmp_path):
    out = tmp_path / "a" / "b"
    with OutputStage(out) as stage:
        stage.path("model.tflite").write_bytes(b"\x01\x02")
        stage.path("report.json").write_text("{}")
        assert stage.dir is not None and stage.dir.parent == tmp_path  # nearest existing folder
        assert not out.exists()  # nothing visible before commit
        final = stage.commit()
    assert final == {"model.tflite": out / "model.tflite", "report.json": out / "report.json"}
    assert (out / "model.tflite").read_bytes() == b"\x01\x02"
    assert sorted(p.name for p in out.iterdir()) == ["model.tflite", "report.json"]
    assert _stages(tmp_path, out) == []


def test_commit_replaces_earlier_files(tmp_path):
    (tmp_path / "model.tflite").write_bytes(b"old")
    (tmp_path / "keep.txt").write_bytes(b"unrelated")
    with OutputStage(tmp_path) as stage:
        stage.path("model.tflite").write_bytes(b"new")
        stage.commit()
    assert (tmp_path / "model.tflite").read_bytes() == b"new"
    assert (tmp_path / "keep.txt").read_bytes() == b"unrelated"
    assert _stages(tmp_path) == []


def test_names_reserved_but_not_written_are_skipped(tmp_path):
    with OutputStage(tmp_path / "out") as stage:
        stage.path("never_written.bin")
        stage.path("written.bin").write_bytes(b"x")
        final = stage.commit()
    assert list(final) == ["written.bin"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["written.bin"]


@pytest.mark.parametrize("error", [RuntimeError("conversion blew up"), KeyboardInterrupt()])
def test_failure_leaves_earlier_files_identical_and_no_stage(tmp_path, error):
    out = tmp_path / "out"
    out.mkdir()
    earlier = os.urandom(4096)
    (out / "model_int8.tflite").write_bytes(earlier)
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(type(error)):
        with OutputStage(out) as stage:
            stage.path("model_int8.tflite").write_bytes(b"half-writ")
            stage.path("report.json").write_text("{")
            raise error
    assert (out / "model_int8.tflite").read_bytes() == earlier
    assert sorted(p.name for p in out.iterdir()) == before
    assert _stages(tmp_path, out) == []


def test_failure_before_commit_creates_no_output_folder(tmp_path):
    out = tmp_path / "fresh"
    with pytest.raises(ValueError):
        with OutputStage(out) as stage:
            stage.path("a.bin").write_bytes(b"a")
            raise ValueError
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_stale_stages_of_dead_runs_are_cleaned(tmp_path):
    dead = _dead_pid()
    stale = tmp_path / f"{STAGE_PREFIX}{dead}-abc123"
    stale.mkdir()
    (stale / "model.tflite").write_bytes(b"partial")
    live = tmp_path / f"{STAGE_PREFIX}{os.getppid()}-xyz"  # our parent is alive
    live.mkdir()
    unrelated = tmp_path / f"{STAGE_PREFIX}notapid"
    unrelated.mkdir()

    removed = outputs.clean_stale_stages(tmp_path)

    assert removed == [stale]
    assert not stale.exists()
    assert live.exists() and unrelated.exists()


def test_entering_a_stage_cleans_stale_stages_in_the_output_folder(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    stale = out / f"{STAGE_PREFIX}{_dead_pid()}-old"
    stale.mkdir()
    with OutputStage(out) as stage:
        stage.path("x").write_text("x")
        stage.commit()
    assert not stale.exists()
    assert [p.name for p in out.iterdir()] == ["x"]


def test_output_under_a_regular_file_is_a_usage_error(tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("I am a file")
    with pytest.raises(UsageError, match="'.*file.txt' is a file"):
        with OutputStage(blocker / "out" / "deeper"):
            pass
    with pytest.raises(UsageError, match="exists and is not a folder"):
        outputs.check_output_dir(blocker)
    assert blocker.read_text() == "I am a file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_read_only_folder_is_a_usage_error(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(UsageError, match="not writable"):
            outputs.check_output_dir(locked / "out")
    finally:
        locked.chmod(0o700)


def test_write_text_is_atomic(tmp_path):
    target = tmp_path / "report.md"
    target.write_text("old")
    outputs.write_text(target, "new text")
    assert target.read_text() == "new text"
    assert [p.name for p in tmp_path.iterdir()] == ["report.md"]


def test_nearest_existing(tmp_path):
    assert outputs.nearest_existing(tmp_path / "a" / "b" / "c") == tmp_path
    assert outputs.nearest_existing(tmp_path) == tmp_path
