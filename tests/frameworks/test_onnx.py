"""ONNX import: checked and shape-inferred, external data confined to the model's folder, quantized
models noticed, and unsafe or broken files rejected with exit code 3 before anything is written."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import tiny_models  # noqa: E402
from edgeopt.errors import InputRejected  # noqa: E402
from edgeopt.formats import detect_format  # noqa: E402
from edgeopt.frameworks import onnx as onnx_loader  # noqa: E402
from edgeopt.model import Format  # noqa: E402


def _save_external(model, folder: Path, location: str) -> Path:
    """Save ``model`` with every initializer in one external file at ``location`` (relative)."""
    (folder / location).parent.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=location,
              size_threshold=0)
    return path


def _point_external_at(path: Path, location: str) -> None:
    """Rewrite every external tensor of the saved model at ``path`` to read ``location``."""
    model = onnx.load(str(path), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    onnx.save(model, str(path))


@pytest.mark.parametrize("name", sorted(tiny_models.INPUTS))
def test_signature_layout_and_prediction(name, onnx_model):
    path = onnx_model(name)
    assert detect_format(path) is Format.ONNX
    loaded = onnx_loader.load(path, Format.ONNX)
    handle = loaded.handle
    assert handle.framework == "onnx"
    assert handle.input_names == list(tiny_models.INPUTS[name])
    for spec in handle.inputs:
        assert spec.shape == (None, *tiny_models.INPUTS[name][spec.name])
        assert spec.dtype == "float32"
    assert handle.inputs[0].layout == "nchw"
    assert handle.outputs[0].shape == (None, tiny_models.OUTPUTS[name])
    assert handle.metadata["opset"] == tiny_models.OPSET and handle.metadata["quantized"] is False
    feed = tiny_models.random_feed(name, 5)
    (out,) = loaded.predict(feed, batch_size=2)
    np.testing.assert_allclose(out, tiny_models.run_onnx(path, feed)[0], atol=1e-6)


def test_fixed_batch_model_is_run_sample_by_sample(onnx_model):
    path = onnx_model("residual", batch=1)
    loaded = onnx_loader.load(path, Format.ONNX)
    assert loaded.handle.inputs[0].shape == (1, 3, 16, 16)
    feed = tiny_models.random_feed("residual", 3)
    (out,) = loaded.predict(feed)
    assert out.shape == (3, 5)
    expected = np.concatenate([tiny_models.run_onnx(path, {"image": feed["image"][i:i + 1]})[0] for i in range(3)])
    np.testing.assert_allclose(out, expected, atol=1e-6)


def test_weights_as_constant_nodes_load(tmp_path):
    path = tmp_path / "constants.onnx"
    onnx.save(tiny_models.build_onnx("residual", weights_as_constants=True), str(path))
    loaded = onnx_loader.load(path, Format.ONNX)
    feed = tiny_models.random_feed("residual", 2)
    assert not loaded.native.graph.initializer  # the weights really are Constant nodes
    np.testing.assert_allclose(loaded.predict(feed)[0], tiny_models.run_onnx(path, feed)[0], atol=1e-6)


def test_external_data_inside_the_folder_loads(tmp_path, onnx_model):
    model = tiny_models.build_onnx("residual")
    path = _save_external(model, tmp_path / "m", "weights/residual.bin")
    assert (tmp_path / "m" / "weights" / "residual.bin").is_file()
    loaded = onnx_loader.load(path, Format.ONNX)
    feed = tiny_models.random_feed("residual", 2)
    np.testing.assert_allclose(loaded.predict(feed)[0], tiny_models.run_onnx(onnx_model("residual"), feed)[0],
                               atol=1e-6)


@pytest.mark.parametrize("location, words", [
    ("../outside.bin", "leaves the model's folder"),
    ("/etc/hostname", "absolute path"),
    ("missing.bin", "missing"),
])
def test_external_data_outside_the_folder_is_rejected(tmp_path, location, words):
    path = _save_external(tiny_models.build_onnx("residual"), tmp_path / "m", "weights.bin")
    (tmp_path / "outside.bin").write_bytes((tmp_path / "m" / "weights.bin").read_bytes())
    _point_external_at(path, location)
    with pytest.raises(InputRejected, match=words) as info:
        onnx_loader.load(path, Format.ONNX)
    assert info.value.exit_code == 3
    assert "conv1.w" in info.value.message  # names the tensor


def test_external_data_through_a_symlink_is_rejected(tmp_path):
    path = _save_external(tiny_models.build_onnx("residual"), tmp_path / "m", "weights.bin")
    real = tmp_path / "elsewhere.bin"
    os.replace(tmp_path / "m" / "weights.bin", real)
    os.symlink(real, tmp_path / "m" / "weights.bin")
    with pytest.raises(InputRejected, match="symlink"):
        onnx_loader.load(path, Format.ONNX)


def test_already_quantized_model_gets_a_note(tmp_path, onnx_model, nchw_calib):
    quant = pytest.importorskip("onnxruntime.quantization")
    source = onnx_loader.load(onnx_model("residual"), Format.ONNX)
    calib = tiny_models.calib_subset(nchw_calib("residual"), source.handle.inputs, samples=8)

    class Reader(quant.CalibrationDataReader):
        def __init__(self):
            self.rows = iter(calib)

        def get_next(self):
            return next(self.rows, None)

    quantized = tmp_path / "residual_qdq.onnx"
    quant.quantize_static(str(onnx_model("residual")), str(quantized), Reader(), quant_format=quant.QuantFormat.QDQ)
    loaded = onnx_loader.load(quantized, Format.ONNX)
    assert loaded.handle.metadata["quantized"] is True
    (note,) = [n for n in loaded.handle.metadata["notes"] if "already quantized" in n]
    assert "QuantizeLinear" in note and "DequantizeLinear" in note


def test_checker_failure_names_the_problem(tmp_path):
    model = tiny_models.build_onnx("residual")
    model.graph.node[1].input[0] = "no_such_tensor"
    path = tmp_path / "broken.onnx"
    onnx.save(model, str(path))
    with pytest.raises(InputRejected, match="checker") as info:
        onnx_loader.load(path, Format.ONNX)
    assert "no_such_tensor" in info.value.message


def test_shape_inference_failure_names_the_node(tmp_path):
    model = tiny_models.build_onnx("residual")
    # conv2 now makes 4 channels; adding them to conv1's 8 cannot broadcast.
    for tensor in model.graph.initializer:
        if tensor.name == "conv2.w":
            tensor.CopyFrom(onnx.numpy_helper.from_array(np.zeros((4, 8, 3, 3), np.float32), "conv2.w"))
        if tensor.name == "conv2.b":
            tensor.CopyFrom(onnx.numpy_helper.from_array(np.zeros((4,), np.float32), "conv2.b"))
    path = tmp_path / "mismatch.onnx"
    onnx.save(model, str(path))
    with pytest.raises(InputRejected, match="Shape inference") as info:
        onnx_loader.load(path, Format.ONNX)
    assert "skip_add" in info.value.message or "Add" in info.value.message


def test_garbage_is_rejected(tmp_path):
    path = tmp_path / "garbage.onnx"
    path.write_bytes(b"\x08\x07" + os.urandom(200))
    with pytest.raises(InputRejected) as info:
        onnx_loader.load(path, Format.ONNX)
    assert str(path) in info.value.message


def test_cli_rejects_unsafe_onnx_with_exit_3_and_writes_nothing(tmp_path):
    click_testing = pytest.importorskip("click.testing")
    from edgeopt.cli import main

    path = _save_external(tiny_models.build_onnx("residual"), tmp_path / "m", "weights.bin")
    _point_external_at(path, "../../secret.bin")
    out = tmp_path / "out"
    result = click_testing.CliRunner().invoke(main, ["compress", str(path), "--target", "onnx", "-o", str(out)])
    assert result.exit_code == 3, result.output
    assert "leaves the model's folder" in result.output
    assert not out.exists()
    assert not any(p.name.startswith(".edgeopt-stage-") for p in tmp_path.iterdir())
