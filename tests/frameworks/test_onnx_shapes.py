"""Free ONNX input sizes fixed by --input-shape, and models below opset 13 quantized validly."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import tiny_models  # noqa: E402
from edgeopt.errors import UsageError  # noqa: E402
from edgeopt.frameworks import onnx as onnx_loader  # noqa: E402
from edgeopt.passes.quantize import export  # noqa: E402


def _free_sizes(tmp_path, opset: int | None = None):
    """The residual fixture with free batch, height and width, as detectors are exported."""
    model = tiny_models.build_onnx("residual")
    dims = model.graph.input[0].type.tensor_type.shape.dim
    for dim, name in zip(dims, ["batch", None, "p2o.DynamicDimension.1", "?"]):
        if name is not None:
            dim.Clear()
            dim.dim_param = name
    if opset is not None:
        model.opset_import[0].version = opset
    path = tmp_path / "free.onnx"
    onnx.save(model, str(path))
    return path


def test_input_shape_fixes_every_free_size(tmp_path):
    source = onnx_loader.load(_free_sizes(tmp_path), input_shapes={"image": (1, 3, 16, 16)})
    assert source.handle.inputs[0].shape == (1, 3, 16, 16)
    assert source.handle.outputs[0].shape == (1, 5)
    assert any("fixed from [batch,3,p2o.DynamicDimension.1,?] to [1,3,16,16]" in n
               for n in source.handle.metadata["notes"])
    feed = {"image": np.random.default_rng(0).random((1, 3, 16, 16), dtype=np.float32)}
    # The tools read the fixed graph; the user's own file is left as it was.
    fixed = onnx.load(str(source.graph_file))
    assert [d.dim_value for d in fixed.graph.input[0].type.tensor_type.shape.dim] == [1, 3, 16, 16]
    assert onnx.load(str(tmp_path / "free.onnx")).graph.input[0].type.tensor_type.shape.dim[2].dim_param
    np.testing.assert_allclose(source.predict(feed)[0], tiny_models.run_onnx(tmp_path / "free.onnx", feed)[0],
                               atol=1e-5)


def test_a_bare_shape_names_the_only_input(tmp_path):
    source = onnx_loader.load(_free_sizes(tmp_path), input_shapes={"input": (1, 3, 8, 8)})
    assert source.handle.inputs[0].shape == (1, 3, 8, 8)


@pytest.mark.parametrize("shapes, words", [
    ({"images": (1, 3, 16, 16)}, ["'images'", "'image'"]),
    ({"image": (1, 3, 16)}, ["3 dimensions", "it has 4"]),
    ({"image": (1, 4, 16, 16)}, ["size 4 at axis 1", "fixes at 3"]),
])
def test_wrong_shapes_are_usage_errors_naming_the_input(tmp_path, shapes, words):
    with pytest.raises(UsageError) as caught:
        onnx_loader.load(_free_sizes(tmp_path), input_shapes=shapes)
    assert all(w in str(caught.value) for w in words), str(caught.value)


@pytest.mark.parametrize("opset", [11, 12])
def test_int8_of_an_old_opset_model_is_valid_onnx(tmp_path, opset, nchw_calib):
    source = onnx_loader.load(_free_sizes(tmp_path, opset), input_shapes={"image": (1, 3, 16, 16)})
    calib = tiny_models.calib_subset(nchw_calib("residual"), source.handle.inputs)
    result = export("onnx->onnx", source, tmp_path / "q.onnx", precision="int8", calib=calib)
    model = onnx.load(str(result.path))
    onnx.checker.check_model(model)
    assert next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) == 13
    axes = [a for n in model.graph.node if n.op_type == "DequantizeLinear" for a in n.attribute if a.name == "axis"]
    # Per-channel weights (axis) unless measurement chose per-tensor, which the note then says.
    assert bool(axes) == any(": per-channel" in n and "chosen over" in n for n in result.notes)
    assert any(f"raised from ONNX opset {opset} to 13" in n for n in result.notes)
    feed = tiny_models.random_feed("residual", 4, seed=3)
    assert tiny_models.cosine(tiny_models.run_onnx(result.path, feed)[0], source.predict(feed)[0]) >= 0.98


@pytest.mark.parametrize("text, expected", [
    ("images=1,3,320,320", {"images": (1, 3, 320, 320)}),
    ("images:1,3,320,320", {"images": (1, 3, 320, 320)}),
    ("images:1x3x320x320", {"images": (1, 3, 320, 320)}),
    ("input_1:0=1,64", {"input_1:0": (1, 64)}),
    ("1,3,224,224", {"input": (1, 3, 224, 224)}),
])
def test_cli_input_shape_forms(text, expected):
    from edgeopt.options import input_shapes

    assert input_shapes((text,)) == expected
