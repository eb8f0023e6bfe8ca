"""Properties of the quantization numerics.

edgeopt computes one thing itself: the float <-> integer mapping at an int8 artifact's inputs and
outputs (``quantize``/``dequantize`` in targets/remote_runner.py, used by the LiteRT session here
and by the remote runner on devices). Those are tested with hypothesis over dtypes, scales, zero
points and values. Scales and zero points themselves come from the converters (TFLite, ONNX
Runtime); what edgeopt ships is checked on real artifacts of a model with an all-zero and a
constant channel, calibrated on constant (all-zero) data.
"""

from __future__ import annotations

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402

from edgeopt.targets.remote_runner import dequantize, quantize  # noqa: E402

DTYPES = [np.int8, np.uint8, np.int16]


@st.composite
def params(draw):
    """(dtype, scale, zero point) as a quantized tensor may declare them."""
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    info = np.iinfo(dtype)
    scale = draw(st.floats(1e-6, 1e3, allow_nan=False, allow_infinity=False))
    zero = 0 if dtype == np.int16 else draw(st.integers(int(info.min), int(info.max)))  # int16 is symmetric
    return dtype, scale, zero


def _range(dtype: np.dtype, scale: float, zero: int) -> tuple[float, float]:
    info = np.iinfo(dtype)
    return (int(info.min) - zero) * scale, (int(info.max) - zero) * scale


def _values(draw, low: float, high: float, n: int = 32) -> np.ndarray:
    return draw(hnp.arrays(np.float32, n, elements=st.floats(low, high, width=32)))


@given(params(), st.data())
def test_round_trip_is_within_half_a_step_inside_the_range(p, data):
    dtype, scale, zero = p
    low, high = _range(dtype, scale, zero)
    x = _values(data.draw, np.float32(low), np.float32(high))
    q = quantize(x, dtype, scale, zero)
    assert q.dtype == dtype
    error = np.abs(dequantize(q, scale, zero).astype(np.float64) - x.astype(np.float64))
    # Half a step, plus float32 rounding of x / scale and of the product on the way back.
    slack = 4 * np.finfo(np.float32).eps * np.maximum(np.abs(x), scale) * (1 + np.abs(x) / scale)
    assert np.all(error <= scale / 2 + slack)


@given(params(), st.data())
def test_values_outside_the_range_saturate(p, data):
    dtype, scale, zero = p
    info = np.iinfo(dtype)
    low, high = _range(dtype, scale, zero)
    above = _values(data.draw, np.float32(high + scale), np.float32(high + scale) * 4 + 1e6)
    below = _values(data.draw, -(abs(np.float32(low)) * 4 + 1e6), np.float32(low - scale))
    assert np.all(quantize(above, dtype, scale, zero) == info.max)
    assert np.all(quantize(below, dtype, scale, zero) == info.min)


@given(params())
def test_zero_is_exactly_representable(p):
    dtype, scale, zero = p
    assert quantize(np.zeros(3, np.float32), dtype, scale, zero).tolist() == [zero] * 3
    assert dequantize(np.full(3, zero, dtype), scale, zero).tolist() == [0.0] * 3


@given(params())
def test_every_integer_survives_dequantize_then_quantize(p):
    dtype, scale, zero = p
    info = np.iinfo(dtype)
    q = np.arange(int(info.min), int(info.max) + 1).astype(dtype)
    assert np.array_equal(quantize(dequantize(q, scale, zero), dtype, scale, zero), q)


@given(params(), st.data())
def test_quantize_is_idempotent_and_monotonic(p, data):
    dtype, scale, zero = p
    low, high = _range(dtype, scale, zero)
    x = np.sort(_values(data.draw, np.float32(low) * 2, np.float32(high) * 2))
    q = quantize(x, dtype, scale, zero)
    assert np.array_equal(quantize(dequantize(q, scale, zero), dtype, scale, zero), q)
    assert np.all(np.diff(q.astype(np.int64)) >= 0)


@given(hnp.arrays(np.float32, st.integers(1, 16), elements=st.floats(-1e6, 1e6, width=32)))
def test_float_tensors_pass_through(x):
    assert np.array_equal(quantize(x, np.float32, 0.5, 3), x)
    assert np.array_equal(dequantize(x, 0.5, 3), x)
    assert np.array_equal(quantize(x, np.int8, 0.0, 0), x.astype(np.int8))  # scale 0: not quantized


@given(params(), st.integers(1, 6), st.data())
def test_per_channel_equals_per_slice(p, channels, data):
    """Dequantizing channel by channel with each channel's own parameters equals one broadcast
    over the channel axis: per-channel parameters are per-slice parameters."""
    dtype, _, _ = p
    info = np.iinfo(dtype)
    scales = np.array(data.draw(st.lists(st.floats(1e-4, 10.0), min_size=channels, max_size=channels)), np.float32)
    q = data.draw(hnp.arrays(dtype, (channels, 5), elements=st.integers(int(info.min), int(info.max))))
    whole = (q.astype(np.float32) - 0) * scales[:, None]
    slices = np.stack([dequantize(q[c], float(scales[c]), 0) for c in range(channels)])
    assert np.array_equal(whole, slices)


# --- scales and zero points in the artifacts edgeopt writes --------------------------------------

def _degenerate_keras(path):
    """Conv with an all-zero output channel and a constant one, then a dense layer."""
    keras = pytest.importorskip("keras")
    inputs = keras.Input((8, 8, 1), name="image")
    conv = keras.layers.Conv2D(4, 3, padding="same", name="conv")
    x = keras.layers.GlobalAveragePooling2D(name="gap")(conv(inputs))
    model = keras.Model(inputs, keras.layers.Dense(3, name="probs")(x))
    kernel, bias = conv.get_weights()
    kernel[..., 0] = 0.0
    kernel[..., 1] = 0.25
    conv.set_weights([kernel, bias])
    model.save(path)
    return path


def test_tflite_int8_scales_of_constant_and_zero_tensors(tmp_path):
    pytest.importorskip("tensorflow")
    interpreter = pytest.importorskip("ai_edge_litert.interpreter")
    import edgeopt
    from edgeopt.tflite_file import check_tflite

    model = _degenerate_keras(tmp_path / "degenerate.h5")
    np.savez(tmp_path / "zeros.npz", image=np.zeros((8, 8, 8, 1), np.float32))  # constant calibration data
    result = edgeopt.compress(model, calib=tmp_path / "zeros.npz", validate=False, output=tmp_path / "out")
    artifact = result.files["degenerate_int8.tflite"]
    tensors = check_tflite(artifact)
    quantized = [t for t in tensors if t.scales]
    assert quantized
    for t in quantized:  # check_tflite has also checked each zero point against its type's range
        assert all(np.isfinite(s) and s > 0 for s in t.scales), (t.name, t.scales)
    interp = interpreter.Interpreter(model_path=str(artifact))
    interp.allocate_tensors()
    weights = [t for t in quantized if t.dtype == "int8" and t.buffer_bytes]
    assert weights
    for t in weights:  # symmetric int8 weights: zero point 0, and -128 never used
        assert set(t.zero_points) == {0}, t.name
        assert interp.get_tensor(t.index).min() >= -127, t.name


def test_onnx_int8_scales_of_constant_and_zero_tensors(tmp_path):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper

    import edgeopt

    w = np.random.default_rng(0).normal(size=(4, 1, 3, 3)).astype(np.float32)
    w[0] = 0.0
    w[1] = 0.25
    graph = helper.make_graph(
        [helper.make_node("Conv", ["image", "w"], ["y"], pads=[1, 1, 1, 1], name="conv")], "degenerate",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [None, 1, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4, 8, 8])],
        [numpy_helper.from_array(w, "w")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "degenerate.onnx"))
    np.savez(tmp_path / "zeros.npz", image=np.zeros((8, 1, 8, 8), np.float32))
    result = edgeopt.compress(tmp_path / "degenerate.onnx", target="onnx", calib=tmp_path / "zeros.npz",
                              validate=False, output=tmp_path / "out")
    model = onnx.load(str(result.files["degenerate_int8.onnx"]))
    init = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    scales = {n: v for n, v in init.items() if n.endswith("_scale")}
    assert scales
    for name, value in scales.items():
        assert np.all(np.isfinite(value)) and np.all(value > 0), (name, value)
    weights = [v for v in init.values() if v.dtype == np.int8 and v.ndim == 4]
    assert weights
    for value in weights:
        assert value.min() >= -127
