"""`edgeopt compress` runs its job in a child process: a native crash there ends the command with
exit 4 and one message naming the step and the model, never silently; the child's own errors keep
their message and exit code; Ctrl-C still ends everything with 130; earlier outputs stay as they
were in every case.

The crashes come from tests/supervised_jobs.py, put in place of edgeopt's compress job by
tests/crashing_cli.py, an edgeopt command for tests only.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import supervised_jobs
from edgeopt.errors import Crashed, InputRejected, UsageError
from edgeopt.outputs import STAGE_PREFIX
from edgeopt.supervisor import ChildFailure, step_name, supervise

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "examples" / "digits" / "digits_cnn.h5"
CALIB = ROOT / "calibration_data" / "digits" / "calib.npz"
TRAIN = ROOT / "calibration_data" / "digits" / "train.npz"
CRASHING_CLI = [sys.executable, str(ROOT / "tests" / "crashing_cli.py")]


def snapshot(root: Path) -> dict[str, str]:
    """Every file and folder under ``root`` (hidden ones too: staging folders), with a digest of each file."""
    return {str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir")
            for p in sorted(root.rglob("*"))}


@pytest.fixture
def workspace(tmp_path):
    """A folder with an earlier run's outputs in ``out/``."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "digits_cnn_int8.tflite").write_bytes(os.urandom(4096))
    (out / "report.json").write_text('{"schema_version": 1}')
    (out / "recipe.yaml").write_text("model: digits_cnn.h5\n")
    return tmp_path


def _env(at: str, how: str, **more: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "EDGEOPT_DEBUG"}
    env.update({"COLUMNS": "250", supervised_jobs.AT: at, supervised_jobs.HOW: how, **more})
    return env


def _compress_args(workspace: Path, *more: str) -> list[str]:
    return ["compress", str(MODEL), "--calib", str(CALIB), "--no-validate", "-o", str(workspace / "out"), *more]


def crashing(workspace: Path, at: str, how: str, *more: str, debug: bool = False) -> subprocess.CompletedProcess:
    args = [*CRASHING_CLI, *(["--debug"] if debug else []), *_compress_args(workspace, *more)]
    return subprocess.run(args, cwd=workspace, env=_env(at, how), capture_output=True, text=True, timeout=300)


def needs_keras():
    pytest.importorskip("keras")
    if not MODEL.exists():
        pytest.skip("the bundled example is not in this checkout")


# --- through the command line -----------------------------------------------------------------

CRASHES = [
    # (ending, the step it happens in, flags, the words naming step and signal)
    ("segv", "Loading the model", [], "The model loading step crashed natively (SIGSEGV)"),
    ("abort", "Distilling", ["--prune", "channels:0.3", "--distill", "--distill-data", str(TRAIN),
                             "--distill-epochs", "1"], "The distillation step crashed natively (SIGABRT)"),
    # By then the outputs are being staged beside the earlier ones: the staging folder goes too.
    ("abort", "Converting to tflite", [], "The tflite conversion step crashed natively (SIGABRT)"),
]


@pytest.mark.slow
@pytest.mark.parametrize("how, at, flags, words", CRASHES, ids=["segv-loading", "abort-distilling",
                                                                "abort-converting"])
def test_a_native_crash_exits_4_naming_step_and_model_and_keeps_earlier_outputs(workspace, how, at, flags, words):
    needs_keras()
    before = snapshot(workspace)
    proc = crashing(workspace, at, how, *flags)
    assert proc.returncode == 4, proc.stderr
    assert f"error: {words} while working on 'digits_cnn.h5'; no output was written; earlier outputs are " \
           "untouched." in proc.stderr
    assert f"hint: The process died in '{at}'" in proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert "Fatal Python error" not in proc.stderr  # faulthandler's dump is for --debug
    assert snapshot(workspace) == before


@pytest.mark.slow
def test_debug_shows_the_crashing_stack(workspace):
    needs_keras()
    proc = crashing(workspace, "Loading the model", "abort", debug=True)
    assert proc.returncode == 4, proc.stderr
    assert "Fatal Python error: Aborted" in proc.stderr
    assert 'supervised_jobs.py", line' in proc.stderr and "in compress_failing_at_step" in proc.stderr
    assert "Extension modules:" not in proc.stderr
    assert "error: The model loading step crashed natively (SIGABRT)" in proc.stderr


@pytest.mark.slow
def test_an_exit_without_a_result_is_reported(workspace):
    needs_keras()
    before = snapshot(workspace)
    proc = crashing(workspace, "Loading the model", "exit")
    assert proc.returncode == 4, proc.stderr
    assert "error: The model loading step ended without a result (exit status 3) while working on " \
           "'digits_cnn.h5'" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert snapshot(workspace) == before


@pytest.mark.slow
def test_a_refusal_in_the_child_keeps_its_message_hint_and_exit_code(workspace):
    needs_keras()
    before = snapshot(workspace)
    proc = crashing(workspace, "Loading the model", "reject")
    assert proc.returncode == 3, proc.stderr
    lines = proc.stderr.splitlines()
    assert f"error: {supervised_jobs.REFUSAL}" in lines  # square brackets too: text, not markup
    assert f"hint: {supervised_jobs.REFUSAL_HINT}" in lines
    assert "Traceback" not in proc.stderr
    assert snapshot(workspace) == before


@pytest.mark.slow
def test_a_bug_in_the_child_is_unexpected_and_its_traceback_is_for_debug(workspace):
    needs_keras()
    proc = crashing(workspace, "Loading the model", "bug")
    assert proc.returncode == 4, proc.stderr
    assert "error: unexpected ValueError: invalid literal for int() with base 10: 'not a number'" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = crashing(workspace, "Loading the model", "bug", debug=True)
    assert proc.returncode == 4 and "Traceback (most recent call last)" in proc.stderr
    assert 'supervised_jobs.py", line' in proc.stderr  # the child's frames, not only the parent's


def _wait_for(path: Path, proc: subprocess.Popen, seconds: float = 120) -> int:
    deadline = time.monotonic() + seconds
    while not (path.exists() and path.read_text()):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)
    return int(path.read_text())


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.slow
@pytest.mark.parametrize("how, send", [("sleep", "ctrl-c"), ("sleep", "sigterm"), ("hang", "sigterm")],
                         ids=["ctrl-c-to-both", "sigterm-to-the-command", "child-deaf-to-signals"])
def test_an_interrupt_exits_130_promptly_and_leaves_no_child(workspace, how, send):
    """Ctrl-C reaches the whole process group; CI's SIGTERM only the command, which passes it on.
    A child stuck where no signal handler runs (a framework's C++ loop) is killed after a grace time."""
    needs_keras()
    before = snapshot(workspace)
    pid_file = workspace / "worker.pid"
    proc = subprocess.Popen([*CRASHING_CLI, *_compress_args(workspace)], cwd=workspace, text=True,
                            env=_env("Converting to tflite", how, **{supervised_jobs.PID_FILE: str(pid_file)}),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        worker = _wait_for(pid_file, proc)
        assert [p for p in (workspace / "out").iterdir() if p.name.startswith(STAGE_PREFIX)]  # mid-export
        started = time.monotonic()
        if send == "ctrl-c":
            os.killpg(proc.pid, signal.SIGINT)
        else:
            proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=60)
        took = time.monotonic() - started
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, stdout + stderr
    assert "interrupted" in stderr and "Traceback" not in stdout + stderr
    assert took < (10 if how == "hang" else 4), took  # the grace time is 5 s
    assert _gone(worker)
    pid_file.unlink()
    assert snapshot(workspace) == before


# --- the supervisor itself ---------------------------------------------------------------------

def test_result_steps_and_output_come_back(capsys):
    steps: list[str] = []
    assert supervise(supervised_jobs.echo, {"a": [1, 2]}, steps.append, subject="m.h5") == {"a": [1, 2]}
    assert steps == ["Loading the model"]
    assert "a line a framework printed" in capsys.readouterr().out


def test_a_crash_names_the_step_and_model(tmp_path):
    with pytest.raises(Crashed) as caught:
        supervise(supervised_jobs.in_step, ("Quantizing to int8", "segv"), subject="m.onnx", output_dir=tmp_path)
    assert caught.value.exit_code == 4
    assert caught.value.message.startswith("The int8 quantization step crashed natively (SIGSEGV) while "
                                           "working on 'm.onnx'")
    assert "Fatal Python error: Segmentation fault" in str(caught.value.__cause__)


def test_errors_keep_class_message_hint_and_code():
    with pytest.raises(InputRejected) as caught:
        supervise(supervised_jobs.in_step, ("Loading the model", "reject"), subject="m.h5")
    assert (caught.value.message, caught.value.hint) == (supervised_jobs.REFUSAL, supervised_jobs.REFUSAL_HINT)
    assert caught.value.exit_code == 3
    with pytest.raises(ChildFailure) as failure:
        supervise(supervised_jobs.in_step, ("Loading the model", "bug"), subject="m.h5")
    assert type(failure.value).__name__ == "ValueError"
    assert "ValueError: invalid literal" in str(failure.value.__cause__)


def test_a_refusal_before_the_job_ends_the_child_unused():
    def refuse() -> None:
        raise UsageError("refused before any work")

    with pytest.raises(UsageError, match="refused before any work"):
        supervise(supervised_jobs.in_step, ("Loading the model", "abort"), subject="m.h5", preflight=refuse)


def test_a_job_must_be_importable_by_the_child():
    with pytest.raises(TypeError, match="module-level function"):
        supervise(lambda payload, progress: None, None, subject="m.h5")


def test_step_names():
    assert step_name("Distilling") == "distillation step"
    assert step_name("Converting to openvino") == "openvino conversion step"
    assert step_name("Measuring latency (fp32, artifact, interleaved)") == "latency measurement step"
    assert step_name("Something new") == "step 'Something new'"
