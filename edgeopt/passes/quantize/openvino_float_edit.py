"""Layers of an int8 OpenVINO IR put back in float by editing it, without running NNCF again.

NNCF quantizes a layer's inputs: a FakeQuantize in front of each activation it reads, which it
moves up through reshapes, pools and concatenations (where other layers may share it), and int8
weights behind a Convert and Multiply; its bias correction then shifts the bias Add behind the
layer. Keeping layer L in float (``ignored_scope``) is the same graph with L reading float
tensors, float weights and its own bias. The edit gives L exactly those: every activation path
into L is rebuilt from the tensors in front of its FakeQuantizes (the reshapes and pools on the
way are copied, so the layers sharing them keep their quantizers), and its constant inputs and
bias come from the float IR it was quantized from. Nodes nobody reads any more are dropped when
the IR is saved.

An edit takes a fraction of a second where ``nncf.quantize`` takes seconds (PP-OCRv4's
detector: 5 s a try, 11 tries): the guard's search tries its candidates on edits, and the edit
that held is the artifact (``edgeopt.budget``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgeopt.deps import no_telemetry, quiet_stderr, require
from edgeopt.exporters.base import ExportResult, FloatArtifact
from edgeopt.passes.quantize.openvino import PASS_THROUGH



def keep_in_float(floating: FloatArtifact, artifact: Path, names: tuple[str, ...], out: Path) -> ExportResult | None:
    """``artifact`` (NNCF's int8 IR of ``floating``) with the layers ``names`` reading float inputs,
    written to ``out``; None where a layer cannot be matched to the float IR (then the caller
    quantizes with ignored_scope instead)."""
    ov = require("openvino", "Editing OpenVINO models")
    factory = require("openvino.utils.node_factory", "Editing OpenVINO models").NodeFactory
    xml = out.with_suffix(".xml")
    with no_telemetry(), quiet_stderr():
        core = ov.Core()
        model, float_model = core.read_model(str(artifact)), core.read_model(str(floating.path))
        float_ops = {op.get_friendly_name(): op for op in float_model.get_ordered_ops()}
        int8_ops = {op.get_friendly_name(): op for op in model.get_ordered_ops()}
        editor = _Editor(ov, factory)
        for name in names:
            op, original = int8_ops.get(name), float_ops.get(name)
            if op is None or original is None or op.get_input_size() != original.get_input_size():
                return None
            for i in range(op.get_input_size()):
                if not editor.restore_input(op, original, i):
                    return None
            editor.restore_bias(op, float_ops)
        ov.save_model(model, str(xml), compress_to_fp16=False)
    return ExportResult(xml, "int8", [], extra_files=[xml.with_suffix(".bin")], float_fallback=bool(names))


class _Editor:
    def __init__(self, ov: Any, factory: Any) -> None:
        self._ov, self._factory = ov, factory
        self._rebuilt: dict[tuple[str, int], Any] = {}  # (node, output) -> its unquantized copy

    def restore_input(self, op: Any, original: Any, i: int) -> bool:
        """Input ``i`` of ``op`` as the float IR's ``original`` reads it; False where it cannot be."""
        value = constant_value(original.input(i).get_source_output())
        current = op.input(i).get_source_output()
        if value is not None:
            # A weight (or shape, axes) of the float IR: int8 IR reads it dequantized, or as it is.
            if current.get_node().get_type_name() == "Constant":
                return True
            if current.get_partial_shape().is_static and tuple(current.get_shape()) != value.shape:
                return False
            op.input(i).replace_source_output(self._ov.opset13.constant(value).output(0))
            return True
        float_path = self.unquantized(current)
        if float_path is not None:
            op.input(i).replace_source_output(float_path)
        return True

    def unquantized(self, output: Any) -> Any | None:
        """``output`` computed from the tensors in front of the FakeQuantizes on its way (the pass-
        through ops copied); None where no FakeQuantize is on the way."""
        node = output.get_node()
        kind = node.get_type_name()
        if kind == "FakeQuantize":
            source = node.input(0).get_source_output()
            return None if source.get_node().get_type_name() == "Constant" else source
        if kind not in PASS_THROUGH:
            return None
        key = (node.get_name(), output.get_index())
        if key not in self._rebuilt:
            inputs = [node.input(k).get_source_output() for k in range(node.get_input_size())]
            floats = [self.unquantized(x) if x.get_node().get_type_name() != "Constant" else None for x in inputs]
            copy = None
            if any(f is not None for f in floats):
                copy = self._factory(node.get_type_info().version_id).create(
                    kind, [f if f is not None else x for f, x in zip(floats, inputs)], node.get_attributes())
            self._rebuilt[key] = None if copy is None else copy.output(output.get_index())
        return self._rebuilt[key]

    def restore_bias(self, op: Any, float_ops: dict[str, Any]) -> None:
        """The bias Add behind ``op`` with the float IR's constant: NNCF's bias correction shifted it
        for the layer's quantization error, which a float layer does not make."""
        for reader in op.output(0).get_target_inputs():
            node = reader.get_node()
            original = float_ops.get(node.get_friendly_name())
            if node.get_type_name() != "Add" or original is None or original.get_type_name() != "Add":
                continue
            other = 1 - reader.get_index()
            value = constant_value(original.input(other).get_source_output())
            if value is not None and constant_value(node.input(other).get_source_output()) is not None:
                node.input(other).replace_source_output(self._ov.opset13.constant(value).output(0))


def constant_value(output: Any) -> np.ndarray | None:
    """The value at ``output`` where only constants, converts and reshapes make it; else None."""
    node = output.get_node()
    kind = node.get_type_name()
    if kind == "Constant":
        return np.asarray(node.get_data()).copy()
    if kind == "Convert":
        inner = constant_value(node.input(0).get_source_output())
        return None if inner is None else inner.astype(output.get_element_type().to_dtype())
    if kind in ("Reshape", "Squeeze", "Unsqueeze") and output.get_partial_shape().is_static:
        inner = constant_value(node.input(0).get_source_output())
        return None if inner is None else inner.reshape(tuple(output.get_shape()))
    return None
