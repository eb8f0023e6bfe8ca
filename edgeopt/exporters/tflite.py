"""Keras/SavedModel -> TFLite with the TFLite converter: fp32, fp16, dynamic-range or full int8.

Keras models are channels-last already, so ``keep_layout`` changes nothing here. The converter
calibrates with min/max ranges only; per-tensor weights use its per-channel switch. Layers kept
in float go through the converter's QuantizationDebugger: the model is calibrated once and
quantized with ``denylisted_nodes`` (op output tensor names), which leaves those ops in float
with quantize/dequantize ops around them.
"""

from __future__ import annotations

import contextlib
import io
import re
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from edgeopt.calibration import Subset
from edgeopt.deps import quiet_stderr, require
from edgeopt.errors import ConversionError
from edgeopt.exporters.base import (DEFAULT_QUANT, ExportResult, Layer, QuantSettings, check_quant, layer_label,
                                    source_layer_names)
from edgeopt.frameworks.base import LoadedModel
from edgeopt.model import Format


def export_keras(source: LoadedModel, out: Path, *, precision: str, calib: Subset | None = None,
                 int8_io: bool = False, keep_layout: bool = False,
                 quant: QuantSettings = DEFAULT_QUANT) -> ExportResult:
    tf = require("tensorflow", "Converting to TFLite")
    converter = _converter(tf, source)
    if not quant.per_channel:
        # The converter's only switch for per-tensor weights; its QuantizationDebugger reads it too.
        converter._experimental_disable_per_channel = True
    notes: list[str] = []
    label = precision
    if precision == "fp16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif precision == "int8" and calib is None:
        # The pipeline already notes, once for all targets, that no calibration data means
        # dynamic range; the label says it for this artifact.
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        label = "int8-dynamic"
    elif precision == "int8":
        check_quant("keras->tflite", quant, keep_float=bool(quant.keep_float))
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = _representative(calib, source.handle.input_names)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if int8_io:
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
    if quant.keep_float and precision == "int8" and calib is not None:
        try:
            flatbuffer = _convert_keeping_float(tf, converter, calib, source.handle.input_names, quant, int8_io)
        except Exception as exc:
            raise _conversion_error(source, exc) from exc
        out.write_bytes(flatbuffer)
        return ExportResult(out, label, notes, float_fallback=True)
    try:
        flatbuffer = _convert(converter)
        if precision == "int8" and calib is not None and _has_int8(flatbuffer, FLOAT_ONLY_OPS):
            flatbuffer = _convert_keeping_float(tf, converter, calib, source.handle.input_names, quant, int8_io)
            notes.append(f"{', '.join(FLOAT_ONLY_OPS)} kept in float in '{out.name}': an int8 DIV stops at run time "
                         "on a divisor that rounds to zero.")
    except Exception as exc:
        if precision != "int8" or calib is None:
            raise _conversion_error(source, exc) from exc
        # Some ops have no int8 kernel: keep them in float rather than fail the whole model,
        # and say so, since the artifact is then not full-integer.
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8,
                                               tf.lite.OpsSet.TFLITE_BUILTINS]
        try:
            flatbuffer = _convert(converter)
        except Exception as exc2:
            raise _conversion_error(source, exc2) from exc2
        notes.append("Some ops have no int8 kernel and were kept in float; see float_ops in the report.")
        out.write_bytes(flatbuffer)
        return ExportResult(out, label, notes, float_fallback=True)
    out.write_bytes(flatbuffer)
    return ExportResult(out, label, notes)


# Ops never run in int8. The int8 DIV kernel refuses, at run time, any divisor that rounds to its
# zero point: basic-pitch's note model divides by a range that is near zero on quiet audio, and its
# int8 TFLite model stopped with "data[i] != zero_point" (DIV). ONNX Runtime and OpenVINO keep
# Div in float too.
FLOAT_ONLY_OPS = ("DIV",)


def _has_int8(flatbuffer: bytes, ops: tuple[str, ...]) -> bool:
    litert = require("ai_edge_litert.interpreter", "Running TFLite models")
    interp = litert.Interpreter(model_content=flatbuffer,
                                experimental_op_resolver_type=litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    tensors = {t["index"]: t for t in interp.get_tensor_details()}
    return any(op["op_name"] in ops and any(np.dtype(tensors[i]["dtype"]) == np.int8 for i in op["inputs"] if i in tensors)
               for op in interp._get_ops_details())


def _convert_keeping_float(tf, converter, calib: Subset, names: list[str], quant: QuantSettings,
                           int8_io: bool) -> bytes:
    """Calibrate once, then quantize with the named ops left in float (``denylisted_nodes``)."""
    options = tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=list(quant.keep_float),
                                                            denylisted_ops=list(FLOAT_ONLY_OPS),
                                                            fully_quantize=int8_io)
    # The debugger checks its instrumented model with tf.lite.Interpreter, which warns that it is deprecated.
    with contextlib.redirect_stdout(io.StringIO()), quiet_stderr(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        debugger = tf.lite.experimental.QuantizationDebugger(
            converter=converter, debug_dataset=_representative(calib, names), debug_options=options)
        return debugger.get_nondebug_quantized_model()


def keras_layers(source: LoadedModel, *, calib: Subset, quant: QuantSettings = DEFAULT_QUANT,
                 artifact: Path | None = None) -> list[Layer]:
    """Every op of the calibrated model, named by its output tensor as ``denylisted_nodes`` wants.

    Read from the calibrated float model rather than the int8 artifact: there an op that writes a
    graph output is renamed ("Identity1") when a DEQUANTIZE takes over the output's name.
    """
    tf = require("tensorflow", "Converting to TFLite")
    litert = require("ai_edge_litert.interpreter", "Reading TFLite models")
    converter = _converter(tf, source)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = _representative(calib, source.handle.input_names)
    converter.experimental_mlir_quantizer = True
    converter._experimental_calibrate_only = True  # what QuantizationDebugger itself does first
    calibrated = _convert(converter)
    interp = litert.Interpreter(model_content=calibrated,
                                experimental_op_resolver_type=litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    tensors = {t["index"]: t["name"] for t in interp.get_tensor_details()}
    keras_names = source_layer_names(source)
    layers = []
    for op in interp._get_ops_details():
        if not op["outputs"] or op["op_name"] in ("QUANTIZE", "DEQUANTIZE"):
            continue
        name = tensors[op["outputs"][0]]
        layers.append(Layer(name=name, op=op["op_name"], label=layer_label([name], keras_names)))
    return layers


def _converter(tf, source: LoadedModel):
    if source.handle.format is Format.SAVED_MODEL:
        return tf.lite.TFLiteConverter.from_saved_model(str(source.graph_file))
    model = source.native
    # A tf.function with named TensorSpecs keeps the Keras input names in the TFLite signature.
    specs = [tf.TensorSpec((1, *t.shape[1:]), tf.as_dtype(t.dtype), name=t.name) for t in source.handle.inputs]

    @tf.function(input_signature=specs)
    def serve(*args):
        return model(list(args) if len(args) > 1 else args[0], training=False)

    # No trackable object: the converter then freezes the weights into constants, which is
    # what the int8 weight quantizer works on.
    return tf.lite.TFLiteConverter.from_concrete_functions([serve.get_concrete_function()])


def _representative(calib: Subset, names: list[str]):
    def gen() -> Iterator[list[np.ndarray]]:
        for row in calib:
            yield [row[n] for n in names]  # already in each input's dtype
    return gen


def _convert(converter) -> bytes:
    # The converter writes MLIR diagnostics to the C++ log; keep the user's terminal clean.
    with contextlib.redirect_stdout(io.StringIO()), quiet_stderr():
        return converter.convert()


# How the MLIR converter names an op that has no TFLite kernel: "'tf.Erfinv' op is neither a
# custom op nor a flex op".
_UNSUPPORTED_OP = re.compile(r"'([\w.]+)' op is neither a custom op nor a flex op")


def _conversion_error(source: LoadedModel, exc: Exception) -> ConversionError:
    text = str(exc)
    ops = sorted(set(_UNSUPPORTED_OP.findall(text)))
    detail = f" Unsupported ops: {', '.join(ops)}." if ops else ""
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return ConversionError(f"The TFLite converter failed on '{source.handle.path}'.{detail} {first}",
                           hint="Run with --debug for the converter's full log.")
