"""ONNX export from PyTorch, Keras and ONNX sources: outputs against the source model, and the
structure of the artifact (Q/DQ nodes, int8 weights, fp16 weights, float I/O)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import tiny_models  # noqa: E402
from edgeopt.errors import ConversionError  # noqa: E402
from edgeopt.frameworks import onnx as onnx_loader  # noqa: E402
from edgeopt.model import Format  # noqa: E402
from edgeopt.passes.quantize import export  # noqa: E402

FP32_ATOL = 1e-4  # max |artifact - source| for a float conversion
INT8_MIN_COSINE = 0.98
VAL = 24  # validation samples, drawn with another seed than the calibration data


def weight_dtypes(model) -> dict[str, np.dtype]:
    """The stored dtype of each Conv/Gemm/MatMul weight, looking through a DequantizeLinear."""
    initializers = {t.name: t for t in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    dtypes = {}
    for node in model.graph.node:
        if node.op_type in ("Conv", "Gemm", "MatMul") and len(node.input) > 1:
            name = node.input[1]
            if name in producers and producers[name].op_type == "DequantizeLinear":
                name = producers[name].input[0]
            if name in initializers:
                dtypes[node.name or node.output[0]] = onnx.helper.tensor_dtype_to_np_dtype(initializers[name].data_type)
    return dtypes


def io_types(path) -> list[int]:
    model = onnx.load(str(path))
    return [v.type.tensor_type.elem_type for v in [*model.graph.input, *model.graph.output]]


def assert_qdq_int8(path) -> None:
    model = onnx.load(str(path))
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops, ops
    dtypes = weight_dtypes(model)
    assert dtypes and all(d == np.int8 for d in dtypes.values()), dtypes
    assert set(io_types(path)) == {onnx.TensorProto.FLOAT}


@pytest.fixture(scope="module")
def torch_source(torch_model):
    pytest.importorskip("torch")
    pytest.importorskip("onnxscript")
    from edgeopt.frameworks import torch as torch_loader

    def get(name):
        spec, weights, module = torch_model(name)
        return torch_loader.load(spec, Format.TORCH_MODULE, weights=weights,
                                 input_shapes={k: (1, *v) for k, v in tiny_models.INPUTS[name].items()})

    return get


# --- PyTorch -> ONNX --------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(tiny_models.INPUTS))
def test_torch_fp32_matches_source(name, torch_source, tmp_path):
    source = torch_source(name)
    result = export("torch->onnx", source, tmp_path / "m.onnx", precision="fp32")
    assert result.precision == "fp32" and result.path.is_file()
    model = onnx.load(str(result.path))
    assert [i.name for i in model.graph.input] == list(tiny_models.INPUTS[name])
    feed = tiny_models.random_feed(name, VAL, seed=7)
    err = np.abs(tiny_models.run_onnx(result.path, feed)[0] - source.predict(feed)[0]).max()
    assert err < FP32_ATOL, f"{name}: max_abs_err {err}"


@pytest.mark.parametrize("name", ["residual", "depthwise"])
def test_torch_int8_is_qdq_with_int8_weights(name, torch_source, nchw_calib, tmp_path):
    source = torch_source(name)
    calib = tiny_models.calib_subset(nchw_calib(name), source.handle.inputs)
    result = export("torch->onnx", source, tmp_path / "m.onnx", precision="int8", calib=calib)
    assert result.precision == "int8" and not result.float_fallback
    assert_qdq_int8(result.path)
    convs = [n for n in onnx.load(str(result.path)).graph.node if n.op_type == "Conv"]
    assert len(convs) == 2
    feed = tiny_models.random_feed(name, VAL, seed=7)
    cos = tiny_models.cosine(tiny_models.run_onnx(result.path, feed)[0], source.predict(feed)[0])
    assert cos >= INT8_MIN_COSINE, f"{name}: cosine {cos}"


def test_int8_bias_has_no_zero_point_and_still_fuses(torch_source, nchw_calib, tmp_path):
    """Bias zero points (all 0, int32 per channel) are dropped; onnxruntime must still run every Conv
    and Gemm as an integer kernel, and the outputs must not change."""
    import onnxruntime as ort

    source = torch_source("residual")
    calib = tiny_models.calib_subset(nchw_calib("residual"), source.handle.inputs)
    result = export("torch->onnx", source, tmp_path / "m.onnx", precision="int8", calib=calib)
    model = onnx.load(str(result.path))
    initializers = {t.name: t for t in model.graph.initializer}
    bias_dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in initializers
               and initializers[n.input[0]].data_type == onnx.TensorProto.INT32]
    assert len(bias_dq) == 3 and all(len(n.input) == 2 for n in bias_dq)  # conv1, conv2, fc
    assert not [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT32 and
                not onnx.numpy_helper.to_array(t).any() and t.name.endswith("zero_point")]
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(result.path), options, providers=["CPUExecutionProvider"])
    fused = [n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node]
    assert fused.count("QLinearConv") == 2 and fused.count("QGemm") == 1, fused
    assert "Conv" not in fused and "Gemm" not in fused, fused
    # Same model with the zero points put back: identical outputs.
    for node in bias_dq:
        zero = onnx.numpy_helper.from_array(np.zeros(initializers[node.input[0]].dims, np.int32), node.input[0] + "_zp")
        model.graph.initializer.append(zero)
        node.input.append(zero.name)
    onnx.save(model, str(tmp_path / "with_zp.onnx"))
    feed = tiny_models.random_feed("residual", VAL, seed=7)
    np.testing.assert_array_equal(tiny_models.run_onnx(result.path, feed)[0],
                                  tiny_models.run_onnx(tmp_path / "with_zp.onnx", feed)[0])


def test_torch_export_failure_is_a_conversion_error(tmp_path):
    pytest.importorskip("onnxscript")
    from edgeopt.frameworks import torch as torch_loader

    code = tmp_path / "histogram_net.py"
    code.write_text("import torch\n"
                    "class Net(torch.nn.Module):\n"
                    "    def forward(self, x):\n"
                    "        return torch.histc(x, bins=4)\n")  # no ONNX translation
    source = torch_loader.load(f"{code}:Net", Format.TORCH_MODULE, input_shapes={"x": (1, 4)})
    with pytest.raises(ConversionError, match="torch.onnx.export failed on") as info:
        export("torch->onnx", source, tmp_path / "m.onnx", precision="fp32")
    assert info.value.exit_code == 4
    assert "histc" in info.value.message
    assert not (tmp_path / "m.onnx").exists()


# --- Keras -> ONNX ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keras_source(saved_model):
    pytest.importorskip("tf2onnx")
    from edgeopt.frameworks import keras as keras_loader

    return lambda name: keras_loader.load(saved_model(name), Format.KERAS_H5)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["two_input", "residual"])
def test_keras_fp32_matches_source(name, keras_source, tmp_path):
    source = keras_source(name)
    result = export("keras->onnx", source, tmp_path / "m.onnx", precision="fp32")
    model = onnx.load(str(result.path))
    assert [i.name for i in model.graph.input] == source.handle.input_names
    feed = tiny_models.random_feed(name, VAL, seed=7, layout="nhwc")
    err = np.abs(tiny_models.run_onnx(result.path, feed)[0] - source.predict(feed)[0]).max()
    assert err < FP32_ATOL


@pytest.mark.slow
def test_keras_int8(keras_source, calib_file, tmp_path):
    source = keras_source("depthwise")
    calib = tiny_models.calib_subset(calib_file("depthwise"), source.handle.inputs)
    result = export("keras->onnx", source, tmp_path / "m.onnx", precision="int8", calib=calib)
    assert_qdq_int8(result.path)
    feed = tiny_models.random_feed("depthwise", VAL, seed=7, layout="nhwc")
    assert tiny_models.cosine(tiny_models.run_onnx(result.path, feed)[0], source.predict(feed)[0]) >= INT8_MIN_COSINE


# --- ONNX -> ONNX -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def onnx_source(onnx_model):
    return lambda name: onnx_loader.load(onnx_model(name), Format.ONNX)


@pytest.mark.parametrize("name", sorted(tiny_models.INPUTS))
def test_onnx_cleaned_fp32_is_unchanged_numerically(name, onnx_source, tmp_path):
    source = onnx_source(name)
    result = export("onnx->onnx", source, tmp_path / "m.onnx", precision="fp32")
    cleaned = onnx.load(str(result.path))
    assert [i.name for i in cleaned.graph.input] == list(tiny_models.INPUTS[name])
    feed = tiny_models.random_feed(name, VAL, seed=7)
    np.testing.assert_allclose(tiny_models.run_onnx(result.path, feed)[0], source.predict(feed)[0], atol=1e-5)


def test_onnx_cleaning_folds_batch_norm(onnx_source, tmp_path):
    result = export("onnx->onnx", onnx_source("depthwise"), tmp_path / "m.onnx", precision="fp32")
    ops = [n.op_type for n in onnx.load(str(result.path)).graph.node]
    assert "BatchNormalization" not in ops and ops.count("Conv") == 2


@pytest.mark.parametrize("name", sorted(tiny_models.INPUTS))
def test_onnx_int8_static(name, onnx_source, nchw_calib, tmp_path):
    source = onnx_source(name)
    calib = tiny_models.calib_subset(nchw_calib(name), source.handle.inputs)
    result = export("onnx->onnx", source, tmp_path / "m.onnx", precision="int8", calib=calib, int8_io=True)
    assert result.precision == "int8"
    assert any("--int8-io applies to TFLite only" in n for n in result.notes)
    assert_qdq_int8(result.path)
    feed = tiny_models.random_feed(name, VAL, seed=7)
    assert tiny_models.cosine(tiny_models.run_onnx(result.path, feed)[0], source.predict(feed)[0]) >= INT8_MIN_COSINE


def test_onnx_fp16_keeps_float_io(onnx_source, tmp_path):
    source = onnx_source("residual")
    result = export("onnx->onnx", source, tmp_path / "m.onnx", precision="fp16")
    model = onnx.load(str(result.path))
    assert {t.data_type for t in model.graph.initializer if t.name.endswith(".w")} == {onnx.TensorProto.FLOAT16}
    assert set(io_types(result.path)) == {onnx.TensorProto.FLOAT}
    feed = tiny_models.random_feed("residual", VAL, seed=7)
    assert np.abs(tiny_models.run_onnx(result.path, feed)[0] - source.predict(feed)[0]).max() < 1e-2


def test_onnx_int8_without_calibration_is_dynamic(onnx_source, tmp_path):
    source = onnx_source("residual")
    result = export("onnx->onnx", source, tmp_path / "m.onnx", precision="int8")
    assert result.precision == "int8-dynamic"
    ops = {n.op_type for n in onnx.load(str(result.path)).graph.node}
    assert "DynamicQuantizeLinear" in ops and ops & {"ConvInteger", "MatMulInteger"}
    feed = tiny_models.random_feed("residual", VAL, seed=7)
    assert tiny_models.cosine(tiny_models.run_onnx(result.path, feed)[0], source.predict(feed)[0]) >= INT8_MIN_COSINE


def test_already_quantized_source_is_copied_not_requantized(onnx_source, nchw_calib, tmp_path):
    source = onnx_source("residual")
    calib = tiny_models.calib_subset(nchw_calib("residual"), source.handle.inputs)
    first = export("onnx->onnx", source, tmp_path / "q.onnx", precision="int8", calib=calib)
    quantized = onnx_loader.load(first.path, Format.ONNX)
    again = export("onnx->onnx", quantized, tmp_path / "again.onnx", precision="int8", calib=calib)
    assert again.precision == "source-quantized"
    before = [(n.op_type, list(n.input)) for n in onnx.load(str(first.path)).graph.node]
    assert [(n.op_type, list(n.input)) for n in onnx.load(str(again.path)).graph.node] == before
    assert any("not quantized again" in n for n in again.notes)


def test_float_compute_nodes_are_reported(onnx_model):
    model = onnx.load(str(onnx_model("residual")))
    from edgeopt.passes.quantize.onnx import float_compute_nodes

    assert float_compute_nodes(model) == ["Conv 'conv1'", "Conv 'conv2'", "Gemm 'logits'"]


def test_int8_to_a_relative_output_path(onnx_source, nchw_calib, tmp_path, monkeypatch):
    """Quantization runs inside a temporary folder; a relative -o must still land where it says."""
    source = onnx_source("residual")
    calib = tiny_models.calib_subset(nchw_calib("residual"), source.handle.inputs)
    (tmp_path / "out").mkdir()
    monkeypatch.chdir(tmp_path)
    result = export("onnx->onnx", source, Path("out") / "m.onnx", precision="int8", calib=calib)
    assert (tmp_path / "out" / "m.onnx").is_file() and result.path == tmp_path / "out" / "m.onnx"
    assert_qdq_int8(result.path)
