"""`edgeopt compress --list-layers`: the names it prints are the ones --keep-float keeps in float,
it writes nothing at the output path, and it refuses bad input as compress does. The models are
the outlier network of tiny_models (convs conv0..conv9), as ONNX and as Keras."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest

import tiny_models
from conftest import tflite_ops

_SCRIPT = Path(sys.executable).with_name("edgeopt")
EDGEOPT = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "edgeopt.cli"]
OWN_LINES = ("✓ ", "warning: ", "note: ")  # what edgeopt itself writes to stderr
CONVS = [f"conv{i}" for i in range(tiny_models.OUTLIER_CONVS)]


class Row(NamedTuple):
    target: str
    layer: str
    op: str
    label: str


def edgeopt(*args, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "EDGEOPT_DEBUG"}
    env["COLUMNS"] = "250"  # wide enough that no table cell is folded
    return subprocess.run([*EDGEOPT, *map(str, args)], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=600)


def printed_rows(stdout: str) -> list[Row]:
    """The body rows of the printed table (the header row uses heavy rules, ┃, not │)."""
    rows = []
    for line in stdout.splitlines():
        if line.startswith("│"):
            rows.append(Row(*(cell.strip() for cell in line.strip("│").split("│"))))
    return rows


def foreign_stderr(proc: subprocess.CompletedProcess) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.strip() and not line.startswith(OWN_LINES)]


@pytest.fixture(scope="module")
def outlier(tmp_path_factory) -> Path:
    """The outlier model as ONNX (NCHW) and, where Keras is installed, Keras (NHWC), with calibration data."""
    pytest.importorskip("onnx")
    import onnx

    root = tmp_path_factory.mktemp("list_layers")
    calib = np.random.default_rng(1).random((48, 3, tiny_models.OUTLIER_SIZE, tiny_models.OUTLIER_SIZE),
                                             dtype=np.float32)
    onnx.save(tiny_models.build_outlier_onnx(), str(root / "outlier.onnx"))
    np.savez(root / "calib_nchw.npz", image=calib)
    np.savez(root / "calib_nhwc.npz", image=calib.transpose(0, 2, 3, 1))
    return root


@pytest.mark.slow
def test_onnx_model_lists_its_nodes_and_keep_float_takes_a_printed_name(outlier, tmp_path):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    out = tmp_path / "out"
    proc = edgeopt("compress", outlier / "outlier.onnx", "--list-layers", "--calib", "calib_nchw.npz", "-o", out,
                   cwd=outlier)
    assert proc.returncode == 0, proc.stderr
    assert not out.exists()
    assert not foreign_stderr(proc), proc.stderr
    rows = printed_rows(proc.stdout)
    # Without --target: every target that keeps layers of an ONNX model in float.
    assert [(r.layer, r.op) for r in rows if r.target == "onnx"] == [(name, "Conv") for name in CONVS]
    if any(r.target == "openvino" for r in rows):
        assert [r.layer for r in rows if r.target == "openvino"] == [f"{name}/WithoutBiases" for name in CONVS]
    tflite = [r.layer for r in rows if r.target == "tflite"]
    if tflite:
        assert [r.op for r in rows if r.target == "tflite"] == ["CONV_2D"] * len(CONVS)
    assert {r.target for r in rows} <= {"onnx", "openvino", "tflite"}
    if tflite:  # a printed TFLite name keeps that op, and only it, in float
        proc = edgeopt("compress", "outlier.onnx", "--target", "tflite", "--calib", "calib_nchw.npz", "--no-validate",
                       "--keep-float", f"^{re.escape(tflite[4])}$", "-o", out / "tflite", cwd=outlier)
        assert proc.returncode == 0, proc.stderr
        (artifact,) = json.loads((out / "tflite" / "report.json").read_text())["artifacts"]
        assert artifact["quantization"]["keep_float"] == [tflite[4]]
        convs = [inputs[0] for op, inputs, _ in tflite_ops(out / "tflite" / "outlier_int8.tflite") if op == "CONV_2D"]
        assert [str(d) for d in convs] == ["float32" if i == 4 else "int8" for i in range(len(CONVS))]

    proc = edgeopt("compress", "outlier.onnx", "--target", "onnx", "--calib", "calib_nchw.npz", "--no-validate",
                   "--keep-float", "conv4", "-o", out / "onnx", cwd=outlier)
    assert proc.returncode == 0, proc.stderr
    (artifact,) = json.loads((out / "onnx" / "report.json").read_text())["artifacts"]
    assert artifact["quantization"]["keep_float"] == ["conv4"]
    assert artifact["quantization"]["layers"] == len(CONVS)
    # Independently of edgeopt: conv4 alone reads float weights, every other conv dequantized int8 ones.
    model = onnx.load(str(out / "onnx" / "outlier_int8.onnx"))
    produced_by = {o: n.op_type for n in model.graph.node for o in n.output}
    int8_weights = {n.name: produced_by.get(n.input[1]) == "DequantizeLinear" for n in model.graph.node
                    if n.op_type == "Conv"}
    assert int8_weights == {name: name != "conv4" for name in CONVS}


@pytest.mark.slow
def test_keras_model_lists_tflite_ops_and_keep_float_takes_a_printed_name(outlier, tmp_path):
    pytest.importorskip("tensorflow")
    pytest.importorskip("ai_edge_litert")
    from conftest import tflite_ops

    tiny_models.build_outlier_keras().save(tmp_path / "outlier.h5")
    out = tmp_path / "out"
    proc = edgeopt("compress", "outlier.h5", "--list-layers", "--target", "tflite", "--calib",
                   outlier / "calib_nhwc.npz", "-o", out, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert not out.exists()
    assert not foreign_stderr(proc), proc.stderr  # the TFLite converter's logs and warnings stay out
    rows = printed_rows(proc.stdout)
    assert {r.target for r in rows} == {"tflite"}
    assert [r.op for r in rows] == ["CONV_2D"] * len(CONVS)
    # The names are op output tensors; the label says which Keras layer each came from.
    (conv4,) = [r for r in rows if r.label == "conv4"]
    assert "conv4" in conv4.layer

    proc = edgeopt("compress", "outlier.h5", "--target", "tflite", "--calib", outlier / "calib_nhwc.npz",
                   "--no-validate", "--keep-float", conv4.layer, "-o", out, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (artifact,) = json.loads((out / "report.json").read_text())["artifacts"]
    assert artifact["quantization"]["keep_float"] == ["conv4"]
    assert artifact["quantization"]["layers"] == len(CONVS)
    activations = [str(inputs[0]) for op, inputs, _ in tflite_ops(out / "outlier_int8.tflite") if op == "CONV_2D"]
    assert activations == ["float32" if name == "conv4" else "int8" for name in CONVS]


def _missing(root: Path) -> tuple[list, int, str]:
    return ["missing.onnx", "--calib", "calib_nchw.npz"], 3, "does not exist"


def _not_a_model(root: Path) -> tuple[list, int, str]:
    (root / "random.onnx").write_bytes(b"\xff" + np.random.default_rng(0).bytes(4095))
    return ["random.onnx", "--calib", "calib_nchw.npz"], 3, "first bytes match no supported format"


def _no_calibration(root: Path) -> tuple[list, int, str]:
    return ["outlier.onnx"], 2, "Listing layers needs calibration data"


def _not_int8(root: Path) -> tuple[list, int, str]:
    return ["outlier.onnx", "--calib", "calib_nchw.npz", "--precision", "fp16"], 2, "precision is fp16"


def _method_the_target_lacks(root: Path) -> tuple[list, int, str]:
    return (["outlier.onnx", "--calib", "calib_nchw.npz", "--target", "tflite", "--calib-method", "entropy"], 2,
            "tflite target (onnx->tflite) cannot calibrate with method 'entropy'")


@pytest.mark.parametrize("case", [_missing, _not_a_model, _no_calibration, _not_int8, _method_the_target_lacks])
def test_bad_input_is_refused_as_compress_refuses_it_and_writes_nothing(outlier, tmp_path, case):
    args, code, phrase = case(outlier)
    out = tmp_path / "out"
    proc = edgeopt("compress", *args, "--list-layers", "-o", out, cwd=outlier)
    assert proc.returncode == code, proc.stdout + proc.stderr
    assert phrase in proc.stderr and "Traceback" not in proc.stdout + proc.stderr
    assert not out.exists()
