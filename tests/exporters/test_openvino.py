"""OpenVINO IR export from ONNX, PyTorch and Keras sources: .xml and .bin written together, static
batch 1, outputs against the source, and the IR's structure (FakeQuantize, int8/fp16 constants)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from edgeopt.deps import no_telemetry  # noqa: E402

with no_telemetry():  # importing OpenVINO or NNCF otherwise reports usage over the network
    ov = pytest.importorskip("openvino")
    pytest.importorskip("nncf")
pytest.importorskip("onnx")

import tiny_models  # noqa: E402
from edgeopt.frameworks import onnx as onnx_loader  # noqa: E402
from edgeopt.model import Format  # noqa: E402
from edgeopt.passes.quantize import export  # noqa: E402

FP32_ATOL = 1e-4
INT8_MIN_COSINE = 0.98
VAL = 24


def run_ir(xml, feed) -> np.ndarray:
    """The first output of an IR on the OpenVINO CPU plugin in f32, sample by sample (independent of
    edgeopt's session; inputs fed by position, in the source's order)."""
    compiled = ov.Core().compile_model(str(xml), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    arrays = list(feed.values())
    return np.concatenate([compiled([a[i:i + 1] for a in arrays])[0] for i in range(len(arrays[0]))])


def ir_facts(xml) -> tuple[Counter, Counter]:
    """Op type counts and constant dtype counts of an IR as written."""
    model = ov.Core().read_model(str(xml))
    ops = Counter(op.get_type_name() for op in model.get_ops())
    constants = Counter(op.get_output_element_type(0).get_type_name() for op in model.get_ops()
                        if op.get_type_name() == "Constant")
    return ops, constants


def check_files(result, tmp_path) -> None:
    assert result.path.suffix == ".xml" and result.path.is_file()
    assert result.extra_files == [result.path.with_suffix(".bin")] and result.extra_files[0].is_file()
    # Nothing else is left beside them (temporary SavedModel/ONNX files are cleaned up).
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([result.path.name, result.extra_files[0].name])


@pytest.fixture(scope="module")
def onnx_source(onnx_model):
    return lambda name: onnx_loader.load(onnx_model(name), Format.ONNX)


@pytest.mark.parametrize("name", sorted(tiny_models.INPUTS))
def test_onnx_fp32(name, onnx_source, tmp_path):
    source = onnx_source(name)
    result = export("onnx->openvino", source, tmp_path / "m.openvino", precision="fp32")
    check_files(result, tmp_path)
    model = ov.Core().read_model(str(result.path))
    assert [tuple(p.get_partial_shape().to_shape()) for p in model.inputs] == \
        [(1, *s) for s in tiny_models.INPUTS[name].values()]
    _ops, constants = ir_facts(result.path)
    assert "f16" not in constants and "i8" not in constants
    feed = tiny_models.random_feed(name, VAL, seed=7)
    assert np.abs(run_ir(result.path, feed) - source.predict(feed)[0]).max() < FP32_ATOL


@pytest.mark.parametrize("name", sorted(tiny_models.INPUTS))
def test_onnx_int8_has_fake_quantize_and_int8_weights(name, onnx_source, nchw_calib, tmp_path):
    source = onnx_source(name)
    calib = tiny_models.calib_subset(nchw_calib(name), source.handle.inputs)
    result = export("onnx->openvino", source, tmp_path / "m.openvino", precision="int8", calib=calib)
    check_files(result, tmp_path)
    assert result.precision == "int8"
    ops, constants = ir_facts(result.path)
    assert ops["FakeQuantize"] >= 1 and constants["i8"] >= 1, (ops, constants)
    feed = tiny_models.random_feed(name, VAL, seed=7)
    assert tiny_models.cosine(run_ir(result.path, feed), source.predict(feed)[0]) >= INT8_MIN_COSINE


def test_onnx_fp16_compresses_weights(onnx_source, tmp_path):
    source = onnx_source("residual")
    result = export("onnx->openvino", source, tmp_path / "m.openvino", precision="fp16")
    _ops, constants = ir_facts(result.path)
    assert constants["f16"] >= 4
    feed = tiny_models.random_feed("residual", VAL, seed=7)
    assert np.abs(run_ir(result.path, feed) - source.predict(feed)[0]).max() < 1e-2


def test_int8_without_calibration_compresses_weights_only(onnx_source, tmp_path):
    source = onnx_source("residual")
    result = export("onnx->openvino", source, tmp_path / "m.openvino", precision="int8")
    assert result.precision == "int8-weights" and any("weights only" in n for n in result.notes)
    ops, constants = ir_facts(result.path)
    assert ops["FakeQuantize"] == 0 and constants["i8"] >= 3
    feed = tiny_models.random_feed("residual", VAL, seed=7)
    assert tiny_models.cosine(run_ir(result.path, feed), source.predict(feed)[0]) >= INT8_MIN_COSINE


def test_quantized_onnx_source_is_not_quantized_again(onnx_source, nchw_calib, tmp_path):
    source = onnx_source("residual")
    calib = tiny_models.calib_subset(nchw_calib("residual"), source.handle.inputs)
    qdq = export("onnx->onnx", source, tmp_path / "qdq.onnx", precision="int8", calib=calib)
    (tmp_path / "ir").mkdir()
    result = export("onnx->openvino", onnx_loader.load(qdq.path, Format.ONNX), tmp_path / "ir" / "m.openvino",
                                   precision="int8", calib=calib)
    assert result.precision == "source-quantized"
    ops, _constants = ir_facts(result.path)
    assert ops["FakeQuantize"] >= 1  # OpenVINO reads the Q/DQ pairs as its own


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_torch_two_input(precision, torch_model, nchw_calib, tmp_path):
    pytest.importorskip("torch")
    from edgeopt.frameworks import torch as torch_loader

    spec, weights, _ = torch_model("two_input")
    source = torch_loader.load(spec, Format.TORCH_MODULE, weights=weights, calib=nchw_calib("two_input"))
    calib = tiny_models.calib_subset(nchw_calib("two_input"), source.handle.inputs)
    result = export("torch->openvino", source, tmp_path / "m.openvino", precision=precision, calib=calib)
    check_files(result, tmp_path)
    model = ov.Core().read_model(str(result.path))
    assert [p.get_any_name() for p in model.inputs] == ["image", "meta"]
    feed = tiny_models.random_feed("two_input", VAL, seed=7)
    out, ref = run_ir(result.path, feed), source.predict(feed)[0]
    if precision == "fp32":
        assert np.abs(out - ref).max() < FP32_ATOL
    else:
        assert ir_facts(result.path)[0]["FakeQuantize"] >= 1
        assert tiny_models.cosine(out, ref) >= INT8_MIN_COSINE


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_keras_depthwise(precision, saved_model, calib_file, tmp_path):
    pytest.importorskip("tf2onnx")
    from edgeopt.frameworks import keras as keras_loader

    source = keras_loader.load(saved_model("depthwise"), Format.KERAS_H5)
    calib = tiny_models.calib_subset(calib_file("depthwise"), source.handle.inputs)
    result = export("keras->openvino", source, tmp_path / "m.openvino", precision=precision, calib=calib)
    check_files(result, tmp_path)
    model = ov.Core().read_model(str(result.path))
    assert tuple(model.inputs[0].get_partial_shape().to_shape()) == (1, 16, 16, 3)  # NHWC, as in Keras
    feed = tiny_models.random_feed("depthwise", VAL, seed=7, layout="nhwc")
    out, ref = run_ir(result.path, feed), source.predict(feed)[0]
    if precision == "fp32":
        assert np.abs(out - ref).max() < FP32_ATOL
    else:
        ops, constants = ir_facts(result.path)
        assert ops["FakeQuantize"] >= 1 and constants["i8"] >= 1
        assert tiny_models.cosine(out, ref) >= INT8_MIN_COSINE
