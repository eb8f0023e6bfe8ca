"""How much error each layer of an int8 ONNX model adds, from one run of it and of its float graph.

Every quantized node's output is made a graph output, in the int8 model and in the prepared float
graph it was quantized from; both run once on a few samples. A node's noise-to-signal ratio
(NSR, error power over signal power at its output) holds the error it was fed and the error its
own quantized inputs and weights add. What it adds, the NSR at its output less the largest NSR of
the quantized nodes feeding it, is what keeping it in float would take away: the budget search
orders layers by that, then tries the most harmful first on edits of the int8 model
(``onnx_float_edit``), where a ranking by tries took one judging run per layer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgeopt.deps import require
from edgeopt.exporters.base import FloatArtifact, Layer
from edgeopt.frameworks.base import LoadedModel
from edgeopt.names import match_inputs
from edgeopt.passes.quantize.onnx import prepared_graph


def added_error(floating: FloatArtifact, artifact: Path, layers: list[Layer], rows: list[dict[str, np.ndarray]]
                ) -> dict[str, float] | None:
    """Layer name -> the NSR it adds (0 or more) in ``artifact``, quantized from ``floating``; None
    when its prepared graph is not known."""
    data = prepared_graph(floating)
    source = floating.model
    if data is None:
        return None
    onnx = require("onnx", "Reading ONNX models")
    prepared = onnx.load_from_string(data)
    int8 = onnx.load(str(artifact))
    wanted = {layer.name for layer in layers}
    float_taps = _taps(prepared, wanted)
    int8_taps = _taps(int8, wanted)
    common = [name for name in float_taps if name in int8_taps]
    if not common:
        return None
    reference = _run(onnx, prepared, [float_taps[n] for n in common], rows, source)
    quantized = _run(onnx, int8, [int8_taps[n] for n in common], rows, source)
    nsr = {}
    for name, f, q in zip(common, reference, quantized):
        signal = float(np.sum(f.astype(np.float64) ** 2))
        nsr[name] = float(np.sum((f.astype(np.float64) - q) ** 2)) / signal if signal > 0 else 0.0
    feeding = _quantized_inputs(prepared, set(common))
    return {name: max(0.0, nsr[name] - max((nsr[p] for p in feeding.get(name, ())), default=0.0))
            for name in common}


def _taps(model: Any, names: set[str]) -> dict[str, str]:
    """Node name -> the tensor it writes first, for the nodes ``names``."""
    return {node.name: node.output[0] for node in model.graph.node if node.name in names and node.output}


def _quantized_inputs(graph_model: Any, tapped: set[str]) -> dict[str, set[str]]:
    """For each tapped node, the nearest tapped nodes upstream of it (through untapped ones)."""
    producer = {o: node for node in graph_model.graph.node for o in node.output}
    found: dict[str, set[str]] = {}
    for node in graph_model.graph.node:
        if node.name not in tapped:
            continue
        seen, frontier, nearest = set(), list(node.input), set()
        while frontier:
            tensor = frontier.pop()
            up = producer.get(tensor)
            if up is None or up.name in seen:
                continue
            seen.add(up.name)
            if up.name in tapped:
                nearest.add(up.name)
            else:
                frontier.extend(up.input)
        found[node.name] = nearest
    return found


def _run(onnx: Any, model: Any, tensors: list[str], rows: list[dict[str, np.ndarray]],
         source: LoadedModel) -> list[np.ndarray]:
    """``tensors`` of ``model`` over ``rows``, each joined over the samples."""
    ort = require("onnxruntime", "Running ONNX models")
    tapped = onnx.ModelProto()
    tapped.CopyFrom(model)
    present = {v.name for v in tapped.graph.output}
    for name in tensors:
        if name not in present:
            tapped.graph.output.append(onnx.ValueInfoProto(name=name))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    # No graph rewrites: fused nodes would stop writing the tensors asked for.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(tapped.SerializeToString(), options, providers=["CPUExecutionProvider"])
    inputs = [i.name for i in session.get_inputs()]
    pairs = list(zip(inputs, match_inputs(inputs, source.handle.input_names)))
    per_tensor: list[list[np.ndarray]] = [[] for _ in tensors]
    for row in rows:
        got = session.run(tensors, {name: row[source_name] for name, source_name in pairs})
        for bucket, value in zip(per_tensor, got):
            bucket.append(np.asarray(value, np.float32).ravel())
    return [np.concatenate(bucket) for bucket in per_tensor]
