"""fp16, dynamic-range and full-integer int8 TFLite models from a float flatbuffer, by
ai-edge-quantizer: the quantize pass of the PyTorch and ONNX sources (``exporters.tflite_torch``).

fp16 casts weights; int8 with calibration data quantizes weights and activations (inputs and
outputs stay float unless int8 I/O is asked for), its activation ranges chosen by measurement
(``tflite_ranges``), once per float artifact; layers kept in float are NO_QUANTIZE entries of the
recipe, picked by their output tensor names, and reuse those ranges. int8 without data quantizes
weights and lets the runtime quantize activations on the fly.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from edgeopt.calibration import Subset
from edgeopt.deps import require
from edgeopt.errors import ConversionError
from edgeopt.exporters.base import ExportResult, FloatArtifact, Layer, conversion_failure
from edgeopt.exporters.tflite_torch import LiteRTFloat, quiet
from edgeopt.frameworks.base import LoadedModel
from edgeopt.passes.quantize import tflite_ranges as range_rule
from edgeopt.passes.quantize.config import DEFAULT_QUANT, QuantConfig, check_quant
from edgeopt.model import Axes
from edgeopt.passes.quantize.tflite import FLOAT_ONLY_OPS, op_layers


def quantize(artifact: FloatArtifact, out: Path, *, precision: str, calib: Subset | None = None,
             int8_io: bool = False, quant: QuantConfig = DEFAULT_QUANT) -> ExportResult:
    source = artifact.model
    native: LiteRTFloat = artifact.native
    if precision == "int8" and calib is not None:
        check_quant(artifact.key, quant, keep_float=bool(quant.keep_float))
    notes: list[str] = []
    quantizer = require("ai_edge_quantizer.quantizer", "Quantizing TFLite models")
    with tempfile.TemporaryDirectory(prefix=".edgeopt-tflite-", dir=out.parent) as tmp:
        float_path = Path(tmp) / "float.tflite"
        float_path.write_bytes(native.flatbuffer)
        try:
            with quiet():
                recipe, label = _recipe(precision, calib, int8_io, quant.per_channel, quant.keep_float,
                                        quant.int16_activations)
                qt = quantizer.Quantizer(str(float_path))
                qt.load_quantization_recipe(recipe)
                if label != "int8":
                    qt.quantize(None).export_model(str(out), overwrite=True)
                else:
                    rows = _calibration(str(float_path), source, calib, native.moved)
                    ranges = _ranges(artifact, quantizer, float_path, calib, rows, int8_io, quant.per_channel)
                    rule_key = ("range rule", id(calib))
                    if int8_io:  # int8 inputs: the judging runs feed floats, so keep the default rule
                        qt.quantize(ranges[range_rule.MOVING]).export_model(str(out), overwrite=True)
                    elif (quant.keep_float or quant.int16_activations) and rule_key in artifact.memo:
                        qt.quantize(ranges[artifact.memo[rule_key]]).export_model(str(out), overwrite=True)
                    else:
                        artifact.memo[rule_key], note = range_rule.choose(qt, ranges, rows, float_path, out,
                                                                          source.handle.path.name)
                        notes.append(note)
        except Exception as exc:
            raise conversion_failure("ai-edge-quantizer", source.handle.path, exc) from exc
    if quant.keep_float:
        notes.append(f"Kept in float in '{out.name}' (ai-edge-quantizer NO_QUANTIZE recipe entries): "
                     f"{', '.join(quant.keep_float)}.")
    if quant.int16_activations:
        notes.append(f"16-bit activations in '{out.name}' (ai-edge-quantizer A16W8 recipe entries): "
                     f"{', '.join(quant.int16_activations)}.")
    return ExportResult(out, label, notes, float_fallback=bool(quant.keep_float or quant.int16_activations))


def _ranges(artifact: FloatArtifact, quantizer: Any, float_path: Path, calib: Subset, rows: dict[str, Any],
            int8_io: bool, per_channel: bool) -> dict[str, Any]:
    """The activation ranges of ``calib`` under each rule, once per float artifact: calibrated with
    every op quantized, so that they serve any set of layers kept in float."""
    key = ("ranges", id(calib), int8_io)
    if key not in artifact.memo:
        qt = quantizer.Quantizer(str(float_path))
        qt.load_quantization_recipe(_recipe("int8", calib, int8_io, per_channel)[0])
        artifact.memo[key] = {range_rule.MOVING: qt.calibrate(rows)} if int8_io else range_rule.calibrate(qt, rows)
    return artifact.memo[key]


def quantized_layers(floating: FloatArtifact, artifact: Path, *, calib: Subset | None = None,
                     quant: QuantConfig = DEFAULT_QUANT) -> list[Layer]:
    """The ops ai-edge-quantizer quantized, named by their first output tensor, as the float
    artifact names it and the NO_QUANTIZE recipe entries pick it."""
    return op_layers(Path(artifact).read_bytes(), floating.model, integer_only=True)


def _recipe(precision: str, calib: Subset | None, int8_io: bool, per_channel: bool = True,
            keep_float: tuple[str, ...] = (), int16_activations: tuple[str, ...] = ()) -> tuple[Any, str]:
    manager_module = require("ai_edge_quantizer.recipe_manager", "Quantizing TFLite models")
    qtyping = require("ai_edge_quantizer.qtyping", "Quantizing TFLite models")
    algorithms = require("ai_edge_quantizer.algorithm_manager", "Quantizing TFLite models").AlgorithmName
    ops = qtyping.TFLOperationName
    manager = manager_module.RecipeManager()
    if precision == "fp16":
        manager.add_weight_only_config(".*", ops.ALL_SUPPORTED, num_bits=16, algorithm_key=algorithms.FLOAT_CASTING)
        return manager.get_quantization_recipe(), "fp16"
    if calib is None:
        manager.add_dynamic_config(".*", ops.ALL_SUPPORTED, num_bits=8)
        return manager.get_quantization_recipe(), "int8-dynamic"
    granularity = qtyping.QuantGranularity.CHANNELWISE if per_channel else qtyping.QuantGranularity.TENSORWISE
    manager.add_static_config(".*", ops.ALL_SUPPORTED, activation_num_bits=8, weight_num_bits=8,
                              weight_granularity=granularity)
    in_float = qtyping.OpQuantizationConfig(compute_precision=qtyping.ComputePrecision.FLOAT,
                                            explicit_dequantize=False)
    # Later entries win: ops that never run in int8 (passes.quantize.tflite.FLOAT_ONLY_OPS); unless
    # int8_io, the graph inputs and outputs, with (de)quantize ops inside; and the layers kept in
    # float, picked by their op's scope: its output tensor names, each followed by ';'.
    float_ops = [getattr(ops, name) for name in FLOAT_ONLY_OPS] + ([] if int8_io else [ops.INPUT, ops.OUTPUT])
    for op in float_ops:
        manager.add_quantization_config(".*", op, op_config=in_float, algorithm_key=algorithms.NO_QUANTIZE)
    for name in keep_float:
        manager.add_quantization_config(f"^{re.escape(name)};", ops.ALL_SUPPORTED, op_config=in_float,
                                        algorithm_key=algorithms.NO_QUANTIZE)
    for name in int16_activations:  # LiteRT's 16x8 kernels: symmetric int16 activations, int8 weights
        manager.add_static_config(f"^{re.escape(name)};", ops.ALL_SUPPORTED, activation_num_bits=16,
                                  weight_num_bits=8, weight_granularity=granularity)
    return manager.get_quantization_recipe(), "int8"


def _calibration(model_path: str, source: LoadedModel, calib: Subset, moved: dict[str, Axes]) -> dict[str, _Rows]:
    """Calibration rows keyed by the TFLite signature's input names (args_0, args_1, ... in order),
    transposed by ``moved`` into the layout the float model takes."""
    litert = require("ai_edge_litert.interpreter", "Reading TFLite models")
    signatures = litert.Interpreter(model_path=model_path).get_signature_list()
    key = next(iter(signatures))
    names = signatures[key]["inputs"]
    if len(names) != len(source.handle.inputs):
        raise ConversionError(f"The TFLite model of '{source.handle.path}' takes {len(names)} inputs; the source "
                              f"takes {len(source.handle.inputs)}.")
    # litert-torch names inputs args_<i> in forward() order, which is the source's order.
    ordered = sorted(names, key=lambda n: int(n.rsplit("_", 1)[-1]) if n.rsplit("_", 1)[-1].isdigit() else 0)
    pairs = list(zip(ordered, source.handle.input_names))
    return {key: _Rows(calib, pairs, moved)}


class _Rows:
    """Calibration rows renamed for the quantizer, streamed again on every pass: it walks the
    data once to count work before walking it to calibrate."""

    def __init__(self, calib: Subset, pairs: list[tuple[str, str]], moved: dict[str, Axes]) -> None:
        self._calib = calib
        self._pairs = pairs
        self._moved = moved

    def __len__(self) -> int:
        return len(self._calib)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for row in self._calib:
            yield {tfl: np.ascontiguousarray(np.transpose(row[name], self._moved[name])) if name in self._moved
                   else row[name] for tfl, name in self._pairs}


