"""The `edgeopt` command on bad input: stable exit codes, a clear message, no traceback, and
nothing written — an earlier run's outputs stay byte-identical."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

_SCRIPT = Path(sys.executable).with_name("edgeopt")
EDGEOPT = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "edgeopt.cli"]


def run_cli(*args, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "EDGEOPT_DEBUG"}
    env["COLUMNS"] = "200"
    return subprocess.run([*EDGEOPT, *map(str, args)], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=300)


def snapshot(root: Path) -> dict[str, str]:
    """Every file and folder under ``root`` (hidden ones too), with a digest of each file."""
    return {str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir")
            for p in sorted(root.rglob("*"))}


def assert_refused(proc: subprocess.CompletedProcess, code: int, *phrases: str) -> None:
    output = proc.stdout + proc.stderr
    assert proc.returncode == code, output
    assert "Traceback" not in output, output
    assert "error:" in proc.stderr, output
    for phrase in phrases:
        assert phrase in proc.stderr, f"{phrase!r} not in:\n{proc.stderr}"


@pytest.fixture
def workspace(tmp_path):
    """A folder with an earlier run's outputs in ``out/``."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "conv_int8.tflite").write_bytes(os.urandom(2048))
    (out / "report.json").write_text(json.dumps({"schema_version": 1}))
    (out / "recipe.yaml").write_text("model: conv.h5\n")
    return tmp_path


def check_untouched(workspace: Path, before: dict[str, str]) -> None:
    assert snapshot(workspace) == before


# --- refusals that need no framework --------------------------------------------------------

def _missing(ws):
    return [ws / "missing.h5"], 3, ["does not exist", "missing.h5"]


def _bracket_path(ws):
    # Paths and tensor names are text, not terminal markup.
    name = "[/b]model[x].h5"
    return [ws / name], 3, [name, "does not exist"]


def _random_bytes(ws):
    (ws / "random.h5").write_bytes(b"\xff" + np.random.default_rng(0).bytes(4095))
    return [ws / "random.h5"], 3, ["random.h5", "first bytes match no supported format"]


def _empty(ws):
    (ws / "empty.h5").write_bytes(b"")
    return [ws / "empty.h5"], 3, ["is empty (0 bytes)"]


def _unknown_target(ws):
    (ws / "m.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x00" * 100)
    return [ws / "m.h5", "--target", "coreml"], 2, ["unknown target(s) ['coreml']"]


def _bad_precision(ws):
    (ws / "m.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x00" * 100)
    return [ws / "m.h5", "--precision", "int4"], 2, ["int4"]


def _zero_std(ws):
    # A value click lets through and the config refuses: the message names the flag that gave it.
    (ws / "m.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x00" * 100)
    return [ws / "m.h5", "--std", "0.5,0"], 2, ["'calibration.std' (from --std)", "std values must be non-zero"]


def _adaround_elsewhere(ws):
    (ws / "m.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x00" * 100)
    np.savez(ws / "c.npz", x=np.zeros((4, 3), np.float32))
    return ([ws / "m.h5", "--target", "openvino", "--calib", ws / "c.npz", "--optimize", "adaround"], 2,
            ["openvino target (keras->openvino) cannot learn the rounding"])


def _adaround_without_calib(ws):
    (ws / "m.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x00" * 100)
    return [ws / "m.h5", "--target", "onnx", "--optimize", "adaround"], 2, ["there is no calibration data"]


CHEAP = {"missing": _missing, "bracket_path": _bracket_path, "random_bytes": _random_bytes,
         "empty": _empty, "unknown_target": _unknown_target, "bad_precision": _bad_precision,
         "zero_std": _zero_std, "adaround_elsewhere": _adaround_elsewhere,
         "adaround_without_calib": _adaround_without_calib}


@pytest.mark.parametrize("case", sorted(CHEAP))
def test_refused_and_earlier_outputs_untouched(workspace, case):
    args, code, phrases = CHEAP[case](workspace)
    before = snapshot(workspace)
    proc = run_cli("compress", *args, "-o", workspace / "out", "-q", cwd=workspace)
    if case == "bad_precision":  # click's own usage error
        assert proc.returncode == 2 and "Traceback" not in proc.stderr and "int4" in proc.stderr
    else:
        assert_refused(proc, code, *phrases)
    check_untouched(workspace, before)


@pytest.mark.parametrize("case", sorted(CHEAP))
def test_refused_run_creates_no_output_folder(workspace, case):
    args, code, _ = CHEAP[case](workspace)
    before = snapshot(workspace)
    proc = run_cli("compress", *args, "-o", workspace / "new" / "out", "-q", cwd=workspace)
    assert proc.returncode == code
    assert not (workspace / "new").exists()
    check_untouched(workspace, before)


def test_unknown_recipe_key(workspace):
    (workspace / "recipe.yaml").write_text("model: m.h5\nprecison: fp16\n")
    before = snapshot(workspace)
    proc = run_cli("run", workspace / "recipe.yaml", cwd=workspace)
    assert_refused(proc, 2, "unknown key 'precison'")
    check_untouched(workspace, before)


# --- refusals of real models and data (Keras in this process; some load TF in the child) ----

@pytest.fixture(scope="module")
def conv_tflite(tmp_path_factory, saved_model) -> Path:
    pytest.importorskip("tensorflow")
    import edgeopt

    out = tmp_path_factory.mktemp("tflite")
    result = edgeopt.compress(saved_model("conv"), precision="fp32", validate=False, output=out)
    return result.files["conv_fp32.tflite"]


def _calib(ws: Path, name: str, array: np.ndarray) -> Path:
    path = ws / f"{name}.npz"
    np.savez(path, image=array)
    return path


def _truncated(ws, models):
    data = models("conv").read_bytes()
    (ws / "conv.h5").write_bytes(data[: len(data) // 3])
    return [ws / "conv.h5"], 3, ["Cannot read", "conv.h5", "truncated"]


def _truncated_keras(ws, models):
    data = models("conv", ".keras").read_bytes()
    (ws / "conv.keras").write_bytes(data[: len(data) // 2])
    return [ws / "conv.keras"], 3, ["conv.keras", "cannot be read"]


def _tflite_named_h5(ws, models, tflite):
    (ws / "conv.h5").write_bytes(tflite.read_bytes())
    return [ws / "conv.h5"], 3, ["is a tflite artifact, not a source model"]


def _wrong_shape(ws, models):
    calib = _calib(ws, "calib", np.zeros((10, 8, 8, 3), np.float32))
    return [models("conv"), "--calib", calib], 3, ["per-sample shape (8, 8, 3)", "expects (16,16,3)"]


def _wrong_dtype(ws, models):
    calib = _calib(ws, "calib", np.zeros((10, 16, 16, 3), np.uint8))
    return [models("conv"), "--calib", calib], 3, ["dtype uint8", "expects float32"]


def _nan(ws, models):
    data = np.random.default_rng(0).random((40, 16, 16, 3), dtype=np.float32)
    data[7, 1, 2, 0] = np.nan
    calib = _calib(ws, "calib", data)
    return [models("conv"), "--calib", calib], 3, ["Sample 7 of", "calib.npz[image]", "NaN"]


def _wrong_val_shape(ws, models):
    calib = _calib(ws, "calib", np.zeros((10, 16, 16, 3), np.float32))
    np.savez(ws / "val.npz", image=np.zeros((10, 16, 16), np.float32), labels=np.zeros(10, np.int64))
    return [models("conv"), "--calib", calib, "--val", ws / "val.npz"], 3, ["validation array", "(16, 16)"]


def _lambda(ws, models):
    return [models("lambda_layer")], 3, ["layer 'double_it' is a Lambda layer", "--trust-model"]


def _unwritable(ws, models):
    (ws / "blocker").write_text("a regular file")
    return [models("conv"), "-o", ws / "blocker" / "out"], 2, ["is a file"]


MODEL_CASES = {"truncated_h5": _truncated, "truncated_keras": _truncated_keras, "wrong_shape": _wrong_shape,
               "wrong_dtype": _wrong_dtype, "nan": _nan, "wrong_val_shape": _wrong_val_shape,
               "lambda": _lambda, "unwritable": _unwritable}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(MODEL_CASES))
def test_model_refused_and_earlier_outputs_untouched(workspace, saved_model, case):
    pytest.importorskip("keras")
    args, code, phrases = MODEL_CASES[case](workspace, saved_model)
    if "-o" not in args:
        args = [*args, "-o", workspace / "out"]
    before = snapshot(workspace)
    proc = run_cli("compress", *args, "-q", cwd=workspace)
    assert_refused(proc, code, *phrases)
    check_untouched(workspace, before)


@pytest.mark.slow
def test_tflite_renamed_h5_refused(workspace, saved_model, conv_tflite):
    args, code, phrases = _tflite_named_h5(workspace, saved_model, conv_tflite)
    before = snapshot(workspace)
    proc = run_cli("compress", *args, "-o", workspace / "out", "-q", cwd=workspace)
    assert_refused(proc, code, *phrases)
    check_untouched(workspace, before)


@pytest.mark.slow
def test_lambda_layer_converts_with_trust(workspace, saved_model, calib_file):
    pytest.importorskip("tensorflow")
    out = workspace / "trusted"
    proc = run_cli("compress", saved_model("lambda_layer"), "--trust-model", "--calib",
                   calib_file("lambda_layer"), "-o", out, "--runs", "3", "--warmup", "1", cwd=workspace)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    names = {p.name for p in out.iterdir()}
    assert {"lambda_layer_int8.tflite", "recipe.yaml", "report.json", "report.md"} <= names
    assert not [n for n in names if n.startswith(".")]  # no staging or temp files left
    report = json.loads((out / "report.json").read_text())
    (artifact,) = report["artifacts"]
    assert artifact["precision"] == "int8"
    assert artifact["ops"]["full_integer"] is True
    assert artifact["fidelity"]["cosine"] >= 0.98
    assert "lambda_layer_int8.tflite: full integer" in proc.stdout


@pytest.mark.slow
def test_saved_model_needs_trust(workspace, tmp_path_factory):
    pytest.importorskip("tensorflow")
    from conftest import build_model

    folder = tmp_path_factory.mktemp("exported") / "conv_saved"
    build_model("conv").export(str(folder), verbose=False)
    before = snapshot(workspace)
    proc = run_cli("compress", folder, "-o", workspace / "out", "-q", cwd=workspace)
    assert_refused(proc, 3, "Refusing to load the SavedModel", "--trust-model")
    check_untouched(workspace, before)
