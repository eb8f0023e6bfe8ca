"""Layers of an int8 QDQ ONNX model lifted to 16-bit activations by editing it (A16W8).

The rung between int8 and float on the mixed-precision ladder (``edgeopt.budget``): a layer
keeps its int8 weights (its size stays that of int8) and reads each activation through a
QuantizeLinear/DequantizeLinear pair of its own at 16 bits instead of the shared 8-bit pair.
The 16-bit pair spans exactly the range calibration gave the 8-bit one, so nothing is
calibrated again, and the activations the quantizer folded into that range (a Relu or Clip
after a Conv) stay folded: a range starting at 0 still clamps at 0. Its rounding step is 257
times finer, so what is left of the layer's error is its weights'.

ONNX's own Q/DQ take 16-bit types from opset 21; below, onnxruntime's com.microsoft Q/DQ do, as
its quantizer writes them for int16 QDQ. onnxruntime's CPU kernels have no 16-bit convolution:
such a layer computes in float between its Q/DQ pairs, which the report's latency cost shows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgeopt.deps import require
from edgeopt.exporters.base import ExportResult
from edgeopt.passes.quantize.onnx_float_edit import drop_unread, free_name

CONTRIB_DOMAIN = "com.microsoft"
NATIVE_16BIT_OPSET = 21
# 8-bit zero point type -> the 16-bit zero point's numpy dtype and integer range
WIDER = {2: (np.uint16, 0, 65535),  # UINT8 -> UINT16
         3: (np.int16, -32768, 32767)}  # INT8 -> INT16
NARROW_RANGE = {2: (0, 255), 3: (-128, 127)}


def widen_activations(artifact: Path, names: tuple[str, ...], out: Path) -> ExportResult | None:
    """``artifact`` with the nodes ``names`` reading their activations at 16 bits, written to
    ``out``; None when none of them reads a quantized activation."""
    onnx = require("onnx", "Editing ONNX models")
    model = onnx.load(str(artifact))
    if not widen(onnx, model, set(names)):
        return None
    onnx.save(model, str(out))
    return ExportResult(out, "int8", [], float_fallback=True)


def widen(onnx: Any, model: Any, names: set[str]) -> int:
    """In place: each activation input of the nodes ``names`` that comes through an 8-bit Q/DQ
    pair comes through a 16-bit pair of the same range instead, and so does a graph output they
    write (the quantizer quantizes it on the way out); returns how many tensors moved."""
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    producers = {o: node for node in graph.node for o in node.output}
    taken = set(initializers) | set(producers) | {v.name for v in graph.input}
    domain = _domain(onnx, model)
    pairs: dict[str, str] = {}  # 8-bit QuantizeLinear output -> the 16-bit DequantizeLinear output
    inserted: list[tuple[int, list[Any]]] = []
    moved = 0
    for at, node in enumerate(graph.node):
        if node.name not in names:
            continue
        for i, name in enumerate(node.input):
            dequantize = producers.get(name)
            if dequantize is None or dequantize.op_type != "DequantizeLinear" \
                    or dequantize.input[0] in initializers:  # a weight: it stays int8
                continue
            quantize = producers.get(dequantize.input[0])
            if quantize is None or quantize.op_type != "QuantizeLinear":
                continue
            if quantize.output[0] not in pairs:
                wide = _wide_parameters(onnx, graph, quantize, initializers, taken)
                if wide is None:
                    continue
                base = quantize.input[0]
                quantized, dequantized = free_name(f"{base}.q16", taken), free_name(f"{base}.dq16", taken)
                inserted.append((at, [
                    onnx.helper.make_node("QuantizeLinear", [base, *wide], [quantized],
                                          name=free_name(f"{base}.QuantizeLinear16", taken), domain=domain),
                    onnx.helper.make_node("DequantizeLinear", [quantized, *wide], [dequantized],
                                          name=free_name(f"{base}.DequantizeLinear16", taken), domain=domain)]))
                pairs[quantize.output[0]] = dequantized
            node.input[i] = pairs[quantize.output[0]]
            moved += 1
    moved += _widen_graph_outputs(onnx, graph, names, initializers, taken, domain)
    for at, nodes in sorted(inserted, key=lambda item: -item[0]):  # in front of the first node reading them
        for node in reversed(nodes):
            graph.node.insert(at, node)
    if moved:
        drop_unread(model)
    return moved


def _widen_graph_outputs(onnx: Any, graph: Any, names: set[str], initializers: dict[str, Any], taken: set[str],
                         domain: str) -> int:
    """The Q/DQ pair a node of ``names`` writes a graph output through, at 16 bits (in place:
    nothing else reads that pair)."""
    outputs = {v.name for v in graph.output}
    readers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    moved = 0
    for node in graph.node:
        if node.name not in names:
            continue
        for written in node.output:
            quantizers = readers.get(written, [])
            if len(quantizers) != 1 or quantizers[0].op_type != "QuantizeLinear":
                continue
            dequantizers = readers.get(quantizers[0].output[0], [])
            if not dequantizers or any(d.op_type != "DequantizeLinear" or d.output[0] not in outputs
                                       for d in dequantizers):
                continue
            wide = _wide_parameters(onnx, graph, quantizers[0], initializers, taken)
            if wide is None:
                continue
            for pair_node in (quantizers[0], *dequantizers):
                pair_node.input[1:] = wide
                pair_node.domain = domain
            moved += 1
    return moved


def _wide_parameters(onnx: Any, graph: Any, quantize: Any, initializers: dict[str, Any],
                     taken: set[str]) -> list[str] | None:
    """The names of a 16-bit scale and zero point (added to ``graph``) spanning the range of the
    8-bit ``quantize``; None for a per-axis or non-constant one."""
    if len(quantize.input) < 3:
        return None
    scale_t, zero_t = initializers.get(quantize.input[1]), initializers.get(quantize.input[2])
    if scale_t is None or zero_t is None or zero_t.data_type not in WIDER:
        return None
    scale = onnx.numpy_helper.to_array(scale_t).astype(np.float64)
    zero = onnx.numpy_helper.to_array(zero_t).astype(np.float64)
    if scale.size != 1 or zero.size != 1:
        return None
    low8, high8 = NARROW_RANGE[zero_t.data_type]
    dtype, low16, high16 = WIDER[zero_t.data_type]
    scale16 = float(scale.item()) * (high8 - low8) / (high16 - low16)
    lowest = (low8 - float(zero.item())) * float(scale.item())  # the real value of the lowest code
    zero16 = int(np.clip(np.round(low16 - lowest / scale16), low16, high16))
    base = quantize.input[0]
    scale_name, zero_name = free_name(f"{base}.scale16", taken), free_name(f"{base}.zero16", taken)
    graph.initializer.append(onnx.numpy_helper.from_array(np.array(scale16, dtype=np.float32), scale_name))
    graph.initializer.append(onnx.numpy_helper.from_array(np.array(zero16, dtype=dtype), zero_name))
    return [scale_name, zero_name]


def _domain(onnx: Any, model: Any) -> str:
    """Where 16-bit Q/DQ live for this model: ONNX's own ops from opset 21, else onnxruntime's."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset >= NATIVE_16BIT_OPSET:
        return ""
    if not any(o.domain == CONTRIB_DOMAIN for o in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid(CONTRIB_DOMAIN, 1))
    return CONTRIB_DOMAIN
