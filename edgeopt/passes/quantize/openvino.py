"""int8 and fp16 OpenVINO IR from a float IR, by NNCF.

int8 is NNCF post-training quantization on the calibration data, its activation ranges from the
NNCF range estimator the calibration method names (min/max, mean per-sample quantiles, or the
L2-optimal histogram range); layers kept in float go into NNCF's ``ignored_scope``, under the
friendly names of the float IR, which every quantization reads back from the same file. Without
data, weights alone are compressed to int8.
"""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path
from typing import Any

import numpy as np

from edgeopt.calibration import Subset
from edgeopt.deps import no_telemetry, quiet_stderr, require
from edgeopt.exporters.base import ExportResult, FloatArtifact, Layer, conversion_failure, layer_label, \
    source_layer_names
from edgeopt.exporters.openvino import port_name
from edgeopt.frameworks.base import LoadedModel
from edgeopt.names import match_inputs
from edgeopt.passes.quantize.config import DEFAULT_QUANT, QuantConfig, check_quant

INT8_IO_NOTE = "--int8-io applies to TFLite only; the OpenVINO artifact keeps float inputs and outputs."


def quantize(artifact: FloatArtifact, out: Path, *, precision: str, calib: Subset | None = None,
             int8_io: bool = False, quant: QuantConfig = DEFAULT_QUANT) -> ExportResult:
    with no_telemetry():
        return _quantize_quietly(artifact, out, precision=precision, calib=calib, int8_io=int8_io, quant=quant)


def _quantize_quietly(artifact: FloatArtifact, out: Path, *, precision: str, calib: Subset | None, int8_io: bool,
                      quant: QuantConfig) -> ExportResult:
    ov = require("openvino", "Quantizing OpenVINO models")
    source = artifact.model
    xml = out.with_suffix(".xml")
    notes = [INT8_IO_NOTE] if int8_io else []
    label = precision
    model = ov.Core().read_model(str(artifact.path))
    if precision == "int8" and calib is not None:
        check_quant(artifact.key, quant, keep_float=bool(quant.keep_float))
        model = _quantize(model, source, calib, quant)
        if quant.keep_float:
            notes.append(f"Kept in float in '{xml.name}' (NNCF ignored_scope): {', '.join(quant.keep_float)}.")
    elif precision == "int8":
        model = _compress_weights(model, source)
        label = "int8-weights"
        notes.append("No calibration data: OpenVINO int8 weights only (activations stay float). "
                     "Pass --calib for int8 activations.")
    try:
        ov.save_model(model, str(xml), compress_to_fp16=precision == "fp16")
    except Exception as exc:
        raise conversion_failure("openvino.save_model", source.handle.path, exc) from exc
    return ExportResult(xml, label, notes, extra_files=[xml.with_suffix(".bin")], float_fallback=bool(quant.keep_float))


# Ops whose input 1 is a weight, as a float layer's weight reaches it: straight or through a Reshape.
WEIGHTED_OPS = {"Convolution", "GroupConvolution", "ConvolutionBackpropData", "GroupConvolutionBackpropData",
                "MatMul"}
FP16_MAX = 65504.0


def float_weights_in_fp16(artifact: Path, out: Path) -> ExportResult | None:
    """The int8 IR ``artifact`` with the float weights of the layers NNCF left in float stored as
    fp16, each read through a Convert back to fp32: the mixed-precision ladder's fp16 rung. None
    when there is no such weight (or one beyond fp16's range).

    ``save_model(compress_to_fp16=True)`` leaves a quantized IR's constants as they are, so the
    weights are converted here. OpenVINO's CPU plugin folds the Convert at compile time and
    computes in fp32 as before: what the rung buys is size; int8 weights stay int8."""
    ov = require("openvino", "Saving OpenVINO models")
    from openvino import opset13 as ops

    with no_telemetry():
        model = ov.Core().read_model(str(artifact))
        halved = 0
        for op in model.get_ordered_ops():
            if op.get_type_name() != "Constant" or op.get_output_element_type(0) != ov.Type.f32 \
                    or not _is_weight(op):
                continue
            data = op.get_data()
            if data.size <= 1 or not np.isfinite(data).all() or np.abs(data).max() > FP16_MAX:
                continue
            widened = ops.convert(ops.constant(data.astype(np.float16)), "f32")
            for reader in op.output(0).get_target_inputs():
                reader.replace_source_output(widened.output(0))
            halved += 1
        if not halved:
            return None
        xml = out.with_suffix(".xml")
        ov.save_model(model, str(xml), compress_to_fp16=False)
    return ExportResult(xml, "int8", [], extra_files=[xml.with_suffix(".bin")], float_fallback=True)


def _is_weight(constant: Any) -> bool:
    """Whether every reader of ``constant`` takes it as a weight (input 1 of WEIGHTED_OPS, or
    through one Reshape)."""
    readers = list(constant.output(0).get_target_inputs())
    for reader in readers:
        node = reader.get_node()
        if node.get_type_name() == "Reshape" and reader.get_index() == 0:
            further = list(node.output(0).get_target_inputs())
            if further and all(r.get_node().get_type_name() in WEIGHTED_OPS and r.get_index() == 1 for r in further):
                continue
            return False
        if node.get_type_name() not in WEIGHTED_OPS or reader.get_index() != 1:
            return False
    return bool(readers)


def _quantize(model: Any, source: LoadedModel, calib: Subset, quant: QuantConfig) -> Any:
    nncf = require("nncf", "Quantizing OpenVINO models")
    logging.getLogger("nncf").setLevel(logging.ERROR)
    ports = [port_name(p) for p in model.inputs]
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


def _advanced(quant: QuantConfig) -> Any:
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
PASS_THROUGH = {"Reshape", "Transpose", "Squeeze", "Unsqueeze", "MaxPool", "StridedSlice", "Split",
                 "VariadicSplit", "Pad", "Relu", "Clamp", "Concat", "Gather", "DepthToSpace", "SpaceToDepth",
                 "ShuffleChannels", "Broadcast", "Tile", "Convert", "FakeQuantize"}


def quantized_layers(floating: FloatArtifact, artifact: Path, *, calib: Subset | None = None,
                     quant: QuantConfig = DEFAULT_QUANT) -> list[Layer]:
    """The ops NNCF quantized in an int8 IR, under the friendly names its ``ignored_scope`` takes:
    those fed by quantized weights (NNCF names them ``<op>/fq_weights_<port>``), and those reading
    an activation FakeQuantize directly unless they only pass a quantized tensor on."""
    ov = require("openvino", "Reading OpenVINO models")
    with no_telemetry():
        model = ov.Core().read_model(str(artifact))
    ops = model.get_ordered_ops()
    names = source_layer_names(floating.model)
    found: dict[str, Layer] = {}
    for op in ops:
        weights = "/fq_weights_" in op.get_friendly_name()
        if op.get_type_name() != "FakeQuantize" and not weights:
            continue
        for output in op.outputs():
            for target in output.get_target_inputs():
                node = target.get_node()
                if weights or node.get_type_name() not in PASS_THROUGH:
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
