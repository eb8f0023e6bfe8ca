"""Keras -> TFLite: each precision, input names kept, and the int8 fallback path."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tensorflow")
litert = pytest.importorskip("ai_edge_litert.interpreter")

from conftest import (assert_full_integer, build_model, keras_predict, mean_cosine,  # noqa: E402
                      random_inputs, run_tflite, tflite_ops)
from edgeopt import calibration as cal  # noqa: E402
from edgeopt.errors import ConversionError  # noqa: E402
from edgeopt.formats import detect_format  # noqa: E402
from edgeopt.frameworks import keras as kf  # noqa: E402
from edgeopt.model import Format  # noqa: E402
from edgeopt.passes.quantize import export  # noqa: E402


@pytest.fixture(scope="module")
def sources(saved_model, calib_file):
    """name -> (loaded model, calibration subset of 40 samples)."""
    out = {}
    for name in ("conv", "two_input"):
        path = saved_model(name)
        loaded = kf.load(path, detect_format(path))
        data = cal.open_data(calib_file(name), loaded.handle.inputs)
        subset, _ = cal.select(data, samples=40, seed=0)
        out[name] = (loaded, subset)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("name", ["conv", "two_input"])
def test_fp32_matches_keras_and_keeps_input_names(sources, tmp_path, name):
    loaded, _ = sources[name]
    result = export("keras->tflite", loaded, tmp_path / "m.tflite", precision="fp32")
    assert result.precision == "fp32" and result.notes == [] and not result.float_fallback
    assert detect_format(result.path) is Format.TFLITE

    interp = litert.Interpreter(model_path=str(result.path))
    assert [d["name"] for d in interp.get_input_details()] == loaded.handle.input_names
    assert [tuple(d["shape"]) for d in interp.get_input_details()] == \
        [(1, *t.shape[1:]) for t in loaded.handle.inputs]
    feed = {k: v[:1] for k, v in random_inputs(loaded.native, 1, seed=9).items()}
    np.testing.assert_allclose(run_tflite(result.path, feed), keras_predict(build_model(name), feed), atol=1e-5)


@pytest.mark.slow
def test_fp16_stores_half_weights(sources, tmp_path):
    loaded, _ = sources["conv"]
    result = export("keras->tflite", loaded, tmp_path / "m.tflite", precision="fp16")
    assert result.precision == "fp16"
    ops = tflite_ops(result.path)
    dequantized = [op for op in ops if op[0] == "DEQUANTIZE"]
    assert dequantized and all(op[1] == [np.float16] and op[2] == [np.float32] for op in dequantized)
    feed = random_inputs(loaded.native, 1, seed=4)
    assert mean_cosine(run_tflite(result.path, feed), keras_predict(build_model("conv"), feed)) > 0.9999


@pytest.mark.slow
def test_int8_without_calibration_is_dynamic_range(tmp_path):
    keras = pytest.importorskip("keras")
    from pathlib import Path

    keras.utils.set_random_seed(0)
    inputs = keras.Input((20,), name="features")
    x = keras.layers.Dense(64, activation="relu", name="wide")(inputs)  # 1280 weights
    outputs = keras.layers.Dense(3, name="narrow")(x)  # 192 weights
    loaded = kf.KerasModel(Path("wide.keras"), Format.KERAS_V3, keras.Model(inputs, outputs))

    result = export("keras->tflite", loaded, tmp_path / "m.tflite", precision="int8")

    assert result.precision == "int8-dynamic"
    wide, narrow = [op for op in tflite_ops(result.path) if op[0] == "FULLY_CONNECTED"]
    assert wide[1][:2] == [np.float32, np.int8]  # float activations, int8 weights
    # The converter leaves weights under 1024 elements in float (its own threshold).
    assert narrow[1][:2] == [np.float32, np.float32]
    feed = {"features": np.random.default_rng(0).random((1, 20), dtype=np.float32)}
    expected = np.asarray(loaded.native(feed["features"], training=False))
    assert mean_cosine(run_tflite(result.path, feed), expected) > 0.99


@pytest.mark.slow
@pytest.mark.parametrize("name", ["conv", "two_input"])
def test_int8_with_calibration_is_full_integer(sources, tmp_path, name):
    loaded, subset = sources[name]
    result = export("keras->tflite", loaded, tmp_path / "m.tflite", precision="int8", calib=subset)
    assert result.precision == "int8" and not result.float_fallback and result.notes == []
    assert_full_integer(result.path)
    feed = random_inputs(loaded.native, 1, seed=11)
    assert mean_cosine(run_tflite(result.path, feed), keras_predict(build_model(name), feed)) >= 0.98


@pytest.mark.slow
def test_int8_io(sources, tmp_path):
    loaded, subset = sources["two_input"]
    result = export("keras->tflite", loaded, tmp_path / "m.tflite", precision="int8", calib=subset, int8_io=True)
    interp = litert.Interpreter(model_path=str(result.path))
    assert [d["dtype"] for d in interp.get_input_details()] == [np.int8, np.int8]
    assert [d["dtype"] for d in interp.get_output_details()] == [np.int8]
    feed = random_inputs(loaded.native, 1, seed=12)
    assert mean_cosine(run_tflite(result.path, feed), keras_predict(build_model("two_input"), feed)) >= 0.98


@pytest.mark.slow
def test_ops_without_int8_kernel_fall_back_to_float(sources, tmp_path, monkeypatch):
    tf = pytest.importorskip("tensorflow")
    loaded, subset = sources["conv"]
    from edgeopt.passes.quantize import tflite as tflite_quant

    real = tflite_quant.run_converter
    attempts = []

    def int8_only_fails(converter):
        attempts.append(list(converter.target_spec.supported_ops))
        if converter.target_spec.supported_ops == [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]:
            raise RuntimeError("'tfl.fancy' op is neither a custom op nor a flex op")
        return real(converter)

    monkeypatch.setattr(tflite_quant, "run_converter", int8_only_fails)
    result = export("keras->tflite", loaded, tmp_path / "m.tflite", precision="int8", calib=subset)
    assert len(attempts) == 2
    assert tf.lite.OpsSet.TFLITE_BUILTINS in attempts[1]
    assert result.float_fallback is True
    assert any("kept in float" in n for n in result.notes)
    assert result.path.stat().st_size > 0


@pytest.fixture(scope="module")
def unsupported():
    """A model with an op TFLite has no kernel for (erfinv), held in memory."""
    keras = pytest.importorskip("keras")
    from pathlib import Path

    inputs = keras.Input((4,), name="x")
    y = keras.layers.Lambda(lambda t: keras.ops.erfinv(t), output_shape=(4,), name="inverse_erf")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2, name="out")(y))
    return kf.KerasModel(Path("erfinv.keras"), Format.KERAS_V3, model)


@pytest.mark.slow
def test_unsupported_op_is_named_in_a_conversion_error(unsupported, tmp_path):
    with pytest.raises(ConversionError) as info:
        export("keras->tflite", unsupported, tmp_path / "m.tflite", precision="fp32")
    assert "The TFLite converter failed on 'erfinv.keras'. Unsupported ops: tf.Erfinv." in info.value.message
    assert info.value.exit_code == 4
    assert not (tmp_path / "m.tflite").exists()


@pytest.mark.slow
def test_unsupported_op_fails_int8_after_the_float_fallback(unsupported, tmp_path):
    data = tmp_path / "calib.npz"
    np.savez(data, x=np.random.default_rng(0).uniform(-0.9, 0.9, (10, 4)).astype(np.float32))
    subset, _ = cal.select(cal.open_data(data, unsupported.handle.inputs), samples=10, seed=0)
    with pytest.raises(ConversionError, match="Unsupported ops: tf.Erfinv"):
        export("keras->tflite", unsupported, tmp_path / "m.tflite", precision="int8", calib=subset)
    assert not (tmp_path / "m.tflite").exists()


@pytest.fixture(scope="module")
def range_normalised():
    """x / (max(x) - min(x) + 1e-6), as audio and spectrogram models normalise: on a quiet input
    the divisor rounds to zero in int8."""
    keras = pytest.importorskip("keras")
    from pathlib import Path

    inputs = keras.Input((16,), name="x")
    y = keras.layers.Dense(16, name="proj")(inputs)
    spread = keras.ops.max(y, axis=-1, keepdims=True) - keras.ops.min(y, axis=-1, keepdims=True) + 1e-6
    model = keras.Model(inputs, keras.layers.Dense(4, name="out")(y / spread))
    return kf.KerasModel(Path("normalised.keras"), Format.KERAS_V3, model)


@pytest.mark.slow
def test_int8_div_stays_float_so_a_near_zero_divisor_still_runs(range_normalised, tmp_path):
    rng = np.random.default_rng(0)
    loud = rng.normal(0, 1.0, (24, 16)).astype(np.float32)
    quiet = rng.normal(0, 1e-5, (8, 16)).astype(np.float32)  # the divisor of these is ~1e-5: int8 zero
    data = tmp_path / "calib.npz"
    np.savez(data, x=np.concatenate([loud, quiet]))
    subset, _ = cal.select(cal.open_data(data, range_normalised.handle.inputs), samples=32, seed=0)
    result = export("keras->tflite", range_normalised, tmp_path / "m.tflite", precision="int8", calib=subset)
    divs = [inputs for name, inputs, _ in tflite_ops(result.path) if name == "DIV"]
    assert divs and all(dtype == np.float32 for inputs in divs for dtype in inputs)
    assert any("DIV kept in float" in n for n in result.notes)
    got = run_tflite(result.path, {"x": quiet})  # stops with "data[i] != zero_point" if DIV were int8
    assert np.isfinite(got).all()
