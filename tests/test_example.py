"""The bundled digits example through the `edgeopt` command, as a user runs it, and its
recipe.yaml re-run with `edgeopt run` to the same bytes."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow
keras = pytest.importorskip("keras")
pytest.importorskip("ai_edge_litert")

from conftest import assert_full_integer, keras_predict, run_tflite  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "examples" / "digits" / "digits_cnn.h5"
CALIB = ROOT / "calibration_data" / "digits" / "calib.npz"
VAL = ROOT / "calibration_data" / "digits" / "val.npz"
_SCRIPT = Path(sys.executable).with_name("edgeopt")
EDGEOPT = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "edgeopt.cli"]
ARTIFACT = "digits_cnn_int8.tflite"


def _cli(*args, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "EDGEOPT_DEBUG"}
    proc = subprocess.run([*EDGEOPT, *map(str, args)], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=600)
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    return proc


def _assert_outputs(out: Path) -> None:
    names = {p.name for p in out.iterdir()}
    assert {ARTIFACT, "recipe.yaml", "report.json", "report.md"} <= names
    assert not [n for n in names if n.startswith(".")]  # no staging or temp files left


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def example_run(tmp_path_factory):
    if not MODEL.exists():
        pytest.skip("the bundled example is not in this checkout")
    # The example's files, at the same relative paths, so the run looks like the README's.
    work = tmp_path_factory.mktemp("example")
    for source in (MODEL, CALIB, VAL):
        copy = work / source.relative_to(ROOT)
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, copy)
    proc = _cli("compress", MODEL.relative_to(ROOT), "--target", "tflite", "--calib", CALIB.relative_to(ROOT),
                "--val", VAL.relative_to(ROOT), "-o", "out", "--runs", "20", "--warmup", "2", cwd=work)
    return proc, work / "out", work


def test_exit_zero_and_outputs(example_run):
    proc, out, _ = example_run
    assert proc.returncode == 0, proc.stderr
    _assert_outputs(out)
    assert f"{ARTIFACT}: full integer" in proc.stdout
    assert "Outputs in out" in proc.stdout


def test_int8_keeps_keras_accuracy_and_shrinks(example_run):
    _, out, _ = example_run
    report = json.loads((out / "report.json").read_text())
    (artifact,) = report["artifacts"]

    # Independent numbers: Keras and LiteRT run here on the whole validation set.
    model = keras.models.load_model(MODEL, compile=False)
    with np.load(VAL) as data:
        feed, labels = {"image": data["image"]}, data["labels"]
    keras_top1 = float(np.mean(keras_predict(model, feed).argmax(1) == labels))
    int8_top1 = float(np.mean(run_tflite(out / ARTIFACT, feed).argmax(1) == labels))

    assert report["validation"]["samples"] == len(labels)
    assert report["reference"]["accuracy"]["top1"] == pytest.approx(keras_top1, abs=1e-12)
    assert artifact["accuracy"]["top1"] == pytest.approx(int8_top1, abs=1e-12)
    assert abs(int8_top1 - keras_top1) * 100 <= 1.0
    assert keras_top1 > 0.9  # the example model is trained, not random

    assert artifact["size_bytes"] == (out / ARTIFACT).stat().st_size
    assert artifact["size_ratio"] == pytest.approx(artifact["size_bytes"] / report["reference"]["size_bytes"],
                                                   abs=1e-4)
    assert artifact["size_ratio"] <= 0.30


def test_full_integer(example_run):
    _, out, _ = example_run
    report = json.loads((out / "report.json").read_text())
    (artifact,) = report["artifacts"]
    assert artifact["ops"]["full_integer"] is True
    assert artifact["io_dtypes"] == {"image": "float32"}
    assert_full_integer(out / ARTIFACT)


def test_recipe_rerun_reproduces_the_artifact(example_run):
    _, out, work = example_run
    first_sha = _sha256(out / ARTIFACT)
    first = json.loads((out / "report.json").read_text())

    proc = _cli("run", out / "recipe.yaml", "-q", cwd=work)

    assert proc.returncode == 0, proc.stderr
    again = json.loads((out / "report.json").read_text())
    assert _sha256(out / ARTIFACT) == first_sha
    assert again["calibration"] == first["calibration"]
    assert again["settings"] == first["settings"]
    assert again["artifacts"][0]["fidelity"] == first["artifacts"][0]["fidelity"]
    _assert_outputs(out)
