"""int8 and fp16 ONNX models from a float ONNX artifact, by ONNX Runtime's quantizer.

fp16 casts weights (inputs and outputs stay float32); int8 with calibration data is ONNX Runtime's
static QDQ quantization (its MinMax, Percentile or Entropy calibrator; per-channel or per-tensor
weights; nodes kept in float through ``nodes_to_exclude``; uint8 activations with int8 weights;
the all-zero bias zero points it writes are then dropped), else dynamic quantization.

What does not change between quantizations of one float artifact is computed once and kept in
its ``memo``: the graph prepared for quantization (shape inference, stable node names) and the
activation ranges per calibration set, so a budget-search try costs ``quantize_static`` alone.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
from collections import Counter
from dataclasses import replace
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from edgeopt.calibration import Subset
from edgeopt.deps import quiet_stderr, require
from edgeopt.errors import ConversionError
from edgeopt.exporters import onnx_names
from edgeopt.exporters.base import ExportResult, FloatArtifact, Layer, conversion_failure, layer_label, \
    source_layer_names
from edgeopt.exporters.onnx import save
from edgeopt.frameworks.base import LoadedModel
from edgeopt.names import match_inputs
from edgeopt.outputs import working_dir
from edgeopt.passes.quantize import onnx_granularity as granularity
from edgeopt.passes.quantize import equalization, onnx_adaround, onnx_bias_correction, onnx_range_setting, \
    smoothing
from edgeopt.passes.quantize.onnx_sensitivity import tapped_session
from edgeopt.passes.quantize.onnx_prepared import MEMO_KEY
from edgeopt.passes.quantize.config import DEFAULT_QUANT, QuantConfig, check_quant

# Ops whose second input is a weight: in a full QDQ model it comes from a DequantizeLinear.
WEIGHTED_OPS = {"Conv", "ConvTranspose", "MatMul", "Gemm"}
INT8_IO_NOTE = "--int8-io applies to TFLite only; the ONNX artifact keeps float inputs and outputs."
Q_DQ_OPS = {"QuantizeLinear", "DequantizeLinear"}
BIAS_CORRECTION_SAMPLES = 32  # calibration samples the bias shifts are measured on
RANGES_OF = {"auto": "minmax"}  # calibration methods that share another's ranges


def quantize(artifact: FloatArtifact, out: Path, *, precision: str, calib: Subset | None = None,
             int8_io: bool = False, quant: QuantConfig = DEFAULT_QUANT) -> ExportResult:
    onnx = require("onnx", "Writing ONNX models")
    source = artifact.model
    notes = [INT8_IO_NOTE] if int8_io else []
    # Absolute: quantization runs from inside the temporary folder (working_dir), where a path
    # relative to the user's folder (-o out) would point nowhere.
    out = out.resolve()
    proto = onnx.load(str(artifact.path))
    if precision == "fp16":
        float16 = require("onnxruntime.transformers.float16", "Converting ONNX models to fp16")
        save(onnx, float16.convert_float_to_float16(proto, keep_io_types=True), out, source)
        return ExportResult(out, "fp16", notes)
    raise_opset = quant.per_channel or calib is None  # dynamic int8 is always per channel
    if raise_opset:
        proto, raised = _opset_for_int8(onnx, proto, source)
        notes.extend(raised)
    with tempfile.TemporaryDirectory(prefix=".edgeopt-onnx-", dir=out.parent) as tmp:
        float_path = Path(tmp) / "float.onnx"
        save(onnx, proto, float_path, source)
        if calib is None:
            _quantize_dynamic(float_path, out, source)
            return ExportResult(out, "int8-dynamic", notes)
        check_quant(artifact.key, quant, keep_float=bool(quant.keep_float))
        prepared = _prepared(onnx, artifact, float_path, Path(tmp), raise_opset)
        if quant.per_channel and not quant.keep_float:
            # The plain int8 model picks its weight granularity by measurement; the budget search's
            # trials (layers in float) keep per-channel, so that they differ in one thing only.
            weights = {t.name for t in proto.graph.initializer}
            names = [v.name for v in proto.graph.input if v.name not in weights]
            pairs = list(zip(names, match_inputs(names, source.handle.input_names)))
            graphs = {"prepared": (prepared, ("prepared", raise_opset))}
            equalized = _equalized(onnx, artifact, prepared, Path(tmp), raise_opset) if quant.equalization else None
            if equalized is not None:
                graphs["equalized"] = equalized
            smoothed = _smoothed(onnx, artifact, prepared, Path(tmp), raise_opset, calib) if quant.smoothing else None
            if smoothed is not None:
                graphs["smoothed"] = smoothed

            def candidate(path: Path, settings: QuantConfig) -> Any:
                graph, key = graphs[_graph_of(settings)]
                if key in artifact.memo:  # what edits, the ranking and the bias correction read
                    artifact.memo[MEMO_KEY] = artifact.memo[key]
                return _quantize_static(graph, Path(tmp), path, artifact, calib, settings)

            quantized, note, chosen = granularity.choose(candidate, float_path, out, calib, quant, pairs,
                                                         equalizable=equalized is not None,
                                                         smoothable=smoothed is not None)
            key = graphs[_graph_of(chosen)][1]
            if key in artifact.memo:
                artifact.memo[MEMO_KEY] = artifact.memo[key]
            notes.append(note)
        else:
            quantized = _quantize_static(prepared, Path(tmp), out, artifact, calib, quant)
            chosen = quant
        if quant.adaround_seconds and not quant.keep_float:
            notes.append(_learned_rounding(artifact, out, calib, chosen))
    kept = set(quant.keep_float)
    floats = [f for f in float_compute_nodes(quantized) if f.split("'")[1] not in kept]
    if kept:
        notes.append(f"Kept in float in '{out.name}' (onnxruntime nodes_to_exclude): {', '.join(sorted(kept))}.")
    if floats:
        notes.append(f"Some weighted ops stayed in float in '{out.name}': {', '.join(floats[:8])}"
                     + (f" and {len(floats) - 8} more" if len(floats) > 8 else "") + ".")
    return ExportResult(out, "int8", notes, float_fallback=bool(floats or kept))


def _learned_rounding(artifact: FloatArtifact, out: Path, calib: Subset, quant: QuantConfig) -> str:
    """AdaRound on the plain int8 model at ``out`` (then its bias correction again, where it had
    one: the biases were corrected for the nearest rounding); returns the note saying what it did."""
    rows = [row for row, _ in zip(calib, range(BIAS_CORRECTION_SAMPLES))]
    rounded = onnx_adaround.optimize(artifact, out, rows, quant.adaround_seconds or 0.0)
    if rounded.layers and quant.bias_correction:
        onnx_bias_correction.correct(artifact, out, rows)
    if not rounded.layers:
        return (f"Learned rounding (--optimize adaround) changed no layer of '{out.name}'"
                + (f" in {rounded.seconds} s" if rounded.of else ": it has no int8 Conv, Gemm or MatMul weight") + ".")
    return (f"Learned rounding (--optimize adaround): {rounded.layers} of {rounded.of} layers of '{out.name}' in "
            f"{rounded.seconds} s, their output error on the calibration samples "
            f"{rounded.error_ratio:.2f}x that of nearest rounding (mean over the layers).")


def _prepared(onnx: Any, artifact: FloatArtifact, float_path: Path, tmp: Path, raised: bool) -> Path:
    """The float graph as ONNX Runtime's quantizer reads it, written to ``tmp``: pre-processed
    (shape inference) and with every node named, once per float artifact."""
    prepared = tmp / "prepared.onnx"
    data = artifact.memo.get(("prepared", raised))
    if data is not None:
        prepared.write_bytes(data)
        artifact.memo[MEMO_KEY] = data
        return prepared
    shape_tools = require("onnxruntime.quantization.shape_inference", "Quantizing ONNX models")
    # onnxruntime saves a partial model into the current folder when symbolic shape inference
    # fails (sym_shape_infer_temp.onnx and a data file); run it from the temporary folder instead.
    with working_dir(tmp), quiet_stderr():
        # ONNX's own shape inference types every tensor of most graphs; symbolic shape inference
        # (sympy, and onnxruntime.tools imports torch) then adds nothing the quantizer reads: on
        # the conformance models where it succeeds the int8 graph is the same. It runs only where
        # some tensor is left without a type, and where it fails the ONNX result stands.
        shape_tools.quant_pre_process(str(float_path), str(prepared), skip_symbolic_shape=True)
        if untyped_tensors(onnx.load(str(prepared), load_external_data=False)):
            symbolic = tmp / "prepared_symbolic.onnx"
            try:
                shape_tools.quant_pre_process(str(float_path), str(symbolic))
                symbolic.replace(prepared)
            except Exception:
                pass
    model = onnx.load(str(prepared), load_external_data=False)
    nameless = any(not node.name for node in model.graph.node)
    if nameless:
        # nodes_to_exclude and the report name nodes; give the nameless ones stable names.
        for i, node in enumerate(model.graph.node):
            node.name = node.name or f"{node.op_type}_{i}"
    if onnx_names.tidy(model) or nameless:
        onnx.save(model, str(prepared))
    try:
        data = model.SerializeToString()
    except ValueError:  # over protobuf's 2 GB: prepared again each time, and no edits
        artifact.memo.pop("prepared", None)
        return prepared
    artifact.memo[("prepared", raised)] = artifact.memo[MEMO_KEY] = data
    return prepared


def untyped_tensors(model: Any) -> list[str]:
    """Node outputs of the main graph without an element type: tensors the quantizer cannot judge."""
    graph = model.graph
    typed = {v.name for v in (*graph.input, *graph.output, *graph.value_info) if v.type.tensor_type.elem_type}
    typed |= {t.name for t in graph.initializer}
    return [name for node in graph.node for name in node.output if name and name not in typed]


def _equalized(onnx: Any, artifact: FloatArtifact, prepared: Path, tmp: Path, raised: bool
               ) -> tuple[Path, tuple[str, bool]] | None:
    """The prepared graph after cross-layer equalization (``equalization``), written to ``tmp``, and
    its memo key; None where it has no chain to equalize (or is too large to keep)."""
    key = ("equalized", raised)
    path = tmp / "equalized.onnx"
    if key not in artifact.memo:
        if ("prepared", raised) not in artifact.memo:
            return None
        model = onnx.load_from_string(artifact.memo[("prepared", raised)])
        artifact.memo[key] = model.SerializeToString() if equalization.equalize(onnx, model) else None
    if artifact.memo[key] is None:
        return None
    path.write_bytes(artifact.memo[key])
    return path, key


def _smoothed(onnx: Any, artifact: FloatArtifact, prepared: Path, tmp: Path, raised: bool, calib: Subset
              ) -> tuple[Path, tuple] | None:
    """The prepared graph after SmoothQuant-style migration (``smoothing``), written to ``tmp``, and
    its memo key; None where no MatMul/Gemm activation has outliers to migrate."""
    key = ("smoothed", raised, id(calib))
    path = tmp / "smoothed.onnx"
    if key not in artifact.memo:
        if ("prepared", raised) not in artifact.memo:
            return None
        model = onnx.load_from_string(artifact.memo[("prepared", raised)])
        found = smoothing.groups(onnx, model)
        done = []
        if found:
            tensors = [g.tensor for g in found]
            run = tapped_session(onnx, model, tensors, artifact.model.handle.input_names)
            rows = [row for row, _ in zip(calib, range(BIAS_CORRECTION_SAMPLES))]
            done = smoothing.smooth(onnx, model, found, smoothing.channel_maxima(run, rows, tensors))
        artifact.memo[key] = model.SerializeToString() if done else None
    if artifact.memo[key] is None:
        return None
    path.write_bytes(artifact.memo[key])
    return path, key


def _graph_of(quant: QuantConfig) -> str:
    """Which float graph ``quant`` quantizes: the prepared one, or it after equalization or smoothing."""
    return "equalized" if quant.equalize else "smoothed" if quant.smooth else "prepared"


# Per-channel DequantizeLinear (its ``axis``) exists from opset 13; ONNX Runtime's quantizer writes
# it whatever the model's opset, and older models (Paddle2ONNX and torch 1.x exports at 11 and 12)
# then fail to load.
QDQ_AXIS_OPSET = 13


def _opset_for_int8(onnx: Any, model: Any, source: LoadedModel) -> tuple[Any, list[str]]:
    """The float graph raised to opset 13 where it is below, so that its int8 form is valid ONNX."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), QDQ_AXIS_OPSET)
    if opset >= QDQ_AXIS_OPSET:
        return model, []
    try:
        upgraded = onnx.version_converter.convert_version(model, QDQ_AXIS_OPSET)
        onnx.checker.check_model(upgraded)
    except Exception as exc:
        raise ConversionError(
            f"'{source.handle.path}' is at ONNX opset {opset}; its int8 form needs opset {QDQ_AXIS_OPSET} (per-channel "
            f"DequantizeLinear), and onnx.version_converter could not raise it: {str(exc).splitlines()[0][:300]}",
            hint="Re-export the model at opset 13 or later, or pass --per-tensor.") from exc
    return upgraded, [f"'{source.handle.path.name}' was raised from ONNX opset {opset} to {QDQ_AXIS_OPSET} for its "
                      "int8 form (per-channel DequantizeLinear needs 13)."]




def _quantize_dynamic(float_path: Path, out: Path, source: LoadedModel) -> None:
    quant = require("onnxruntime.quantization", "Quantizing ONNX models")
    try:
        with quiet_stderr():
            quant.quantize_dynamic(str(float_path), str(out), weight_type=quant.QuantType.QInt8, per_channel=True)
    except Exception as exc:
        raise conversion_failure("onnxruntime quantize_dynamic", source.handle.path, exc) from exc


def _quantize_static(prepared: Path, tmp: Path, out: Path, artifact: FloatArtifact, calib: Subset,
                     quant: QuantConfig) -> Any:
    """Write the int8 QDQ model to ``out``; returns it as a ModelProto."""
    ort_quant = require("onnxruntime.quantization", "Quantizing ONNX models")
    onnx = require("onnx", "Quantizing ONNX models")
    source = artifact.model
    names = [v.name for v in onnx.load(str(prepared), load_external_data=False).graph.input]
    method = {"auto": ort_quant.CalibrationMethod.MinMax, "minmax": ort_quant.CalibrationMethod.MinMax,
              "mse": ort_quant.CalibrationMethod.MinMax, "percentile": ort_quant.CalibrationMethod.Percentile,
              "entropy": ort_quant.CalibrationMethod.Entropy}[quant.method]
    extra = {"CalibPercentile": quant.percentile} if quant.method == "percentile" else {}
    ranges = _ranges(ort_quant, prepared, tmp, artifact, calib, quant, names)
    cache = {"calibration_cache_path": str(ranges)} if ranges is not None else {}
    try:
        # The histogram calibrators (percentile, entropy) print their progress on stdout.
        with quiet_stderr(), contextlib.redirect_stdout(io.StringIO()):
            # uint8 activations with int8 weights (U8S8) is the pairing ONNX Runtime's x86 kernels fuse
            # into QLinearConv; int8 activations leave Conv running in float between Q/DQ pairs.
            ort_quant.quantize_static(
                str(prepared), str(out), _reader(ort_quant, calib, names, source.handle.input_names),
                quant_format=ort_quant.QuantFormat.QDQ, per_channel=quant.per_channel,
                activation_type=ort_quant.QuantType.QUInt8, weight_type=ort_quant.QuantType.QInt8,
                calibrate_method=method, nodes_to_exclude=list(quant.keep_float), extra_options=extra, **cache)
    except Exception as exc:
        raise conversion_failure("onnxruntime quantize_static", source.handle.path, exc) from exc
    quantized = _drop_zero_bias_offsets(onnx, out)
    if quant.bias_correction:
        rows = [row for row, _ in zip(calib, range(BIAS_CORRECTION_SAMPLES))]
        if onnx_bias_correction.correct(artifact, out, rows):
            quantized = onnx.load(str(out))
    if ranges is not None and ranges.is_file():
        artifact.memo[_ranges_key(calib, quant)] = ranges.read_text()
    return quantized


def _drop_zero_bias_offsets(onnx: Any, path: Path) -> Any:
    """Remove the all-zero int32 zero points of the bias DequantizeLinear nodes; returns the model.

    quantize_static stores one per output channel with per-channel weights (4 bytes each, about 2%
    of a MobileNet-sized model), yet the input is optional and means 0. onnxruntime still fuses
    the nodes into QLinearConv/QGemm without it; weight zero points stay, since its QGemm fusion
    needs them.
    """
    model = onnx.load(str(path))
    initializers = {t.name: t for t in model.graph.initializer}
    users = Counter(name for node in model.graph.node for name in node.input)
    for node in model.graph.node:
        if node.op_type != "DequantizeLinear" or len(node.input) != 3:
            continue
        value, offset = initializers.get(node.input[0]), initializers.get(node.input[2])
        if value is None or offset is None or offset.data_type != onnx.TensorProto.INT32:
            continue
        if not onnx.numpy_helper.to_array(offset).any():
            users[node.input[2]] -= 1
            del node.input[2]
    freed = {t.name for t in model.graph.initializer if t.name in users and users[t.name] == 0}
    if freed:
        kept = [t for t in model.graph.initializer if t.name not in freed]
        del model.graph.initializer[:]
        model.graph.initializer.extend(kept)
        onnx.save(model, str(path))
    return model


def _ranges(ort_quant: Any, prepared: Path, tmp: Path, artifact: FloatArtifact, calib: Subset, quant: QuantConfig,
            names: list[str]) -> Path | None:
    """Where quantize_static reads (or, on a first call, writes) its activation ranges; None on an
    ONNX Runtime without calibration caches."""
    import inspect

    if "calibration_cache_path" not in inspect.signature(ort_quant.quantize_static).parameters:
        return None
    path = tmp / "ranges.json"
    key = _ranges_key(calib, quant)
    if key not in artifact.memo and RANGES_OF.get(quant.method, quant.method) in onnx_range_setting.CACHES:
        # One pass over the calibration data gives min/max (onnxruntime's MinMax, computed alike)
        # and edgeopt's ranges: both candidates of the plain int8 model, calibrated once per graph.
        for method, text in onnx_range_setting.caches(prepared, calib, artifact.model.handle.input_names,
                                                     tmp).items():
            artifact.memo[_ranges_key(calib, replace(quant, method=method))] = text
    cached = artifact.memo.get(key)
    if cached is not None:
        path.write_text(cached)
    elif quant.method == "entropy":
        # quantize_static gives its entropy calibrator 128 histogram bins for 128 quantized bins,
        # which leaves one candidate threshold, the full range: min/max under another name. ORT's
        # own calibrator with 2048 bins (as TensorRT's) searches the KL-optimal threshold.
        with quiet_stderr(), contextlib.redirect_stdout(io.StringIO()):
            calibrator = ort_quant.create_calibrator(
                prepared, augmented_model_path=str(tmp / "augmented.onnx"),
                calibrate_method=ort_quant.CalibrationMethod.Entropy,
                extra_options={"num_bins": 2048, "num_quantized_bins": 128})
            calibrator.collect_data(_reader(ort_quant, calib, names, artifact.model.handle.input_names))
            ort_quant.save_tensors_data(calibrator.compute_data(), path)
    return path


def _ranges_key(calib: Subset, quant: QuantConfig) -> tuple:
    """The memo key of the activation ranges ``quant`` quantizes with: per calibration set, method
    and graph (equalization and smoothing move the ranges of the tensors they scale)."""
    return "ranges", id(calib), RANGES_OF.get(quant.method, quant.method), quant.percentile, _graph_of(quant)


def quantized_layers(floating: FloatArtifact, artifact: Path, *, calib: Subset | None = None,
                     quant: QuantConfig = DEFAULT_QUANT) -> list[Layer]:
    """The nodes of a QDQ artifact that read a dequantized tensor: those ONNX Runtime quantized,
    under the node names ``nodes_to_exclude`` takes."""
    onnx = require("onnx", "Reading ONNX models")
    model = onnx.load(str(artifact), load_external_data=False)
    dequantized = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    names = source_layer_names(floating.model)
    # The first input is the activation, named after the layer before; weights name the layer itself.
    return [Layer(name=n.name, op=n.op_type, label=layer_label([n.name, *n.input[1:]], names))
            for n in model.graph.node
            if n.op_type not in Q_DQ_OPS and n.name and any(i in dequantized for i in n.input)]


def _reader(quant: Any, calib: Subset, onnx_names: list[str], source_names: list[str]) -> Any:
    """Calibration rows for ONNX Runtime's calibrator, under the artifact's input names."""
    pairs = list(zip(onnx_names, match_inputs(onnx_names, source_names)))

    class Reader(quant.CalibrationDataReader):
        def __init__(self) -> None:
            self._rows: Iterator[dict[str, np.ndarray]] = iter(calib)

        def get_next(self) -> dict[str, np.ndarray] | None:
            row = next(self._rows, None)
            return None if row is None else {onnx_name: row[name] for onnx_name, name in pairs}

    return Reader()


def float_compute_nodes(model: Any) -> list[str]:
    """Weighted nodes whose weight is a float tensor rather than a dequantized int8 one."""
    produced_by = {o: n.op_type for n in model.graph.node for o in n.output}
    result = []
    for node in model.graph.node:
        if node.op_type in WEIGHTED_OPS and len(node.input) > 1:
            if produced_by.get(node.input[1]) != "DequantizeLinear" and \
                    produced_by.get(node.input[0]) != "DequantizeLinear":
                result.append(f"{node.op_type} '{node.name or node.output[0]}'")
    return result
