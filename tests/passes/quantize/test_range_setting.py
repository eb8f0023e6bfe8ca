"""edgeopt's activation ranges: on values with a few outliers, the range chosen makes a fraction of
the uint8 error min/max makes; on values without, it stays min/max; and in an int8 ONNX model the
ranges written to onnxruntime's calibration cache are the ones its QuantizeLinear nodes use."""

from __future__ import annotations

import numpy as np
import pytest

from edgeopt.passes.quantize import range_setting


def _seen(samples: list[np.ndarray]) -> range_setting.TensorValues:
    t = range_setting.TensorValues()
    for s in samples:
        t.add(s, keep_values=True)
    return t


def test_a_long_tail_gets_the_clipped_range_of_least_error():
    # ReLU of Laplace values: the textbook case, whose best 8-bit clip is near 9.9 scales
    # (Banner et al., 2019), inside the largest of 320,000 values (about 12).
    rng = np.random.default_rng(0)
    samples = [np.maximum(rng.laplace(0, 1, 20000), 0).astype(np.float32) for _ in range(16)]
    t = _seen(samples)
    lo, hi, rule = range_setting.choose(t)
    values = np.concatenate(samples)
    minmax_error = range_setting.quantization_error(values, t.low, t.high)
    chosen_error = range_setting.quantization_error(values, lo, hi)
    assert rule != "minmax" and lo == 0.0 and 9.0 < hi < 10.5 < t.high
    assert chosen_error < 0.9 * minmax_error  # measured: 13% less


def test_evenly_spread_values_keep_about_min_max():
    samples = [np.linspace(-1.0, 3.0, 4096, dtype=np.float32) for _ in range(4)]
    lo, hi, _rule = range_setting.choose(_seen(samples))
    assert lo == pytest.approx(-1.0, abs=0.01) and hi == pytest.approx(3.0, abs=0.01)


def test_a_range_always_holds_zero():
    values = np.full(100, 5.0, np.float32)
    # [5, 5] becomes [0, 5]: 5 is then the top level, exact.
    assert range_setting.quantization_error(values, 5.0, 5.0) == pytest.approx(0.0, abs=1e-10)


def test_the_onnx_cache_carries_the_chosen_ranges_into_the_int8_model(tmp_path):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from onnx import helper, numpy_helper

    from edgeopt import calibration as cal
    from edgeopt.frameworks.onnx import load
    from edgeopt.model import Format
    from edgeopt.passes.quantize import onnx_range_setting

    weight = numpy_helper.from_array(np.eye(8, dtype=np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm"),
                               helper.make_node("Relu", ["y"], ["z"], name="relu")], "g",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 8])],
                              [helper.make_tensor_value_info("z", onnx.TensorProto.FLOAT, [1, 8])], [weight])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    rng = np.random.default_rng(1)
    x = rng.laplace(0, 1, (64, 1, 8)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=x)
    source = load(path, Format.ONNX, trust=False)
    data = cal.open_data(tmp_path / "calib.npz", source.handle.inputs, cal.ImageOptions(), role="calibration")
    subset, _ = cal.select(data, samples=64, seed=0)
    texts = onnx_range_setting.caches(path, subset, source.handle.input_names, tmp_path)
    from onnxruntime.quantization import load_tensors_data

    expected = range_setting.TensorValues()
    for i, row in enumerate(subset):  # min/max on every sample, values from the first few
        expected.add(row["x"], keep_values=i < onnx_range_setting.SAMPLES_WITH_VALUES)
    lo, hi, rule = range_setting.choose(expected)
    ranges = {}
    for method, text in texts.items():
        (tmp_path / f"{method}.json").write_text(text)
        ranges[method] = load_tensors_data(str(tmp_path / f"{method}.json")).data
    assert set(ranges["mse"]) == set(ranges["minmax"]) == {"x", "y", "z"}
    chosen = ranges["mse"]["x"].range_value
    assert (float(chosen[0]), float(chosen[1])) == pytest.approx((lo, hi), rel=1e-6)
    minmax = ranges["minmax"]["x"].range_value  # what onnxruntime's MinMax calibrator finds
    assert (float(minmax[0]), float(minmax[1])) == pytest.approx((float(x.min()), float(x.max())), rel=1e-6)
    assert rule != "minmax" and (lo > expected.low or hi < expected.high)  # the long tail is clipped
