"""Keras import: .h5 (legacy HDF5), .keras (Keras 3 zip) and SavedModel folders.

The model's config is read and scanned as data first; only when it holds nothing that would run
code on load (Lambda layers, classes from outside Keras, file-path vocabularies) does Keras parse
the file. ``trust=True`` lifts that check for models whose origin the user vouches for.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from edgeopt.deps import require
from edgeopt.errors import InputRejected, UnsafeModel
from edgeopt.formats import check_zip
from edgeopt.frameworks.base import LoadedModel, guess_layout
from edgeopt.model import Format, ModelHandle, TensorSpec

CODE_LAYERS = {"Lambda", "TFOpLambda", "SlicingOpLambda"}
VOCABULARY_LAYERS = {"StringLookup", "IntegerLookup", "TextVectorization"}
MODEL_CLASSES = {"Functional", "Sequential", "Model"}
TRUST_HINT = "Pass --trust-model only if you trust where this file came from; loading it can run its code."
# Keras picks its reader by the end of the file name, edgeopt by content: these are the endings
# under which Keras reads each format.
KERAS_SUFFIXES = {Format.KERAS_H5: (".h5", ".hdf5"), Format.KERAS_V3: (".keras",)}


def read_config(path: Path, fmt: Format) -> dict[str, Any]:
    """The model's architecture config, read without letting Keras parse the file."""
    if fmt is Format.KERAS_V3:
        with check_zip(path) as zf:
            try:
                return json.loads(zf.read("config.json"))
            except (KeyError, ValueError, OSError) as exc:
                raise InputRejected(f"'{path}' has no readable config.json: {exc}.",
                                    hint="The .keras file is corrupt or truncated; save it again.") from exc
    h5py = require("h5py", "Reading Keras .h5 files")
    try:
        with h5py.File(path, "r") as fh:
            raw = fh.attrs.get("model_config")
    except OSError as exc:
        raise InputRejected(f"Cannot read '{path}' as HDF5: {exc}.",
                            hint="The file is probably truncated or corrupt; save the model again.") from exc
    if raw is None:
        raise InputRejected(f"'{path}' holds weights only, no model architecture.",
                            hint="Save the whole model with model.save('model.h5') or model.save('model.keras').")
    try:
        return json.loads(raw.decode() if isinstance(raw, bytes) else raw)
    except ValueError as exc:
        raise InputRejected(f"The model config inside '{path}' is not valid JSON: {exc}.") from exc


def _walk(node: Any, in_layers: bool = False) -> Iterator[tuple[dict, bool]]:
    """Yield every serialized object (a dict with class_name) and whether it is a layer."""
    if isinstance(node, dict):
        if "class_name" in node:
            yield node, in_layers
        for key, value in node.items():
            yield from _walk(value, key == "layers")
    elif isinstance(node, list):
        for item in node:
            yield from _walk(item, in_layers)


def find_unsafe(config: dict[str, Any]) -> list[str]:
    """Reasons the config would run code or touch files on load, each naming its layer."""
    keras = require("keras", "Loading Keras models")
    problems = []
    for obj, is_layer in _walk(config):
        cls = obj["class_name"]
        name = (obj.get("config") or {}).get("name", "?") if isinstance(obj.get("config"), dict) else "?"
        module = obj.get("module")
        registered = obj.get("registered_name")
        if cls in CODE_LAYERS:
            problems.append(f"layer '{name}' is a {cls} layer (it holds Python code)")
        elif module is not None and not str(module).startswith("keras"):
            problems.append(f"layer/object '{name}' is class {cls} from module '{module}', outside Keras")
        elif registered and ">" in str(registered):
            problems.append(f"layer/object '{name}' is the custom class '{registered}'")
        elif is_layer and module is None and cls not in MODEL_CLASSES and not hasattr(keras.layers, cls):
            problems.append(f"layer '{name}' is class {cls}, which is not a Keras layer")
        if cls in VOCABULARY_LAYERS and isinstance((obj.get("config") or {}).get("vocabulary"), str):
            problems.append(f"layer '{name}' ({cls}) reads its vocabulary from a file path")
    return problems


def load(path: Path, fmt: Format, *, trust: bool = False) -> LoadedModel:
    if fmt is Format.SAVED_MODEL:
        return _load_saved_model(path, trust=trust)
    config = read_config(path, fmt)
    problems = find_unsafe(config)
    if problems and not trust:
        raise UnsafeModel(f"Refusing to load '{path}': " + "; ".join(problems) + ".", hint=TRUST_HINT)
    keras = require("keras", "Loading Keras models")
    try:
        # Trust applies to this file only: safe_mode per call, never Keras' process-wide switch,
        # which would leave every later load in the process unguarded.
        with _named_for_keras(path, fmt) as readable:
            model = keras.models.load_model(readable, compile=False, safe_mode=not trust)
    except Exception as exc:  # Keras raises many types for broken files; all mean the same here
        raise InputRejected(f"Keras could not load '{path}': {type(exc).__name__}: {exc}",
                            hint="The file may be corrupt, truncated, or need custom objects.") from exc
    return KerasModel(path, fmt, model)


@contextlib.contextmanager
def _named_for_keras(path: Path, fmt: Format) -> Iterator[Path]:
    """``path``, or a link to it whose name tells Keras what the content is (a .keras archive
    saved as model.h5 would otherwise go to the HDF5 reader and fail)."""
    suffixes = KERAS_SUFFIXES[fmt]
    if str(path).endswith(suffixes):
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="edgeopt-") as tmp:
        link = Path(tmp) / f"{path.stem}{suffixes[0]}"
        try:
            link.symlink_to(path.resolve())
        except OSError:  # no symlinks on this file system: Keras reads the whole file anyway
            shutil.copyfile(path, link)
        yield link


class KerasModel(LoadedModel):
    def __init__(self, path: Path, fmt: Format, model: Any) -> None:
        self.native = model
        inputs = tuple(_spec(t, f"input_{i}") for i, t in enumerate(model.inputs))
        # Output tensors are named by a process-wide counter (keras_tensor_N), so a report would
        # change with whatever ran before; the output layers' names are stable and meaningful.
        layer_names = list(getattr(model, "output_names", None) or [])
        outputs = tuple(_spec(t, f"output_{i}", name=layer_names[i] if i < len(layer_names) else None)
                        for i, t in enumerate(model.outputs))
        self.handle = ModelHandle(path=path, format=fmt, inputs=inputs, outputs=outputs,
                                  metadata={"layers": len(model.layers), "params": int(model.count_params()),
                                            "macs": count_macs(model)})

    def predict(self, feed: dict[str, np.ndarray], batch_size: int = 64) -> list[np.ndarray]:
        keras = require("keras", "Running Keras models")
        names = self.handle.input_names
        count = len(feed[names[0]])
        chunks: list[list[np.ndarray]] = []
        for start in range(0, count, batch_size):
            args = [feed[n][start:start + batch_size] for n in names]
            out = self.native(args if len(args) > 1 else args[0], training=False)
            out = out if isinstance(out, (list, tuple)) else [out]
            chunks.append([keras.ops.convert_to_numpy(o) for o in out])
        return [np.concatenate(parts) for parts in zip(*chunks)]


def _spec(tensor: Any, fallback: str, name: str | None = None) -> TensorSpec:
    name = name or getattr(tensor, "name", None) or fallback
    shape = tuple(None if d is None else int(d) for d in tensor.shape)
    dtype = str(getattr(tensor, "dtype", "float32"))
    return TensorSpec(name=name, shape=shape, dtype=dtype, layout=guess_layout(shape, prefer="nhwc"))


def _load_saved_model(path: Path, *, trust: bool) -> LoadedModel:
    if not trust:
        raise UnsafeModel(
            f"Refusing to load the SavedModel '{path}': a SavedModel is a TensorFlow graph, and loading "
            "it runs its ops.", hint=TRUST_HINT + " Or pass the Keras .keras/.h5 file instead.")
    tf = require("tensorflow", "Loading SavedModel folders")
    try:
        loaded = tf.saved_model.load(str(path))
        fn = loaded.signatures["serving_default"]
    except KeyError as exc:
        raise InputRejected(f"The SavedModel '{path}' has no 'serving_default' signature.",
                            hint="Export it with model.export(path), which writes one.") from exc
    except Exception as exc:
        raise InputRejected(f"TensorFlow could not load the SavedModel '{path}': {exc}") from exc
    return SavedModel(path, loaded, fn)


class SavedModel(LoadedModel):
    def __init__(self, path: Path, loaded: Any, fn: Any) -> None:
        self.native = loaded
        self._fn = fn
        _args, kwargs = fn.structured_input_signature
        inputs = tuple(
            TensorSpec(name=name, shape=tuple(spec.shape.as_list()), dtype=spec.dtype.name,
                       layout=guess_layout(tuple(spec.shape.as_list()), prefer="nhwc"))
            for name, spec in sorted(kwargs.items()))
        self._output_keys = sorted(fn.structured_outputs)
        outputs = tuple(
            TensorSpec(name=key, shape=tuple(fn.structured_outputs[key].shape.as_list()),
                       dtype=fn.structured_outputs[key].dtype.name)
            for key in self._output_keys)
        self.handle = ModelHandle(path=path, format=Format.SAVED_MODEL, inputs=inputs, outputs=outputs)

    def predict(self, feed: dict[str, np.ndarray], batch_size: int = 64) -> list[np.ndarray]:
        names = self.handle.input_names
        count = len(feed[names[0]])
        chunks = []
        for start in range(0, count, batch_size):
            out = self._fn(**{n: feed[n][start:start + batch_size] for n in names})
            chunks.append([np.asarray(out[k]) for k in self._output_keys])
        return [np.concatenate(parts) for parts in zip(*chunks)]



def count_macs(model: Any) -> int:
    """Multiply-accumulates of one inference (batch 1) in Conv/Dense layers, from layer shapes."""
    total = 0
    for layer in model.layers:
        cls = layer.__class__.__name__
        kernel = getattr(layer, "kernel", None) if cls != "SeparableConv2D" else None
        try:
            out_shape = layer.output.shape
        except (AttributeError, ValueError):
            continue
        positions = int(np.prod([d for d in out_shape[1:-1] if d is not None])) if len(out_shape) > 2 else 1
        if cls in ("Conv1D", "Conv2D", "Conv3D", "Dense", "DepthwiseConv2D", "DepthwiseConv1D") and kernel is not None:
            shape = tuple(int(d) for d in kernel.shape)
            total += positions * int(np.prod(shape))  # kh*kw*in*out (or *multiplier) per position
        elif cls == "SeparableConv2D":
            dw, pw = (tuple(int(d) for d in w.shape) for w in layer.get_weights()[:2])
            total += positions * (int(np.prod(dw)) + int(np.prod(pw)))
    return total
