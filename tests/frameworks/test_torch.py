"""PyTorch import: models built from the user's code plus weights read as tensors only; input shapes
from --input-shape or the calibration data; pickled modules, TorchScript and .pt2 refused (exit 3)
unless trusted."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import tiny_models  # noqa: E402
from edgeopt.errors import InputRejected, UnsafeModel, UsageError  # noqa: E402
from edgeopt.formats import detect_format  # noqa: E402
from edgeopt.frameworks import torch as torch_loader  # noqa: E402
from edgeopt.model import Format  # noqa: E402
from edgeopt.pipeline import load_source  # noqa: E402

SHAPES = {"image": (1, 3, 16, 16)}


def _reference(module, feed):
    with torch.no_grad():
        return module(*[torch.from_numpy(feed[n]) for n in feed]).numpy()


@pytest.mark.parametrize("text, expected", [
    ("net.py:build_model", ("net.py", "build_model")),
    ("models/net.py:Net", ("models/net.py", "Net")),
    ("package.module:ClassName", ("package.module", "ClassName")),
    ("package.module:factory.build", ("package.module", "factory.build")),
    ("model.onnx", None),
    ("weights.pt", None),
    ("C:\\models\\net.onnx", None),
    ("net.py:", None),
    ("dir/sub dir/x.onnx:abc", None),
])
def test_parse_spec(text, expected):
    assert torch_loader.parse_spec(text) == expected


@pytest.mark.parametrize("name", sorted(tiny_models.INPUTS))
def test_spec_with_weights_loads_and_predicts_like_the_reference(name, torch_model):
    spec, weights, reference = torch_model(name)
    shapes = {k: (1, *v) for k, v in tiny_models.INPUTS[name].items()}
    loaded = torch_loader.load(spec, Format.TORCH_MODULE, weights=weights, input_shapes=shapes)
    handle = loaded.handle
    assert handle.format is Format.TORCH_MODULE and handle.framework == "torch"
    assert handle.input_names == list(tiny_models.INPUTS[name])  # forward()'s parameter names
    assert handle.inputs[0].shape == (None, *tiny_models.INPUTS[name]["image"])
    assert handle.inputs[0].layout == "nchw"
    assert handle.outputs[0].shape == (None, tiny_models.OUTPUTS[name])
    assert handle.metadata["stem"] == "nets" and handle.path == weights
    feed = tiny_models.random_feed(name, 6)
    (out,) = loaded.predict(feed, batch_size=4)
    np.testing.assert_allclose(out, _reference(reference, feed), atol=1e-6)


def test_weights_are_really_used(torch_model):
    spec, weights, reference = torch_model("residual")
    without = torch_loader.load(spec, Format.TORCH_MODULE, input_shapes=SHAPES)
    assert any("No --weights" in n for n in without.handle.metadata["notes"])
    feed = tiny_models.random_feed("residual", 2)
    assert not np.allclose(without.predict(feed)[0], _reference(reference, feed), atol=1e-3)


def test_input_shapes_come_from_calibration_data(torch_model, nchw_calib):
    spec, weights, _ = torch_model("two_input")
    loaded = torch_loader.load(spec, Format.TORCH_MODULE, weights=weights, calib=nchw_calib("two_input"))
    assert {t.name: t.shape for t in loaded.handle.inputs} == {"image": (None, 1, 8, 8), "meta": (None, 4)}


def test_a_single_unnamed_shape_fits_a_one_input_model(torch_model):
    spec, weights, _ = torch_model("residual")
    loaded = torch_loader.load(spec, Format.TORCH_MODULE, weights=weights, input_shapes={"input": (1, 3, 16, 16)})
    assert loaded.handle.input_names == ["image"]


def test_missing_shapes_are_a_usage_error(torch_model):
    spec, weights, _ = torch_model("two_input")
    with pytest.raises(UsageError, match="--input-shape") as info:
        torch_loader.load(spec, Format.TORCH_MODULE, weights=weights)
    assert info.value.exit_code == 2
    with pytest.raises(UsageError, match=r"no shape for \['meta'\]"):
        torch_loader.load(spec, Format.TORCH_MODULE, weights=weights, input_shapes={"image": (1, 1, 8, 8)})


def test_wrong_shape_names_the_inputs(torch_model):
    spec, weights, _ = torch_model("residual")
    with pytest.raises(InputRejected, match=r"image: float32\[\?,3,9\]"):
        torch_loader.load(spec, Format.TORCH_MODULE, weights=weights, input_shapes={"image": (1, 3, 9)})


def test_package_module_class_spec(tmp_path, monkeypatch):
    package = tmp_path / "mypkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "models.py").write_text(tiny_models.TORCH_NETS)
    monkeypatch.syspath_prepend(str(tmp_path))
    loaded = load_source("mypkg.models:Residual", trust=False, input_shapes=SHAPES)[0]
    assert loaded.handle.metadata["stem"] == "residual"
    assert loaded.handle.input_names == ["image"]


def test_mismatched_weights_name_the_keys(tmp_path, torch_model):
    spec, weights, _ = torch_model("residual")
    state = torch.load(weights, weights_only=True)
    state["extra.weight"] = state.pop("fc.weight")
    bad = tmp_path / "bad.pt"
    torch.save(state, bad)
    with pytest.raises(InputRejected, match="missing 'fc.weight'; unexpected 'extra.weight'"):
        torch_loader.load(spec, Format.TORCH_MODULE, weights=bad, input_shapes=SHAPES)
    state = torch.load(weights, weights_only=True)
    state["fc.weight"] = torch.zeros(3, 8)
    torch.save(state, bad)
    with pytest.raises(InputRejected, match="size mismatch"):
        torch_loader.load(spec, Format.TORCH_MODULE, weights=bad, input_shapes=SHAPES)


def test_missing_code_file_and_attribute(tmp_path, torch_model):
    with pytest.raises(InputRejected, match="does not exist"):
        load_source(f"{tmp_path}/nope.py:build", trust=False, input_shapes=SHAPES)
    spec, _, _ = torch_model("residual")
    with pytest.raises(InputRejected, match="has no 'build_nothing'") as info:
        load_source(spec.rsplit(":", 1)[0] + ":build_nothing", trust=False, input_shapes=SHAPES)
    assert "build_residual" in info.value.hint


# --- unsafe inputs ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def unsafe_files(tmp_path_factory, torch_model):
    """A whole pickled module, a TorchScript archive and a .pt2 program of the residual model."""
    _, weights, module = torch_model("residual")
    root = tmp_path_factory.mktemp("unsafe")
    example = (torch.zeros(1, 3, 16, 16),)
    files = {"pickle": root / "whole.pt", "torchscript": root / "scripted.pt", "pt2": root / "exported.pt2",
             "state_dict": weights}
    torch.save(module, files["pickle"])
    torch.jit.save(torch.jit.trace(module, example), str(files["torchscript"]))
    torch.export.save(torch.export.export(module, example), str(files["pt2"]))
    return files


@pytest.mark.parametrize("kind, fmt", [("pickle", Format.TORCH_PICKLE), ("torchscript", Format.TORCHSCRIPT),
                                       ("pt2", Format.TORCH_EXPORT)])
def test_code_carrying_files_are_refused(kind, fmt, unsafe_files):
    path = unsafe_files[kind]
    assert detect_format(path) is fmt
    with pytest.raises(UnsafeModel) as info:
        load_source(path, trust=False, input_shapes=SHAPES)
    assert info.value.exit_code == 3
    assert str(path) in info.value.message and "--trust-model" in info.value.hint


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["pickle", "torchscript", "pt2"])
def test_trusted_code_carrying_files_load(kind, unsafe_files, torch_model):
    _, _, reference = torch_model("residual")
    loaded, _ = load_source(unsafe_files[kind], trust=True, input_shapes=SHAPES)
    feed = tiny_models.random_feed("residual", 2)
    np.testing.assert_allclose(loaded.predict(feed)[0], _reference(reference, feed), atol=1e-5)


def test_pickled_module_as_weights_is_refused(unsafe_files, torch_model):
    spec, _, _ = torch_model("residual")
    with pytest.raises(UnsafeModel, match="weights_only"):
        torch_loader.load(spec, Format.TORCH_MODULE, weights=unsafe_files["pickle"], input_shapes=SHAPES)


def test_state_dict_as_the_model_says_how_to_fix(unsafe_files):
    with pytest.raises(InputRejected, match="weights only") as info:
        load_source(unsafe_files["state_dict"], trust=False)
    assert "net.py:build_model --weights" in info.value.hint


@pytest.mark.parametrize("kind", ["pickle", "torchscript", "pt2"])
def test_cli_refuses_with_exit_3_and_writes_nothing(kind, tmp_path, unsafe_files):
    click_testing = pytest.importorskip("click.testing")
    from edgeopt.cli import main

    out = tmp_path / "out"
    result = click_testing.CliRunner().invoke(
        main, ["compress", str(unsafe_files[kind]), "--target", "onnx", "--input-shape", "1,3,16,16", "-o", str(out)])
    assert result.exit_code == 3, result.output
    assert "Refusing" in result.output
    assert not out.exists()


def test_cli_refuses_pickled_weights_with_exit_3(tmp_path, unsafe_files, torch_model):
    click_testing = pytest.importorskip("click.testing")
    from edgeopt.cli import main

    spec, _, _ = torch_model("residual")
    out = tmp_path / "out"
    result = click_testing.CliRunner().invoke(
        main, ["compress", spec, "--weights", str(unsafe_files["pickle"]), "--input-shape", "image=1,3,16,16",
               "--target", "onnx", "-o", str(out)])
    assert result.exit_code == 3, result.output
    assert not out.exists()


def test_weights_flag_with_a_non_torch_model_is_a_usage_error(onnx_model, tmp_path):
    with pytest.raises(UsageError, match="--weights"):
        load_source(onnx_model("residual"), trust=False, weights=tmp_path / "w.pt")
