"""`edgeopt compress` end to end for the ONNX and OpenVINO targets and the PyTorch and ONNX sources,
through ``edgeopt.compress`` and the CLI, checked independently of edgeopt's own measurements."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import edgeopt  # noqa: E402
import tiny_models  # noqa: E402
from edgeopt import recipe  # noqa: E402
from edgeopt.outputs import STAGE_PREFIX  # noqa: E402

FAST = {"runs": 5, "warmup": 1}
INT8_MIN_COSINE = 0.98


def _require_openvino() -> None:
    from edgeopt.deps import no_telemetry

    with no_telemetry():  # importing OpenVINO or NNCF otherwise reports usage over the network
        pytest.importorskip("openvino")
        pytest.importorskip("nncf")


def _no_leftovers(folder: Path) -> None:
    assert not [p for p in folder.rglob("*") if p.name.startswith((STAGE_PREFIX, ".edgeopt-", "."))]


@pytest.mark.slow
def test_torch_to_onnx(torch_model, nchw_calib, tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("onnxscript")
    spec, weights, reference = torch_model("residual")
    out = tmp_path / "out"
    result = edgeopt.compress(spec, target="onnx", weights=weights, calib=nchw_calib("residual"), output=out, **FAST)
    assert {"nets_int8.onnx", "recipe.yaml", "report.json"} <= set(result.files)
    assert not [f for f in result.files if f.endswith((".onnx", ".xml", ".bin")) and f != "nets_int8.onnx"]
    _no_leftovers(out)
    (artifact,) = json.loads((out / "report.json").read_text())["artifacts"]
    assert artifact["target"] == "onnx" and artifact["precision"] == "int8"
    assert artifact["fidelity"]["cosine"] >= INT8_MIN_COSINE
    assert artifact["baseline_fidelity"]["max_abs_err"] < 1e-4
    assert artifact["io_dtypes"] == {"image": "float32"} and artifact["input_layout"] == {"image": "nchw"}
    assert artifact["size_bytes"] == (out / "nets_int8.onnx").stat().st_size
    # Independently: the artifact against the PyTorch module on fresh data.
    import torch

    feed = tiny_models.random_feed("residual", 16, seed=9)
    with torch.no_grad():
        expected = reference(torch.from_numpy(feed["image"])).numpy()
    assert tiny_models.cosine(tiny_models.run_onnx(out / "nets_int8.onnx", feed)[0], expected) >= INT8_MIN_COSINE
    # The saved recipe repeats the run: it carries the weights and the model spec.
    saved = recipe.load(out / "recipe.yaml")
    assert saved.weights == weights and str(saved.model) == spec and saved.targets == ("onnx",)


@pytest.mark.slow
def test_onnx_to_openvino(onnx_model, nchw_calib, tmp_path):
    _require_openvino()
    out = tmp_path / "out"
    result = edgeopt.compress(onnx_model("depthwise"), target="openvino", calib=nchw_calib("depthwise"),
                              output=out, **FAST)
    assert {"depthwise_int8.bin", "depthwise_int8.xml", "recipe.yaml", "report.json"} <= set(result.files)
    assert not [f for f in result.files if f.endswith((".onnx", ".xml", ".bin")) and not f.startswith("depthwise_int8")]
    _no_leftovers(out)
    (artifact,) = result.artifacts
    assert artifact["path"] == str(out / "depthwise_int8.xml") and artifact["precision"] == "int8"
    assert artifact["size_bytes"] == sum((out / f"depthwise_int8.{s}").stat().st_size for s in ("xml", "bin"))
    assert artifact["fidelity"]["cosine"] >= INT8_MIN_COSINE
    assert "Convolution" not in artifact["ops"]["float_ops"]
    assert result.report["source"]["format"] == "onnx" and result.report["source"]["opset"] == tiny_models.OPSET


@pytest.mark.slow
def test_keras_to_onnx_and_openvino_in_one_run(saved_model, calib_file, tmp_path):
    pytest.importorskip("tf2onnx")
    _require_openvino()
    out = tmp_path / "out"
    result = edgeopt.compress(saved_model("two_input"), target="onnx,openvino", calib=calib_file("two_input"),
                              output=out, **FAST)
    assert {a["target"] for a in result.artifacts} == {"onnx", "openvino"}
    for artifact in result.artifacts:
        assert artifact["fidelity"]["cosine"] >= INT8_MIN_COSINE, artifact["target"]
        assert artifact["baseline_fidelity"]["max_abs_err"] < 1e-4
        assert artifact["input_layout"]["image"] == "nhwc"
    assert {"two_input_int8.onnx", "two_input_int8.xml", "two_input_int8.bin"} <= set(result.files)


@pytest.mark.slow
def test_torch_to_tflite(torch_model, nchw_calib, tmp_path):
    pytest.importorskip("litert_torch")
    spec, weights, _ = torch_model("depthwise")
    result = edgeopt.compress(spec, target="tflite", weights=weights, calib=nchw_calib("depthwise"),
                              output=tmp_path / "out", **FAST)
    (artifact,) = result.artifacts
    assert artifact["precision"] == "int8" and artifact["ops"]["full_integer"], artifact["ops"]
    assert artifact["io_dtypes"] == {"image": "float32"} and artifact["input_layout"] == {"image": "nhwc"}
    assert artifact["fidelity"]["cosine"] >= INT8_MIN_COSINE


def test_cli_torch_spec_with_input_shape(torch_model, tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("onnxscript")
    click_testing = pytest.importorskip("click.testing")
    from edgeopt.cli import main

    spec, weights, _ = torch_model("two_input")
    out = tmp_path / "out"
    args = ["compress", spec, "--weights", str(weights), "--input-shape", "image=1,1,8,8", "--input-shape",
            "meta=1,4", "--target", "onnx", "--precision", "fp32", "--no-validate", "-q", "-o", str(out)]
    result = click_testing.CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert (out / "nets_fp32.onnx").is_file()
    saved = recipe.load(out / "recipe.yaml")
    assert saved.input_shapes == {"image": (1, 1, 8, 8), "meta": (1, 4)}


@pytest.mark.parametrize("value, message", [("image=1,x,8", "expected NAME=D0,D1"),
                                            ("image=0,3", "positive sizes")])
def test_cli_rejects_bad_input_shapes(value, message, tmp_path):
    click_testing = pytest.importorskip("click.testing")
    from edgeopt.cli import main

    result = click_testing.CliRunner().invoke(main, ["compress", "net.py:build", "--input-shape", value,
                                                     "-o", str(tmp_path / "out")])
    assert result.exit_code == 2 and message in result.output
    assert not (tmp_path / "out").exists()


def test_int8_artifacts_are_smaller_and_full_integer_on_a_wider_model(tmp_path):
    """Tiny models are dominated by quantization parameters; a wider one shows the 4x weight saving."""
    _require_openvino()
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array((rng.random(s, dtype=np.float32) - 0.5) * 0.1, n)
               for n, s in (("w1", (64, 3, 3, 3)), ("w2", (128, 64, 3, 3)), ("fc", (128, 10)))]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1] * 4), helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1] * 4), helper.make_node("Relu", ["c2"], ["r2"]),
             helper.make_node("GlobalAveragePool", ["r2"], ["g"]), helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("MatMul", ["f", "fc"], ["y"])]
    graph = helper.make_graph(nodes, "wide", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])], initializer=weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", tiny_models.OPSET)])
    model.ir_version = tiny_models.IR_VERSION
    path = tmp_path / "wide.onnx"
    onnx.save(model, str(path))
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=rng.random((16, 3, 16, 16), dtype=np.float32))
    result = edgeopt.compress(path, target="onnx,openvino", calib=calib, output=tmp_path / "out", **FAST)
    for artifact in result.artifacts:
        assert artifact["size_ratio"] < 0.35, (artifact["target"], artifact["size_ratio"])
        assert artifact["ops"]["full_integer"], (artifact["target"], artifact["ops"])
        assert artifact["fidelity"]["cosine"] >= INT8_MIN_COSINE
