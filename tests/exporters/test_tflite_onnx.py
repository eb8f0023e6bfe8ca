"""ONNX -> TFLite through ``edgeopt.compress`` and the CLI: fp32 equal to ONNX Runtime (NHWC by
default, NCHW kept on request), full-integer int8 close to it, a detector-like graph with two
outputs, an ONNX file written by torch.onnx, and unsupported ops refused before anything is written.
Artifacts are checked independently: LiteRT against ONNX Runtime on fresh data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("torch")
pytest.importorskip("litert_torch")
pytest.importorskip("ai_edge_quantizer")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import edgeopt  # noqa: E402
import tiny_models  # noqa: E402
from conftest import assert_full_integer, run_tflite  # noqa: E402
from edgeopt.errors import ConversionError  # noqa: E402
from edgeopt.passes.quantize import export  # noqa: E402

pytestmark = pytest.mark.slow  # litert-torch takes seconds to import and convert

# Random-weight nets prove the plumbing, not accuracy: the fidelity guard is off for them.
FAST = {"runs": 5, "warmup": 1, "guard": False}
FP32_ATOL = 1e-4
INT8_MIN_COSINE = 0.98
DETECTOR_FP32_MIN_COSINE = 0.999
VAL = 16


def _nhwc(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: np.ascontiguousarray(v.transpose(0, 2, 3, 1)) if v.ndim == 4 else v for k, v in feed.items()}


def _tflite_all(path: Path, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Every output of a .tflite file, in forward() order, fed by position (args_0, args_1...)."""
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_path=str(path)).get_signature_runner()
    arg_names = sorted(runner.get_input_details(), key=lambda n: int(n.rsplit("_", 1)[-1]))
    results = []
    for i in range(len(next(iter(feed.values())))):
        out = runner(**{a: v[i:i + 1] for a, v in zip(arg_names, feed.values())})
        results.append([out[k] for k in sorted(out, key=lambda n: int(n.rsplit("_", 1)[-1]))])
    return [np.concatenate(parts) for parts in zip(*results)]


def _input_shapes(path: Path) -> list[tuple[int, ...]]:
    from ai_edge_litert.interpreter import Interpreter

    details = Interpreter(model_path=str(path)).get_input_details()
    return [tuple(int(d) for d in detail["shape"]) for detail in sorted(details, key=lambda d: d["name"])]


@pytest.mark.parametrize("name", ["residual", "depthwise", "two_input"])
def test_int8_and_its_fp32_baseline(name, onnx_model, nchw_calib, tmp_path):
    out = tmp_path / "out"
    result = edgeopt.compress(onnx_model(name), target="tflite", calib=nchw_calib(name), output=out, **FAST)
    (artifact,) = result.artifacts
    assert artifact["precision"] == "int8" and artifact["ops"]["full_integer"], artifact["ops"]
    # The fp32 baseline is the same conversion without quantization, measured against ONNX Runtime.
    assert artifact["baseline_fidelity"]["max_abs_err"] < FP32_ATOL
    assert artifact["fidelity"]["cosine"] >= INT8_MIN_COSINE
    assert artifact["input_layout"]["image"] == "nhwc" and artifact["io_dtypes"]["image"] == "float32"
    assert result.report["source"]["format"] == "onnx"
    assert any("ONNX -> TFLite" in note for note in result.report["notes"])
    path = out / f"{name}_int8.tflite"
    assert artifact["size_bytes"] == path.stat().st_size
    assert_full_integer(path)
    feed = tiny_models.random_feed(name, VAL, seed=9)
    expected = tiny_models.run_onnx(onnx_model(name), feed)[0]
    assert tiny_models.cosine(_tflite_all(path, _nhwc(feed))[0], expected) >= INT8_MIN_COSINE


@pytest.mark.parametrize("keep_layout", [False, True])
def test_fp32_matches_onnxruntime_in_nhwc_or_kept_nchw(keep_layout, onnx_model, tmp_path):
    from edgeopt.frameworks import onnx as onnx_loader

    source = onnx_loader.load(onnx_model("two_input"))
    result = export("onnx->tflite", source, tmp_path / "m.tflite", precision="fp32", keep_layout=keep_layout)
    assert result.precision == "fp32"
    assert ((1, 1, 8, 8) if keep_layout else (1, 8, 8, 1)) in _input_shapes(result.path)
    feed = tiny_models.random_feed("two_input", VAL, seed=7)
    got = _tflite_all(result.path, feed if keep_layout else _nhwc(feed))[0]
    assert np.abs(got - tiny_models.run_onnx(onnx_model("two_input"), feed)[0]).max() < FP32_ATOL


def test_cli_fp32_keep_layout(onnx_model, nchw_calib, tmp_path):
    click_testing = pytest.importorskip("click.testing")
    from edgeopt.cli import main

    out = tmp_path / "out"
    result = click_testing.CliRunner().invoke(main, ["compress", str(onnx_model("residual")), "--target", "tflite",
                                                     "--precision", "fp32", "--keep-layout", "--calib",
                                                     str(nchw_calib("residual")), "--runs", "3", "-q", "-o", str(out)])
    assert result.exit_code == 0, result.output
    (artifact,) = json.loads((out / "report.json").read_text())["artifacts"]
    assert artifact["input_layout"] == {"image": "nchw"} and artifact["fidelity"]["max_abs_err"] < FP32_ATOL
    feed = tiny_models.random_feed("residual", VAL, seed=5)
    got = run_tflite(out / "residual_fp32.tflite", feed)
    assert np.abs(got - tiny_models.run_onnx(onnx_model("residual"), feed)[0]).max() < FP32_ATOL


def build_detector() -> "onnx.ModelProto":
    """A one-scale detector's shape: strided conv backbone, nearest 2x upsample, concat, a 1x1 head
    reshaped by a computed shape (Shape -> Gather -> Concat), transposed, split into boxes and
    class scores, each through a sigmoid."""
    rng = np.random.default_rng(3)
    nodes: list = []
    inits: list = []

    def node(op: str, inputs: list[str], output: str, **attrs) -> str:
        nodes.append(helper.make_node(op, inputs, [output], name=output, **attrs))
        return output

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(value, name))
        return name

    def conv(x: str, name: str, cin: int, cout: int, k: int, stride: int, act: str | None = "silu") -> str:
        w = const(f"{name}.w", ((rng.random((cout, cin, k, k), dtype=np.float32) - 0.5) * 1.0))
        b = const(f"{name}.b", ((rng.random(cout, dtype=np.float32) - 0.5) * 0.4))
        y = node("Conv", [x, w, b], name, pads=[k // 2] * 4, strides=[stride, stride])
        if act == "silu":
            return node("Mul", [y, node("Sigmoid", [y], f"{name}.sig")], f"{name}.silu")
        return node("LeakyRelu", [y], f"{name}.act", alpha=0.1) if act else y

    c1 = conv("image", "c1", 3, 8, 3, 2)
    c2 = conv(c1, "c2", 8, 16, 3, 2)
    c3 = conv(c2, "c3", 16, 16, 3, 2, act="leaky")
    for name, value in (("roi", np.zeros(0, np.float32)), ("scales", np.array([1, 1, 2, 2], np.float32)),
                        ("zero", np.array(0, np.int64)), ("axis0", np.array([0], np.int64)),
                        ("head_dims", np.array([3, 7, 64], np.int64)), ("flat_shape", np.array([1, -1, 7], np.int64)),
                        ("split_sizes", np.array([4, 3], np.int64)), ("stride_px", np.array(32.0, np.float32))):
        const(name, value)
    up = node("Resize", [c3, "roi", "scales"], "upsample", mode="nearest",
              coordinate_transformation_mode="asymmetric", nearest_mode="floor")
    merged = node("Concat", [up, c2], "merge", axis=1)
    head = conv(merged, "head", 32, 21, 1, 1, act=None)
    batch = node("Unsqueeze", [node("Gather", [node("Shape", ["image"], "in_shape"), "zero"], "batch", axis=0),
                               "axis0"], "batch1")
    shape = node("Concat", [batch, "head_dims"], "head_shape", axis=0)
    anchors = node("Transpose", [node("Reshape", [head, shape], "per_anchor")], "anchors_last", perm=[0, 1, 3, 2])
    flat = node("Reshape", [anchors, "flat_shape"], "flat")
    nodes.append(helper.make_node("Split", [flat, "split_sizes"], ["box_raw", "cls_raw"], name="split", axis=2))
    node("Mul", [node("Sigmoid", ["box_raw"], "box_sig"), "stride_px"], "boxes")
    node("Sigmoid", ["cls_raw"], "scores")
    graph = helper.make_graph(nodes, "detector",
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 32, 32])],
                              [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, 192, 4]),
                               helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 192, 3])],
                              initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", tiny_models.OPSET)])
    model.ir_version = tiny_models.IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model


def test_detector_with_two_outputs(tmp_path):
    path = tmp_path / "detector.onnx"
    onnx.save(build_detector(), str(path))
    rng = np.random.default_rng(1)
    calib = tmp_path / "calib.npz"
    np.savez(calib, image=rng.random((40, 3, 32, 32), dtype=np.float32))
    out = tmp_path / "out"
    result = edgeopt.compress(path, target="tflite", calib=calib, output=out, **FAST)
    (artifact,) = result.artifacts
    assert artifact["ops"]["full_integer"], artifact["ops"]
    assert "RESIZE_NEAREST_NEIGHBOR" in artifact["ops"]["counts"]
    assert artifact["baseline_fidelity"]["cosine"] >= DETECTOR_FP32_MIN_COSINE
    assert artifact["fidelity"]["cosine"] >= INT8_MIN_COSINE
    feed = {"image": np.random.default_rng(2).random((VAL, 3, 32, 32), dtype=np.float32)}
    expected = tiny_models.run_onnx(path, feed)
    got = _tflite_all(out / "detector_int8.tflite", _nhwc(feed))
    assert [o.shape for o in got] == [o.shape for o in expected] == [(VAL, 192, 4), (VAL, 192, 3)]
    for ref, out_ in zip(expected, got):
        assert tiny_models.cosine(out_, ref) >= INT8_MIN_COSINE


def test_model_exported_by_torch_onnx(tmp_path):
    """ONNX files come from exporters: torch.onnx (dynamo) writes opset-18 graphs."""
    import torch

    pytest.importorskip("onnxscript")
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, stride=2, padding=1), torch.nn.BatchNorm2d(8), torch.nn.Hardswish(),
        torch.nn.Conv2d(8, 8, 3, padding=1, groups=8), torch.nn.ReLU6(), torch.nn.MaxPool2d(2, ceil_mode=True),
        torch.nn.Upsample(scale_factor=2, mode="bilinear"), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
        torch.nn.Linear(8, 4), torch.nn.Softmax(dim=1)).eval()
    path = tmp_path / "net.onnx"
    torch.onnx.export(net, (torch.zeros(1, 3, 16, 16),), str(path), dynamo=True, input_names=["image"],
                      output_names=["probs"], verbose=False)
    calib = tmp_path / "calib.npz"
    np.savez(calib, image=np.random.default_rng(0).random((24, 3, 16, 16), dtype=np.float32))
    result = edgeopt.compress(path, target="tflite", calib=calib, output=tmp_path / "out", **FAST)
    (artifact,) = result.artifacts
    assert artifact["baseline_fidelity"]["max_abs_err"] < FP32_ATOL
    assert artifact["fidelity"]["cosine"] >= INT8_MIN_COSINE


def _nms_model(path: Path) -> None:
    nodes = [helper.make_node("Relu", ["scores"], ["s"], name="relu"),
             helper.make_node("NonMaxSuppression", ["boxes", "s", "max_out"], ["picked"], name="nms"),
             helper.make_node("NonZero", ["s"], ["nz"], name="nonzero")]
    graph = helper.make_graph(nodes, "nms", [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, 10, 4]),
                                             helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 1, 10])],
                              [helper.make_tensor_value_info("picked", TensorProto.INT64, [None, 3]),
                               helper.make_tensor_value_info("nz", TensorProto.INT64, [3, None])],
                              initializer=[numpy_helper.from_array(np.array([5], np.int64), "max_out")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", tiny_models.OPSET)])
    model.ir_version = tiny_models.IR_VERSION
    onnx.save(model, str(path))


def test_unsupported_ops_exit_4_naming_ops_and_nodes_with_nothing_written(tmp_path):
    click_testing = pytest.importorskip("click.testing")
    from edgeopt.cli import main

    _nms_model(tmp_path / "nms.onnx")
    out = tmp_path / "out"
    result = click_testing.CliRunner().invoke(main, ["compress", str(tmp_path / "nms.onnx"), "--target", "tflite",
                                                     "--precision", "fp32", "-o", str(out)])
    assert result.exit_code == ConversionError.exit_code == 4, result.output
    text = " ".join(result.output.split())
    assert "NonMaxSuppression (node 'nms')" in text and "NonZero (node 'nonzero')" in text
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
