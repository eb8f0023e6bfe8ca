"""ONNX artifacts from Keras (tf2onnx), PyTorch (torch.onnx, dynamo) or ONNX (cleaned).

Each source first becomes a float ModelProto; precision is then applied the same way for all:
fp16 by casting weights (inputs and outputs stay float32), int8 by ONNX Runtime's static QDQ
quantization with per-channel weights when calibration data is given, else dynamic quantization.
The source's layout is kept whatever ``keep_layout`` says: ONNX runtimes take NCHW and NHWC alike.
"""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from edgeopt.calibration import Subset
from edgeopt.deps import quiet_stderr, require
from edgeopt.errors import ConversionError
from edgeopt.exporters.base import ExportResult, conversion_failure
from edgeopt.frameworks.base import LoadedModel
from edgeopt.model import Format
from edgeopt.names import match_inputs

OPSET = 17
# Ops whose second input is a weight: in a full QDQ model it comes from a DequantizeLinear.
WEIGHTED_OPS = {"Conv", "ConvTranspose", "MatMul", "Gemm"}
INT8_IO_NOTE = "--int8-io applies to TFLite only; the ONNX artifact keeps float inputs and outputs."


def export_keras(source: LoadedModel, out: Path, *, precision: str, calib: Subset | None = None,
                 int8_io: bool = False, keep_layout: bool = False) -> ExportResult:
    return _finish(keras_to_onnx(source), source, out, precision=precision, calib=calib, int8_io=int8_io)


def export_torch(source: LoadedModel, out: Path, *, precision: str, calib: Subset | None = None,
                 int8_io: bool = False, keep_layout: bool = False) -> ExportResult:
    return _finish(torch_to_onnx(source), source, out, precision=precision, calib=calib, int8_io=int8_io)


def export_onnx(source: LoadedModel, out: Path, *, precision: str, calib: Subset | None = None,
                int8_io: bool = False, keep_layout: bool = False) -> ExportResult:
    if getattr(source, "quantized", False):
        # Quantizing a quantized graph again stacks errors; hand back the model as it is, with any
        # external weights folded in so the artifact is one file.
        _save(require("onnx", "Writing ONNX models"), source.native, out, source)
        note = f"'{source.handle.path.name}' is already quantized: copied unchanged, not quantized again."
        return ExportResult(out, "source-quantized", [note] if precision != "fp32" else [])
    return _finish(_cleaned(source), source, out, precision=precision, calib=calib, int8_io=int8_io)


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
            ort.InferenceSession(str(source.handle.path), options, providers=["CPUExecutionProvider"])
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
            int8_io: bool) -> ExportResult:
    onnx = require("onnx", "Writing ONNX models")
    notes = [INT8_IO_NOTE] if int8_io else []
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
        _quantize_static(float_path, Path(tmp), out, source, calib)
    floats = float_compute_nodes(onnx.load(str(out)))
    if floats:
        notes.append(f"Some weighted ops stayed in float in '{out.name}': {', '.join(floats[:8])}"
                     + (f" and {len(floats) - 8} more" if len(floats) > 8 else "") + ".")
    return ExportResult(out, "int8", notes, float_fallback=bool(floats))


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


def _quantize_static(float_path: Path, tmp: Path, out: Path, source: LoadedModel, calib: Subset) -> None:
    quant = require("onnxruntime.quantization", "Quantizing ONNX models")
    shape_tools = require("onnxruntime.quantization.shape_inference", "Quantizing ONNX models")
    onnx = require("onnx", "Quantizing ONNX models")
    prepared = tmp / "prepared.onnx"
    try:
        with quiet_stderr():
            shape_tools.quant_pre_process(str(float_path), str(prepared))
    except Exception:
        # Symbolic shape inference fails on some graphs; the ONNX one is enough for quantization.
        with quiet_stderr():
            shape_tools.quant_pre_process(str(float_path), str(prepared), skip_symbolic_shape=True)
    names = [v.name for v in onnx.load(str(prepared), load_external_data=False).graph.input]
    try:
        with quiet_stderr():
            # uint8 activations with int8 weights (U8S8) is the pairing ONNX Runtime's x86 kernels fuse
            # into QLinearConv; int8 activations leave Conv running in float between Q/DQ pairs.
            quant.quantize_static(
                str(prepared), str(out), _reader(quant, calib, names, source.handle.input_names),
                quant_format=quant.QuantFormat.QDQ, per_channel=True,
                activation_type=quant.QuantType.QUInt8, weight_type=quant.QuantType.QInt8,
                calibrate_method=quant.CalibrationMethod.MinMax)
    except Exception as exc:
        raise conversion_failure("onnxruntime quantize_static", source.handle.path, exc) from exc


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
