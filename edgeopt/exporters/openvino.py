"""OpenVINO IR float artifacts (.xml with its .bin) from ONNX, Keras or PyTorch sources.

ONNX files and SavedModel folders go to ``openvino.convert_model`` directly; a Keras model goes
through ONNX (tf2onnx), or a SavedModel if that fails (``convert_model`` cannot take a Keras 3
object); a PyTorch module is traced with its example inputs. Inputs get a static batch of 1, as
the other artifacts have. The IR is written once per run, and ``edgeopt.passes.quantize.openvino``
reads it back for every precision: OpenVINO numbers the nodes it creates from a counter that runs
on across conversions ('Multiply_20939'), so names taken from one conversion would match nothing
in the next. The source's layout is kept whatever ``keep_layout`` says: the CPU plugin picks its
own internal layout either way.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgeopt.calibration import Subset
from edgeopt.deps import no_telemetry, quiet_stderr, require
from edgeopt.errors import ConversionError
from edgeopt.exporters.base import FloatArtifact, conversion_failure
from edgeopt.frameworks.base import LoadedModel
from edgeopt.model import Format
from edgeopt.names import match_inputs


def convert_onnx(source: LoadedModel, out: Path, *, keep_layout: bool = False,
                 calib: Subset | None = None) -> FloatArtifact:
    written = _convert(_from_file, source, out, "onnx->openvino")
    if getattr(source, "quantized", False):
        # OpenVINO reads Q/DQ pairs as int8 already; quantizing again would stack the errors.
        written.precision = "source-quantized"
    return written


def convert_keras(source: LoadedModel, out: Path, *, keep_layout: bool = False,
                  calib: Subset | None = None) -> FloatArtifact:
    return _convert(_from_keras, source, out, "keras->openvino")


def convert_torch(source: LoadedModel, out: Path, *, keep_layout: bool = False,
                  calib: Subset | None = None) -> FloatArtifact:
    return _convert(_from_torch, source, out, "torch->openvino")


def _convert(convert: Callable[[Any, LoadedModel, Path], Any], source: LoadedModel, out: Path,
             key: str) -> FloatArtifact:
    ov = require("openvino", "Converting to OpenVINO IR")
    xml = out.with_suffix(".xml")
    with no_telemetry(), tempfile.TemporaryDirectory(prefix=".edgeopt-ov-", dir=out.parent) as tmp:
        try:
            with contextlib.redirect_stdout(io.StringIO()), quiet_stderr():
                model = convert(ov, source, Path(tmp))
        except Exception as exc:
            raise conversion_failure("openvino.convert_model", source.handle.path, exc) from exc
        _static_batch(ov, model, source)
        try:
            # A SavedModel in tmp may back the model's constants until it is written out.
            ov.save_model(model, str(xml), compress_to_fp16=False)
        except Exception as exc:
            raise conversion_failure("openvino.save_model", source.handle.path, exc) from exc
    return FloatArtifact(key, source, xml, extra_files=[xml.with_suffix(".bin")])


def _from_file(ov: Any, source: LoadedModel, tmp: Path) -> Any:
    return ov.convert_model(str(getattr(source, "graph_file", source.handle.path)))


def _from_keras(ov: Any, source: LoadedModel, tmp: Path) -> Any:
    if source.handle.format is Format.SAVED_MODEL:
        return ov.convert_model(str(source.graph_file))
    from edgeopt.exporters.onnx import keras_to_onnx

    # Through ONNX first: tf2onnx traces in a fraction of a second, while model.export() slows
    # down with every call on the same model. The SavedModel route stays as the fallback.
    try:
        proto = keras_to_onnx(source)
    except ConversionError:
        saved = tmp / "saved_model"
        source.native.export(str(saved), verbose=False)
        return ov.convert_model(str(saved))
    path = tmp / "model.onnx"
    require("onnx", "Converting Keras models to OpenVINO").save(proto, str(path))
    return ov.convert_model(str(path))


def _from_torch(ov: Any, source: LoadedModel, tmp: Path) -> Any:
    example = source.example_inputs()
    shapes = [ov.PartialShape(list(t.shape)) for t in example]
    return ov.convert_model(source.native, example_input=example, input=shapes)


def _static_batch(ov: Any, model: Any, source: LoadedModel) -> None:
    """Give every input a batch of 1 and the source's other dimensions where the IR left them free."""
    names = match_inputs([port_name(p) for p in model.inputs], source.handle.input_names)
    shapes = {}
    for port, name in zip(model.inputs, names):
        spec = next((t for t in source.handle.inputs if t.name == name), None)
        if spec is None:
            continue
        current = port.get_partial_shape()
        if current.rank.is_dynamic or current.rank.get_length() != len(spec.shape) or not spec.shape:
            continue
        # A fixed first size is not a batch (a recurrent state's (layers, batch, units)): kept.
        dims = [1 if spec.shape[0] is None else spec.shape[0]] + [d if d is not None else -1 for d in spec.shape[1:]]
        shapes[port] = ov.PartialShape(dims)
    if shapes:
        try:
            model.reshape(shapes)
        except Exception as exc:
            raise conversion_failure("openvino reshape to batch 1", source.handle.path, exc) from exc


def port_name(port: Any) -> str:
    names = port.get_names()
    return port.get_any_name() if names else ""


