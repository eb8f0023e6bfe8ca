"""TFLite float artifacts from Keras models and SavedModels, by the TFLite converter.

Keras models are channels-last already, so ``keep_layout`` changes nothing here. The converter
also quantizes, and only while converting: ``edgeopt.passes.quantize.tflite`` calls it again from
the model for every precision, and this fp32 flatbuffer is the float artifact the others are
judged against.
"""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

from edgeopt.calibration import Subset
from edgeopt.deps import quiet_stderr, require
from edgeopt.errors import ConversionError
from edgeopt.exporters.base import FloatArtifact
from edgeopt.frameworks.base import LoadedModel
from edgeopt.model import Format


def convert_keras(source: LoadedModel, out: Path, *, keep_layout: bool = False,
                  calib: Subset | None = None) -> FloatArtifact:
    tf = require("tensorflow", "Converting to TFLite")
    try:
        out.write_bytes(run_converter(make_converter(tf, source)))
    except Exception as exc:
        raise conversion_error(source, exc) from exc
    return FloatArtifact("keras->tflite", source, out)


def make_converter(tf, source: LoadedModel):
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


def run_converter(converter) -> bytes:
    # The converter writes MLIR diagnostics to the C++ log; keep the user's terminal clean.
    with contextlib.redirect_stdout(io.StringIO()), quiet_stderr():
        return converter.convert()


# How the MLIR converter names an op that has no TFLite kernel: "'tf.Erfinv' op is neither a
# custom op nor a flex op".
_UNSUPPORTED_OP = re.compile(r"'([\w.]+)' op is neither a custom op nor a flex op")


def conversion_error(source: LoadedModel, exc: Exception) -> ConversionError:
    text = str(exc)
    ops = sorted(set(_UNSUPPORTED_OP.findall(text)))
    detail = f" Unsupported ops: {', '.join(ops)}." if ops else ""
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return ConversionError(f"The TFLite converter failed on '{source.handle.path}'.{detail} {first}",
                           hint="Run with --debug for the converter's full log.")
