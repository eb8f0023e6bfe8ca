"""Layers of an int8 ONNX model put back in float by editing it: the same model onnxruntime's
quantizer writes with ``nodes_to_exclude``, without calibrating again."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import tiny_models  # noqa: E402
from edgeopt.passes.quantize import onnx_float_edit  # noqa: E402
from edgeopt.passes.quantize.config import DEFAULT_QUANT  # noqa: E402
from edgeopt.frameworks import onnx as onnx_loader  # noqa: E402
from edgeopt.model import Format  # noqa: E402
from edgeopt.exporters.base import FloatArtifact  # noqa: E402
from edgeopt.passes.quantize import convert, quantize  # noqa: E402


def _reads_float_weights(path) -> dict[str, bool]:
    model = onnx.load(str(path))
    produced_by = {o: n.op_type for n in model.graph.node for o in n.output}
    return {n.name: produced_by.get(n.input[1]) != "DequantizeLinear" for n in model.graph.node if n.op_type == "Conv"}


def _writes_the_output(path) -> str:
    model = onnx.load(str(path))
    produced_by = {o: n for n in model.graph.node for o in n.output}
    node = produced_by[model.graph.output[0].name]
    while node.op_type in ("QuantizeLinear", "DequantizeLinear"):
        node = produced_by[node.input[0]]
    return node.name


@pytest.mark.parametrize("which", ["first conv", "the op writing the output"])
def test_an_edit_equals_quantizing_with_the_layer_excluded(which, onnx_model, nchw_calib, tmp_path):
    source = onnx_loader.load(onnx_model("residual"), Format.ONNX)
    calib = tiny_models.calib_subset(nchw_calib("residual"), source.handle.inputs)
    quant = replace(DEFAULT_QUANT, per_channel=False)  # one quantization each way, no granularity choice
    floating = convert("onnx->onnx", source, tmp_path / "float.onnx")
    plain = quantize(floating, tmp_path / "plain.onnx", precision="int8", calib=calib, quant=quant)
    convs = list(_reads_float_weights(plain.path))
    assert convs and not any(_reads_float_weights(plain.path).values())
    keep = (convs[0],) if which == "first conv" else (_writes_the_output(plain.path),)
    edited = onnx_float_edit.keep_in_float(floating, plain.path, keep, tmp_path / "edited.onnx")
    excluded = quantize(floating, tmp_path / "excluded.onnx", precision="int8", calib=calib,
                                       quant=replace(quant, keep_float=keep))
    assert _reads_float_weights(edited.path) == {name: name in keep for name in convs}
    # The quantizers on the way out go with the node that wrote them. nodes_to_exclude leaves the
    # Gemm's input quantized when the Flatten before it is quantized; the edit does not, so it
    # has fewer quantizers there, never more.
    count = lambda path: sum(n.op_type == "QuantizeLinear" for n in onnx.load(str(path)).graph.node)  # noqa: E731
    assert count(edited.path) == count(excluded.path) - (which != "first conv")
    onnx.checker.check_model(onnx.load(str(edited.path)))
    feed = tiny_models.random_feed("residual", 16, seed=7)
    got, want = tiny_models.run_onnx(edited.path, feed)[0], tiny_models.run_onnx(excluded.path, feed)[0]
    float_out, int8_out = source.predict(feed)[0], tiny_models.run_onnx(plain.path, feed)[0]
    # The same graph as nodes_to_exclude's (or one quantizer fewer): as close to float, and closer
    # than the all-int8 model.
    if which == "first conv":
        np.testing.assert_allclose(got, want, atol=1e-5)
    assert np.abs(got - float_out).mean() <= np.abs(want - float_out).mean() + 1e-6
    assert np.abs(got - float_out).mean() < np.abs(int8_out - float_out).mean()
    # No dangling quantizers: every Q/DQ node's output is read.
    model = onnx.load(str(edited.path))
    read = {name for node in model.graph.node for name in node.input} | {v.name for v in model.graph.output}
    assert all(o in read for n in model.graph.node if "QuantizeLinear" in n.op_type for o in n.output)


def test_without_a_prepared_graph_there_is_no_edit(tmp_path):
    unknown = FloatArtifact("onnx->onnx", None, tmp_path / "float.onnx")  # never quantized
    assert onnx_float_edit.keep_in_float(unknown, tmp_path / "none.onnx", ("x",), tmp_path / "out.onnx") is None


def test_activations_the_quantizer_removed_come_back_with_their_reader(tmp_path):
    """Conv -> Clip(0, 6) -> Conv: the quantizer drops the Clip (its ranges clip instead); with
    every layer put back in float the model computes what the float model does, Clip included."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(0, 2.0, (8, 3, 3, 3)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.normal(size=(4, 8, 1, 1)).astype(np.float32), "w2"),
             numpy_helper.from_array(np.array(0.0, np.float32), "lo"), numpy_helper.from_array(np.array(6.0, np.float32), "hi")]
    graph = helper.make_graph(
        [helper.make_node("Conv", ["image", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
         helper.make_node("Clip", ["c1", "lo", "hi"], ["r1"], name="relu6"),
         helper.make_node("Conv", ["r1", "w2"], ["logits"], name="conv2")], "g",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 4, 8, 8])], inits)
    path = tmp_path / "clip.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    source = onnx_loader.load(path, Format.ONNX)
    data = tmp_path / "calib.npz"
    np.savez(data, image=rng.uniform(-1, 1, (16, 3, 8, 8)).astype(np.float32))
    calib = tiny_models.calib_subset(data, source.handle.inputs)
    floating = convert("onnx->onnx", source, tmp_path / "float.onnx")
    plain = quantize(floating, tmp_path / "plain.onnx", precision="int8", calib=calib,
                                    quant=replace(DEFAULT_QUANT, per_channel=False))
    if "relu6" in {n.name for n in onnx.load(str(plain.path)).graph.node}:
        pytest.skip("this onnxruntime keeps the Clip after a quantized Conv")
    edited = onnx_float_edit.keep_in_float(floating, plain.path, ("conv1", "conv2"), tmp_path / "edited.onnx")
    feed = {"image": rng.uniform(-1, 1, (4, 3, 8, 8)).astype(np.float32)}
    got = tiny_models.run_onnx(edited.path, feed)[0]
    np.testing.assert_allclose(got, source.predict(feed)[0], atol=1e-4)
