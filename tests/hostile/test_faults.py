"""Faults while writing: Ctrl-C, SIGTERM, SIGKILL, a full disk, and a crash between the moves of a
multi-file artifact. Nothing half-written ever sits where an earlier artifact was, and the
earlier outputs stay byte-identical (or are put back as a set by the next run).

| case | outcome |
|---|---|
| SIGINT mid-export | exit 130, "interrupted", staging folder removed, earlier outputs identical |
| SIGTERM mid-export | exit 130, as for SIGINT |
| SIGKILL of the command mid-export | its job ends too and removes its staging folder; earlier outputs identical |
| SIGKILL of every process mid-export | earlier outputs identical; the next run removes the stale staging folder |
| disk full before the artifact / while writing reports | exit 5, "No space left on the device", earlier outputs identical |
| killed between the moves of an OpenVINO .xml/.bin pair | never an old/new mix; the next run restores the old pair, which loads and computes the old results |
| Ctrl-C between those moves | the old pair is put back at once |
| Ctrl-C swallowed inside a framework's native code | the run still commits nothing and exits 130 |
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from edgeopt import outputs
from edgeopt.outputs import STAGE_PREFIX, OutputStage

from .harness import EDGEOPT, assert_outcome, run_cli, snapshot


def _stages(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.name.startswith(STAGE_PREFIX)] if folder.is_dir() else []


def _without_stages(snap: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in snap.items() if STAGE_PREFIX not in k}


def _start_compress(workspace: Path, assets, *more: str, new_session: bool = False) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "EDGEOPT_DEBUG"}
    args = [*EDGEOPT, "compress", str(assets.keras()), "--calib", str(assets.nhwc_data()), "--no-validate",
            "-o", str(workspace / "out"), "-q", *more]
    return subprocess.Popen(args, cwd=workspace, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=new_session)


def _signal_mid_export(proc: subprocess.Popen, out: Path, signum: int, whole_group: bool = False) -> None:
    """Send ``signum`` as soon as the run has a staging folder: it is then converting. With
    ``whole_group`` every process of the run gets it at once (the run must lead its own session)."""
    deadline = time.monotonic() + 120
    while not _stages(out):
        assert proc.poll() is None, f"the run ended before exporting: {proc.communicate()}"
        assert time.monotonic() < deadline, "no staging folder appeared"
        time.sleep(0.005)
    if whole_group:
        os.killpg(proc.pid, signum)
    else:
        proc.send_signal(signum)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupt_mid_export_exits_130_and_keeps_earlier_outputs(signum, workspace, assets):
    before = snapshot(workspace)
    proc = _start_compress(workspace, assets)
    _signal_mid_export(proc, workspace / "out", signum)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stdout + stderr
    assert "interrupted" in stderr and "Traceback" not in stdout + stderr
    assert snapshot(workspace) == before  # the staging folder is gone too


def _group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


def _wait_for_group_to_end(pgid: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not _group_gone(pgid):
        assert time.monotonic() < deadline, "a process of the killed run is still running"
        time.sleep(0.05)


def test_sigkill_of_the_command_ends_its_job_which_removes_its_staging(workspace, assets):
    """The command is killed but its job process is not: the job must not run on unseen, and it
    removes what it staged on the way out."""
    before = snapshot(workspace)
    proc = _start_compress(workspace, assets, new_session=True)
    _signal_mid_export(proc, workspace / "out", signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    _wait_for_group_to_end(proc.pid, timeout_s=60)
    assert snapshot(workspace) == before  # earlier outputs identical, and no staging folder left


def test_sigkill_of_every_process_leaves_earlier_outputs_and_the_next_run_cleans_up(workspace, assets):
    """As the OOM killer or a power cut would: nothing runs on to clean up, so the next run does."""
    before = snapshot(workspace)
    proc = _start_compress(workspace, assets, new_session=True)
    _signal_mid_export(proc, workspace / "out", signal.SIGKILL, whole_group=True)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    _wait_for_group_to_end(proc.pid, timeout_s=60)
    assert _without_stages(snapshot(workspace)) == before
    stale = _stages(workspace / "out")
    assert stale, "a run killed outright cannot clean up; its staging folder stays until the next run"

    outcome = run_cli("compress", assets.keras(), "--precision", "fp32", "--no-validate", "-o", workspace / "out",
                      "-q", cwd=workspace)
    assert_outcome(outcome, 0)
    assert not any(p.exists() for p in stale)
    assert (workspace / "out" / "conv_fp32.tflite").is_file()


# --- a full disk ---------------------------------------------------------------------------------

def _try(command: list[str], tried: list[str]) -> bool:
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        tried.append(f"{command[0]}: {exc}")
        return False
    if proc.returncode != 0:
        tried.append(f"{' '.join(command[:3])}: {proc.stderr.strip() or proc.returncode}")
    return proc.returncode == 0


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 1 MiB file system of its own (tmpfs, else a loop-mounted ext4 image), or a skip saying why."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    tried: list[str] = []
    if not _try(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)], tried):
        image = tmp_path / "disk.img"
        with image.open("wb") as fh:
            fh.truncate(2 << 20)
        if not (_try(["mkfs.ext4", "-q", "-F", "-m", "0", str(image)], tried)
                and _try(["mount", "-o", "loop", str(image), str(mount_point)], tried)):
            pytest.skip("cannot make a small file system here (needs root and mount): " + "; ".join(tried))
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)


def _fill(disk: Path, leave: int) -> None:
    """Fill ``disk`` until only about ``leave`` bytes are free."""
    stats = os.statvfs(disk)
    free = stats.f_bavail * stats.f_frsize
    with (disk / "filler").open("wb") as fh:
        try:
            fh.write(b"\0" * max(free - leave, 0))
            fh.flush()
        except OSError:
            pass


@pytest.mark.parametrize("leave", [0, 2 * 4096], ids=["before-the-artifact", "while-writing-reports"])
def test_full_disk_exits_5_and_keeps_earlier_outputs(leave, small_disk, assets):
    out = small_disk / "out"
    out.mkdir()
    (out / "conv_fp32.tflite").write_bytes(np.random.default_rng(0).bytes(2048))
    (out / "report.json").write_text('{"schema_version": 1}')
    _fill(small_disk, leave)
    before = snapshot(small_disk)
    outcome = run_cli("compress", assets.keras(), "--precision", "fp32", "--no-validate", "-o", out, "-q",
                      cwd=small_disk.parent)
    assert_outcome(outcome, 5, "No space left on the device holding", str(out))
    assert snapshot(small_disk) == before


# --- a multi-file artifact: OpenVINO .xml + .bin -------------------------------------------------

def _openvino_pair(folder: Path, factor: float) -> tuple[bytes, bytes]:
    """The IR of y = x * factor (same sizes for every factor: an old/new mix would load silently)."""
    ov = pytest.importorskip("openvino")
    opset = ov.opset13 if hasattr(ov, "opset13") else pytest.importorskip("openvino.runtime.opset13")
    x = opset.parameter([1, 4], np.float32, name="x")
    y = opset.multiply(x, opset.constant(np.full((1, 4), factor, np.float32)))
    folder.mkdir(parents=True, exist_ok=True)
    ov.save_model(ov.Model([y], [x], "scale"), str(folder / "model.xml"), compress_to_fp16=False)
    return (folder / "model.xml").read_bytes(), (folder / "model.bin").read_bytes()


def _run_ir(xml: Path) -> np.ndarray:
    import openvino as ov

    compiled = ov.Core().compile_model(str(xml), "CPU")
    return compiled(np.ones((1, 4), np.float32))[compiled.outputs[0]]


COMMIT_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from edgeopt import outputs

    out, new, kill_at = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    real, done = os.replace, []

    def replace(src, dst):  # SIGKILL before the kill_at-th move into the output folder
        if Path(dst).parent == out:
            if len(done) == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            done.append(dst)
        real(src, dst)

    os.replace = replace
    with outputs.OutputStage(out) as stage:
        for name in ("model.xml", "model.bin", "report.json"):
            stage.path(name).write_bytes((new / name).read_bytes())
        stage.commit()
""")


@pytest.fixture
def pairs(tmp_path: Path):
    out = tmp_path / "out"
    old = _openvino_pair(out, 2.0)
    (out / "report.json").write_text('{"run": "old"}')
    new_dir = tmp_path / "new"
    new = _openvino_pair(new_dir, 3.0)
    (new_dir / "report.json").write_text('{"run": "new"}')
    return out, old, new_dir, new


@pytest.mark.parametrize("kill_at", [0, 1, 2], ids=["before-xml", "between-xml-and-bin", "before-report"])
def test_killed_between_moves_never_mixes_the_pair_and_is_undone(kill_at, pairs):
    out, (old_xml, old_bin), new_dir, (new_xml, new_bin) = pairs
    before = snapshot(out)
    env = {**os.environ, "PYTHONPATH": str(Path(outputs.__file__).parents[1])}
    proc = subprocess.run([sys.executable, "-c", COMMIT_SCRIPT, str(out), str(new_dir), str(kill_at)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    xml, bin_ = out / "model.xml", out / "model.bin"
    if xml.exists() and bin_.exists():  # a complete pair is one run's pair, never a mix
        assert (xml.read_bytes(), bin_.read_bytes()) in [(old_xml, old_bin), (new_xml, new_bin)]

    removed = outputs.clean_stale_stages(out)  # what the next run does first

    assert len(removed) == 1
    assert snapshot(out) == before
    np.testing.assert_array_equal(_run_ir(xml), np.full((1, 4), 2.0, np.float32))


def test_interrupt_between_moves_puts_the_old_pair_back_at_once(pairs, monkeypatch):
    out, _old, new_dir, _new = pairs
    before = snapshot(out)
    real = os.replace
    moves: list[str] = []

    def replace(src, dst):  # Ctrl-C once, after the first move into the output folder
        if Path(dst).parent == out and len(moves) == 1:
            moves.append("interrupted")
            raise KeyboardInterrupt
        moves.append(str(dst))
        real(src, dst)

    with pytest.raises(KeyboardInterrupt):
        with OutputStage(out) as stage:
            for name in ("model.xml", "model.bin", "report.json"):
                shutil.copy(new_dir / name, stage.path(name))
            monkeypatch.setattr(os, "replace", replace)
            stage.commit()
    monkeypatch.undo()
    assert snapshot(out) == before
    np.testing.assert_array_equal(_run_ir(out / "model.xml"), np.full((1, 4), 2.0, np.float32))


def test_a_complete_commit_replaces_the_pair(pairs):
    out, _old, new_dir, (new_xml, new_bin) = pairs
    with OutputStage(out) as stage:
        for name in ("model.xml", "model.bin", "report.json"):
            shutil.copy(new_dir / name, stage.path(name))
        stage.commit()
    assert ((out / "model.xml").read_bytes(), (out / "model.bin").read_bytes()) == (new_xml, new_bin)
    assert sorted(p.name for p in out.iterdir()) == ["model.bin", "model.xml", "report.json"]
    np.testing.assert_array_equal(_run_ir(out / "model.xml"), np.full((1, 4), 3.0, np.float32))


def test_an_interrupt_swallowed_by_a_framework_still_commits_nothing(pairs):
    """Ctrl-C inside a framework's native code can be swallowed there (a calibration reader called
    from C++ catches the KeyboardInterrupt); the flag the signal handler sets stops the commit."""
    out, _old, new_dir, _new = pairs
    before = snapshot(out)
    try:
        with pytest.raises(KeyboardInterrupt):
            with OutputStage(out) as stage:
                for name in ("model.xml", "model.bin", "report.json"):
                    shutil.copy(new_dir / name, stage.path(name))
                outputs.interrupt_requested.set()  # what the CLI's SIGINT handler does
                stage.commit()
    finally:
        outputs.interrupt_requested.clear()
    assert snapshot(out) == before
