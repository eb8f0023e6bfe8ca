"""PyTorch import: a model built by the user's own code, plus weights read as tensors only.

The model is named as ``path/to/net.py:build_model`` or ``package.module:ClassName``: the user
chose that code, so running it is expected. Weights come from ``--weights`` and are read with
``torch.load(weights_only=True)``, which refuses anything but tensors and plain containers.
TorchScript archives, ``.pt2`` programs and whole pickled modules carry code or pickles that run
on load; they are refused unless ``trust=True``.

PyTorch modules do not record their input shapes, so those come from ``input_shapes`` or, failing
that, from the calibration arrays.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import re
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from edgeopt.deps import require
from edgeopt.errors import InputRejected, UnsafeModel, UsageError
from edgeopt.formats import ZIP_ERRORS, ZIP_MAGIC, check_zip, require_regular_file
from edgeopt.frameworks.base import LoadedModel, guess_layout
from edgeopt.model import Format, ModelHandle, TensorSpec

TRUST_HINT = "Pass --trust-model only if you trust where this file came from; loading it can run its code."
STATE_DICT_HINT = ("Save the weights alone with torch.save(model.state_dict(), 'weights.pt') and pass the code "
                   "that builds the model: edgeopt compress net.py:build_model --weights weights.pt.")
SHAPE_HINT = ("Pass --input-shape NAME=1,3,224,224 (once per input; the first axis is the batch), or --calib "
              "with an .npz holding one array per input.")

_SPEC = re.compile(r"^(?P<target>[^:]+):(?P<attr>[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)$")
_MODULE = re.compile(r"^[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*$")


def parse_spec(text: str) -> tuple[str, str] | None:
    """``(file-or-module, attribute)`` when ``text`` names Python code, else None.

    Checked before the model path is sniffed as a file: ``net.py:build_model`` is no file.
    """
    match = _SPEC.match(str(text))
    if match is None or Path(text).exists():
        return None
    target = match["target"]
    if target.endswith(".py") or _MODULE.match(target):
        return target, match["attr"]
    return None


def load(path: Path | str, fmt: Format, *, trust: bool = False, weights: Path | None = None,
         input_shapes: dict[str, tuple[int, ...]] | None = None, calib: Path | None = None) -> LoadedModel:
    torch = require("torch", "Loading PyTorch models")
    notes: list[str] = []
    files: list[Path] = []
    if fmt is Format.TORCH_MODULE:
        module, stem, origin = _build(str(path), files)
        if weights is not None:
            state = _state_dict(torch, Path(weights), trust=trust, origin=str(path))
            _apply_weights(module, state, Path(weights))
            files.append(Path(weights))
        else:
            notes.append(f"No --weights given: '{path}' is used with the weights its code sets "
                         "(random unless it loads them).")
    else:
        if weights is not None:
            raise UsageError("--weights goes with a model built from code (net.py:build_model), not with "
                             f"the {fmt.value} file '{path}'.", hint="Drop --weights, or pass the model's code.")
        module = _load_archive(torch, Path(path), fmt, trust=trust)
        stem, origin = Path(path).stem, str(path)
        files.append(Path(path))
    try:
        module.eval()
    except NotImplementedError:  # a torch.export program is fixed in the mode it was exported in
        pass
    names = input_names(module)
    inputs = _input_specs(names, input_shapes, calib, origin)
    return TorchModel(torch, module, fmt, inputs, files=files, stem=stem, notes=notes, origin=origin)


def _build(spec: str, files: list[Path]) -> tuple[Any, str, str]:
    torch = require("torch", "Loading PyTorch models")
    parsed = parse_spec(spec)
    if parsed is None:
        raise UsageError(f"'{spec}' does not name Python code as FILE.py:NAME or package.module:NAME.")
    target, attr = parsed
    if target.endswith(".py"):
        file = Path(target)
        if not file.is_file():
            raise InputRejected(f"The model code '{file}' (from '{spec}') does not exist.",
                                hint="Give the path of the .py file that defines the model, then ':' and the "
                                     "function or class that builds it.")
        files.insert(0, file)
        module = _import_file(file)
        stem = file.stem
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as exc:
            raise InputRejected(f"Cannot import '{target}' (from '{spec}'): {exc}.",
                                hint="Install the package that defines the model, or pass its file: "
                                     "path/to/net.py:NAME.") from exc
        if getattr(module, "__file__", None):
            files.insert(0, Path(module.__file__))
        stem = attr.split(".")[-1].lower()
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            found = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
            raise InputRejected(f"'{target}' has no '{attr}'.", hint=f"Callables defined there: {', '.join(found)}.")
        obj = getattr(obj, part)
    if not callable(obj):
        raise InputRejected(f"'{spec}' is a {type(obj).__name__}, not a class or function that builds a model.")
    try:
        built = obj()
    except Exception as exc:  # whatever the user's code raises
        raise InputRejected(f"Building the model with '{spec}' raised {type(exc).__name__}: {exc}",
                            hint=f"'{attr}' is called with no arguments; give it defaults or wrap it.") from exc
    if not isinstance(built, torch.nn.Module):
        raise InputRejected(f"'{spec}' returned a {type(built).__name__}, not a torch.nn.Module.")
    return built, stem, spec


def _import_file(file: Path) -> Any:
    name = f"edgeopt_user_model_{abs(hash(str(file.resolve())))}"
    spec = importlib.util.spec_from_file_location(name, file)
    if spec is None or spec.loader is None:
        raise InputRejected(f"'{file}' cannot be imported as a Python module.")
    module = importlib.util.module_from_spec(spec)
    # Sibling imports in the user's file (from blocks import ...) resolve from its own folder.
    sys.path.insert(0, str(file.parent.resolve()))
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(name, None)
        raise InputRejected(f"Importing '{file}' raised {type(exc).__name__}: {exc}") from exc
    finally:
        sys.path.remove(str(file.parent.resolve()))
    return module


def _state_dict(torch: Any, path: Path, *, trust: bool, origin: str) -> dict[str, Any]:
    if not path.is_file():
        raise InputRejected(f"The weights file '{path}' does not exist.")
    if path.suffix == ".safetensors":
        safetensors = require("safetensors.torch", "Reading .safetensors weights")
        try:
            loaded: Any = safetensors.load_file(str(path))
        except Exception as exc:  # safetensors raises its own error type for a damaged header
            raise InputRejected(f"Cannot read the weights file '{path}': {type(exc).__name__}: {_first_line(exc)}",
                                hint="The file may be truncated or corrupt; save the weights again.") from exc
    else:
        _check_container(path)
        try:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            broken = InputRejected(f"Cannot read the weights file '{path}': {type(exc).__name__}: "
                                   f"{_pickle_reason(exc)}",
                                   hint="The file may be truncated or corrupt; save the state_dict again.")
            if not _is_pickle_refusal(exc) or (not trust and not _carries_code(exc)):
                raise broken from exc
            if not trust:
                raise UnsafeModel(f"Refusing '{path}': it holds pickled Python objects beyond tensors "
                                  f"(torch.load(weights_only=True) refused it: {_pickle_reason(exc)}).",
                                  hint=STATE_DICT_HINT + " " + TRUST_HINT) from exc
            try:
                loaded = torch.load(path, map_location="cpu", weights_only=False)
            except Exception as exc2:  # a trusted file can still be broken
                raise InputRejected(f"Cannot read the weights file '{path}': {type(exc2).__name__}: "
                                    f"{_first_line(exc2)}") from exc2
    if isinstance(loaded, torch.nn.Module):
        loaded = loaded.state_dict()
    if isinstance(loaded, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(loaded.get(key), dict):
                loaded = loaded[key]
                break
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise InputRejected(f"'{path}' does not hold a state_dict (a mapping of names to tensors) for '{origin}'.",
                            hint=STATE_DICT_HINT)
    return loaded


def _apply_weights(module: Any, state: dict[str, Any], path: Path) -> None:
    try:
        result = module.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches raise even when strict=False
        raise InputRejected(f"The weights in '{path}' do not fit the model: {_first_line(exc)}",
                            hint="The weights were saved from a different architecture or configuration.") from exc
    if result.missing_keys or result.unexpected_keys:
        parts = []
        if result.missing_keys:
            parts.append(f"missing {_few(result.missing_keys)}")
        if result.unexpected_keys:
            parts.append(f"unexpected {_few(result.unexpected_keys)}")
        raise InputRejected(f"The weights in '{path}' do not match the model's parameters: {'; '.join(parts)}.",
                            hint="Check that the code builds the same architecture the weights were saved from "
                                 "(a 'module.' prefix means they were saved from a DataParallel wrapper).")


def _load_archive(torch: Any, path: Path, fmt: Format, *, trust: bool) -> Any:
    if fmt is Format.TORCH_PICKLE and not trust:
        try:
            torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            if _is_pickle_refusal(exc) and _carries_code(exc):
                raise UnsafeModel(f"Refusing to load '{path}': it is a pickled Python object (a whole module), "
                                  f"and unpickling it can run arbitrary code ({_pickle_reason(exc)}).",
                                  hint=STATE_DICT_HINT + " " + TRUST_HINT) from exc
            raise InputRejected(f"Cannot read '{path}' as a PyTorch file: {_pickle_reason(exc)}",
                                hint="The file may be truncated or corrupt; save it again.") from exc
        raise InputRejected(f"'{path}' holds weights only, no model.", hint=STATE_DICT_HINT)
    if not trust:
        what = "a TorchScript archive (its code runs when loaded)" if fmt is Format.TORCHSCRIPT else \
            "a torch.export program (.pt2; loading it unpickles and runs its graph)"
        raise UnsafeModel(f"Refusing to load '{path}': it is {what}.", hint=STATE_DICT_HINT + " " + TRUST_HINT)
    try:
        if fmt is Format.TORCHSCRIPT:
            return torch.jit.load(str(path), map_location="cpu")
        if fmt is Format.TORCH_EXPORT:
            return torch.export.load(str(path)).module()
        loaded = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise InputRejected(f"PyTorch could not load '{path}': {type(exc).__name__}: {_first_line(exc)}") from exc
    if not isinstance(loaded, torch.nn.Module):
        raise InputRejected(f"'{path}' holds a {type(loaded).__name__}, not a torch.nn.Module.", hint=STATE_DICT_HINT)
    return loaded


def _is_pickle_refusal(exc: Exception) -> bool:
    import pickle

    return isinstance(exc, pickle.UnpicklingError) or "weights_only" in str(exc)


def _carries_code(exc: Exception) -> bool:
    """Whether the weights-only unpickler met a reference to code (a GLOBAL: a class or function to
    call), rather than bytes that are simply broken ("Unsupported operand 89")."""
    text = str(exc)
    return "GLOBAL" in text or "Unsupported class" in text or "Can only build" in text


def _pickle_reason(exc: Exception) -> str:
    """The line of torch's long weights-only message that says what was refused."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    reason = next((line for line in lines if "GLOBAL" in line or line.startswith(("Unsupported", "Can only"))),
                  None)
    return reason or _first_line(exc)


def _check_container(path: Path) -> None:
    """Bound a zip-format weights file (entries, sizes, ratio) before torch opens it."""
    with path.open("rb") as fh:
        is_zip = fh.read(4) == ZIP_MAGIC
    if is_zip:
        check_zip(path).close()


def input_names(module: Any) -> list[str]:
    """The forward() parameters without defaults, which callers must feed."""
    schema = getattr(getattr(module, "forward", None), "schema", None)
    if schema is not None:  # TorchScript: the first argument is self
        return [a.name for a in schema.arguments[1:] if not a.has_default_value()]
    graph = getattr(module, "graph", None)
    if graph is not None and hasattr(graph, "nodes"):  # torch.fx / torch.export
        names = [n.name for n in graph.nodes if n.op == "placeholder"]
        if names:
            return names
    try:
        params = inspect.signature(module.forward).parameters.values()
    except (TypeError, ValueError):
        return ["input"]
    names = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and
             p.default is inspect.Parameter.empty]
    return names or ["input"]


def _input_specs(names: list[str], shapes: dict[str, tuple[int, ...]] | None, calib: Path | None,
                 origin: str) -> tuple[TensorSpec, ...]:
    dtypes: dict[str, str] = {}
    if shapes:
        given = dict(shapes)
        if len(names) == 1 and len(given) == 1:
            given = {names[0]: next(iter(given.values()))}
        missing = [n for n in names if n not in given]
        if missing:
            raise UsageError(f"--input-shape names {sorted(given)}, but '{origin}' takes inputs {names} "
                             f"(no shape for {missing}).", hint=SHAPE_HINT)
        full = {n: tuple(int(d) for d in given[n]) for n in names}
    elif calib is not None:
        found = peek_arrays(Path(calib))
        if len(names) == 1 and len(found) == 1:
            found = {names[0]: next(iter(found.values()))}
        missing = [n for n in names if n not in found]
        if missing:
            raise UsageError(f"Cannot tell the input shapes of '{origin}': the calibration data '{calib}' has "
                             f"arrays {sorted(found)} but the model takes {names}.", hint=SHAPE_HINT)
        full = {n: (1, *found[n][0]) for n in names}
        dtypes = {n: ("float32" if found[n][1].kind == "f" else "int64") for n in names}
    else:
        raise UsageError(f"PyTorch modules do not record input shapes, and none were given for '{origin}'.",
                         hint=SHAPE_HINT)
    specs = []
    for name in names:
        # The first axis is the batch: left free, as other importers do.
        shape = (None, *full[name][1:])
        specs.append(TensorSpec(name=name, shape=shape, dtype=dtypes.get(name, "float32"),
                                layout=guess_layout(shape, prefer="nchw")))
    return tuple(specs)


def peek_arrays(path: Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Per-sample shape and dtype of each array in calibration data, read from headers only."""
    arrays: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
    if path.exists() and not path.is_dir():
        require_regular_file(path, "calibration")
    if path.is_file() and zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as zf:
                for member in zf.namelist():
                    if member.endswith(".npy") and member != "labels.npy":
                        with zf.open(member) as fh:
                            arrays[member[:-4]] = _npy_header(fh, f"{path}[{member}]")
        except ZIP_ERRORS as exc:
            raise InputRejected(f"Cannot read '{path}' as an .npz archive: {exc}") from exc
    elif path.is_file() and path.suffix == ".npy":
        with path.open("rb") as fh:
            arrays[path.stem] = _npy_header(fh, str(path))
    elif path.is_dir():
        for file in sorted(path.glob("*.npy")):
            if file.stem != "labels":
                with require_regular_file(file, "calibration").open("rb") as fh:
                    arrays[file.stem] = _npy_header(fh, str(file))
    if not arrays:
        raise UsageError(f"Cannot read input shapes from the calibration data '{path}' (images or no arrays).",
                         hint=SHAPE_HINT)
    return arrays


def _npy_header(fh: Any, origin: str) -> tuple[tuple[int, ...], np.dtype]:
    try:
        version = np.lib.format.read_magic(fh)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _fortran, dtype = read(fh)
    except Exception as exc:
        raise InputRejected(f"{origin} is not a valid .npy array: {exc}") from exc
    if not shape:
        raise InputRejected(f"{origin} is a scalar; expected samples along the first axis.")
    return tuple(shape[1:]), np.dtype(dtype)


def _few(keys: list[str], limit: int = 5) -> str:
    shown = ", ".join(f"'{k}'" for k in keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def _first_line(exc: Exception) -> str:
    # PyTorch often opens with a heading ("Error(s) in loading state_dict for Net:"); keep what follows.
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return " ".join(lines[:3]) if lines else type(exc).__name__


def _flatten(out: Any) -> list[Any]:
    if isinstance(out, dict):
        return [v for _k, v in out.items()]
    if isinstance(out, (list, tuple)):
        return [t for item in out for t in _flatten(item)]
    return [out]


class TorchModel(LoadedModel):
    """A torch.nn.Module in eval mode; ``native`` is the module."""

    def __init__(self, torch: Any, module: Any, fmt: Format, inputs: tuple[TensorSpec, ...], *, files: list[Path],
                 stem: str, notes: list[str], origin: str) -> None:
        self._torch = torch
        self.native = module
        self.origin = origin
        self._inputs = inputs
        # A torch.export program keeps the shape guards it was exported with, usually batch 1.
        self._max_batch = 1 if fmt is Format.TORCH_EXPORT else None
        try:
            with torch.no_grad():
                raw = module(*self.example_inputs())
        except Exception as exc:  # the user's forward() can raise anything
            shapes = ", ".join(t.describe() for t in inputs)
            raise InputRejected(f"Running '{origin}' on zeros of the input shapes ({shapes}) raised "
                                f"{type(exc).__name__}: {_first_line(exc)}",
                                hint="Check the input shapes (--input-shape; the first axis is the batch).") from exc
        keys = [str(k) for k in raw] if isinstance(raw, dict) else []
        outputs = tuple(TensorSpec(name=keys[i] if i < len(keys) else f"output_{i}",
                                   shape=(None, *(int(d) for d in o.shape[1:])), dtype=str(o.dtype).split(".")[-1])
                        for i, o in enumerate(_flatten(raw)))
        params = sum(int(p.numel()) for p in module.parameters())
        path = files[-1] if files else Path(origin)
        self.handle = ModelHandle(path=path, format=fmt, inputs=inputs, outputs=outputs,
                                  metadata={"params": params, "macs": count_macs(module, self.example_inputs()),
                                            "model": origin, "stem": stem, "notes": notes,
                                            "files": [str(f) for f in files]})

    def example_inputs(self, batch: int = 1) -> tuple[Any, ...]:
        """Zeros of each input's shape with a batch of ``batch``: what tracing exporters need."""
        torch = self._torch
        return tuple(torch.zeros((batch, *t.shape[1:]), dtype=getattr(torch, t.dtype)) for t in self._inputs)

    def predict(self, feed: dict[str, np.ndarray], batch_size: int = 64) -> list[np.ndarray]:
        torch = self._torch
        names = self.handle.input_names
        count = len(feed[names[0]])
        batch_size = self._max_batch or batch_size
        chunks: list[list[np.ndarray]] = []
        with torch.no_grad():
            for start in range(0, count, batch_size):
                args = [torch.from_numpy(np.ascontiguousarray(feed[n][start:start + batch_size])) for n in names]
                chunks.append([t.detach().numpy() for t in _flatten(self.native(*args))])
        return [np.concatenate(parts) for parts in zip(*chunks)]


def count_macs(module: Any, example_inputs: tuple) -> int:
    """Multiply-accumulates of one inference in Conv/Linear layers, measured with forward hooks."""
    torch = require("torch", "Counting MACs")
    total = 0

    def hook(layer, _inputs, output):
        nonlocal total
        if isinstance(layer, torch.nn.Linear):
            total += output.numel() * layer.in_features
        else:
            kernel = int(torch.tensor(layer.kernel_size).prod())
            total += output.numel() * (layer.in_channels // layer.groups) * kernel

    handles = [m.register_forward_hook(hook) for m in module.modules()
               if isinstance(m, (torch.nn.Linear, torch.nn.modules.conv._ConvNd))]
    try:
        with torch.no_grad():
            module(*example_inputs)
    finally:
        for h in handles:
            h.remove()
    return int(total)
