"""Frameworks' warnings and logs stay out of the terminal unless --debug: stderr holds edgeopt's
own lines only. The model is saved as Keras 2 saved them, inputs as a list, which makes Keras 3
warn "The structure of `inputs` doesn't match the expected structure" at every call."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow

_SCRIPT = Path(sys.executable).with_name("edgeopt")
EDGEOPT = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "edgeopt.cli"]
# What edgeopt itself writes to stderr: finished steps, and the run's warnings and notes.
OWN_LINES = ("✓ ", "warning: ", "note: ")


@pytest.fixture(scope="module")
def listed_inputs_model(tmp_path_factory) -> Path:
    keras = pytest.importorskip("keras")
    pytest.importorskip("tf2onnx")
    pytest.importorskip("onnxruntime")
    keras.utils.set_random_seed(0)
    folder = tmp_path_factory.mktemp("listed")
    image = keras.Input(shape=(16, 16, 3), name="image")
    x = keras.layers.Conv2D(8, 3, padding="same", name="conv")(image)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.ReLU(name="relu")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    probs = keras.layers.Dense(4, activation="softmax", name="probs")(x)
    keras.Model([image], probs, name="listed").save(folder / "listed.h5")
    rng = np.random.default_rng(0)
    np.savez(folder / "calib.npz", image=rng.random((48, 16, 16, 3), dtype=np.float32))
    np.savez(folder / "val.npz", image=rng.random((24, 16, 16, 3), dtype=np.float32),
             labels=rng.integers(0, 4, 24))
    return folder


def _compress(folder: Path, *first: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "EDGEOPT_DEBUG"}
    env["COLUMNS"] = "250"  # edgeopt's lines unwrapped, one per line
    args = [*EDGEOPT, *first, "compress", "listed.h5", "--target", "tflite,onnx", "--calib", "calib.npz",
            "--val", "val.npz", "-o", str(folder / "out"), "--runs", "3", "--warmup", "1"]
    return subprocess.run(args, cwd=folder, env=env, capture_output=True, text=True, timeout=600)


def test_stderr_holds_only_edgeopt_lines(listed_inputs_model):
    proc = _compress(listed_inputs_model)
    assert proc.returncode == 0, proc.stderr
    assert "Warning" not in proc.stderr + proc.stdout
    foreign = [line for line in proc.stderr.splitlines() if line.strip() and not line.startswith(OWN_LINES)]
    assert not foreign, proc.stderr
    assert "✓ Converting to onnx" in proc.stderr


def test_debug_lets_them_through(listed_inputs_model):
    proc = _compress(listed_inputs_model, "--debug")
    assert proc.returncode == 0, proc.stderr
    assert "UserWarning: The structure of `inputs` doesn't match the expected structure" in proc.stderr
