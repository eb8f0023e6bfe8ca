"""edgeopt's activation ranges for an ONNX graph (``range_setting``), in the calibration cache
onnxruntime's ``quantize_static`` reads instead of calibrating itself.

Every float tensor of the prepared graph becomes an output; one run per calibration sample
gathers each tensor's min/max and a subsample of its values (from the first
``SAMPLES_WITH_VALUES`` samples), and each tensor gets the range of least uint8 error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgeopt.calibration import Subset
from edgeopt.deps import quiet_stderr, require
from edgeopt.names import match_inputs
from edgeopt.passes.quantize import range_setting

SAMPLES_WITH_VALUES = 32


def write_cache(prepared: Path, calib: Subset, source_names: list[str], path: Path) -> dict[str, str]:
    """Choose every float tensor's range on ``calib`` and write them to ``path`` as onnxruntime's
    calibration cache (MinMax records); returns tensor -> the rule chosen."""
    onnx = require("onnx", "Quantizing ONNX models")
    ort = require("onnxruntime", "Quantizing ONNX models")
    ort_quant = require("onnxruntime.quantization", "Quantizing ONNX models")
    model = onnx.load(str(prepared))
    graph_inputs = {v.name for v in model.graph.input}
    floats = [n for n in _float_tensors(onnx, model) if n not in graph_inputs]
    present = {v.name for v in model.graph.output}
    for name in floats:
        if name not in present:
            model.graph.output.append(onnx.ValueInfoProto(name=name))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    with quiet_stderr():
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    inputs = [i.name for i in session.get_inputs()]
    pairs = list(zip(inputs, match_inputs(inputs, source_names)))
    seen = {name: range_setting.TensorValues() for name in [*inputs, *floats]}
    for i, row in enumerate(calib):
        feed = {name: row[source] for name, source in pairs}
        outputs = session.run(floats, feed)
        for name, value in zip(floats, outputs):
            if value.dtype.kind == "f":
                seen[name].add(value, keep_values=i < SAMPLES_WITH_VALUES)
        for name in inputs:
            if name in seen:
                seen[name].add(feed[name], keep_values=i < SAMPLES_WITH_VALUES)
    chosen, rules = {}, {}
    for name, values in seen.items():
        if not values.sample_lows:
            continue
        lo, hi, rule = range_setting.choose(values)
        chosen[name] = ort_quant.calibrate.TensorData(lowest=np.float32(lo), highest=np.float32(hi))
        rules[name] = rule
    ort_quant.save_tensors_data(
        ort_quant.calibrate.TensorsData(ort_quant.CalibrationMethod.MinMax, chosen), path)
    return rules


def _float_tensors(onnx: Any, model: Any) -> list[str]:
    """Graph inputs and node outputs that are (or may be: no type known) float32."""
    known = {v.name: v.type.tensor_type.elem_type for v in (*model.graph.value_info, *model.graph.input,
                                                             *model.graph.output)}
    weights = {t.name for t in model.graph.initializer}
    names = [v.name for v in model.graph.input if v.name not in weights]
    names += [o for node in model.graph.node for o in node.output if o]
    return [n for n in dict.fromkeys(names) if known.get(n, onnx.TensorProto.FLOAT) == onnx.TensorProto.FLOAT]
