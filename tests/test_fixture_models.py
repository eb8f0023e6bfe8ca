"""The shared fixture models must be deterministic and survive a save/load."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest

pytest.importorskip("keras")

# Spelled out rather than read from conftest so that renaming or dropping a
# builder, which other tests depend on by name, fails here.
MODEL_NAMES = (
    "conv",
    "depthwise",
    "dense",
    "batchnorm",
    "residual",
    "concat",
    "pooling",
    "two_input",
    "lambda_layer",
)
SUFFIXES = (".h5", ".keras")
N_SAMPLES = 4
ATOL = 1e-5

EXPECTED_INPUTS = {
    "conv": {"image": (16, 16, 3)},
    "depthwise": {"image": (16, 16, 3)},
    "dense": {"features": (20,)},
    "batchnorm": {"image": (8, 8, 1)},
    "residual": {"image": (16, 16, 3)},
    "concat": {"image": (16, 16, 3)},
    "pooling": {"image": (16, 16, 3)},
    "two_input": {"image": (8, 8, 1), "meta": (4,)},
    "lambda_layer": {"image": (8, 8, 1)},
}
EXPECTED_CLASSES = {"conv": 4, "dense": 3, "two_input": 3}


def _predict(model, inputs):
    # Keras maps a dict onto a multi-input model by input name, but for a
    # single-input model it warns that the structure does not match, so that
    # case gets the bare array.
    if len(model.inputs) == 1:
        (inputs,) = inputs.values()
    return np.asarray(model.predict(inputs, verbose=0))


def _load(path, name):
    import keras

    # The Lambda layer is stored as Python bytecode, which Keras refuses to
    # deserialise unless explicitly told the file is trusted.
    return keras.models.load_model(
        path, compile=False, safe_mode=(name != "lambda_layer")
    )


def test_builder_registry_matches_contract(keras_builders):
    assert sorted(keras_builders) == sorted(MODEL_NAMES)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_builder_shape_and_names(name, keras_builders, random_inputs):
    import keras

    model = keras_builders[name]()
    assert isinstance(model, keras.Model)
    assert not model.compiled, "fixture models must be uncompiled"

    names = [t.name for t in model.inputs]
    assert names == list(EXPECTED_INPUTS[name])
    shapes = {t.name: tuple(t.shape[1:]) for t in model.inputs}
    assert shapes == EXPECTED_INPUTS[name]

    inputs = random_inputs(model, N_SAMPLES)
    assert list(inputs) == names
    for key, array in inputs.items():
        assert array.dtype == np.float32
        assert array.shape == (N_SAMPLES,) + EXPECTED_INPUTS[name][key]
        assert array.min() >= 0.0 and array.max() < 1.0

    probs = _predict(model, inputs)
    assert probs.shape[0] == N_SAMPLES
    if name in EXPECTED_CLASSES:
        assert probs.shape[1] == EXPECTED_CLASSES[name]
    np.testing.assert_allclose(probs.sum(axis=-1), 1.0, atol=1e-5)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_builder_is_deterministic(name, keras_builders):
    first = keras_builders[name]().get_weights()
    second = keras_builders[name]().get_weights()
    assert len(first) == len(second)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("suffix", SUFFIXES)
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_save_load_roundtrip(name, suffix, keras_model_file, keras_builders, random_inputs):
    path = keras_model_file(name, suffix)
    assert path.exists() and path.suffix == suffix
    if suffix == ".h5":
        h5py = pytest.importorskip("h5py")
        assert h5py.is_hdf5(path)
    else:
        assert zipfile.is_zipfile(path)

    # The file comes from its own build, so matching a separate build also
    # checks that the builder is deterministic across save boundaries.
    original = keras_builders[name]()
    reloaded = _load(path, name)

    assert [t.name for t in reloaded.inputs] == [t.name for t in original.inputs]
    inputs = random_inputs(original, N_SAMPLES, seed=1)
    expected = _predict(original, inputs)
    actual = _predict(reloaded, inputs)
    assert actual.shape == expected.shape
    max_diff = float(np.max(np.abs(actual - expected)))
    assert max_diff < ATOL, f"{name}{suffix}: max abs diff {max_diff}"


def test_batchnorm_statistics_are_not_identity(keras_builders):
    import keras

    model = keras_builders["batchnorm"]()
    bn = model.get_layer("bn")
    assert isinstance(bn, keras.layers.BatchNormalization)
    _, _, mean, var = bn.get_weights()
    assert np.any(mean != 0.0) and np.any(var != 1.0)


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_lambda_layer_needs_unsafe_load(suffix, keras_model_file):
    import keras

    path = keras_model_file("lambda_layer", suffix)
    with pytest.raises(ValueError, match="(?i)lambda|unsafe|safe_mode"):
        keras.models.load_model(path, compile=False)
    model = keras.models.load_model(path, compile=False, safe_mode=False)
    assert isinstance(model.get_layer("double_it"), keras.layers.Lambda)


def test_keras_model_file_rejects_unknown_suffix(keras_model_file):
    with pytest.raises(ValueError, match="suffix"):
        keras_model_file("conv", ".pb")


def test_keras_model_file_rejects_unknown_name(keras_model_file):
    with pytest.raises(ValueError, match="unknown fixture model"):
        keras_model_file("no_such_model")


def test_rng_fixture_is_seeded(rng):
    np.testing.assert_array_equal(
        rng.random(3), np.random.default_rng(0).random(3)
    )
