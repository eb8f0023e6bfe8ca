"""ONNX import: structure checked, shapes inferred, external weights confined to the model's folder.

An ONNX file carries no code, but its tensors may name external weight files anywhere on disk.
Those names are checked as plain data before onnx or onnxruntime follows them: only regular
files inside the model's own folder are accepted, so a model cannot read /etc/passwd or a file
behind a symlink into its weights.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import numpy as np

from edgeopt.deps import require
from edgeopt.errors import ConversionError, InputRejected
from edgeopt.frameworks.base import LoadedModel, guess_layout
from edgeopt.frameworks.onnx_shapes import pin_inputs
from edgeopt.model import Format, ModelHandle, TensorSpec

QUANTIZED_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "ConvInteger",
                 "QGemm", "QAttention", "DynamicQuantizeMatMul", "MatMulIntegerToFloat"}
STANDARD_DOMAINS = {"", "ai.onnx", "ai.onnx.ml"}
REEXPORT_HINT = "Export the model again from its framework (e.g. torch.onnx.export) and check it with onnx.checker."


def is_quantized_op(op_type: str) -> bool:
    return op_type in QUANTIZED_OPS or op_type.startswith("QLinear")


def load(path: Path, fmt: Format = Format.ONNX, *, trust: bool = False,
         input_shapes: dict[str, tuple[int, ...]] | None = None) -> LoadedModel:
    onnx = require("onnx", "Loading ONNX models")
    path = Path(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises DecodeError, onnx raises ValueError/OSError
        raise InputRejected(f"Cannot parse '{path}' as an ONNX model: {exc}",
                            hint="The file is probably truncated or not ONNX. " + REEXPORT_HINT) from exc
    external = check_external_data(model, path)
    check_ops(onnx, model, path)
    try:
        # Path-based checking reads external data itself and allows models over 2 GB.
        onnx.checker.check_model(str(path))
    except Exception as exc:
        raise InputRejected(f"'{path}' fails the ONNX checker: {_first_line(exc)}", hint=REEXPORT_HINT) from exc
    if external:
        onnx.load_external_data_for_model(model, str(path.parent))
    notes: list[str] = []
    model = _infer_shapes(onnx, model, path, notes)
    fixed: list[str] = []
    if input_shapes:
        model, fixed = pin_inputs(onnx, model, input_shapes, path)
        notes.extend(fixed)
    quantized = sorted({n.op_type for n in model.graph.node if is_quantized_op(n.op_type)})
    if quantized:
        notes.append(f"'{path.name}' is already quantized (it has {', '.join(quantized)} nodes); "
                     "quantizing it again would stack quantization errors.")
    return OnnxModel(path, model, notes, quantized=bool(quantized), pinned=bool(fixed))


def with_input_shapes(source: OnnxModel, shapes: dict[str, tuple[int, ...]]) -> OnnxModel:
    """``source`` with its free input sizes fixed: the checked graph is reused, not read again."""
    model, fixed = pin_inputs(require("onnx", "Loading ONNX models"), source.native, shapes, source.handle.path)
    notes = [*source.handle.metadata.get("notes", []), *fixed]
    return OnnxModel(source.handle.path, model, notes, quantized=source.quantized, pinned=bool(fixed))


def check_ops(onnx: Any, model: Any, path: Path) -> None:
    """Name the first node whose op the standard ONNX domains do not define at the model's opset.

    Such a model is well-formed but uses an op no converter or runtime here implements, which is
    exit 4 (unsupported op), not a broken file; the checker alone would report it as invalid.
    """
    def canonical(domain: str) -> str:
        return "" if domain == "ai.onnx" else domain

    opsets = {canonical(o.domain): o.version for o in model.opset_import}
    local = {(f.domain, f.name) for f in model.functions}
    for node in model.graph.node:
        domain = canonical(node.domain)
        version = opsets.get(domain)
        # Other domains and missing opset imports are the checker's and the runtime's to judge.
        if domain not in STANDARD_DOMAINS or version is None or (node.domain, node.op_type) in local:
            continue
        try:
            onnx.defs.get_schema(node.op_type, version, domain)
        except TypeError:  # an opset version out of range: malformed, which the checker reports
            continue
        except onnx.defs.SchemaError:
            raise ConversionError(
                f"Unsupported op in '{path}': node '{node.name or node.output[0]}' is a '{node.op_type}', which "
                f"ONNX does not define in domain '{domain or 'ai.onnx'}' at opset {version}.",
                hint="Replace the op with standard ONNX ops, or export with an opset that defines it.") from None


def check_external_data(model: Any, path: Path) -> list[str]:
    """The external files ``model`` names, each checked to be a plain file inside ``path``'s folder."""
    onnx = require("onnx", "Loading ONNX models")
    folder = path.parent
    root = folder.resolve()
    seen: list[str] = []
    for tensor in _all_tensors(model):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        entries = {e.key: e.value for e in tensor.external_data}
        location = entries.get("location", "")
        where = f"tensor '{tensor.name}' in '{path}'"
        fix = "Keep external weight files next to the .onnx file and name them by relative path " \
              "(onnx.save_model(..., save_as_external_data=True, location='weights.bin'))."
        if not location:
            raise InputRejected(f"The {where} is stored externally but names no file.", hint=fix)
        posix = PurePosixPath(location.replace("\\", "/"))
        if posix.is_absolute() or PureWindowsPath(location).is_absolute() or PureWindowsPath(location).drive:
            raise InputRejected(f"The {where} points at the absolute path '{location}'; external data must "
                                "sit inside the model's folder.", hint=fix)
        if ".." in posix.parts:
            raise InputRejected(f"The {where} points at '{location}', which leaves the model's folder ('..').",
                                hint=fix)
        current = folder
        for part in posix.parts:
            current = current / part
            if current.is_symlink():
                raise InputRejected(f"The {where} reads '{location}' through the symlink '{current}'; "
                                    "symlinks could lead outside the model's folder.", hint=fix)
        if not current.is_file():
            raise InputRejected(f"The {where} needs the external file '{location}', which is missing "
                                f"from '{folder}'.", hint="Copy the weight file(s) saved with the model "
                                                          "into the same folder.")
        if not current.resolve().is_relative_to(root):
            raise InputRejected(f"The {where} points at '{location}', outside the model's folder.", hint=fix)
        size = current.stat().st_size
        try:
            offset, length = int(entries.get("offset", 0) or 0), int(entries.get("length", 0) or 0)
        except ValueError:
            raise InputRejected(f"The {where} gives a non-numeric offset or length for '{location}'.",
                                hint=REEXPORT_HINT) from None
        if offset < 0 or length < 0 or offset + length > size:
            raise InputRejected(f"The {where} reads bytes {offset}..{offset + length} of '{location}', "
                                f"which has only {size}.", hint="The weight file is truncated; copy it again.")
        seen.append(location)
    return seen


def _all_tensors(model: Any) -> Iterator[Any]:
    yield from _graph_tensors(model.graph)
    for function in model.functions:
        yield from _node_tensors(function.node)


def _graph_tensors(graph: Any) -> Iterator[Any]:
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    yield from _node_tensors(graph.node)


def _node_tensors(nodes: Iterable[Any]) -> Iterator[Any]:
    for node in nodes:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _graph_tensors(attr.g)
            for sub in attr.graphs:
                yield from _graph_tensors(sub)


def _infer_shapes(onnx: Any, model: Any, path: Path, notes: list[str]) -> Any:
    custom = sorted({n.domain for n in model.graph.node if n.domain not in STANDARD_DOMAINS})
    try:
        return onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    except onnx.shape_inference.InferenceError as exc:
        if not custom:
            raise InputRejected(f"Shape inference fails on '{path}': {_first_line(exc)}",
                                hint="A node's inputs do not fit its op (shape or type). " + REEXPORT_HINT) from exc
    except ValueError:  # over 2 GB: protobuf cannot serialize it for the in-memory pass
        notes.append(f"'{path.name}' is too large for in-memory shape inference; shapes come from the file.")
        return model
    # Ops from other domains (e.g. com.microsoft) have no shape functions in onnx.
    notes.append(f"'{path.name}' uses ops from the domain(s) {', '.join(custom)}; their output shapes were "
                 "not inferred.")
    return onnx.shape_inference.infer_shapes(model, check_type=False, strict_mode=False)


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return " ".join(text.splitlines()[:3]) if text else type(exc).__name__


def tensor_specs(model: Any, *, inputs: bool, prefer_layout: str = "nchw") -> tuple[TensorSpec, ...]:
    """Graph inputs (minus initializers, which old exporters listed as inputs) or outputs."""
    onnx = require("onnx", "Reading ONNX models")
    initializers = {t.name for t in model.graph.initializer}
    values = [v for v in model.graph.input if v.name not in initializers] if inputs else list(model.graph.output)
    specs = []
    for value in values:
        kind = value.type.WhichOneof("value")
        if kind != "tensor_type":
            raise ConversionError(f"Graph {'input' if inputs else 'output'} '{value.name}' is a {kind}, not a "
                                  "tensor; edgeopt handles tensor inputs and outputs only.",
                                  hint="Export the model with plain tensor inputs and outputs.")
        tensor = value.type.tensor_type
        shape = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                      for d in tensor.shape.dim)
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type)).name
        layout = guess_layout(shape, prefer=prefer_layout) if inputs else None
        specs.append(TensorSpec(name=value.name, shape=shape, dtype=dtype, layout=layout))
    return tuple(specs)


def ort_error(path: Path, exc: Exception, model: Any = None) -> ConversionError | InputRejected:
    """ONNX Runtime's load errors, sorted into 'unsupported op' (4) and 'bad file' (3)."""
    text = _first_line(exc)
    if "NOT_IMPLEMENTED" in text or "Could not find an implementation" in text or "is not a registered" in text:
        nodes = [f"'{n.name or n.output[0]}' ({n.domain + ':' if n.domain else ''}{n.op_type})"
                 for n in (model.graph.node if model is not None else []) if n.op_type in text]
        where = f" at node {', '.join(nodes[:3])}" if nodes else ""
        return ConversionError(f"ONNX Runtime has no CPU kernel for an op in '{path}'{where}: {text}",
                               hint="Re-export with a lower opset or replace the op; `--debug` shows the full log.")
    return InputRejected(f"ONNX Runtime cannot load '{path}': {text}", hint=REEXPORT_HINT)


class OnnxModel(LoadedModel):
    """The source ONNX model; ``native`` is the checked ModelProto, run with ONNX Runtime on CPU."""

    def __init__(self, path: Path, model: Any, notes: list[str], *, quantized: bool, pinned: bool = False) -> None:
        ort = require("onnxruntime", "Running ONNX models")
        self.native = model
        self.quantized = quantized
        self._pinned = pinned
        self._graph_dir: tempfile.TemporaryDirectory | None = None
        opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
        self.handle = ModelHandle(
            path=path, format=Format.ONNX, inputs=tensor_specs(model, inputs=True),
            outputs=tensor_specs(model, inputs=False),
            metadata={"opset": int(opset), "nodes": len(model.graph.node), "producer": model.producer_name or "",
                      "quantized": quantized, "notes": notes})
        options = ort.SessionOptions()
        options.log_severity_level = 3
        try:
            self._session = ort.InferenceSession(str(self.graph_file), options, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise ort_error(path, exc, model) from exc

    @property
    def graph_file(self) -> Path:
        """The file tools read the graph from: the user's own, or, once --input-shape has fixed
        sizes in it, a copy with those sizes (messages still name the user's file)."""
        if not self._pinned:
            return self.handle.path
        if self._graph_dir is None:
            self._graph_dir = tempfile.TemporaryDirectory(prefix=".edgeopt-onnx-")
            onnx = require("onnx", "Writing ONNX models")
            onnx.save(self.native, str(Path(self._graph_dir.name) / self.handle.path.name))
        return Path(self._graph_dir.name) / self.handle.path.name

    def predict(self, feed: dict[str, np.ndarray], batch_size: int = 64) -> list[np.ndarray]:
        specs = self.handle.inputs
        first = feed[specs[0].name]
        count = len(first) if np.ndim(first) else 1
        # A fixed leading dimension (often 1) is the largest batch the graph accepts.
        fixed = specs[0].shape[0] if specs[0].shape else None
        step = fixed or batch_size
        if count <= step:  # one run, the feed as it is: it may hold whole tensors (a 0-d sample rate)
            return [np.asarray(o) for o in self._session.run(
                None, {s.name: np.asarray(feed[s.name], dtype=s.dtype) for s in specs})]
        chunks: list[list[np.ndarray]] = []
        for start in range(0, count, step):
            batch = {s.name: np.asarray(feed[s.name][start:start + step], dtype=s.dtype) for s in specs}
            chunks.append([np.asarray(o) for o in self._session.run(None, batch)])
        return [np.concatenate(parts) for parts in zip(*chunks)]
