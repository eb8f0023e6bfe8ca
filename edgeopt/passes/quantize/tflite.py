"""fp16, dynamic-range and full-integer int8 TFLite models from a Keras model or SavedModel.

The TFLite converter quantizes only while it converts, so this pass owns that call: every
precision converts the float artifact's model again (the float flatbuffer itself cannot be
quantized by it). It calibrates with min/max ranges only; per-tensor weights use its per-channel
switch. Layers kept in float are what its QuantizationDebugger does, done once per calibration
set: the model is calibrated once (``_experimental_calibrate_only``), and each set of layers is
one ``mlir_quantize`` of that calibrated model with ``denylisted_nodes`` (op output tensor
names), which leaves those ops in float with quantize/dequantize ops around them. The budget
search's tries then cost milliseconds, not a calibration each.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from edgeopt.calibration import Subset
from edgeopt.deps import quiet_stderr, require
from edgeopt.exporters.base import ExportResult, FloatArtifact, Layer, layer_label, source_layer_names
from edgeopt.exporters.tflite import conversion_error, make_converter, run_converter
from edgeopt.frameworks.base import LoadedModel
from edgeopt.passes.quantize.config import DEFAULT_QUANT, QuantConfig, check_quant

# Ops never run in int8. The int8 DIV kernel refuses, at run time, any divisor that rounds to its
# zero point: basic-pitch's note model divides by a range that is near zero on quiet audio, and its
# int8 TFLite model stopped with "data[i] != zero_point" (DIV). ONNX Runtime and OpenVINO keep
# Div in float too.
FLOAT_ONLY_OPS = ("DIV",)


def quantize(artifact: FloatArtifact, out: Path, *, precision: str, calib: Subset | None = None,
             int8_io: bool = False, quant: QuantConfig = DEFAULT_QUANT) -> ExportResult:
    tf = require("tensorflow", "Converting to TFLite")
    source = artifact.model
    converter = make_converter(tf, source)
    if not quant.per_channel:
        # The converter's only switch for per-tensor weights.
        converter._experimental_disable_per_channel = True
    notes: list[str] = []
    label = precision
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if precision == "fp16":
        converter.target_spec.supported_types = [tf.float16]
    elif calib is None:
        # The pipeline already notes, once for all targets, that no calibration data means
        # dynamic range; the label says it for this artifact.
        label = "int8-dynamic"
    else:
        check_quant(artifact.key, quant, keep_float=bool(quant.keep_float))
        if quant.keep_float:
            out.write_bytes(_keeping_float(artifact, calib, quant, int8_io))
            return ExportResult(out, label, notes, float_fallback=True)
        converter.representative_dataset = _representative(calib, source.handle.input_names)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if int8_io:
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
    try:
        flatbuffer = run_converter(converter)
        if precision == "int8" and calib is not None and _has_int8(flatbuffer, FLOAT_ONLY_OPS):
            flatbuffer = _keeping_float(artifact, calib, quant, int8_io)
            notes.append(f"{', '.join(FLOAT_ONLY_OPS)} kept in float in '{out.name}': an int8 DIV stops at run time "
                         "on a divisor that rounds to zero.")
    except Exception as exc:
        if precision != "int8" or calib is None:
            raise conversion_error(source, exc) from exc
        # Some ops have no int8 kernel: keep them in float rather than fail the whole model,
        # and say so, since the artifact is then not full-integer.
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8,
                                               tf.lite.OpsSet.TFLITE_BUILTINS]
        try:
            flatbuffer = run_converter(converter)
        except Exception as exc2:
            raise conversion_error(source, exc2) from exc2
        notes.append("Some ops have no int8 kernel and were kept in float; see float_ops in the report.")
        out.write_bytes(flatbuffer)
        return ExportResult(out, label, notes, float_fallback=True)
    out.write_bytes(flatbuffer)
    return ExportResult(out, label, notes)


def _has_int8(flatbuffer: bytes, ops: tuple[str, ...]) -> bool:
    litert = require("ai_edge_litert.interpreter", "Running TFLite models")
    interp = litert.Interpreter(model_content=flatbuffer,
                                experimental_op_resolver_type=litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    tensors = {t["index"]: t for t in interp.get_tensor_details()}
    return any(op["op_name"] in ops and any(np.dtype(tensors[i]["dtype"]) == np.int8 for i in op["inputs"] if i in tensors)
               for op in interp._get_ops_details())


def _keeping_float(artifact: FloatArtifact, calib: Subset, quant: QuantConfig, int8_io: bool) -> bytes:
    """The int8 model with the ops ``quant.keep_float`` (and FLOAT_ONLY_OPS) left in float: one
    ``mlir_quantize`` of the calibrated model, as the QuantizationDebugger's non-debug model is."""
    convert = require("tensorflow.lite.python.convert", "Quantizing TFLite models")
    try:
        with contextlib.redirect_stdout(io.StringIO()), quiet_stderr():
            return bytes(convert.mlir_quantize(
                calibrated(artifact, calib), disable_per_channel=not quant.per_channel, fully_quantize=int8_io,
                enable_numeric_verify=False, denylisted_ops=list(FLOAT_ONLY_OPS),
                denylisted_nodes=list(quant.keep_float)))
    except Exception as exc:
        raise conversion_error(artifact.model, exc) from exc


def calibrated(artifact: FloatArtifact, calib: Subset) -> bytes:
    """The float model with the activation ranges of ``calib`` recorded, once per calibration set:
    what the converter's quantizer and ``denylisted_nodes`` work from."""
    key = ("calibrated", id(calib))
    if key not in artifact.memo:
        tf = require("tensorflow", "Converting to TFLite")
        converter = make_converter(tf, artifact.model)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = _representative(calib, artifact.model.handle.input_names)
        converter._experimental_calibrate_only = True  # what QuantizationDebugger itself does first
        # The calibrator checks its model with tf.lite.Interpreter, which warns that it is deprecated.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                artifact.memo[key] = bytes(run_converter(converter))
            except Exception as exc:
                raise conversion_error(artifact.model, exc) from exc
    return artifact.memo[key]


def keras_layers(floating: FloatArtifact, artifact: Path, *, calib: Subset,
                 quant: QuantConfig = DEFAULT_QUANT) -> list[Layer]:
    """Every op of the calibrated model, named by its output tensor as ``denylisted_nodes`` wants.

    Read from the calibrated float model rather than the int8 artifact: there an op that writes a
    graph output is renamed ("Identity1") when a DEQUANTIZE takes over the output's name.
    """
    return op_layers(calibrated(floating, calib), floating.model)


def op_layers(flatbuffer: bytes, source: LoadedModel, *, integer_only: bool = False) -> list[Layer]:
    """The compute ops of a TFLite model as layers, each named by its first output tensor (what
    ``denylisted_nodes`` and ai-edge-quantizer's recipe entries pick ops by); with
    ``integer_only``, only the ops that write an integer tensor (those quantized)."""
    litert = require("ai_edge_litert.interpreter", "Reading TFLite models")
    interp = litert.Interpreter(model_content=flatbuffer,
                                experimental_op_resolver_type=litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    tensors = {t["index"]: t for t in interp.get_tensor_details()}
    names = source_layer_names(source)
    layers = []
    for op in interp._get_ops_details():
        if not op["outputs"] or op["op_name"] in ("QUANTIZE", "DEQUANTIZE"):
            continue
        written = tensors[op["outputs"][0]]
        if not integer_only or np.dtype(written["dtype"]) in (np.int8, np.int16):
            layers.append(Layer(name=written["name"], op=op["op_name"], label=layer_label([written["name"]], names)))
    return layers


def _representative(calib: Subset, names: list[str]) -> Any:
    def gen() -> Iterator[list[np.ndarray]]:
        for row in calib:
            yield [row[n] for n in names]  # already in each input's dtype
    return gen
