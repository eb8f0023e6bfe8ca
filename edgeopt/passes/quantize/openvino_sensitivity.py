"""How much error each layer of an int8 OpenVINO IR makes by its own quantization, from one run.

NNCF quantizes a layer's inputs: a FakeQuantize in front of each activation it reads (sometimes
past a reshape or pool), and int8 weights behind a Convert and Multiply (or a FakeQuantize of
their own); ``ignored_scope`` leaves a layer reading float inputs. So each layer gets a copy in
the float IR (rebuilt by OpenVINO's NodeFactory from its type and attributes) that reads the
float IR's tensors through the int8 IR's quantizers and dequantized weights, and one run on the
CPU plugin in f32 gives every layer's noise-to-signal ratio at its output: the error keeping it
in float takes away, with none fed from upstream. A ranking by the int8 model's error less its
inputs' error put the cliff layer of PP-OCRv4's detector 75th of 101; the NSR of the quantized
inputs alone misses a layer reading a tensor whose few huge channels hide the error of the rest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgeopt.deps import no_telemetry, quiet_stderr, require
from edgeopt.exporters.base import FloatArtifact, Layer
from edgeopt.exporters.openvino import port_name
from edgeopt.names import match_inputs

# Ops a FakeQuantize may sit behind on its way to the layer that reads it (NNCF moves it up).
PASS_THROUGH = {"Reshape", "Transpose", "Squeeze", "Unsqueeze", "MaxPool", "AvgPool", "Convert", "Relu"}


def added_error(floating: FloatArtifact, artifact: Path, layers: list[Layer], rows: list[dict[str, np.ndarray]]
                ) -> dict[str, float] | None:
    """Layer name -> the NSR its own quantization makes at its output in ``artifact`` (quantized
    from ``floating``); None where no layer's quantizers are found."""
    ov = require("openvino", "Reading OpenVINO models")
    factory_module = require("openvino.utils.node_factory", "Reading OpenVINO models")
    with no_telemetry(), quiet_stderr():
        core = ov.Core()
        float_model, int8_model = core.read_model(str(floating.path)), core.read_model(str(artifact))
        float_ops = {op.get_friendly_name(): op for op in float_model.get_ordered_ops()}
        int8_ops = {op.get_friendly_name(): op for op in int8_model.get_ordered_ops()}
        taps: list[tuple[str, Any, Any]] = []  # (layer, its float output, its copy's output)
        for layer in layers:
            copy = _quantized_copy(ov, factory_module.NodeFactory, float_ops.get(layer.name),
                                   int8_ops.get(layer.name))
            if copy is not None:
                taps.append((layer.name, float_ops[layer.name].output(0), copy.output(0)))
        if not taps:
            return None
        float_model.add_outputs([f for _, f, _ in taps])
        float_model.add_results([ov.opset13.result(c) for _, _, c in taps])
        inputs = [port_name(p) for p in float_model.inputs]
        pairs = list(zip(inputs, match_inputs(inputs, floating.model.handle.input_names)))
        compiled = core.compile_model(float_model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        request = compiled.create_infer_request()
        count = len(taps)
        ports = compiled.outputs[len(compiled.outputs) - 2 * count:]
        noise, signal = np.zeros(count), np.zeros(count)
        for row in rows:
            result = request.infer({name: row[source] for name, source in pairs})
            for i in range(count):
                f = np.asarray(result[ports[i]], np.float32).ravel()
                diff = f - np.asarray(result[ports[count + i]], np.float32).ravel()
                noise[i] += float(np.dot(diff, diff))
                signal[i] += float(np.dot(f, f))
    return {name: float(noise[i] / signal[i]) if signal[i] > 0 else 0.0 for i, (name, _, _) in enumerate(taps)}


def _quantized_copy(ov: Any, node_factory: Any, float_op: Any, int8_op: Any) -> Any | None:
    """A copy of ``float_op`` in the float IR reading its inputs through the quantizers ``int8_op``
    has (FakeQuantize on activations, int8 weights dequantized); None where it has none."""
    if float_op is None or int8_op is None or float_op.get_input_size() != int8_op.get_input_size():
        return None
    inputs, quantized = [], False
    for i in range(float_op.get_input_size()):
        original = float_op.input(i).get_source_output()
        found = _quantizer(int8_op.input(i).get_source_output())
        replacement = None
        try:
            if found is not None and found[0] == "activation":
                fq = found[1]
                bounds = [ov.opset13.constant(_constant(fq.input(k).get_source_output())).output(0)
                          for k in range(1, 5)]
                replacement = node_factory(fq.get_type_info().version_id).create(
                    "FakeQuantize", [original, *bounds], fq.get_attributes()).output(0)
            elif found is not None:
                weight = _dequantized_weight(found[1])
                if weight is not None and tuple(weight.shape) == tuple(original.get_partial_shape().to_shape()):
                    replacement = ov.opset13.constant(weight.astype(np.float32)).output(0)
        except Exception:  # a quantizer that does not fit this input as it is (a per-channel one past a reshape)
            replacement = None
        quantized |= replacement is not None
        inputs.append(replacement if replacement is not None else original)
    if not quantized:
        return None
    try:
        return node_factory(float_op.get_type_info().version_id).create(float_op.get_type_name(), inputs,
                                                                        float_op.get_attributes())
    except Exception:  # an op the factory cannot rebuild from its attributes
        return None


def _quantizer(output: Any) -> tuple[str, Any, Any] | None:
    """What quantizes the tensor a layer reads through ``output``: ("activation", FakeQuantize, the
    float tensor it reads) or ("weights", the weight's quantizer node, None); None for a float input."""
    node = output.get_node()
    for _ in range(4):
        kind = node.get_type_name()
        if kind == "FakeQuantize":
            source = node.input(0).get_source_output()
            if source.get_node().get_type_name() == "Constant":
                return "weights", node, None
            return "activation", node, source
        if kind in ("Multiply", "Subtract") and _compressed_weight(node) is not None:
            return "weights", node, None
        if kind not in PASS_THROUGH:
            return None
        node = node.input(0).get_source_output().get_node()
    return None


def _constant(output: Any) -> np.ndarray | None:
    node = output.get_node()
    while node.get_type_name() == "Convert":
        node = node.input(0).get_source_output().get_node()
    return np.asarray(node.get_data(), dtype=np.float32) if node.get_type_name() == "Constant" else None


def _compressed_weight(node: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """(int8 values as float, their dequantized form) for Constant -> Convert [-> Subtract] -> Multiply."""
    if node.get_type_name() != "Multiply":
        return None
    first, scale = node.input(0).get_source_output(), _constant(node.input(1).get_source_output())
    zero = None
    if first.get_node().get_type_name() == "Subtract":
        zero = _constant(first.get_node().input(1).get_source_output())
        first = first.get_node().input(0).get_source_output()
    if first.get_node().get_type_name() != "Convert" or scale is None:
        return None
    base = first.get_node().input(0).get_source_output().get_node()
    if base.get_type_name() != "Constant" or base.get_output_element_type(0).is_real():
        return None
    q = np.asarray(base.get_data(), dtype=np.float32)
    return q, (q - (zero if zero is not None else 0.0)) * scale


def _dequantized_weight(node: Any) -> np.ndarray | None:
    """The float values an int8 weight stands for: its FakeQuantize of a constant, or Constant ->
    Convert [-> Subtract] -> Multiply."""
    if node.get_type_name() == "FakeQuantize":
        w = _constant(node.input(0).get_source_output())
        return None if w is None else _fake_quantize(node, w)
    found = _compressed_weight(node)
    return None if found is None else found[1]


def _fake_quantize(fq: Any, x: np.ndarray) -> np.ndarray:
    """OpenVINO's FakeQuantize of ``x``, with the node's own constants and levels."""
    il, ih, ol, oh = (_constant(fq.input(i).get_source_output()) for i in range(1, 5))
    levels = fq.get_attributes()["levels"]
    inside = np.clip(x, il, ih)
    span = np.where(ih - il == 0, 1.0, ih - il)
    q = np.round((inside - il) / span * (levels - 1))
    return (q / (levels - 1) * (oh - ol) + ol).astype(np.float32)
