"""Keras import: the config is scanned as data before Keras parses anything."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from conftest import build_model, random_inputs  # noqa: E402
from edgeopt.errors import InputRejected, UnsafeModel  # noqa: E402
from edgeopt.formats import detect_format  # noqa: E402
from edgeopt.frameworks import keras as kf  # noqa: E402
from edgeopt.model import Format  # noqa: E402


def _load(path: Path, trust: bool = False):
    return kf.load(path, detect_format(path), trust=trust)


def _layer(cls: str, name: str, **extra) -> dict:
    return {"class_name": cls, "config": {"name": name}, **extra}


def _functional(*layers: dict) -> dict:
    return {"class_name": "Functional", "module": "keras", "config": {"name": "m", "layers": list(layers)}}


# --- the scan ------------------------------------------------------------------------------

def test_plain_keras_layers_are_safe():
    config = _functional(_layer("InputLayer", "in", module="keras.layers"),
                         _layer("Conv2D", "conv", module="keras.layers"),
                         _layer("Dense", "probs"))  # legacy .h5 configs carry no module
    assert kf.find_unsafe(config) == []


@pytest.mark.parametrize("layer, phrase", [
    (_layer("Lambda", "double_it", module="keras.layers"), "layer 'double_it' is a Lambda layer"),
    (_layer("TFOpLambda", "tf_op"), "layer 'tf_op' is a TFOpLambda layer"),
    (_layer("Evil", "ev", module="my_pkg.layers"), "class Evil from module 'my_pkg.layers', outside Keras"),
    (_layer("Scale", "sc", module="keras.layers", registered_name="Custom>Scale"), "custom class 'Custom>Scale'"),
    (_layer("NotALayer", "odd"), "layer 'odd' is class NotALayer, which is not a Keras layer"),
    ({"class_name": "StringLookup", "module": "keras.layers",
      "config": {"name": "vocab", "vocabulary": "/etc/passwd"}}, "reads its vocabulary from a file path"),
])
def test_code_and_foreign_classes_are_named(layer, phrase):
    problems = kf.find_unsafe(_functional(_layer("InputLayer", "in", module="keras.layers"), layer))
    assert len(problems) == 1
    assert phrase in problems[0]


def test_nested_objects_are_scanned():
    # A custom initializer deep inside a layer's config still counts.
    dense = {"class_name": "Dense", "module": "keras.layers",
             "config": {"name": "d", "kernel_initializer": {"class_name": "Sneaky", "module": "evil.init",
                                                            "config": {"name": "init"}}}}
    problems = kf.find_unsafe(_functional(dense))
    assert problems == ["layer/object 'init' is class Sneaky from module 'evil.init', outside Keras"]


# --- reading configs from files ------------------------------------------------------------

@pytest.mark.parametrize("suffix, fmt", [(".h5", Format.KERAS_H5), (".keras", Format.KERAS_V3)])
def test_read_config_without_parsing_the_model(saved_model, suffix, fmt):
    path = saved_model("two_input", suffix)
    assert detect_format(path) is fmt
    config = kf.read_config(path, fmt)
    names = [layer["config"]["name"] for layer in config["config"]["layers"]]
    assert sorted(names) == ["conv", "gap", "image", "merge", "meta", "meta_dense", "probs"]
    assert [i[0] for i in config["config"]["input_layers"]] == ["image", "meta"]


def test_weights_only_h5_is_rejected(tmp_path):
    path = tmp_path / "model.weights.h5"
    build_model("dense").save_weights(path)
    with pytest.raises(InputRejected, match="holds weights only"):
        _load(path)


def test_h5_with_broken_config_is_rejected(tmp_path):
    h5py = pytest.importorskip("h5py")
    path = tmp_path / "model.h5"
    with h5py.File(path, "w") as fh:
        fh.attrs["model_config"] = "{not json"
    with pytest.raises(InputRejected, match="is not valid JSON"):
        _load(path)


def test_keras_zip_without_config_is_rejected(tmp_path):
    path = tmp_path / "model.keras"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("metadata.json", "{}")
    with pytest.raises(InputRejected, match="no readable config.json"):
        kf.read_config(path, Format.KERAS_V3)


def test_keras_with_a_corrupt_weights_file_is_rejected(tmp_path, saved_model):
    src = saved_model("conv", ".keras")
    path = tmp_path / "conv.keras"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(path, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            zout.writestr(info, data[: len(data) // 2] if info.filename == "model.weights.h5" else data)
    with pytest.raises(InputRejected, match=r"Cannot read the weights in .* \(model.weights.h5\) as HDF5"):
        _load(path)


# --- loading and running -------------------------------------------------------------------

@pytest.mark.parametrize("suffix", [".h5", ".keras"])
def test_load_describes_the_model(saved_model, suffix):
    loaded = _load(saved_model("conv", suffix))
    handle = loaded.handle
    assert handle.format is (Format.KERAS_H5 if suffix == ".h5" else Format.KERAS_V3)
    assert handle.framework == "keras"
    assert [t.describe() for t in handle.inputs] == ["image: float32[?,16,16,3]"]
    assert handle.inputs[0].layout == "nhwc"
    # Output names come from the layer, not from Keras' process-wide tensor counter.
    assert [t.describe() for t in handle.outputs] == ["probs: float32[?,4]"]
    assert handle.metadata["layers"] == 5
    assert handle.metadata["params"] == 3 * 3 * 3 * 8 + 8 + 8 * 4 + 4


def test_predict_matches_keras_in_batches(saved_model):
    loaded = _load(saved_model("two_input"))
    assert loaded.handle.input_names == ["image", "meta"]
    reference = build_model("two_input")
    feed = random_inputs(reference, 10, seed=5)
    (out,) = loaded.predict(feed, batch_size=4)  # 4 + 4 + 2
    expected = keras.ops.convert_to_numpy(reference([feed["image"], feed["meta"]], training=False))
    assert out.shape == (10, 3)
    np.testing.assert_allclose(out, expected, atol=1e-6)


@pytest.mark.parametrize("suffix", [".h5", ".keras"])
def test_lambda_layer_needs_trust(saved_model, suffix):
    path = saved_model("lambda_layer", suffix)
    with pytest.raises(UnsafeModel) as info:
        _load(path)
    assert "layer 'double_it' is a Lambda layer" in info.value.message
    assert "--trust-model" in info.value.hint
    assert info.value.exit_code == 3

    loaded = _load(path, trust=True)
    feed = random_inputs(loaded.native, 3, seed=2)
    (out,) = loaded.predict(feed)
    expected = keras.ops.convert_to_numpy(build_model("lambda_layer")(feed["image"], training=False))
    np.testing.assert_allclose(out, expected, atol=1e-6)

    # Trust covered that one load: Keras' own safe mode is still on for everything after it.
    with pytest.raises(ValueError, match="(?i)lambda|unsafe|safe_mode"):
        keras.models.load_model(path, compile=False)


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    pytest.importorskip("tensorflow")
    folder = tmp_path_factory.mktemp("saved") / "conv_saved"
    build_model("conv").export(str(folder), verbose=False)
    return folder


def test_saved_model_needs_trust(exported):
    assert detect_format(exported) is Format.SAVED_MODEL
    with pytest.raises(UnsafeModel, match="Refusing to load the SavedModel"):
        _load(exported)


def test_saved_model_with_trust_matches_keras(exported):
    loaded = _load(exported, trust=True)
    assert [t.describe() for t in loaded.handle.inputs] == ["image: float32[?,16,16,3]"]
    assert len(loaded.handle.outputs) == 1 and loaded.handle.outputs[0].shape == (None, 4)
    feed = random_inputs(build_model("conv"), 5, seed=3)
    (out,) = loaded.predict(feed, batch_size=2)
    expected = keras.ops.convert_to_numpy(build_model("conv")(feed["image"], training=False))
    np.testing.assert_allclose(out, expected, atol=1e-6)


def test_saved_model_without_signature_is_rejected(tmp_path):
    tf = pytest.importorskip("tensorflow")
    module = tf.Module()
    module.v = tf.Variable(1.0)
    tf.saved_model.save(module, str(tmp_path / "bare"))
    with pytest.raises(InputRejected, match="has no 'serving_default' signature"):
        _load(tmp_path / "bare", trust=True)


def test_guess_layout():
    from edgeopt.frameworks.base import guess_layout

    assert guess_layout((None, 224, 224, 3), "nchw") == "nhwc"
    assert guess_layout((None, 3, 224, 224), "nhwc") == "nchw"
    assert guess_layout((None, 4, 4, 4), "nchw") == "nchw"  # ambiguous: the framework's habit
    assert guess_layout((None, 20), "nhwc") is None


def test_config_json_is_what_keras_saved(saved_model):
    path = saved_model("lambda_layer", ".keras")
    with zipfile.ZipFile(path) as zf:
        raw = json.loads(zf.read("config.json"))
    assert kf.read_config(path, Format.KERAS_V3) == raw


@pytest.mark.parametrize("suffix, misleading, fmt", [
    (".keras", "model.h5", Format.KERAS_V3),  # a Keras 3 archive under a legacy name
    (".h5", "model.keras", Format.KERAS_H5),  # legacy HDF5 under the new name
    (".keras", "model.bin", Format.KERAS_V3),
])
def test_content_not_name_decides_how_keras_reads(saved_model, tmp_path, suffix, misleading, fmt):
    path = tmp_path / misleading
    path.write_bytes(saved_model("conv", suffix).read_bytes())
    assert detect_format(path) is fmt
    loaded = _load(path)
    assert loaded.handle.path == path and loaded.handle.format is fmt
    feed = random_inputs(loaded.native, 2, seed=6)
    (out,) = loaded.predict(feed)
    expected = keras.ops.convert_to_numpy(build_model("conv")(feed["image"], training=False))
    np.testing.assert_allclose(out, expected, atol=1e-6)
    assert sorted(p.name for p in tmp_path.iterdir()) == [misleading]  # nothing left beside it
