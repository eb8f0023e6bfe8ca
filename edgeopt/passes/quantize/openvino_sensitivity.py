"""How much error each layer of an int8 OpenVINO IR adds, from one run of it and of its float IR.

NNCF keeps the friendly names of the float IR's ops, and its ``ignored_scope`` leaves a layer
reading float inputs: the semantics the added-error ranking assumes (``sensitivity``). Every
quantized layer's output becomes a model output in both IRs; both run once on a few samples, on
the CPU plugin in f32 so that only the quantization differs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgeopt.deps import no_telemetry, quiet_stderr, require
from edgeopt.exporters.base import FloatArtifact, Layer
from edgeopt.exporters.openvino import port_name
from edgeopt.names import match_inputs
from edgeopt.passes.quantize import sensitivity


def added_error(floating: FloatArtifact, artifact: Path, layers: list[Layer], rows: list[dict[str, np.ndarray]]
                ) -> dict[str, float] | None:
    """Layer name -> the NSR it adds (0 or more) in ``artifact``, quantized from ``floating``; None
    where the IRs share no layer."""
    ov = require("openvino", "Reading OpenVINO models")
    with no_telemetry(), quiet_stderr():
        core = ov.Core()
        float_model, int8_model = core.read_model(str(floating.path)), core.read_model(str(artifact))
        float_ops = {op.get_friendly_name(): op for op in float_model.get_ordered_ops()}
        int8_ops = {op.get_friendly_name(): op for op in int8_model.get_ordered_ops()}
        common = [layer.name for layer in layers if layer.name in float_ops and layer.name in int8_ops
                  and len(float_ops[layer.name].outputs()) and len(int8_ops[layer.name].outputs())]
        if not common:
            return None
        nodes = [(name, [i.get_source_output().get_node().get_friendly_name() for i in op.inputs()])
                 for name, op in float_ops.items()]
        names = floating.model.handle.input_names
        reference = _tapped(ov, core, float_model, [float_ops[n] for n in common], names)
        quantized = _tapped(ov, core, int8_model, [int8_ops[n] for n in common], names)
        return sensitivity.added_error(common, reference, quantized, rows, nodes)


def _tapped(ov: Any, core: Any, model: Any, ops: list[Any], source_names: list[str]) -> Callable[[dict], list[Any]]:
    """``row -> [first output of each op]`` for ``model`` compiled with those outputs added."""
    ports = model.add_outputs([op.output(0) for op in ops])
    inputs = [port_name(p) for p in model.inputs]
    pairs = list(zip(inputs, match_inputs(inputs, source_names)))
    compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": 0})
    request = compiled.create_infer_request()
    outputs = [compiled.outputs[len(compiled.outputs) - len(ports) + i] for i in range(len(ports))]

    def run(row: dict[str, np.ndarray]) -> list[Any]:
        result = request.infer({name: row[source] for name, source in pairs})
        return [result[port] for port in outputs]

    return run
