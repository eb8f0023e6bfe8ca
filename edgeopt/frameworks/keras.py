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
from edgeopt.formats import ZIP_ERRORS, check_zip
from edgeopt.frameworks import h5probe
from edgeopt.frameworks.base import LoadedModel, guess_layout
from edgeopt.model import Format, ModelHandle, TensorSpec

# "__lambda__" is how Keras 3 stores a Python lambda passed where a function was expected.
CODE_LAYERS = {"Lambda", "TFOpLambda", "SlicingOpLambda", "__lambda__"}
# Serialized functions ("class_name": "function") may name only these Keras modules; others such as
# keras.utils.get_file would download or touch files while the model is being rebuilt.
FUNCTION_MODULES = ("activations", "losses", "metrics", "ops", "initializers", "regularizers", "constraints")
VOCABULARY_LAYERS = {"StringLookup", "IntegerLookup", "TextVectorization"}
MODEL_CLASSES = {"Functional", "Sequential", "Model"}
TRUST_HINT = "Pass --trust-model only if you trust where this file came from; loading it can run its code."
# Keras picks its reader by the end of the file name, edgeopt by content: these are the endings
# under which Keras reads each format.
KERAS_SUFFIXES = {Format.KERAS_H5: (".h5", ".hdf5"), Format.KERAS_V3: (".keras",)}


def read_config(path: Path, fmt: Format) -> dict[str, Any]:
    """The model's architecture config, read without letting Keras parse the file.

    HDF5 content (the .h5 file, or model.weights.h5 inside a .keras archive) is first read in a
    child process (h5probe), which also refuses links to other files and decompression bombs.
    """
    require("h5py", "Reading Keras .h5 files")
    if fmt is Format.KERAS_V3:
        with check_zip(path) as zf:
            try:
                raw = zf.read("config.json")
            except (KeyError, *ZIP_ERRORS) as exc:
                raise InputRejected(f"'{path}' has no readable config.json: {exc}.",
                                    hint="The .keras file is corrupt or truncated; save it again.") from exc
            has_weights = "model.weights.h5" in zf.namelist()
        if has_weights:
            _probe(path, "model.weights.h5", f"the weights in '{path}' (model.weights.h5)")
        return _parse_config(raw, path)
    found = _probe(path, None, f"'{path}'")
    if found["config"] is None:
        if found["config_type"] != "NoneType":
            raise InputRejected(f"The model config inside '{path}' is a {found['config_type']}, not JSON text.",
                                hint="The file is corrupt or not a Keras model; save the model again.")
        raise InputRejected(f"'{path}' holds weights only, no model architecture.",
                            hint="Save the whole model with model.save('model.h5') or model.save('model.keras').")
    return _parse_config(found["config"], path)


def _probe(path: Path, member: str | None, what: str) -> dict[str, Any]:
    try:
        found = h5probe.run_probe(path, member)
    except h5probe.ProbeFailed as exc:
        raise InputRejected(f"Cannot read {what} as HDF5: {exc}.",
                            hint="The file is truncated, damaged or crafted; save the model again.") from None
    if found.get("error"):
        raise InputRejected(f"Cannot read {what} as HDF5: {found['error']}.",
                            hint="The file is probably truncated or corrupt; save the model again.")
    if found.get("problem"):
        raise UnsafeModel(f"Refusing {what}: {found['problem']}.",
                          hint="Save the model again with model.save(); edgeopt reads only self-contained files.")
    return found


def _parse_config(raw: Any, path: Path) -> dict[str, Any]:
    if not isinstance(raw, (str, bytes)):
        raise InputRejected(f"The model config inside '{path}' is a {type(raw).__name__}, not JSON text.",
                            hint="The file is corrupt or not a Keras model; save the model again.")
    try:
        config = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
    except ValueError as exc:
        raise InputRejected(f"The model config inside '{path}' is not valid JSON: {exc}.",
                            hint="The file is corrupt; save the model again.") from exc
    except RecursionError:  # json recurses once per level: a nesting bomb would crash the scan
        raise InputRejected(f"The model config inside '{path}' is nested too deeply to be a Keras model.",
                            hint="The file is corrupt or crafted; save the model again.") from None
    if not isinstance(config, dict):
        raise InputRejected(f"The model config inside '{path}' is a JSON {type(config).__name__}, not an object.",
                            hint="The file is corrupt or not a Keras model; save the model again.")
    return config


def _walk(root: Any) -> Iterator[tuple[dict, bool]]:
    """Yield every serialized object (a dict with class_name) in document order and whether it is
    a layer; objects inside a code-carrying one (whose code is reported already) are skipped.

    Iterative, so that however deeply a crafted config nests, the scan cannot overflow the stack.
    """
    stack: list[tuple[Any, bool]] = [(root, False)]
    while stack:
        node, in_layers = stack.pop()
        if isinstance(node, dict):
            if "class_name" in node:
                yield node, in_layers
                if isinstance(node["class_name"], str) and node["class_name"] in CODE_LAYERS:
                    continue
            stack.extend((value, key == "layers") for key, value in reversed(node.items()))
        elif isinstance(node, list):
            stack.extend((item, in_layers) for item in reversed(node))


def _is_keras_module(module: str, allowed: tuple[str, ...] = ("",)) -> bool:
    """``module`` is Keras' own (``keras.x`` or ``keras.src.x``), under one of ``allowed`` when given.

    A plain prefix test would also let ``kerasevil.layers`` pass."""
    parts = module.split(".")
    if parts[0] != "keras":
        return False
    rest = parts[2:] if parts[1:2] == ["src"] else parts[1:]
    return "" in allowed or (bool(rest) and rest[0] in allowed)


def find_unsafe(config: dict[str, Any]) -> list[str]:
    """Reasons the config would run code or touch files on load, each naming its layer."""
    keras = require("keras", "Loading Keras models")
    problems = []
    for obj, is_layer in _walk(config):
        cls = obj["class_name"]
        inner = obj.get("config")
        name = inner.get("name", "?") if isinstance(inner, dict) else "?"
        module = obj.get("module")
        registered = obj.get("registered_name")
        if not isinstance(cls, str) or not isinstance(module, (str, type(None))):
            problems.append(f"object '{name}' has a class_name or module that is not a string")
        elif cls == "__lambda__":
            problems.append("the config holds a Python lambda stored as bytecode")
        elif cls in CODE_LAYERS:
            problems.append(f"layer '{name}' is a {cls} layer (it holds Python code)")
        elif module is not None and not _is_keras_module(module):
            problems.append(f"layer/object '{name}' is class {cls} from module '{module}', outside Keras")
        elif cls == "function" and (module is None or not _is_keras_module(module, FUNCTION_MODULES)):
            problems.append(f"the config calls the function '{inner}' from '{module}', which is not a Keras "
                            "activation, loss, metric or op")
        elif registered and ">" in str(registered):
            problems.append(f"layer/object '{name}' is the custom class '{registered}'")
        elif is_layer and module is None and cls not in MODEL_CLASSES and not hasattr(keras.layers, cls):
            problems.append(f"layer '{name}' is class {cls}, which is not a Keras layer")
        if cls in VOCABULARY_LAYERS and isinstance(inner, dict) and isinstance(inner.get("vocabulary"), str):
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
    folder = _without_optimizer_slots(path)
    try:
        loaded = tf.saved_model.load(str(folder))
        fn = loaded.signatures["serving_default"]
    except KeyError as exc:
        raise InputRejected(f"The SavedModel '{path}' has no 'serving_default' signature.",
                            hint="Export it with model.export(path), which writes one.") from exc
    except Exception as exc:
        raise InputRejected(f"TensorFlow could not load the SavedModel '{path}': {exc}") from exc
    return SavedModel(path, loaded, fn, folder)


def _without_optimizer_slots(path: Path) -> Path:
    """``path``, or where its SavedModel lies without the optimizer's slot variables.

    A model saved by Keras 2 with its optimizer records the optimizer's per-weight state (Adam's
    'm' and 'v'); TensorFlow 2.16+ then fails to load it ("'_UserObject' object has no attribute
    'add_slot'"), and so do the TFLite and OpenVINO converters, which load it the same way.
    Inference needs none of that state, so the graph is rewritten without it, next to links to the
    original variables and assets. The copy lives as long as the process.
    """
    import atexit

    saved_model_pb2 = require("tensorflow.core.protobuf.saved_model_pb2", "Loading SavedModel folders")
    proto = saved_model_pb2.SavedModel()
    try:
        proto.ParseFromString((path / "saved_model.pb").read_bytes())
    except Exception:  # unreadable or not a binary SavedModel: TensorFlow says what is wrong
        return path
    slots = 0
    for graph in proto.meta_graphs:
        for node in graph.object_graph_def.nodes:
            slots += len(node.slot_variables)
            del node.slot_variables[:]
    if not slots:
        return path
    copy = Path(tempfile.mkdtemp(prefix=".edgeopt-savedmodel-"))
    atexit.register(shutil.rmtree, copy, True)
    (copy / "saved_model.pb").write_bytes(proto.SerializeToString())
    for part in path.iterdir():
        if part.name != "saved_model.pb":
            (copy / part.name).symlink_to(part.resolve())
    return copy


class SavedModel(LoadedModel):
    def __init__(self, path: Path, loaded: Any, fn: Any, folder: Path) -> None:
        self.native = loaded
        self._fn = fn
        self.graph_file = folder  # what converters read: the folder, or its copy without optimizer state
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
