"""ONNX artifacts from Keras (tf2onnx), PyTorch (torch.onnx, dynamo) or ONNX (cleaned).

Each source first becomes a float ModelProto; precision is then applied the same way for all:
fp16 by casting weights (inputs and outputs stay float32), int8 by ONNX Runtime's static QDQ
quantization when calibration data is given (its MinMax, Percentile or Entropy calibrator;
per-channel or per-tensor weights; nodes kept in float through ``nodes_to_exclude``; uint8
activations with int8 weights; the all-zero bias zero points it writes are then dropped), else
dynamic quantization. The source's layout is kept whatever ``keep_layout`` says: ONNX runtimes take NCHW
and NHWC alike.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import shutil
import tempfile
import weakref
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from edgeopt.calibration import Subset
from edgeopt.deps import quiet_stderr, require
from edgeopt.errors import ConversionError
from edgeopt.exporters import onnx_float_edit, onnx_names, onnx_granularity as granularity
from edgeopt.exporters.base import (DEFAULT_QUANT, ExportResult, Layer, QuantSettings, check_quant,
                                    conversion_failure, layer_label, source_layer_names)
from edgeopt.frameworks.base import LoadedModel
from edgeopt.model import Format
from edgeopt.names import match_inputs
from edgeopt.outputs import working_dir

OPSET = 17
# Ops whose second input is a weight: in a full QDQ model it comes from a DequantizeLinear.
WEIGHTED_OPS = {"Conv", "ConvTranspose", "MatMul", "Gemm"}
INT8_IO_NOTE = "--int8-io applies to TFLite only; the ONNX artifact keeps float inputs and outputs."
Q_DQ_OPS = {"QuantizeLinear", "DequantizeLinear"}

# The pipeline exports one source several times (fp32 baseline, int8, and each try of the
# accuracy-budget search); the float graph is traced once per source and kept serialized.
_FLOAT_GRAPHS: weakref.WeakKeyDictionary[LoadedModel, bytes] = weakref.WeakKeyDictionary()
# Activation ranges, as ONNX Runtime's own calibration cache (JSON), per source and (calibration
# data, method, percentile): the budget search exports once per layer and calibrates only once.
_RANGES: weakref.WeakKeyDictionary[LoadedModel, dict[tuple, str]] = weakref.WeakKeyDictionary()


def export_keras(source: LoadedModel, out: Path, *, precision: str, calib: Subset | None = None,
                 int8_io: bool = False, keep_layout: bool = False,
                 quant: QuantSettings = DEFAULT_QUANT) -> ExportResult:
    return _finish(cached_float_graph(source, keras_to_onnx), source, out, precision=precision, calib=calib,
                   int8_io=int8_io, quant=quant, key="keras->onnx")


def export_torch(source: LoadedModel, out: Path, *, precision: str, calib: Subset | None = None,
                 int8_io: bool = False, keep_layout: bool = False,
                 quant: QuantSettings = DEFAULT_QUANT) -> ExportResult:
    return _finish(cached_float_graph(source, torch_to_onnx), source, out, precision=precision, calib=calib,
                   int8_io=int8_io, quant=quant, key="torch->onnx")


def export_onnx(source: LoadedModel, out: Path, *, precision: str, calib: Subset | None = None,
                int8_io: bool = False, keep_layout: bool = False,
                quant: QuantSettings = DEFAULT_QUANT) -> ExportResult:
    if getattr(source, "quantized", False):
        # Quantizing a quantized graph again stacks errors; hand back the model as it is, with any
        # external weights folded in so the artifact is one file.
        _save(require("onnx", "Writing ONNX models"), source.native, out, source)
        note = f"'{source.handle.path.name}' is already quantized: copied unchanged, not quantized again."
        return ExportResult(out, "source-quantized", [note] if precision != "fp32" else [])
    return _finish(cached_float_graph(source, _cleaned), source, out, precision=precision, calib=calib,
                   int8_io=int8_io, quant=quant, key="onnx->onnx")


def cached_float_graph(source: LoadedModel, convert: Any) -> Any:
    """``convert(source)``, traced once per source; each caller gets its own copy of the graph."""
    onnx = require("onnx", "Writing ONNX models")
    data = _FLOAT_GRAPHS.get(source)
    if data is None:
        proto = convert(source)
        try:
            data = proto.SerializeToString()
        except ValueError:  # over protobuf's 2 GB: let _save name the problem
            return proto
        _FLOAT_GRAPHS[source] = data
    return onnx.load_from_string(data)


def keras_to_onnx(source: LoadedModel) -> Any:
    """The float ONNX graph of a Keras model or SavedModel, traced at batch 1 with its input names."""
    tf = require("tensorflow", "Converting Keras models to ONNX")
    tf2onnx = require("tf2onnx", "Converting Keras models to ONNX")
    specs = [tf.TensorSpec((1, *t.shape[1:]), tf.as_dtype(t.dtype), name=t.name) for t in source.handle.inputs]
    names = source.handle.input_names
    if source.handle.format is Format.SAVED_MODEL:
        signature = source.native.signatures["serving_default"]
        keys = sorted(signature.structured_outputs)

        def call(*args: Any) -> Any:
            result = signature(**dict(zip(names, args)))
            return [result[k] for k in keys]
    else:
        model = source.native

        def call(*args: Any) -> Any:
            return model(list(args) if len(args) > 1 else args[0], training=False)

    # tf2onnx.convert.from_keras fails on Keras 3 models; a tf.function around the call works.
    function = tf.function(call, input_signature=specs)
    try:
        with contextlib.redirect_stdout(io.StringIO()), quiet_stderr():
            proto, _ = tf2onnx.convert.from_function(function, input_signature=specs, opset=OPSET)
    except Exception as exc:
        raise conversion_failure("tf2onnx", source.handle.path, exc) from exc
    return canonical_names(_captures_as_weights(proto, function.get_concrete_function()))


def _captures_as_weights(proto: Any, concrete: Any) -> Any:
    """The graph with the traced function's captured constants as initializers.

    tf2onnx freezes captured variables but turns a captured constant tensor into a graph input:
    a loaded SavedModel's signature captures its non-trainable tensors that way (basic-pitch's CQT
    kernels became inputs '5576:0', '5578:0', ...), and the model then cannot run on its own input.
    """
    onnx = require("onnx", "Converting Keras models to ONNX")
    values = {}
    for placeholder, value in zip(concrete.graph.internal_captures, concrete.captured_inputs):
        if value.dtype.name != "resource":
            values[placeholder.name] = value.numpy()
    frozen = [v for v in proto.graph.input if v.name in values]
    if not frozen:
        return proto
    kept = [v for v in proto.graph.input if v.name not in values]
    del proto.graph.input[:]
    proto.graph.input.extend(kept)
    proto.graph.initializer.extend(onnx.numpy_helper.from_array(values[v.name], v.name) for v in frozen)
    return proto


# tf2onnx numbers the nodes and tensors it creates from a process-wide counter ('Conv__24',
# 'const_fold_opt__35'), and its optimizer walks sets: the numbers change with every conversion in a
# process and with PYTHONHASHSEED, while the graph does not.
_GENERATED = re.compile(r"^(?P<stem>.*?)__\d+(?P<port>:\d+)?$")


def canonical_names(proto: Any) -> Any:
    """The same graph with generated node and tensor names renumbered by position, and initializers
    in order of first use, so one model converts to the same bytes every time. Names taken from
    the source (layer scopes) are kept: overrides and reports use them."""
    graph = proto.graph
    # "converted from b'__inference_call_325'": the traced function's number, counted the same way.
    graph.doc_string = re.sub(r"(__inference_\w+?)_\d+'", r"\1'", graph.doc_string)
    fixed = {v.name for v in (*graph.input, *graph.output)}
    nodes: dict[str, str] = {}
    for i, node in enumerate(graph.node):
        match = _GENERATED.match(node.name)
        if match and not match["port"]:
            nodes[node.name] = f"{match['stem']}__{i}"
            node.name = nodes[node.name]
    order: dict[str, int] = {}
    for node in graph.node:
        for name in (*node.input, *node.output):
            order.setdefault(name, len(order))
    renamed: dict[str, str] = {}
    for name in sorted(order, key=order.get):
        match = _GENERATED.match(name)
        if not match or name in fixed:
            continue
        owner = name[:-len(match["port"])] if match["port"] else None
        renamed[name] = f"{nodes[owner]}{match['port']}" if owner in nodes else \
            f"{match['stem']}__t{order[name]}{match['port'] or ''}"
    for node in graph.node:
        node.input[:] = [renamed.get(n, n) for n in node.input]
        node.output[:] = [renamed.get(n, n) for n in node.output]
    for tensor in (*graph.initializer, *graph.value_info):
        tensor.name = renamed.get(tensor.name, tensor.name)
    back = {new: old for old, new in renamed.items()}
    ordered = sorted(graph.initializer, key=lambda t: (order.get(back.get(t.name, t.name), len(order)), t.name))
    copies = [type(t)() for t in ordered]
    for copy, tensor in zip(copies, ordered):
        copy.CopyFrom(tensor)
    del graph.initializer[:]
    graph.initializer.extend(copies)
    return proto


def torch_to_onnx(source: LoadedModel) -> Any:
    """The float ONNX graph of a PyTorch source, traced at batch 1 with the source's input names."""
    torch = require("torch", "Converting PyTorch models to ONNX")
    require("onnxscript", "Converting PyTorch models to ONNX")
    module = source.native
    # torch.export cannot trace TorchScript; the older TorchScript-based exporter can.
    dynamo = not isinstance(module, torch.jit.ScriptModule)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    buffer = None if dynamo else io.BytesIO()
    try:
        with contextlib.redirect_stdout(io.StringIO()), quiet_stderr():
            program = torch.onnx.export(module, source.example_inputs(), buffer, dynamo=dynamo, verbose=False,
                                        input_names=source.handle.input_names,
                                        output_names=[t.name for t in source.handle.outputs], opset_version=18)
    except Exception as exc:
        raise conversion_failure("torch.onnx.export", source.handle.path, exc) from exc
    if buffer is not None:
        return require("onnx", "Converting PyTorch models to ONNX").load_from_string(buffer.getvalue())
    return program.model_proto


def _cleaned(source: LoadedModel) -> Any:
    """The source with constants folded and no-op nodes removed, in standard ONNX ops only."""
    ort = require("onnxruntime", "Optimizing ONNX models")
    onnx = require("onnx", "Optimizing ONNX models")
    with tempfile.TemporaryDirectory(prefix=".edgeopt-onnx-") as tmp:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        # The basic level keeps to standard ops, so any ONNX runtime can still run the result.
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = str(Path(tmp) / "clean.onnx")
        try:
            ort.InferenceSession(str(getattr(source, "graph_file", source.handle.path)), options,
                                 providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise conversion_failure("ONNX Runtime", source.handle.path, exc) from exc
        model = onnx.load(str(Path(tmp) / "clean.onnx"))
    initializers = {t.name for t in model.graph.initializer}
    # Old exporters listed weights as graph inputs; runtimes then treat them as overridable.
    kept = [v for v in model.graph.input if v.name not in initializers]
    del model.graph.input[:]
    model.graph.input.extend(kept)
    return model


def _finish(proto: Any, source: LoadedModel, out: Path, *, precision: str, calib: Subset | None,
            int8_io: bool, quant: QuantSettings, key: str) -> ExportResult:
    onnx = require("onnx", "Writing ONNX models")
    notes = [INT8_IO_NOTE] if int8_io else []
    # Absolute: quantization runs from inside the temporary folder (working_dir), where a path
    # relative to the user's folder (-o out) would point nowhere.
    out = out.resolve()
    if precision == "int8" and (quant.per_channel or calib is None):  # dynamic int8 is always per channel
        proto, raised = _opset_for_int8(onnx, proto, source)
        notes.extend(raised)
    with tempfile.TemporaryDirectory(prefix=".edgeopt-onnx-", dir=out.parent) as tmp:
        float_path = Path(tmp) / "float.onnx"
        _save(onnx, proto, float_path, source)
        if precision == "fp32":
            shutil.move(float_path, out)
            return ExportResult(out, "fp32", notes)
        if precision == "fp16":
            float16 = require("onnxruntime.transformers.float16", "Converting ONNX models to fp16")
            half = float16.convert_float_to_float16(onnx.load(str(float_path)), keep_io_types=True)
            _save(onnx, half, out, source)
            return ExportResult(out, "fp16", notes)
        if calib is None:
            _quantize_dynamic(float_path, out, source)
            return ExportResult(out, "int8-dynamic", notes)
        check_quant(key, quant, keep_float=bool(quant.keep_float))
        if quant.per_channel and not quant.keep_float:
            # The plain int8 model picks its weight granularity by measurement; the budget search's
            # trials (layers in float) keep per-channel, so that they differ in one thing only.
            weights = {t.name for t in proto.graph.initializer}
            names = [v.name for v in proto.graph.input if v.name not in weights]
            pairs = list(zip(names, match_inputs(names, source.handle.input_names)))
            quantized, note = granularity.choose(
                lambda path, settings: _quantize_static(float_path, Path(tmp), path, source, calib, settings),
                float_path, out, calib, quant, pairs)
            notes.append(note)
        else:
            quantized = _quantize_static(float_path, Path(tmp), out, source, calib, quant)
    kept = set(quant.keep_float)
    floats = [f for f in float_compute_nodes(quantized) if f.split("'")[1] not in kept]
    if kept:
        notes.append(f"Kept in float in '{out.name}' (onnxruntime nodes_to_exclude): {', '.join(sorted(kept))}.")
    if floats:
        notes.append(f"Some weighted ops stayed in float in '{out.name}': {', '.join(floats[:8])}"
                     + (f" and {len(floats) - 8} more" if len(floats) > 8 else "") + ".")
    return ExportResult(out, "int8", notes, float_fallback=bool(floats or kept))


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


def _save(onnx: Any, proto: Any, path: Path, source: LoadedModel) -> None:
    try:
        onnx.save(proto, str(path))
    except ValueError as exc:  # protobuf's 2 GB limit
        raise ConversionError(f"The ONNX model of '{source.handle.path}' is over 2 GB, which a single .onnx file "
                              "cannot hold; edgeopt does not write external-data ONNX yet.") from exc


def _quantize_dynamic(float_path: Path, out: Path, source: LoadedModel) -> None:
    quant = require("onnxruntime.quantization", "Quantizing ONNX models")
    try:
        with quiet_stderr():
            quant.quantize_dynamic(str(float_path), str(out), weight_type=quant.QuantType.QInt8, per_channel=True)
    except Exception as exc:
        raise conversion_failure("onnxruntime quantize_dynamic", source.handle.path, exc) from exc


def _quantize_static(float_path: Path, tmp: Path, out: Path, source: LoadedModel, calib: Subset,
                     quant: QuantSettings) -> Any:
    """Write the int8 QDQ model to ``out``; returns it as a ModelProto."""
    ort_quant = require("onnxruntime.quantization", "Quantizing ONNX models")
    shape_tools = require("onnxruntime.quantization.shape_inference", "Quantizing ONNX models")
    onnx = require("onnx", "Quantizing ONNX models")
    prepared = tmp / "prepared.onnx"
    # When symbolic shape inference fails, onnxruntime saves its partial model into the current
    # folder (sym_shape_infer_temp.onnx and a data file); run it from the temporary folder instead.
    with working_dir(tmp):
        try:
            with quiet_stderr():
                shape_tools.quant_pre_process(str(float_path), str(prepared))
        except Exception:
            # Symbolic shape inference fails on some graphs; the ONNX one is enough for quantization.
            with quiet_stderr():
                shape_tools.quant_pre_process(str(float_path), str(prepared), skip_symbolic_shape=True)
    model = onnx.load(str(prepared), load_external_data=False)
    names = [v.name for v in model.graph.input]
    nameless = any(not node.name for node in model.graph.node)
    if nameless:
        # nodes_to_exclude and the report name nodes; give the nameless ones stable names.
        for i, node in enumerate(model.graph.node):
            node.name = node.name or f"{node.op_type}_{i}"
    if onnx_names.tidy(model) or nameless:
        onnx.save(model, str(prepared))
    onnx_float_edit.remember_prepared(source, model)
    method = {"auto": ort_quant.CalibrationMethod.MinMax, "minmax": ort_quant.CalibrationMethod.MinMax, "percentile": ort_quant.CalibrationMethod.Percentile,
              "entropy": ort_quant.CalibrationMethod.Entropy}[quant.method]
    extra = {"CalibPercentile": quant.percentile} if quant.method == "percentile" else {}
    ranges = _ranges(ort_quant, prepared, tmp, source, calib, quant, names)
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
    if ranges is not None and ranges.is_file():
        _RANGES.setdefault(source, {})[(id(calib), quant.method, quant.percentile)] = ranges.read_text()
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


def _ranges(ort_quant: Any, prepared: Path, tmp: Path, source: LoadedModel, calib: Subset, quant: QuantSettings,
            names: list[str]) -> Path | None:
    """Where quantize_static reads (or, on a first call, writes) its activation ranges; None on an
    ONNX Runtime without calibration caches."""
    import inspect

    if "calibration_cache_path" not in inspect.signature(ort_quant.quantize_static).parameters:
        return None
    path = tmp / "ranges.json"
    cached = _RANGES.get(source, {}).get((id(calib), quant.method, quant.percentile))
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
            calibrator.collect_data(_reader(ort_quant, calib, names, source.handle.input_names))
            ort_quant.save_tensors_data(calibrator.compute_data(), path)
    return path


def quantized_layers(source: LoadedModel, *, calib: Subset | None = None, quant: QuantSettings = DEFAULT_QUANT,
                     artifact: Path) -> list[Layer]:
    """The nodes of a QDQ artifact that read a dequantized tensor: those ONNX Runtime quantized,
    under the node names ``nodes_to_exclude`` takes."""
    onnx = require("onnx", "Reading ONNX models")
    model = onnx.load(str(artifact), load_external_data=False)
    dequantized = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    names = source_layer_names(source)
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
