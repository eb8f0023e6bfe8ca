"""How much error each layer of an int8 ONNX model makes by its own quantization, from one run.

Each quantized node gets a copy in the prepared float graph it was quantized from, reading that
graph's float tensors through the int8 model's own QuantizeLinear/DequantizeLinear pairs and int8
weights; one run of that graph on a few samples gives every layer's noise-to-signal ratio at its
output. The budget search orders layers by it, then tries the most harmful first on edits of the
int8 model (``onnx_float_edit``), where a ranking by tries took one judging run per layer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from edgeopt.deps import quiet_stderr, require
from edgeopt.exporters.base import FloatArtifact, Layer
from edgeopt.names import match_inputs
from edgeopt.passes.quantize.onnx_prepared import prepared_graph


def added_error(floating: FloatArtifact, artifact: Path, layers: list[Layer], rows: list[dict[str, np.ndarray]]
                ) -> dict[str, float] | None:
    """Layer name -> the NSR quantizing it alone adds at its output, in ``artifact`` (quantized
    from ``floating``); None when its prepared graph is not known.

    Each layer's copy reads the float graph's own inputs through the QuantizeLinear and
    DequantizeLinear (and int8 weights) the int8 model gives it, so one run of one graph scores
    every layer by the error its own quantization makes, with no error fed from upstream. A
    ranking by the int8 model's error less its inputs' error put PP-OCRv4's worst layer, an SE
    block's Mul whose input range is a thousand times its typical value, 147th of 292."""
    data = prepared_graph(floating)
    if data is None:
        return None
    onnx = require("onnx", "Reading ONNX models")
    prepared = onnx.load_from_string(data)
    int8 = onnx.load(str(artifact))
    if quantized_subgraphs(onnx, int8):
        return None
    shadowed, taps = shadow_graph(onnx, prepared, int8, {layer.name for layer in layers})
    if not taps:
        return None
    names = list(taps)
    run = tapped_session(onnx, shadowed, [t for name in names for t in taps[name]], floating.model.handle.input_names)
    noise, signal = np.zeros(len(names)), np.zeros(len(names))
    for row in rows:
        got = run(row)
        for i in range(len(names)):
            f = np.ascontiguousarray(got[2 * i], dtype=np.float32).ravel()
            diff = f - np.asarray(got[2 * i + 1], dtype=np.float32).ravel()
            noise[i] += float(np.dot(diff, diff))
            signal[i] += float(np.dot(f, f))
    return {name: float(noise[i] / signal[i]) if signal[i] > 0 else 0.0 for i, name in enumerate(names)}


def quantized_subgraphs(onnx: Any, model: Any) -> bool:
    """Whether an If/Loop/Scan body (at any depth) quantizes, or reads a dequantized tensor of the
    main graph: the taps see the main graph only (Silero VAD's bodies hold its LSTM)."""
    dequantized = {o for node in model.graph.node if node.op_type == "DequantizeLinear" for o in node.output}

    def bodies(nodes: Any) -> Iterator[Any]:
        for node in nodes:
            for attribute in node.attribute:
                for body in [attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else attribute.graphs:
                    yield body
                    yield from bodies(body.node)

    return any(n.op_type in ("QuantizeLinear", "DequantizeLinear") or dequantized.intersection(n.input)
               for body in bodies(model.graph.node) for n in body.node)


# Suffixes of the copies' names, one per role: a layer's output may also be what a quantizer reads.
SHADOW, QUANTIZED, DEQUANTIZED, CONSTANT = "__edgeopt_copy", "__edgeopt_q", "__edgeopt_dq", "__edgeopt_c"


def shadow_graph(onnx: Any, prepared: Any, int8: Any, names: set[str]) -> tuple[Any, dict[str, tuple[str, str]]]:
    """The prepared float graph with, for each node of ``names`` the int8 model quantized, a copy
    reading its inputs quantized as the int8 model quantizes them. Returns the graph and, per
    layer, (its float output, its copy's output)."""
    graph = onnx.ModelProto()
    graph.CopyFrom(prepared)
    producer = {o: node for node in int8.graph.node for o in node.output}
    int8_nodes = {node.name: node for node in int8.graph.node}
    weights = {t.name: t for t in int8.graph.initializer}
    copied: dict[str, str] = {}  # int8 tensor -> its name in the shadow graph

    def constant(name: str) -> str:
        if name and name not in copied:
            copied[name] = f"{name}{CONSTANT}"
            tensor = graph.graph.initializer.add()
            tensor.CopyFrom(weights[name])
            tensor.name = copied[name]
        return copied.get(name, name)

    def quantized_input(float_name: str, int8_name: str) -> str | None:
        dq = producer.get(int8_name)
        if dq is None or dq.op_type != "DequantizeLinear":
            return None
        if int8_name in copied:
            return copied[int8_name]
        source = dq.input[0]
        if source in weights:
            first = constant(source)
        else:
            q = producer.get(source)
            if q is None or q.op_type != "QuantizeLinear" or any(i and i not in weights for i in q.input[1:]):
                return None
            first = f"{source}{QUANTIZED}"
            node = graph.graph.node.add()
            node.CopyFrom(q)
            node.name = f"{q.name}{QUANTIZED}"
            node.input[:] = [float_name, *(constant(i) for i in q.input[1:])]
            node.output[:] = [first]
        if any(i and i not in weights for i in dq.input[1:]):
            return None
        node = graph.graph.node.add()
        node.CopyFrom(dq)
        node.name = f"{dq.name}{DEQUANTIZED}"
        node.input[:] = [first, *(constant(i) for i in dq.input[1:])]
        copied[int8_name] = f"{int8_name}{DEQUANTIZED}"
        node.output[:] = [copied[int8_name]]
        return copied[int8_name]

    taps: dict[str, tuple[str, str]] = {}
    for node in list(prepared.graph.node):
        quant = int8_nodes.get(node.name)
        if node.name not in names or quant is None or len(quant.input) != len(node.input) or not node.output:
            continue
        inputs = [quantized_input(f, q) if f else f for f, q in zip(node.input, quant.input)]
        if not any(inputs):
            continue
        copy = graph.graph.node.add()
        copy.CopyFrom(node)
        copy.name = f"{node.name}{SHADOW}"
        copy.input[:] = [q or f for q, f in zip(inputs, node.input)]
        copy.output[:] = [f"{o}{SHADOW}" if o else o for o in node.output]
        taps[node.name] = (node.output[0], copy.output[0])
    return graph, taps


def tapped_session(onnx: Any, model: Any, tensors: list[str], source_names: list[str]
                   ) -> Callable[[dict], list[np.ndarray]]:
    """``row -> [tensors of model for it]``: an ONNX Runtime session with those tensors as outputs."""
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
    with quiet_stderr():
        session = ort.InferenceSession(tapped.SerializeToString(), options, providers=["CPUExecutionProvider"])
    inputs = [i.name for i in session.get_inputs()]
    pairs = list(zip(inputs, match_inputs(inputs, source_names)))
    return lambda row: session.run(tensors, {name: row[source_name] for name, source_name in pairs})
