"""Tensor names onnxruntime's quantizer cannot collide with, and short enough to stay cheap."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
quantization = pytest.importorskip("onnxruntime.quantization")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from edgeopt.exporters import onnx_names  # noqa: E402


def test_a_name_that_another_extends_with_digits_is_at_risk():
    assert onnx_names.at_risk({"conv;conv", "conv;conv2", "x_1", "x", "c1", "c12", "7"}) == {"conv;conv", "c1"}


def _tf2onnx_style(tmp_path, long_names: bool = False):
    """Two Convs sharing the bias 'k;k', one weight 'k;k1' and one output 'k;k2', as tf2onnx names
    joined TF scopes (basic-pitch's CQT convs). onnxruntime gives each Conv its own copy of a
    shared bias, named after the largest numbered initializer: 'k;k2', and that copy's
    DequantizeLinear then feeds the first Conv's consumers."""
    rng = np.random.default_rng(0)
    stem = ("model/cqt/" * 12 if long_names else "") + "k;k"
    weights = [numpy_helper.from_array(rng.normal(size=(4, 1, 1, 8)).astype(np.float32), name)
               for name in ("w", stem + "1")]
    bias = numpy_helper.from_array(rng.normal(size=(4,)).astype(np.float32), stem)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", stem], [stem + "2"], name="conv_real"),
         helper.make_node("Conv", ["x", stem + "1", stem], ["imag"], name="conv_imag"),
         helper.make_node("Neg", [stem + "2"], ["y"], name="neg")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 1, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 1, 25]),
         helper.make_tensor_value_info("imag", TensorProto.FLOAT, [1, 4, 1, 25])], [*weights, bias])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    path = tmp_path / "float.onnx"
    onnx.save(model, str(path))
    return model, path


def _quantize(src, out):
    rows = iter([{"x": np.random.default_rng(i).normal(size=(1, 1, 1, 32)).astype(np.float32)} for i in range(8)])

    class Reader(quantization.CalibrationDataReader):
        def get_next(self):
            return next(rows, None)

    quantization.quantize_static(str(src), str(out), Reader(), quant_format=quantization.QuantFormat.QDQ,
                                 per_channel=True)


X = np.random.default_rng(3).normal(size=(1, 1, 1, 32)).astype(np.float32)


def _matches_float(path, float_path) -> bool:
    """Every output within 10% of the float model's largest value, on one input."""
    try:
        got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": X})
    except Exception:  # onnxruntime refuses the graph
        return False
    want = ort.InferenceSession(str(float_path), providers=["CPUExecutionProvider"]).run(None, {"x": X})
    return all(g.shape == w.shape and np.abs(g - w).max() < 0.1 * np.abs(w).max() for g, w in zip(got, want))


def test_untidy_names_break_the_int8_model_and_tidy_ones_do_not(tmp_path):
    model, path = _tf2onnx_style(tmp_path)
    _quantize(path, tmp_path / "untidy.onnx")
    if _matches_float(tmp_path / "untidy.onnx", path):
        pytest.skip("this onnxruntime's quantizer no longer derives colliding names")
    assert onnx_names.tidy(model) == 1  # 'k;k', which 'k;k1' and 'k;k2' extend
    onnx.save(model, str(tmp_path / "tidy_float.onnx"))
    _quantize(tmp_path / "tidy_float.onnx", tmp_path / "tidy.onnx")
    assert _matches_float(tmp_path / "tidy.onnx", path)


def test_long_names_are_cut_and_inputs_outputs_and_node_names_are_kept(tmp_path):
    model, _ = _tf2onnx_style(tmp_path, long_names=True)
    before = model.SerializeToString()
    assert onnx_names.tidy(model) == 3  # the long bias, weight and Conv output
    names = {n for node in model.graph.node for n in (*node.input, *node.output)}
    assert max(len(n) for n in names) <= onnx_names.KEPT_TAIL + 4
    assert [n.name for n in model.graph.node] == ["conv_real", "conv_imag", "neg"]
    assert [v.name for v in model.graph.input] == ["x"] and [v.name for v in model.graph.output] == ["y", "imag"]
    assert len(model.SerializeToString()) < len(before)
    onnx.checker.check_model(model)
