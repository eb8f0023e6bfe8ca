"""Empirical bias correction of an int8 QDQ ONNX model: per output channel of each Conv, Gemm
and ConvTranspose, the mean error its own quantization makes at its output, taken out of its
int32 bias.

Rounding weights to int8 shifts each channel's mean output a little (more so for depthwise
convolutions, whose channels sum few products); ReLUs and the next layers turn the shift into
error that no range setting removes. The error is the one ``onnx_sensitivity`` measures: a copy
of each layer reads the float graph's tensors through the int8 model's quantizers, so each
layer's correction is its own, and no upstream error is taken out twice.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgeopt.deps import require
from edgeopt.exporters.base import FloatArtifact
from edgeopt.passes.quantize.onnx_prepared import prepared_graph
from edgeopt.passes.quantize.onnx_sensitivity import shadow_graph, tapped_session

BIASED_OPS = {"Conv": 1, "ConvTranspose": 1, "Gemm": -1}  # op -> its output's channel axis


def correct(floating: FloatArtifact, artifact: Path, rows: list[dict[str, np.ndarray]]) -> int:
    """Correct the biases of ``artifact`` in place from ``rows``; returns how many layers changed."""
    data = prepared_graph(floating)
    if data is None or not rows:
        return 0
    onnx = require("onnx", "Editing ONNX models")
    numpy_helper = require("onnx.numpy_helper", "Editing ONNX models")
    model = onnx.load(str(artifact))
    prepared = onnx.load_from_string(data)
    producer = {o: node for node in model.graph.node for o in node.output}
    weights = {t.name: t for t in model.graph.initializer}
    biases: dict[str, tuple[Any, Any]] = {}  # layer -> (int32 bias initializer, its scale initializer)
    for node in model.graph.node:
        if node.op_type not in BIASED_OPS or len(node.input) < 3 or not node.input[2]:
            continue
        dq = producer.get(node.input[2])
        if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in weights or dq.input[1] not in weights:
            continue
        if weights[dq.input[0]].data_type == onnx.TensorProto.INT32:
            biases[node.name] = (weights[dq.input[0]], weights[dq.input[1]])
    if not biases:
        return 0
    shadowed, taps = shadow_graph(onnx, prepared, model, set(biases))
    names = [n for n in taps if n in biases]
    if not names:
        return 0
    axes = {node.name: BIASED_OPS[node.op_type] for node in model.graph.node if node.name in names}
    run = tapped_session(onnx, shadowed, [t for name in names for t in taps[name]], floating.model.handle.input_names)
    shift: dict[str, np.ndarray] = {}
    for row in rows:
        got = run(row)
        for i, name in enumerate(names):
            diff = np.asarray(got[2 * i + 1], np.float64) - np.asarray(got[2 * i], np.float64)
            diff = np.moveaxis(diff, axes[name], 0).reshape(diff.shape[axes[name]], -1).mean(axis=1)
            shift[name] = shift.get(name, 0.0) + diff / len(rows)
    changed = 0
    for name in names:
        bias, scale = biases[name]
        q = numpy_helper.to_array(bias).astype(np.int64)
        step = numpy_helper.to_array(scale).astype(np.float64)
        if q.shape != shift[name].shape:
            continue
        fixed = q - np.round(shift[name] / np.where(step == 0, 1.0, step)).astype(np.int64)
        fixed = np.clip(fixed, np.iinfo(np.int32).min, np.iinfo(np.int32).max).astype(np.int32)
        if np.array_equal(fixed, q):
            continue
        bias.CopyFrom(numpy_helper.from_array(fixed, bias.name))
        changed += 1
    if changed:
        onnx.save(model, str(artifact))
    return changed
