"""Layers of an int8 QDQ ONNX model put back in float by editing it, without quantizing again.

onnxruntime's quantizer reads a prepared float graph and writes each quantized node with
DequantizeLinear in front of its inputs. Keeping node N in float (what ``nodes_to_exclude``
does) is the same graph with N reading its inputs as the prepared graph had them: the float
activation in front of its QuantizeLinear, and the float weight and bias initializers. The
prepared graph is kept per source when the int8 model is written, so the edit restores exactly
those inputs, and a graph output N writes comes out of N in float again; Q/DQ nodes and
initializers nobody reads any more are removed.

An edit takes milliseconds where a quantization takes a quantize_static run: the accuracy-budget
search tries its candidates on edits, and the edit that held is the artifact (``edgeopt.budget``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgeopt.deps import require
from edgeopt.exporters.base import ExportResult, FloatArtifact
from edgeopt.passes.quantize.onnx_prepared import prepared_graph

def keep_in_float(floating: FloatArtifact, artifact: Path, names: tuple[str, ...], out: Path) -> ExportResult | None:
    """``artifact`` (quantized from ``floating``) with the nodes ``names`` in float, written to
    ``out``; None when its prepared graph is not known (then the caller quantizes with
    nodes_to_exclude instead)."""
    data = prepared_graph(floating)
    if data is None:
        return None
    onnx = require("onnx", "Editing ONNX models")
    prepared = onnx.load_from_string(data)
    model = onnx.load(str(artifact))
    restore(model, prepared, set(names))
    onnx.save(model, str(out))
    return ExportResult(out, "int8", [], float_fallback=bool(names))


def restore(model: Any, prepared: Any, names: set[str]) -> None:
    """In place: the nodes ``names`` of ``model`` read their inputs as in ``prepared``.

    The quantizer also removes activations its ranges stand in for (a Clip or Relu after a Conv:
    PP-OCR's detector lost 36 Clips); a node put back in float reads such an activation again,
    restored in front of it."""
    original = {node.name: node for node in prepared.graph.node if node.name in names}
    producers = {o: node for node in prepared.graph.node for o in node.output}
    present = {node.name for node in model.graph.node}
    taken = {t.name for t in model.graph.initializer} | {o for node in model.graph.node for o in node.output} \
        | {v.name for v in model.graph.input}
    tensors = set(taken)
    weights = {t.name: t for t in prepared.graph.initializer}
    added: dict[str, str] = {}  # prepared name -> the name it has here
    restored_nodes: list[tuple[int, Any]] = []

    def weight(name: str) -> str:
        # The quantizer's DequantizeLinear of a weight writes the weight's own name; the float
        # weight comes back under a name of its own.
        if name not in added:
            added[name] = free_name(f"{name}.float", taken)
            copy = model.graph.initializer.add()
            copy.CopyFrom(weights[name])
            copy.name = added[name]
        return added[name]

    def activation(name: str, at: int) -> str:
        removed = producers.get(name)
        if removed is None or removed.name in present or removed.op_type not in REMOVABLE_ACTIVATIONS:
            return name
        if name not in added:
            node = type(removed)()
            node.CopyFrom(removed)
            # Where the quantizer removed it, the op before wrote under the activation's name.
            first = name if name in tensors else removed.input[0]
            node.input[:] = [first, *(weight(i) if i in weights else i for i in removed.input[1:])]
            added[name] = free_name(f"{name}.float", taken)
            node.output[:] = [added[name]]
            node.name = free_name(f"{removed.name}.float", taken)
            restored_nodes.append((at, node))
        return added[name]

    for at, node in enumerate(model.graph.node):
        before = original.get(node.name)
        if before is None or len(before.input) != len(node.input):
            continue
        for i, name in enumerate(before.input):
            node.input[i] = weight(name) if name in weights else activation(name, at) if name else name
    for at, node in sorted(restored_nodes, key=lambda item: -item[0]):  # in front of the node reading it
        model.graph.node.insert(at, node)
    _float_graph_outputs(model, names)
    drop_unread(model)


# Activations onnxruntime's QDQ quantizer removes after a quantized op, its ranges clipping instead.
REMOVABLE_ACTIVATIONS = {"Relu", "Clip"}


def _float_graph_outputs(model: Any, names: set[str]) -> None:
    """A kept node that writes a graph output writes it in float again. The quantizer quantizes a
    quantized node's output on its way out (node -> 'y_QuantizeLinear_Input' -> Q -> DQ -> 'y');
    with the node in float there is no such pair."""
    outputs = {v.name for v in model.graph.output}
    readers: dict[str, list[Any]] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    dropped = []
    for node in model.graph.node:
        if node.name not in names:
            continue
        for i, written in enumerate(node.output):
            quantizers = readers.get(written, [])
            if len(quantizers) != 1 or quantizers[0].op_type != "QuantizeLinear":
                continue
            for dequantize in readers.get(quantizers[0].output[0], []):
                if dequantize.op_type == "DequantizeLinear" and dequantize.output[0] in outputs:
                    node.output[i] = dequantize.output[0]
                    dropped += [quantizers[0], dequantize]
    for node in dropped:
        model.graph.node.remove(node)


def free_name(name: str, taken: set[str]) -> str:
    while name in taken:
        name += "_"
    taken.add(name)
    return name


def _read(graph: Any) -> set[str]:
    """Every name the graph's nodes read, inside If/Loop bodies too (they read outer names)."""
    names = set()
    for node in graph.node:
        names.update(node.input)
        for attribute in node.attribute:
            for body in (attribute.g, *attribute.graphs):
                names |= _read(body)
    return names


def drop_unread(model: Any) -> None:
    """Remove the Q/DQ nodes and initializers whose outputs nothing reads any more."""
    outputs = {v.name for v in model.graph.output}
    while True:
        read = _read(model.graph) | outputs
        dead = [node for node in model.graph.node
                if node.op_type in ("QuantizeLinear", "DequantizeLinear") and not any(o in read for o in node.output)]
        if not dead:
            break
        for node in dead:
            model.graph.node.remove(node)
    read = _read(model.graph) | outputs
    kept = [t for t in model.graph.initializer if t.name in read]
    if len(kept) != len(model.graph.initializer):
        del model.graph.initializer[:]
        model.graph.initializer.extend(kept)
