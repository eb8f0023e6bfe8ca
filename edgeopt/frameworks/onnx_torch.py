"""ONNX graphs run by PyTorch: the bridge from ONNX sources to the PyTorch -> TFLite exporter.

:class:`OnnxModule` executes an ONNX graph node by node with torch ops, in the graph's own NCHW
layout and with ONNX semantics (``onnx_ops.OPS`` has one function per op). litert-torch then
converts it like any PyTorch model, so NHWC inputs, int8 calibration and ``keep_layout`` behave
exactly as on the PyTorch path. No onnx2torch or onnx2tf is needed.

Constants and shape arithmetic stay numpy at run time, so torch.export sees plain numbers where
ONNX computes shapes, and the converted model computes no shapes of its own. Weights are buffers.
Before conversion, the module's outputs are checked against ONNX Runtime; a divergence is a
ConversionError naming the first node whose output differs.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from edgeopt.deps import require
from edgeopt.errors import ConversionError
from edgeopt.frameworks.base import LoadedModel
from edgeopt.frameworks.onnx_ops import OPS, Call, Value, to_tensor, torch
from edgeopt.frameworks.torch import TorchModel
from edgeopt.model import Format, TensorSpec

DEFAULT_DOMAINS = ("", "ai.onnx")
# Outputs within this fraction of the reference's largest magnitude (at least 1) count as equal:
# float32 sums in another order differ by far less, a wrong op by far more.
REL_TOLERANCE = 1e-3
UNSUPPORTED_HINT = ("Export the model without these ops (e.g. leave NMS or other post-processing outside the "
                    "model), or choose --target onnx or openvino, whose runtimes run the ONNX graph as it is.")


def unsupported_nodes(model: Any) -> dict[str, list[str]]:
    """Op label -> names of the nodes the dispatch table cannot run, in graph order."""
    found: dict[str, list[str]] = {}
    for node in model.graph.node:
        if node.domain not in DEFAULT_DOMAINS or node.op_type not in OPS:
            label = f"{node.domain}:{node.op_type}" if node.domain not in DEFAULT_DOMAINS else node.op_type
            found.setdefault(label, []).append(node.name or node.output[0])
    if len(model.graph.sparse_initializer):
        found.setdefault("sparse initializer", []).extend(t.values.name for t in model.graph.sparse_initializer)
    return found


def check_supported(model: Any, origin: str) -> None:
    """Fail with every unsupported op and node named at once, before anything is converted."""
    found = unsupported_nodes(model)
    if not found:
        return
    parts = []
    for label, names in found.items():
        shown = ", ".join(f"'{n}'" for n in names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        parts.append(f"{label} (node{'s' if len(names) > 1 else ''} {shown})")
    quantized = any(label in ("QuantizeLinear", "DequantizeLinear") or label.startswith("QLinear") for label in found)
    hint = ("The ONNX model is already quantized; pass its float version, which edgeopt quantizes for TFLite."
            if quantized else UNSUPPORTED_HINT)
    raise ConversionError(f"'{origin}' uses ONNX ops the ONNX -> TFLite conversion does not implement: "
                          f"{'; '.join(parts)}.", hint=hint)


def _attributes(onnx: Any, node: Any) -> dict[str, Any]:
    attrs: dict[str, Any] = {}
    for attr in node.attribute:
        value = onnx.helper.get_attribute_value(attr)
        if isinstance(value, bytes):
            value = value.decode("utf-8")
        elif attr.type == onnx.AttributeProto.TENSOR:
            value = onnx.numpy_helper.to_array(value)
        attrs[attr.name] = value
    return attrs


def _topological(nodes: Sequence[Any], known: set[str], origin: str) -> list[Any]:
    """The nodes in an order where every input is produced first, otherwise in file order (ONNX
    requires topological order; not every writer keeps it)."""
    ready = set(known) | {""}
    waiting: dict[str, list[int]] = {}
    missing = [0] * len(nodes)
    for i, node in enumerate(nodes):
        for name in set(node.input) - ready:
            waiting.setdefault(name, []).append(i)
            missing[i] += 1
    queue = [i for i, count in enumerate(missing) if count == 0]
    heapq.heapify(queue)
    ordered = []
    while queue:
        node = nodes[heapq.heappop(queue)]
        ordered.append(node)
        for name in node.output:
            for j in waiting.pop(name, []):
                missing[j] -= 1
                if missing[j] == 0:
                    heapq.heappush(queue, j)
    if len(ordered) < len(nodes):
        stuck = next(n for i, n in enumerate(nodes) if missing[i])
        raise ConversionError(f"'{origin}': node '{stuck.name or stuck.output[0]}' reads values no node produces "
                              f"({', '.join(sorted(waiting)[:5])}), or the graph has a cycle.",
                              hint="Check the model with onnx.checker; re-export it.")
    return ordered


def _opset(model: Any) -> int:
    return next((int(o.version) for o in model.opset_import if o.domain in DEFAULT_DOMAINS), 1)


def _numpy(value: Value) -> np.ndarray:
    return value if isinstance(value, np.ndarray) else value.detach().numpy()


class OnnxModule(torch.nn.Module):
    """An ONNX graph as a torch.nn.Module: ``forward(*inputs)`` in graph-input order returns the
    graph's outputs (one tensor, or a tuple)."""

    def __init__(self, model: Any, origin: str = "the ONNX model") -> None:
        super().__init__()
        onnx = require("onnx", "Converting ONNX models to TFLite")
        if len(model.functions):
            model = onnx.inliner.inline_local_functions(model)
        check_supported(model, origin)
        self.origin = origin
        self.opset = _opset(model)
        graph = model.graph
        consts: dict[str, np.ndarray] = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
        self.input_names = [v.name for v in graph.input if v.name not in consts]
        self.output_names = [v.name for v in graph.output]
        self._weights: dict[str, str] = {}
        steps: list[tuple[Any, dict[str, Any]]] = []
        for node in _topological(graph.node, set(consts) | set(self.input_names), origin):
            attrs = _attributes(onnx, node)
            if all(not name or name in consts for name in node.input):
                # Constant-only nodes (Constant, weight transposes, folded shape math) run once, here.
                self._run(node, attrs, consts)  # type: ignore[arg-type]
                consts.update({name: _numpy(consts[name]) for name in node.output if name})
            else:
                steps.append((node, attrs))
        self._steps = steps
        used = {name for node, _ in steps for name in node.input if name in consts}
        used |= {name for name in self.output_names if name in consts}
        self._consts: dict[str, np.ndarray] = {}
        for k, name in enumerate(sorted(used)):
            value = consts[name]
            if value.dtype.kind == "f" and value.size > 1:
                # A weight: a buffer of the module, which torch.export lifts as a parameter; the
                # numpy view shares its memory for the (rare) static uses.
                buffer = to_tensor(value)
                attr = f"onnx_const_{k}"
                self.register_buffer(attr, buffer)
                self._weights[name] = attr
                value = buffer.numpy()
            self._consts[name] = value

    def _buffer(self, name: str) -> Any:
        attr = self._weights.get(name)
        return None if attr is None else getattr(self, attr)

    def _run(self, node: Any, attrs: dict[str, Any], env: dict[str, Value]) -> None:
        values = [env[name] if name else None for name in node.input]
        call = Call(node, attrs, values, self.opset, lambda i: self._buffer(node.input[i]))
        try:
            result = OPS[node.op_type](call)
        except ConversionError:
            raise
        except Exception as exc:  # an op function met a case it does not handle
            detail = " ".join(str(exc).strip().splitlines()[:2]) or type(exc).__name__
            raise call.fail(f"running it with PyTorch raised {type(exc).__name__}: {detail[:300]}") from exc
        results = result if isinstance(result, tuple) else (result,)
        for name, value in zip(node.output, results):
            if name:
                # numpy returns scalars (np.int64) from 0-d results; static values are arrays.
                env[name] = np.asarray(value) if isinstance(value, np.generic) else value

    def execute(self, *inputs: Any) -> dict[str, Value]:
        """Every value of the graph, by name, for ``inputs``: what :meth:`forward` returns from."""
        env: dict[str, Value] = dict(self._consts)
        env.update(zip(self.input_names, inputs))
        for node, attrs in self._steps:
            self._run(node, attrs, env)
        return env

    def forward(self, *inputs: Any) -> Any:
        env = self.execute(*inputs)
        outputs = []
        for name in self.output_names:
            value = env[name]
            if isinstance(value, np.ndarray):  # an output that does not depend on the inputs
                value = self._buffer(name) if name in self._weights else to_tensor(value)
            outputs.append(value)
        return outputs[0] if len(outputs) == 1 else tuple(outputs)


def _input_specs(source: LoadedModel) -> tuple[TensorSpec, ...]:
    """The source's inputs with a free batch; every other dimension must be fixed for TFLite."""
    specs = []
    for spec in source.handle.inputs:
        where = f"Input '{spec.name}' of '{source.handle.path}'"
        if not spec.shape:
            raise ConversionError(f"{where} is a scalar; the ONNX -> TFLite conversion needs a batch axis.")
        if spec.shape[0] not in (None, 1):
            raise ConversionError(f"{where} has a fixed batch of {spec.shape[0]}; TFLite models here run one "
                                  "sample at a time.", hint="Re-export the ONNX model with batch 1 or a free batch.")
        free = [i for i, d in enumerate(spec.shape[1:], start=1) if d is None]
        if free:
            raise ConversionError(f"{where} has free size(s) at axis {', '.join(map(str, free))} "
                                  f"({spec.describe()}); a TFLite model needs fixed sizes.",
                                  hint="Re-export the ONNX model with fixed input sizes, or fix them with "
                                       "`python -m onnxruntime.tools.make_dynamic_shape_fixed`.")
        specs.append(TensorSpec(spec.name, (None, *spec.shape[1:]), spec.dtype, spec.layout))
    return tuple(specs)


def to_torch_model(source: LoadedModel) -> TorchModel:
    """The ONNX source as a TorchModel with the same inputs (names, shapes, dtypes, layouts).

    Its handle keeps Format.ONNX and the .onnx path, so errors and reports name the file the user
    gave; ``metadata["executed_by"]`` records that PyTorch runs it.
    """
    path = source.handle.path
    module = OnnxModule(source.native, origin=str(path)).eval()
    inputs = _input_specs(source)
    zeros = tuple(torch.zeros((1, *t.shape[1:]), dtype=getattr(torch, t.dtype)) for t in inputs)
    with torch.no_grad():
        module(*zeros)  # op failures surface here as ConversionError, naming the node
    model = TorchModel(torch, module, Format.ONNX, inputs, files=[path], stem=path.stem, notes=[],
                       origin=str(path))
    model.handle.metadata.update(executed_by="torch", nodes=len(source.native.graph.node))
    return model


def check_feeds(source: LoadedModel, calib: Iterable[dict[str, np.ndarray]] | None = None,
                limit: int = 4) -> list[dict[str, np.ndarray]]:
    """Batch-1 feeds to compare on: zeros, seeded uniform [0, 1) noise, and up to ``limit``
    calibration rows (zeros alone would hide a wrong weight layout behind the biases)."""
    specs = source.handle.inputs
    rng = np.random.default_rng(0)
    zeros = {t.name: np.zeros((1, *t.shape[1:]), dtype=t.dtype) for t in specs}
    noise = {t.name: rng.random((1, *t.shape[1:])).astype(t.dtype) if np.dtype(t.dtype).kind == "f"
             else np.zeros((1, *t.shape[1:]), dtype=t.dtype) for t in specs}
    feeds = [zeros, noise]
    if calib is not None:
        for i, row in enumerate(calib):
            if i >= limit:
                break
            feeds.append({t.name: np.array(row[t.name][:1], dtype=t.dtype) for t in specs})  # writable copies
    return feeds


def _error(reference: np.ndarray, actual: np.ndarray) -> float:
    """Largest absolute difference, relative to the reference's scale (at least 1); NaN and Inf
    where the reference has them too count as equal."""
    ref, got = np.asarray(reference, dtype=np.float64), np.asarray(actual, dtype=np.float64)
    if ref.shape != got.shape:
        return float("inf")
    same = (ref == got) | (np.isnan(ref) & np.isnan(got))
    diff = np.where(same, 0.0, np.abs(ref - got))
    finite = ref[np.isfinite(ref)]
    scale = max(1.0, float(np.abs(finite).max()) if finite.size else 1.0)
    worst = float(np.nan_to_num(diff, nan=np.inf).max()) if diff.size else 0.0
    return worst / scale


def compare_with_onnxruntime(source: LoadedModel, model: TorchModel,
                             feeds: list[dict[str, np.ndarray]]) -> float:
    """The largest absolute difference between the module and ONNX Runtime over ``feeds``;
    ConversionError, naming the first diverging node, when one exceeds the tolerance."""
    worst = 0.0
    for feed in feeds:
        reference = source.predict(feed)
        actual = model.predict(feed)
        if len(reference) != len(actual):
            raise ConversionError(f"The PyTorch module of '{source.handle.path}' returns {len(actual)} outputs; "
                                  f"ONNX Runtime returns {len(reference)}.")
        for ref, got in zip(reference, actual):
            if _error(ref, got) > REL_TOLERANCE:
                where = first_divergence(source, model.native, feed)
                raise ConversionError(
                    f"The PyTorch module of '{source.handle.path}' does not reproduce ONNX Runtime's outputs "
                    f"(largest difference {np.abs(np.asarray(ref, np.float64) - got).max():.3g})"
                    + (f"; the first diverging node is {where}." if where else "."),
                    hint="This ONNX graph uses an op variant the conversion gets wrong; please report it. "
                         "--target onnx or openvino convert the graph without this step.")
            if np.asarray(ref).size:
                worst = max(worst, float(np.abs(np.asarray(ref, np.float64) - np.asarray(got, np.float64)).max()))
    return worst


def first_divergence(source: LoadedModel, module: OnnxModule, feed: dict[str, np.ndarray]) -> str | None:
    """'<name>' (<op>) of the first node, in execution order, whose output differs from ONNX
    Runtime's; None when it cannot be told (the graph is too large to copy, or ORT refuses)."""
    onnx = require("onnx", "Converting ONNX models to TFLite")
    ort = require("onnxruntime", "Converting ONNX models to TFLite")
    with torch.no_grad():
        env = module.execute(*(torch.from_numpy(np.ascontiguousarray(feed[n])) for n in module.input_names))
    order = [(node, name) for node, _ in module._steps for name in node.output if name and name in env]
    probe = onnx.ModelProto()
    probe.CopyFrom(source.native)
    known = {v.name: v for v in probe.graph.value_info}
    listed = {v.name for v in probe.graph.output}
    for _node, name in order:
        if name not in listed:
            probe.graph.output.append(known.get(name) or onnx.ValueInfoProto(name=name))
    try:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        values = dict(zip(names, session.run(None, {n: feed[n] for n in module.input_names})))
    except Exception:  # over 2 GB, or an output ORT cannot expose: no localization, the error stands
        return None
    for node, name in order:
        if name in values and _error(values[name], _numpy(env[name])) > REL_TOLERANCE:
            return f"'{node.name or node.output[0]}' ({node.op_type}, output '{name}')"
    return None
