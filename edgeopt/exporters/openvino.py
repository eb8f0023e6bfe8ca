"""OpenVINO IR (.xml with its .bin) from ONNX, Keras or PyTorch sources.

ONNX files and SavedModel folders go to ``openvino.convert_model`` directly; a Keras model goes
through ONNX (tf2onnx), or a SavedModel if that fails (``convert_model`` cannot take a Keras 3
object); a PyTorch module is traced with its example inputs. Inputs get a static batch of 1, as
the other artifacts have. int8 is NNCF post-training quantization on the calibration data;
without data, weights alone are compressed to int8. The source's layout is kept whatever
``keep_layout`` says: the CPU plugin picks its own internal layout either way.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgeopt.calibration import Subset
from edgeopt.deps import no_telemetry, quiet_stderr, require
from edgeopt.errors import ConversionError
from edgeopt.exporters.base import ExportResult, conversion_failure
from edgeopt.frameworks.base import LoadedModel
from edgeopt.model import Format
from edgeopt.names import match_inputs

INT8_IO_NOTE = "--int8-io applies to TFLite only; the OpenVINO artifact keeps float inputs and outputs."


def export_onnx(source: LoadedModel, out: Path, *, precision: str, calib: Subset | None = None,
                int8_io: bool = False, keep_layout: bool = False) -> ExportResult:
    if getattr(source, "quantized", False):
        # OpenVINO reads Q/DQ pairs as int8 already; quantizing again would stack the errors.
        return _export(_from_file, source, out, precision="fp32", calib=None, int8_io=int8_io,
                       label="source-quantized")
    return _export(_from_file, source, out, precision=precision, calib=calib, int8_io=int8_io)


def export_keras(source: LoadedModel, out: Path, *, precision: str, calib: Subset | None = None,
                 int8_io: bool = False, keep_layout: bool = False) -> ExportResult:
    return _export(_from_keras, source, out, precision=precision, calib=calib, int8_io=int8_io)


def export_torch(source: LoadedModel, out: Path, *, precision: str, calib: Subset | None = None,
                 int8_io: bool = False, keep_layout: bool = False) -> ExportResult:
    return _export(_from_torch, source, out, precision=precision, calib=calib, int8_io=int8_io)


def _export(convert: Callable[[Any, LoadedModel, Path], Any], source: LoadedModel, out: Path, *, precision: str,
            calib: Subset | None, int8_io: bool, label: str | None = None) -> ExportResult:
    with no_telemetry():
        return _export_quietly(convert, source, out, precision=precision, calib=calib, int8_io=int8_io, label=label)


def _export_quietly(convert: Callable[[Any, LoadedModel, Path], Any], source: LoadedModel, out: Path, *,
                    precision: str, calib: Subset | None, int8_io: bool, label: str | None) -> ExportResult:
    ov = require("openvino", "Converting to OpenVINO IR")
    xml = out.with_suffix(".xml")
    notes = [INT8_IO_NOTE] if int8_io else []
    label = label or precision
    with tempfile.TemporaryDirectory(prefix=".edgeopt-ov-", dir=out.parent) as tmp:
        try:
            with contextlib.redirect_stdout(io.StringIO()), quiet_stderr():
                model = convert(ov, source, Path(tmp))
        except Exception as exc:
            raise conversion_failure("openvino.convert_model", source.handle.path, exc) from exc
        _static_batch(ov, model, source)
        if precision == "int8" and calib is not None:
            model = _quantize(model, source, calib)
        elif precision == "int8":
            model = _compress_weights(model, source)
            label = "int8-weights"
            notes.append("No calibration data: OpenVINO int8 weights only (activations stay float). "
                         "Pass --calib for int8 activations.")
        try:
            # A SavedModel in tmp may back the model's constants until it is written out.
            ov.save_model(model, str(xml), compress_to_fp16=precision == "fp16")
        except Exception as exc:
            raise conversion_failure("openvino.save_model", source.handle.path, exc) from exc
    return ExportResult(xml, label, notes, extra_files=[xml.with_suffix(".bin")])


def _from_file(ov: Any, source: LoadedModel, tmp: Path) -> Any:
    return ov.convert_model(str(source.handle.path))


def _from_keras(ov: Any, source: LoadedModel, tmp: Path) -> Any:
    if source.handle.format is Format.SAVED_MODEL:
        return ov.convert_model(str(source.handle.path))
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
    names = match_inputs([_name(p) for p in model.inputs], source.handle.input_names)
    shapes = {}
    for port, name in zip(model.inputs, names):
        spec = next((t for t in source.handle.inputs if t.name == name), None)
        if spec is None:
            continue
        current = port.get_partial_shape()
        if current.rank.is_dynamic or current.rank.get_length() != len(spec.shape):
            continue
        dims = [1] + [d if d is not None else -1 for d in spec.shape[1:]]
        shapes[port] = ov.PartialShape(dims)
    if shapes:
        try:
            model.reshape(shapes)
        except Exception as exc:
            raise conversion_failure("openvino reshape to batch 1", source.handle.path, exc) from exc


def _name(port: Any) -> str:
    names = port.get_names()
    return port.get_any_name() if names else ""


def _quantize(model: Any, source: LoadedModel, calib: Subset) -> Any:
    nncf = require("nncf", "Quantizing OpenVINO models")
    logging.getLogger("nncf").setLevel(logging.ERROR)
    ports = [_name(p) for p in model.inputs]
    pairs = list(zip(ports, match_inputs(ports, source.handle.input_names)))

    def transform(row: dict) -> dict:
        return {port: row[name] for port, name in pairs}

    try:
        with contextlib.redirect_stdout(io.StringIO()), quiet_stderr():
            return nncf.quantize(model, nncf.Dataset(calib, transform), subset_size=len(calib))
    except Exception as exc:
        raise conversion_failure("nncf.quantize", source.handle.path, exc) from exc


def _compress_weights(model: Any, source: LoadedModel) -> Any:
    nncf = require("nncf", "Compressing OpenVINO weights")
    logging.getLogger("nncf").setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), quiet_stderr():
            return nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_SYM)
    except Exception as exc:
        raise conversion_failure("nncf.compress_weights", source.handle.path, exc) from exc
