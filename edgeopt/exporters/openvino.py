"""OpenVINO IR (.xml with its .bin) from ONNX, Keras or PyTorch sources.

ONNX files and SavedModel folders go to ``openvino.convert_model`` directly; a Keras model goes
through ONNX (tf2onnx), or a SavedModel if that fails (``convert_model`` cannot take a Keras 3
object); a PyTorch module is traced with its example inputs. Inputs get a static batch of 1, as
the other artifacts have. int8 is NNCF post-training quantization on the calibration data, its
activation ranges from the NNCF range estimator the calibration method names (min/max, mean
per-sample quantiles, or the L2-optimal histogram range); layers kept in float go into NNCF's
``ignored_scope``. Without data, weights alone are compressed to int8. The source's layout is
kept whatever ``keep_layout`` says: the CPU plugin picks its own internal layout either way.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgeopt.calibration import Subset
from edgeopt.deps import no_telemetry, quiet_stderr, require
from edgeopt.errors import ConversionError
from edgeopt.exporters.base import (DEFAULT_QUANT, ExportResult, Layer, QuantSettings, check_quant,
                                    conversion_failure, layer_label, source_layer_names)
from edgeopt.frameworks.base import LoadedModel
from edgeopt.model import Format
from edgeopt.names import match_inputs

INT8_IO_NOTE = "--int8-io applies to TFLite only; the OpenVINO artifact keeps float inputs and outputs."


def export_onnx(source: LoadedModel, out: Path, *, precision: str, calib: Subset | None = None,
                int8_io: bool = False, keep_layout: bool = False,
                quant: QuantSettings = DEFAULT_QUANT) -> ExportResult:
    if getattr(source, "quantized", False):
        # OpenVINO reads Q/DQ pairs as int8 already; quantizing again would stack the errors.
        return _export(_from_file, source, out, precision="fp32", calib=None, int8_io=int8_io, quant=quant,
                       key="onnx->openvino", label="source-quantized")
    return _export(_from_file, source, out, precision=precision, calib=calib, int8_io=int8_io, quant=quant,
                   key="onnx->openvino")


def export_keras(source: LoadedModel, out: Path, *, precision: str, calib: Subset | None = None,
                 int8_io: bool = False, keep_layout: bool = False,
                 quant: QuantSettings = DEFAULT_QUANT) -> ExportResult:
    return _export(_from_keras, source, out, precision=precision, calib=calib, int8_io=int8_io, quant=quant,
                   key="keras->openvino")


def export_torch(source: LoadedModel, out: Path, *, precision: str, calib: Subset | None = None,
                 int8_io: bool = False, keep_layout: bool = False,
                 quant: QuantSettings = DEFAULT_QUANT) -> ExportResult:
    return _export(_from_torch, source, out, precision=precision, calib=calib, int8_io=int8_io, quant=quant,
                   key="torch->openvino")


def _export(convert: Callable[[Any, LoadedModel, Path], Any], source: LoadedModel, out: Path, *, precision: str,
            calib: Subset | None, int8_io: bool, quant: QuantSettings, key: str,
            label: str | None = None) -> ExportResult:
    with no_telemetry():
        return _export_quietly(convert, source, out, precision=precision, calib=calib, int8_io=int8_io, quant=quant,
                               key=key, label=label)


def _export_quietly(convert: Callable[[Any, LoadedModel, Path], Any], source: LoadedModel, out: Path, *,
                    precision: str, calib: Subset | None, int8_io: bool, quant: QuantSettings, key: str,
                    label: str | None) -> ExportResult:
    ov = require("openvino", "Converting to OpenVINO IR")
    xml = out.with_suffix(".xml")
    notes = [INT8_IO_NOTE] if int8_io else []
    label = label or precision
    with tempfile.TemporaryDirectory(prefix=".edgeopt-ov-", dir=out.parent) as tmp:
        model = _converted(ov, convert, source, Path(tmp))
        if precision == "int8" and calib is not None:
            check_quant(key, quant, keep_float=bool(quant.keep_float))
            model = _quantize(model, source, calib, quant)
            if quant.keep_float:
                notes.append(f"Kept in float in '{xml.name}' (NNCF ignored_scope): {', '.join(quant.keep_float)}.")
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
    return ExportResult(xml, label, notes, extra_files=[xml.with_suffix(".bin")], float_fallback=bool(quant.keep_float))


# OpenVINO numbers the nodes it creates from a counter that runs on across conversions
# ('Multiply_20939'): names taken from one conversion (the layers the budget search keeps in float,
# NNCF's ignored_scope) match nothing in the next. Sources whose conversion reads nothing from a
# temporary folder are converted once per run and each export quantizes a clone.
_CONVERTED: weakref.WeakKeyDictionary[LoadedModel, Any] = weakref.WeakKeyDictionary()


def _converted(ov: Any, convert: Callable[[Any, LoadedModel, Path], Any], source: LoadedModel, tmp: Path) -> Any:
    cached = _CONVERTED.get(source)
    if cached is not None:
        return cached.clone()
    try:
        with contextlib.redirect_stdout(io.StringIO()), quiet_stderr():
            model = convert(ov, source, tmp)
    except Exception as exc:
        raise conversion_failure("openvino.convert_model", source.handle.path, exc) from exc
    _static_batch(ov, model, source)
    if convert in (_from_file, _from_torch):
        _CONVERTED[source] = model.clone()
    return model


def _from_file(ov: Any, source: LoadedModel, tmp: Path) -> Any:
    return ov.convert_model(str(getattr(source, "graph_file", source.handle.path)))


def _from_keras(ov: Any, source: LoadedModel, tmp: Path) -> Any:
    if source.handle.format is Format.SAVED_MODEL:
        return ov.convert_model(str(source.graph_file))
    from edgeopt.exporters.onnx import cached_float_graph, keras_to_onnx

    # Through ONNX first: tf2onnx traces in a fraction of a second, while model.export() slows
    # down with every call on the same model. The SavedModel route stays as the fallback.
    try:
        proto = cached_float_graph(source, keras_to_onnx)
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


def _name(port: Any) -> str:
    names = port.get_names()
    return port.get_any_name() if names else ""


def _quantize(model: Any, source: LoadedModel, calib: Subset, quant: QuantSettings) -> Any:
    nncf = require("nncf", "Quantizing OpenVINO models")
    logging.getLogger("nncf").setLevel(logging.ERROR)
    ports = [_name(p) for p in model.inputs]
    pairs = list(zip(ports, match_inputs(ports, source.handle.input_names)))

    def transform(row: dict) -> dict:
        return {port: row[name] for port, name in pairs}

    try:
        with contextlib.redirect_stdout(io.StringIO()), quiet_stderr():
            ignored = nncf.IgnoredScope(names=list(quant.keep_float)) if quant.keep_float else None
            return nncf.quantize(model, nncf.Dataset(calib, transform), subset_size=len(calib), ignored_scope=ignored,
                                 advanced_parameters=_advanced(quant))
    except Exception as exc:
        raise conversion_failure("nncf.quantize", source.handle.path, exc) from exc


def _advanced(quant: QuantSettings) -> Any:
    """NNCF's parameters for the calibration method: its range estimator for activations (NNCF's
    own default, mean of per-sample min/max, is what "auto" keeps) and per-tensor weights."""
    advanced = require("nncf.quantization.advanced_parameters", "Quantizing OpenVINO models")
    ranges = require("nncf.quantization.range_estimator", "Quantizing OpenVINO models")
    if quant.method == "percentile":
        quantile = ranges.StatisticsCollectorParameters(
            statistics_type=ranges.StatisticsType.QUANTILE, aggregator_type=ranges.AggregatorType.MEAN,
            quantile_outlier_prob=1.0 - quant.percentile / 100.0)
        estimator = ranges.RangeEstimatorParameters(min=quantile, max=quantile)
    else:
        # auto: None leaves NNCF its default (mean of per-sample min/max for per-tensor activations).
        estimator = {"auto": None, "minmax": ranges.RangeEstimatorParametersSet.MINMAX,
                     "mse": ranges.RangeEstimatorParametersSet.HISTOGRAM}[quant.method]
    weights = None if quant.per_channel else advanced.QuantizationParameters(per_channel=False)
    return advanced.AdvancedQuantizationParameters(activations_range_estimator_params=estimator,
                                                   weights_quantization_params=weights)


# Ops NNCF moves quantizers through without quantizing them itself: a FakeQuantize feeding one of
# these serves the op further down, so the op that reads it is no layer of its own.
_PASS_THROUGH = {"Reshape", "Transpose", "Squeeze", "Unsqueeze", "MaxPool", "StridedSlice", "Split",
                 "VariadicSplit", "Pad", "Relu", "Clamp", "Concat", "Gather", "DepthToSpace", "SpaceToDepth",
                 "ShuffleChannels", "Broadcast", "Tile", "Convert", "FakeQuantize"}


def quantized_layers(source: LoadedModel, *, calib: Subset | None = None, quant: QuantSettings = DEFAULT_QUANT,
                     artifact: Path) -> list[Layer]:
    """The ops NNCF quantized in an int8 IR, under the friendly names its ``ignored_scope`` takes:
    those fed by quantized weights (NNCF names them ``<op>/fq_weights_<port>``), and those reading
    an activation FakeQuantize directly unless they only pass a quantized tensor on."""
    ov = require("openvino", "Reading OpenVINO models")
    with no_telemetry():
        model = ov.Core().read_model(str(artifact))
    ops = model.get_ordered_ops()
    names = source_layer_names(source)
    found: dict[str, Layer] = {}
    for op in ops:
        weights = "/fq_weights_" in op.get_friendly_name()
        if op.get_type_name() != "FakeQuantize" and not weights:
            continue
        for output in op.outputs():
            for target in output.get_target_inputs():
                node = target.get_node()
                if weights or node.get_type_name() not in _PASS_THROUGH:
                    found.setdefault(node.get_friendly_name(), Layer(
                        name=node.get_friendly_name(), op=node.get_type_name(),
                        label=layer_label([node.get_friendly_name(), *_upstream_names(node)], names)))
    order = {op.get_friendly_name(): i for i, op in enumerate(ops)}
    return sorted(found.values(), key=lambda layer: order.get(layer.name, 0))


def _upstream_names(node: Any, depth: int = 3) -> list[str]:
    """Names of the nodes feeding ``node``'s weights (and theirs, ``depth`` deep): a weight constant
    keeps the source layer's scope after the op itself was renamed ('Conv__1/WithoutBiases')."""
    found = []
    frontier = [i.get_source_output().get_node() for i in list(node.inputs())[1:]]  # not the activation
    for level in range(depth):
        if level:
            frontier = [i.get_source_output().get_node() for n in frontier for i in n.inputs()]
        found += [n.get_friendly_name() for n in frontier]
        found += [name for n in frontier for out in n.outputs() for name in out.get_names()]
    return found


def _compress_weights(model: Any, source: LoadedModel) -> Any:
    nncf = require("nncf", "Compressing OpenVINO weights")
    logging.getLogger("nncf").setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), quiet_stderr():
            return nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_SYM)
    except Exception as exc:
        raise conversion_failure("nncf.compress_weights", source.handle.path, exc) from exc
