"""How much error each layer of an int8 ONNX model adds, from one run of it and of its float graph.

Every quantized node's output is made a graph output, in the int8 model and in the prepared float
graph it was quantized from; both run once on a few samples (``sensitivity.added_error``). The
budget search orders layers by that, then tries the most harmful first on edits of the int8 model
(``onnx_float_edit``), where a ranking by tries took one judging run per layer.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgeopt.deps import require
from edgeopt.exporters.base import FloatArtifact, Layer
from edgeopt.frameworks.base import LoadedModel
from edgeopt.names import match_inputs
from edgeopt.passes.quantize import sensitivity
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
    producer = {o: node.name for node in prepared.graph.node for o in node.output}
    nodes = [(node.name, [producer[i] for i in node.input if i in producer]) for node in prepared.graph.node]
    return sensitivity.added_error(common, _session(onnx, prepared, [float_taps[n] for n in common], source),
                                   _session(onnx, int8, [int8_taps[n] for n in common], source), rows, nodes)


def _taps(model: Any, names: set[str]) -> dict[str, str]:
    """Node name -> the tensor it writes first, for the nodes ``names``."""
    return {node.name: node.output[0] for node in model.graph.node if node.name in names and node.output}


def _session(onnx: Any, model: Any, tensors: list[str], source: LoadedModel) -> Callable[[dict], list[np.ndarray]]:
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
    session = ort.InferenceSession(tapped.SerializeToString(), options, providers=["CPUExecutionProvider"])
    inputs = [i.name for i in session.get_inputs()]
    pairs = list(zip(inputs, match_inputs(inputs, source.handle.input_names)))
    return lambda row: session.run(tensors, {name: row[source_name] for name, source_name in pairs})
