"""Shared fixtures: tiny, deterministic Keras 3 models built in code.

Keras is imported only inside the builders and fixtures so that collecting or
running tests that never touch a model does not pay TensorFlow's import cost,
and so those tests still run where TensorFlow is not installed.

Builders are plain ``build_<name>()`` functions returning an uncompiled
``keras.Model``; ``MODEL_BUILDERS`` maps each ``<name>`` to its builder. The
names are relied upon by other tests, so treat them as stable.
"""

from __future__ import annotations

import os
import pathlib
from typing import Callable, Dict

import numpy as np
import pytest

# Must be set before TensorFlow is first imported to have any effect.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

SEED = 0
SUPPORTED_SUFFIXES = (".h5", ".keras")


def _keras():
    keras = pytest.importorskip("keras")
    keras.utils.set_random_seed(SEED)
    return keras


def _randomize_batchnorm(model, seed: int = SEED):
    """Give every BatchNormalization layer non-trivial statistics.

    Fresh BN layers have mean 0, variance 1, gamma 1, beta 0, i.e. they are
    the identity at inference, so a converter that dropped or mis-folded them
    would go unnoticed. Random but deterministic values make that visible.
    """
    import keras

    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if not isinstance(layer, keras.layers.BatchNormalization):
            continue
        values = []
        for weight in layer.weights:
            shape = tuple(weight.shape)
            if weight.path.endswith("moving_variance"):
                values.append(rng.uniform(0.5, 2.0, shape))
            elif weight.path.endswith("gamma"):
                values.append(rng.uniform(0.5, 1.5, shape))
            else:  # beta, moving_mean
                values.append(rng.uniform(-0.5, 0.5, shape))
        layer.set_weights([v.astype(np.float32) for v in values])
    return model


# Every layer gets an explicit name: Keras' auto-generated names depend on how
# many layers were created earlier in the process, which would make saved
# files and layer lookups differ with test order.


def build_conv():
    keras = _keras()
    layers = keras.layers
    inputs = keras.Input(shape=(16, 16, 3), name="image")
    x = layers.Conv2D(8, 3, padding="same", name="conv")(inputs)
    x = layers.ReLU(name="relu")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = layers.Dense(4, activation="softmax", name="probs")(x)
    return keras.Model(inputs, outputs, name="conv")


def build_depthwise():
    keras = _keras()
    layers = keras.layers
    inputs = keras.Input(shape=(16, 16, 3), name="image")
    x = layers.Conv2D(8, 3, strides=2, padding="same", name="conv")(inputs)
    x = layers.DepthwiseConv2D(3, padding="same", name="dw_conv")(x)
    x = layers.BatchNormalization(name="dw_bn")(x)
    x = layers.ReLU(max_value=6.0, name="relu6")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = layers.Dense(5, activation="softmax", name="probs")(x)
    return _randomize_batchnorm(keras.Model(inputs, outputs, name="depthwise"))


def build_dense():
    keras = _keras()
    layers = keras.layers
    inputs = keras.Input(shape=(20,), name="features")
    x = layers.Dense(16, activation="relu", name="hidden")(inputs)
    outputs = layers.Dense(3, activation="softmax", name="probs")(x)
    return keras.Model(inputs, outputs, name="dense")


def build_batchnorm():
    keras = _keras()
    layers = keras.layers
    inputs = keras.Input(shape=(8, 8, 1), name="image")
    x = layers.Conv2D(4, 3, padding="same", use_bias=False, name="conv")(inputs)
    x = layers.BatchNormalization(name="bn")(x)
    x = layers.ReLU(name="relu")(x)
    x = layers.Flatten(name="flatten")(x)
    outputs = layers.Dense(5, activation="softmax", name="probs")(x)
    return _randomize_batchnorm(keras.Model(inputs, outputs, name="batchnorm"))


def build_residual():
    keras = _keras()
    layers = keras.layers
    inputs = keras.Input(shape=(16, 16, 3), name="image")
    x = layers.Conv2D(8, 3, padding="same", activation="relu", name="conv1")(inputs)
    y = layers.Conv2D(8, 3, padding="same", name="conv2")(x)
    x = layers.Add(name="skip_add")([x, y])
    x = layers.ReLU(name="relu")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = layers.Dense(5, activation="softmax", name="probs")(x)
    return keras.Model(inputs, outputs, name="residual")


def build_concat():
    keras = _keras()
    layers = keras.layers
    inputs = keras.Input(shape=(16, 16, 3), name="image")
    a = layers.Conv2D(4, 1, activation="relu", name="branch_a")(inputs)
    b = layers.Conv2D(6, 3, padding="same", activation="relu", name="branch_b")(inputs)
    x = layers.Concatenate(axis=-1, name="concat")([a, b])
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = layers.Dense(5, activation="softmax", name="probs")(x)
    return keras.Model(inputs, outputs, name="concat")


def build_pooling():
    keras = _keras()
    layers = keras.layers
    inputs = keras.Input(shape=(16, 16, 3), name="image")
    x = layers.Conv2D(8, 3, padding="same", activation="relu", name="conv")(inputs)
    x = layers.MaxPooling2D(2, name="max_pool")(x)
    x = layers.AveragePooling2D(2, name="avg_pool")(x)
    x = layers.Flatten(name="flatten")(x)
    outputs = layers.Dense(5, activation="softmax", name="probs")(x)
    return keras.Model(inputs, outputs, name="pooling")


def build_two_input():
    keras = _keras()
    layers = keras.layers
    image = keras.Input(shape=(8, 8, 1), name="image")
    meta = keras.Input(shape=(4,), name="meta")
    x = layers.Conv2D(4, 3, padding="same", activation="relu", name="conv")(image)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    m = layers.Dense(4, activation="relu", name="meta_dense")(meta)
    x = layers.Concatenate(name="merge")([x, m])
    outputs = layers.Dense(3, activation="softmax", name="probs")(x)
    return keras.Model([image, meta], outputs, name="two_input")


def build_lambda_layer():
    # Loading this model needs safe_mode=False (the Lambda is stored as
    # bytecode); saving needs nothing special.
    keras = _keras()
    layers = keras.layers
    inputs = keras.Input(shape=(8, 8, 1), name="image")
    x = layers.Conv2D(4, 3, padding="same", activation="relu", name="conv")(inputs)
    x = layers.Lambda(lambda t: t * 2.0, name="double_it")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = layers.Dense(3, activation="softmax", name="probs")(x)
    return keras.Model(inputs, outputs, name="lambda_layer")


MODEL_BUILDERS: Dict[str, Callable] = {
    "conv": build_conv,
    "depthwise": build_depthwise,
    "dense": build_dense,
    "batchnorm": build_batchnorm,
    "residual": build_residual,
    "concat": build_concat,
    "pooling": build_pooling,
    "two_input": build_two_input,
    "lambda_layer": build_lambda_layer,
}


def build_model(name: str):
    try:
        builder = MODEL_BUILDERS[name]
    except KeyError:
        raise ValueError(
            f"unknown fixture model {name!r}; known: {sorted(MODEL_BUILDERS)}"
        ) from None
    return builder()


def random_inputs(model, n: int, seed: int = 0) -> Dict[str, np.ndarray]:
    """Float32 arrays in [0, 1) for every model input, keyed by input name."""
    rng = np.random.default_rng(seed)
    batch = {}
    for tensor in model.inputs:
        shape = (n,) + tuple(int(d) for d in tensor.shape[1:])
        batch[tensor.name] = rng.random(shape, dtype=np.float32)
    return batch


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(name="random_inputs")
def _random_inputs_fixture():
    return random_inputs


@pytest.fixture
def keras_builders():
    return dict(MODEL_BUILDERS)


@pytest.fixture
def keras_model_file(tmp_path) -> Callable[..., pathlib.Path]:
    """Factory: ``(name, suffix=".h5") -> path`` of the saved fixture model.

    ``.h5`` writes legacy HDF5, ``.keras`` the Keras 3 zip format. The file is
    ``tmp_path / f"{name}{suffix}"``.
    """

    def save(name: str, suffix: str = ".h5") -> pathlib.Path:
        if suffix not in SUPPORTED_SUFFIXES:
            raise ValueError(
                f"suffix must be one of {SUPPORTED_SUFFIXES}, got {suffix!r}"
            )
        model = build_model(name)
        path = tmp_path / f"{name}{suffix}"
        model.save(path)
        return path

    return save


# --- Shared files for the edgeopt tests -------------------------------------
# Saving a model and converting it cost seconds, so the files are written once
# per session under pytest's temporary root and shared read-only.

CALIB_SAMPLES = 40


@pytest.fixture(scope="session")
def saved_model(tmp_path_factory) -> Callable[..., pathlib.Path]:
    """Factory: ``(name, suffix=".h5") -> path`` of a fixture model saved once per session."""
    root = tmp_path_factory.mktemp("models")
    cache: Dict[tuple, pathlib.Path] = {}

    def get(name: str, suffix: str = ".h5") -> pathlib.Path:
        if (name, suffix) not in cache:
            if suffix not in SUPPORTED_SUFFIXES:
                raise ValueError(f"suffix must be one of {SUPPORTED_SUFFIXES}, got {suffix!r}")
            path = root / f"{name}{suffix}"
            build_model(name).save(path)
            cache[(name, suffix)] = path
        return cache[(name, suffix)]

    return get


@pytest.fixture(scope="session")
def calib_file(tmp_path_factory) -> Callable[..., pathlib.Path]:
    """Factory: ``(name, n=CALIB_SAMPLES, seed=1) -> .npz`` of random inputs for that model,
    one array per input, named after it."""
    root = tmp_path_factory.mktemp("calib")
    cache: Dict[tuple, pathlib.Path] = {}

    def get(name: str, n: int = CALIB_SAMPLES, seed: int = 1) -> pathlib.Path:
        if (name, n, seed) not in cache:
            path = root / f"{name}_{n}_{seed}.npz"
            np.savez(path, **random_inputs(build_model(name), n, seed=seed))
            cache[(name, n, seed)] = path
        return cache[(name, n, seed)]

    return get


def tflite_ops(path) -> list:
    """``(op name, [input dtypes], [output dtypes])`` for each op of a .tflite file.

    Read with LiteRT's plain builtin resolver, without the default XNNPACK delegate, which would
    otherwise take over the ops and hide them. Independent of edgeopt's own op summary.
    """
    interpreter_module = pytest.importorskip("ai_edge_litert.interpreter")
    interp = interpreter_module.Interpreter(
        model_path=str(path),
        experimental_op_resolver_type=interpreter_module.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    tensors = {t["index"]: np.dtype(t["dtype"]) for t in interp.get_tensor_details()}
    return [(op["op_name"], [tensors[i] for i in op["inputs"] if i >= 0],
             [tensors[i] for i in op["outputs"]]) for op in interp._get_ops_details()]


INT8_COMPUTE_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")


def assert_full_integer(path) -> None:
    """Every conv/depthwise/dense op takes int8 activations and int8 weights."""
    ops = tflite_ops(path)
    compute = [op for op in ops if op[0] in INT8_COMPUTE_OPS]
    assert compute, f"no compute ops in {path}: {[op[0] for op in ops]}"
    for name, inputs, _outputs in compute:
        assert inputs[0] == np.int8 and inputs[1] == np.int8, f"{name} in {path} has inputs {inputs}"


def run_tflite(path, feed: Dict[str, np.ndarray]) -> np.ndarray:
    """The first output of a .tflite file for ``feed`` (keyed by input tensor name), sample by
    sample, (de)quantizing int8 inputs and outputs by hand. Independent of edgeopt's sessions."""
    interpreter_module = pytest.importorskip("ai_edge_litert.interpreter")
    interp = interpreter_module.Interpreter(model_path=str(path))
    interp.allocate_tensors()
    count = len(next(iter(feed.values())))
    # A one-input model is fed whatever its tensor is called (SavedModel artifacts prefix it).
    only = next(iter(feed.values())) if len(feed) == 1 else None
    outputs = []
    for i in range(count):
        for d in interp.get_input_details():
            value = (feed[d["name"]] if only is None else only)[i:i + 1]
            scale, zero = d["quantization"]
            if d["dtype"] == np.int8:
                value = np.round(value / scale + zero).clip(-128, 127)
            interp.set_tensor(d["index"], value.astype(d["dtype"]))
        interp.invoke()
        d = interp.get_output_details()[0]
        out = interp.get_tensor(d["index"])
        scale, zero = d["quantization"]
        outputs.append((out.astype(np.float32) - zero) * scale if d["dtype"] == np.int8 else out.copy())
    return np.concatenate(outputs)


def keras_predict(model, feed: Dict[str, np.ndarray]) -> np.ndarray:
    args = [feed[t.name] for t in model.inputs]
    return np.asarray(model(args if len(args) > 1 else args[0], training=False))


def mean_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a.reshape(len(a), -1).astype(np.float64)
    b = b.reshape(len(b), -1).astype(np.float64)
    return float(np.mean(np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))))


# --- PyTorch and ONNX fixture models (builders in tiny_models.py) ---------------------------------


@pytest.fixture(scope="session")
def torch_model(tmp_path_factory) -> Callable[..., tuple]:
    """Factory: ``(name) -> (spec, weights, reference module)`` for a tiny PyTorch model.

    ``spec`` is ``".../nets.py:build_<name>"``; ``weights`` a state_dict file with weights unlike the
    builder's own; the reference is the same module built and loaded outside edgeopt.
    """
    pytest.importorskip("torch")
    import torch
    import tiny_models

    root = tmp_path_factory.mktemp("torch_models")
    nets_file = tiny_models.write_torch_nets(root)
    nets = tiny_models.import_nets(nets_file)
    cache: Dict[str, tuple] = {}

    def get(name: str) -> tuple:
        if name not in cache:
            module = getattr(nets, f"build_{name}")()
            state = tiny_models.trained_state(module)
            module.load_state_dict(state)
            weights = root / f"{name}.pt"
            torch.save(state, weights)
            cache[name] = (f"{nets_file}:build_{name}", weights, module.eval())
        return cache[name]

    return get


@pytest.fixture(scope="session")
def onnx_model(tmp_path_factory) -> Callable[..., pathlib.Path]:
    """Factory: ``(name, batch=None) -> path`` of a tiny ONNX model (NCHW) saved once per session."""
    pytest.importorskip("onnx")
    import onnx
    import tiny_models

    root = tmp_path_factory.mktemp("onnx_models")
    cache: Dict[tuple, pathlib.Path] = {}

    def get(name: str, batch: int | None = None) -> pathlib.Path:
        if (name, batch) not in cache:
            path = root / f"{name}{'' if batch is None else f'_b{batch}'}.onnx"
            onnx.save(tiny_models.build_onnx(name, batch=batch), str(path))
            cache[(name, batch)] = path
        return cache[(name, batch)]

    return get


@pytest.fixture(scope="session")
def nchw_calib(tmp_path_factory) -> Callable[..., pathlib.Path]:
    """Factory: ``(name, n=CALIB_SAMPLES, seed=1) -> .npz`` of NCHW inputs for the PyTorch/ONNX models."""
    import tiny_models

    root = tmp_path_factory.mktemp("nchw_calib")
    cache: Dict[tuple, pathlib.Path] = {}

    def get(name: str, n: int = CALIB_SAMPLES, seed: int = 1) -> pathlib.Path:
        if (name, n, seed) not in cache:
            path = root / f"{name}_{n}_{seed}.npz"
            np.savez(path, **tiny_models.random_feed(name, n, seed=seed))
            cache[(name, n, seed)] = path
        return cache[(name, n, seed)]

    return get
