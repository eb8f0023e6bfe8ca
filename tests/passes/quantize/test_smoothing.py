"""SmoothQuant-style migration: the float graph computes the same, and an int8 MatMul that reads a
layer norm's output with outlier channels loses far less once they are migrated into its weight."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
quantization = pytest.importorskip("onnxruntime.quantization")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from edgeopt.passes.quantize import smoothing  # noqa: E402

TOKENS, CHANNELS, OUT = 16, 32, 24
OUTLIERS = (3, 17)  # channels whose layer-norm scale is 60x the others', as in trained transformers


def _norm_then_matmul(decomposed: bool, seed: int = 0):
    """x -> layer norm (LayerNormalization, or its exported tail Mul(gamma) -> Add(beta) after a
    plain normalization) -> MatMul(W) -> Add(bias) -> y."""
    rng = np.random.default_rng(seed)
    gamma = rng.uniform(0.5, 1.5, CHANNELS).astype(np.float32)
    gamma[list(OUTLIERS)] *= 60
    beta = rng.normal(0, 0.1, CHANNELS).astype(np.float32)
    w = rng.normal(0, 0.2, (CHANNELS, OUT)).astype(np.float32)
    bias = rng.normal(0, 0.1, OUT).astype(np.float32)
    inits = [numpy_helper.from_array(a, n) for a, n in ((gamma, "gamma"), (beta, "beta"), (w, "w"), (bias, "bias"))]
    if decomposed:
        inits.append(numpy_helper.from_array(np.array([-1], np.int64), "axes"))
        nodes = [helper.make_node("ReduceMean", ["x"], ["mean"], name="mean", axes=[-1]),
                 helper.make_node("Sub", ["x", "mean"], ["centred"], name="centre"),
                 helper.make_node("Mul", ["centred", "gamma"], ["scaled"], name="scale"),
                 helper.make_node("Add", ["scaled", "beta"], ["normed"], name="shift")]
        opset = 13
    else:
        nodes = [helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["normed"], name="norm", axis=-1)]
        opset = 17
    nodes += [helper.make_node("MatMul", ["normed", "w"], ["mm"], name="fc"),
              helper.make_node("Add", ["mm", "bias"], ["y"], name="fc_bias")]
    graph = helper.make_graph(nodes, "block", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                             [1, TOKENS, CHANNELS])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, TOKENS, OUT])],
                              initializer=[t for t in inits if decomposed or t.name != "axes"])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def _run(model, x):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def _smoothed(model, rows):
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    found = smoothing.groups(onnx, copy)
    names = [g.tensor for g in found]
    session = ort.InferenceSession(_tapped(copy, names).SerializeToString(), providers=["CPUExecutionProvider"])
    maxima = smoothing.channel_maxima(lambda row: session.run(names, row), rows, names)
    return copy, found, smoothing.smooth(onnx, copy, found, maxima)


def _tapped(model, names):
    tapped = onnx.ModelProto()
    tapped.CopyFrom(model)
    tapped.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names)
    return tapped


def _int8(model, rows, path):
    """onnxruntime's static QDQ int8 of the MatMul (per-channel int8 weights, uint8 activations,
    min/max); its output stays float, so the error measured is that of the MatMul's two inputs."""
    class Reader(quantization.CalibrationDataReader):
        def __init__(self):
            self._rows = iter(rows)

        def get_next(self):
            return next(self._rows, None)

    float_path = path.with_suffix(".float.onnx")
    onnx.save(model, str(float_path))
    quantization.quantize_static(str(float_path), str(path), Reader(), quant_format=quantization.QuantFormat.QDQ,
                                 per_channel=True, activation_type=quantization.QuantType.QUInt8,
                                 weight_type=quantization.QuantType.QInt8, op_types_to_quantize=["MatMul"],
                                 extra_options={"OpTypesToExcludeOutputQuantization": ["MatMul"]})
    return onnx.load(str(path))


@pytest.mark.parametrize("decomposed", [False, True])
def test_smoothing_keeps_the_float_model_and_cuts_the_int8_error(decomposed, tmp_path):
    original = _norm_then_matmul(decomposed)
    rng = np.random.default_rng(1)
    rows = [{"x": rng.normal(0, 1, (1, TOKENS, CHANNELS)).astype(np.float32)} for _ in range(16)]
    smoothed, found, done = _smoothed(original, rows)
    assert [g.tensor for g in found] == ["normed"] and done == ["normed"]
    assert found[0].affine == (["gamma", "beta"])
    x = rng.normal(0, 1, (1, TOKENS, CHANNELS)).astype(np.float32)
    want = _run(original, x)
    np.testing.assert_allclose(_run(smoothed, x), want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    # The activation's channel spread (60x at the outliers) is about its square root afterwards.
    tapped = ort.InferenceSession(_tapped(smoothed, ["normed"]).SerializeToString(), providers=["CPUExecutionProvider"])
    maxima = smoothing.channel_maxima(lambda row: tapped.run(["normed"], row), rows, ["normed"])["normed"]
    assert maxima.max() / np.median(maxima) < 20
    before = np.abs(_run(_int8(original, rows, tmp_path / "before.onnx"), x) - want).mean()
    after = np.abs(_run(_int8(smoothed, rows, tmp_path / "after.onnx"), x) - want).mean()
    # Measured 3.4-3.6x less output error with onnxruntime's int8 on both forms of the norm.
    assert after < before / 2.5, (before, after)


def test_activations_without_outliers_or_with_other_readers_are_left_alone():
    rng = np.random.default_rng(2)
    rows = [{"x": rng.normal(0, 1, (1, TOKENS, CHANNELS)).astype(np.float32)} for _ in range(4)]
    plain = _norm_then_matmul(False)
    gamma = next(t for t in plain.graph.initializer if t.name == "gamma")
    gamma.CopyFrom(numpy_helper.from_array(np.ones(CHANNELS, np.float32), "gamma"))
    _, found, done = _smoothed(plain, rows)
    assert len(found) == 1 and done == []  # no outlier channel: nothing to migrate
    shared = _norm_then_matmul(False)
    shared.graph.output.append(helper.make_tensor_value_info("normed", TensorProto.FLOAT, None))  # read outside
    assert smoothing.groups(onnx, shared) == []
    residual = _norm_then_matmul(True)
    residual.graph.node.append(helper.make_node("Add", ["normed", "x"], ["skip"], name="residual"))
    residual.graph.output.append(helper.make_tensor_value_info("skip", TensorProto.FLOAT, None))
    assert smoothing.groups(onnx, residual) == []


def test_the_onnx_pass_picks_the_smoothed_graph_where_it_is_closer(tmp_path):
    """Default settings: the smoothed graph is a candidate of the plain int8 model of any graph
    with outlier activations to migrate, and is kept where it measures closer to float."""
    from dataclasses import replace

    import tiny_models
    from edgeopt.frameworks import onnx as onnx_loader
    from edgeopt.model import Format
    from edgeopt.passes.quantize import convert, quantize
    from edgeopt.passes.quantize.config import DEFAULT_QUANT

    path = tmp_path / "block.onnx"
    onnx.save(_norm_then_matmul(False), str(path))
    source = onnx_loader.load(path, Format.ONNX)
    rng = np.random.default_rng(3)
    np.savez(tmp_path / "calib.npz", x=rng.normal(0, 1, (48, TOKENS, CHANNELS)).astype(np.float32))
    calib = tiny_models.calib_subset(tmp_path / "calib.npz", source.handle.inputs)
    floating = convert("onnx->onnx", source, tmp_path / "float.onnx")
    feed = {"x": rng.normal(0, 1, (20, TOKENS, CHANNELS)).astype(np.float32)}
    want = np.concatenate([_run(onnx.load(str(path)), feed["x"][i:i + 1]) for i in range(20)])
    errors = {}
    for on in (False, True):
        plain = quantize(floating, tmp_path / f"int8_{on}.onnx", precision="int8", calib=calib,
                         quant=replace(DEFAULT_QUANT, smoothing=on))
        got = np.concatenate([_run(onnx.load(str(plain.path)), feed["x"][i:i + 1]) for i in range(20)])
        errors[on] = float(np.abs(got - want).mean())
        assert any("SmoothQuant" in note for note in plain.notes) == on, plain.notes
    # Measured: 0.47 mean output error without the candidate, 0.31 with it (output quantization
    # included, which smoothing leaves as it is).
    assert errors[True] < errors[False] / 1.3, errors
