"""Activation ranges for an ONNX graph, in the calibration cache onnxruntime's ``quantize_static``
reads instead of calibrating itself: min/max, and edgeopt's (``range_setting``).

Every float tensor of the prepared graph becomes an output; one run per calibration sample
gathers each tensor's min/max and a subsample of its values (from the first
``SAMPLES_WITH_VALUES`` samples).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgeopt.calibration import Subset
from edgeopt.deps import require
from edgeopt.names import match_inputs
from edgeopt.passes.quantize import range_setting
from edgeopt.passes.quantize.onnx_sensitivity import tapped_session

SAMPLES_WITH_VALUES = 32


CACHES = ("minmax", "mse")  # the calibration methods one pass gives ranges for


def caches(prepared: Path, calib: Subset, source_names: list[str], tmp: Path) -> dict[str, str]:
    """Method -> onnxruntime calibration cache (JSON text, MinMax records) of every float tensor of
    ``prepared`` on ``calib``: "minmax" as onnxruntime's MinMax calibrator computes it, "mse" the
    ranges of least uint8 error."""
    ort_quant = require("onnxruntime.quantization", "Quantizing ONNX models")
    seen = collect(prepared, calib, source_names)
    found = {}
    for method in CACHES:
        records = {}
        for name, values in seen.items():
            lo, hi, _rule = range_setting.choose(values) if method == "mse" else (values.low, values.high, "minmax")
            records[name] = ort_quant.calibrate.TensorData(lowest=np.float32(lo), highest=np.float32(hi))
        path = tmp / f"ranges_{method}.json"
        ort_quant.save_tensors_data(ort_quant.calibrate.TensorsData(ort_quant.CalibrationMethod.MinMax, records),
                                    path)
        found[method] = path.read_text()
    return found


def collect(prepared: Path, calib: Subset, source_names: list[str]) -> dict[str, range_setting.TensorValues]:
    """What every float tensor of ``prepared`` takes on ``calib``, from one run per sample."""
    onnx = require("onnx", "Quantizing ONNX models")
    model = onnx.load(str(prepared))
    weights = {t.name for t in model.graph.initializer}
    inputs = [v.name for v in model.graph.input if v.name not in weights]
    floats = [n for n in _float_tensors(onnx, model) if n not in inputs]
    run = tapped_session(onnx, model, floats, source_names)
    feeds = list(zip(inputs, match_inputs(inputs, source_names)))
    seen = {name: range_setting.TensorValues() for name in [*inputs, *floats]}
    for i, row in enumerate(calib):
        keep = i < SAMPLES_WITH_VALUES
        for name, value in zip(floats, run(row)):
            if value.dtype.kind == "f":
                seen[name].add(value, keep_values=keep)
        for name, source in feeds:
            seen[name].add(row[source], keep_values=keep)
    return {name: values for name, values in seen.items() if values.sample_lows}


def _float_tensors(onnx: Any, model: Any) -> list[str]:
    """Graph inputs and node outputs that are (or may be: no type known) float32."""
    known = {v.name: v.type.tensor_type.elem_type for v in (*model.graph.value_info, *model.graph.input,
                                                             *model.graph.output)}
    weights = {t.name for t in model.graph.initializer}
    names = [v.name for v in model.graph.input if v.name not in weights]
    names += [o for node in model.graph.node for o in node.output if o]
    return [n for n in dict.fromkeys(names) if known.get(n, onnx.TensorProto.FLOAT) == onnx.TensorProto.FLOAT]
