"""Keras/SavedModel -> TFLite with the TFLite converter: fp32, fp16, dynamic-range or full int8.

Keras models are channels-last already, so ``keep_layout`` changes nothing here.
"""

from __future__ import annotations

import contextlib
import io
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from edgeopt.calibration import Subset
from edgeopt.deps import quiet_stderr, require
from edgeopt.errors import ConversionError
from edgeopt.exporters.base import ExportResult
from edgeopt.frameworks.base import LoadedModel
from edgeopt.model import Format


def export_keras(source: LoadedModel, out: Path, *, precision: str, calib: Subset | None = None,
                 int8_io: bool = False, keep_layout: bool = False) -> ExportResult:
    tf = require("tensorflow", "Converting to TFLite")
    converter = _converter(tf, source)
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
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = _representative(calib, source.handle.input_names)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if int8_io:
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
    try:
        flatbuffer = _convert(converter)
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


def _converter(tf, source: LoadedModel):
    if source.handle.format is Format.SAVED_MODEL:
        return tf.lite.TFLiteConverter.from_saved_model(str(source.handle.path))
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
