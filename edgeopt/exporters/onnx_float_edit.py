"""Layers of an int8 QDQ ONNX model put back in float by editing it, without quantizing again.

onnxruntime's quantizer reads a prepared float graph and writes each quantized node with
DequantizeLinear in front of its inputs. Keeping node N in float (what ``nodes_to_exclude``
does) is the same graph with N reading its inputs as the prepared graph had them: the float
activation in front of its QuantizeLinear, and the float weight and bias initializers. The
prepared graph is kept per source when the int8 model is written, so the edit restores exactly
those inputs; Q/DQ nodes and initializers nobody reads any more are removed.

An edit takes milliseconds where a quantization takes the calibration again: the accuracy-budget
search ranks layers and tries its candidates on edits, and only its final choice is quantized
with ``nodes_to_exclude`` (``edgeopt.budget``).
"""

from __future__ import annotations

import weakref
from pathlib import Path
from typing import Any

from edgeopt.deps import require
from edgeopt.exporters.base import ExportResult
from edgeopt.frameworks.base import LoadedModel

# The prepared float graph (serialized) each source's int8 model was quantized from.
_PREPARED: weakref.WeakKeyDictionary[LoadedModel, bytes] = weakref.WeakKeyDictionary()


def remember_prepared(source: LoadedModel, prepared: Any) -> None:
    try:
        _PREPARED[source] = prepared.SerializeToString()
    except ValueError:  # over protobuf's 2 GB: no edits, the search quantizes instead
        _PREPARED.pop(source, None)


def keep_in_float(source: LoadedModel, artifact: Path, names: tuple[str, ...], out: Path) -> ExportResult | None:
    """``artifact`` with the nodes ``names`` in float, written to ``out``; None when the prepared
    graph of ``source`` is not known (then the caller quantizes with nodes_to_exclude instead)."""
    data = _PREPARED.get(source)
    if data is None:
        return None
    onnx = require("onnx", "Editing ONNX models")
    prepared = onnx.load_from_string(data)
    model = onnx.load(str(artifact))
    restore(model, prepared, set(names))
    onnx.save(model, str(out))
    return ExportResult(out, "int8", [], float_fallback=bool(names))


def restore(model: Any, prepared: Any, names: set[str]) -> None:
    """In place: the nodes ``names`` of ``model`` read their inputs as in ``prepared``."""
    original = {node.name: node for node in prepared.graph.node if node.name in names}
    taken = {t.name for t in model.graph.initializer} | {o for node in model.graph.node for o in node.output}
    weights = {t.name: t for t in prepared.graph.initializer}
    added: dict[str, str] = {}  # float weight -> its name here
    for node in model.graph.node:
        before = original.get(node.name)
        if before is None or len(before.input) != len(node.input):
            continue
        for i, name in enumerate(before.input):
            if name in weights:
                # The quantizer's DequantizeLinear of a weight writes the weight's own name; the
                # float weight comes back under a name of its own.
                if name not in added:
                    added[name] = _free(f"{name}.float", taken)
                    copy = model.graph.initializer.add()
                    copy.CopyFrom(weights[name])
                    copy.name = added[name]
                name = added[name]
            node.input[i] = name
    _drop_unread(model)


def _free(name: str, taken: set[str]) -> str:
    while name in taken:
        name += "_"
    taken.add(name)
    return name


def _drop_unread(model: Any) -> None:
    """Remove the Q/DQ nodes and initializers whose outputs nothing reads any more."""
    outputs = {v.name for v in model.graph.output}
    while True:
        read = {name for node in model.graph.node for name in node.input} | outputs
        dead = [node for node in model.graph.node
                if node.op_type in ("QuantizeLinear", "DequantizeLinear") and not any(o in read for o in node.output)]
        if not dead:
            break
        for node in dead:
            model.graph.node.remove(node)
    read = {name for node in model.graph.node for name in node.input} | outputs
    kept = [t for t in model.graph.initializer if t.name in read]
    if len(kept) != len(model.graph.initializer):
        del model.graph.initializer[:]
        model.graph.initializer.extend(kept)
