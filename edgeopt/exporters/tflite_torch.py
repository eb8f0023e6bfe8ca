"""PyTorch -> TFLite: litert-torch writes the float model, ai-edge-quantizer applies the precision.

litert-torch keeps the module's own layout, so NCHW image inputs (and 4-D image outputs) are moved
channels-last first with ``litert_torch.to_channel_last_io``: TFLite kernels and delegates are
built for NHWC, and a model that takes NCHW runs transposes inside. ``keep_layout`` keeps NCHW.

The quantizer works on the float flatbuffer: fp16 casts weights, int8 with calibration data
quantizes weights and activations (inputs and outputs stay float unless int8 I/O is asked for),
int8 without data quantizes weights and lets the runtime quantize activations on the fly.

ONNX sources come here too (``tflite_onnx``): their graph is first run as a PyTorch module.
"""

from __future__ import annotations

import contextlib
import io
import sys
import tempfile
import warnings
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from edgeopt.calibration import Subset
from edgeopt.deps import quiet_stderr, require
from edgeopt.errors import ConversionError
from edgeopt.exporters import tflite_ranges as range_rule
from edgeopt.exporters.tflite import FLOAT_ONLY_OPS
from edgeopt.exporters.base import DEFAULT_QUANT, ExportResult, QuantSettings, check_quant, conversion_failure
from edgeopt.frameworks.base import LoadedModel, guess_layout
from edgeopt.targets.base import NCHW_TO_NHWC, Axes


def export_torch(source: LoadedModel, out: Path, *, precision: str, calib: Subset | None = None,
                 int8_io: bool = False, keep_layout: bool = False,
                 quant: QuantSettings = DEFAULT_QUANT) -> ExportResult:
    if _is_torchscript(source):
        return _torchscript_via_onnx(source, out, precision=precision, calib=calib, int8_io=int8_io,
                                     keep_layout=keep_layout, quant=quant)
    if precision == "int8" and calib is not None:
        # ai-edge-quantizer calibrates with min/max only; layers in float are not offered here.
        check_quant("torch->tflite", quant, keep_float=bool(quant.keep_float))
    litert_torch = require("litert_torch", "Converting PyTorch models to TFLite")
    notes: list[str] = []
    moved_inputs, moved_outputs = ([], []) if keep_layout else _channels_first(source)
    with tempfile.TemporaryDirectory(prefix=".edgeopt-tflite-", dir=out.parent) as tmp:
        float_path = out if precision == "fp32" else Path(tmp) / "float.tflite"
        try:
            with _quiet():
                module, example = source.native, source.example_inputs()
                if moved_inputs or moved_outputs:
                    # The wrapper is a new module, in training mode unless told otherwise.
                    module = litert_torch.to_channel_last_io(module, args=moved_inputs, outputs=moved_outputs).eval()
                    example = tuple(x.permute(*NCHW_TO_NHWC).contiguous() if i in moved_inputs else x
                                    for i, x in enumerate(example))
                edge = litert_torch.convert(module, example)
                edge.export(str(float_path))
        except Exception as exc:
            raise conversion_failure("litert_torch.convert", source.handle.path, exc) from exc
        flat_biases(float_path)
        if precision == "fp32":
            compact_tensor_names(out)
            return ExportResult(out, "fp32", notes)
        recipe, label = _recipe(precision, calib, int8_io, quant.per_channel)
        quantizer = require("ai_edge_quantizer.quantizer", "Quantizing TFLite models")
        try:
            with _quiet():
                qt = quantizer.Quantizer(str(float_path))
                qt.load_quantization_recipe(recipe)
                moved = {source.handle.inputs[i].name: NCHW_TO_NHWC for i in moved_inputs}
                if label == "int8" and not int8_io:
                    rows = _calibration(str(float_path), source, calib, moved)
                    notes.append(range_rule.choose(qt, rows, float_path, out, source.handle.path.name))
                elif label == "int8":  # int8 inputs: the judging runs feed floats, so keep the default rule
                    qt.quantize(qt.calibrate(_calibration(str(float_path), source, calib, moved))).export_model(
                        str(out), overwrite=True)
                else:
                    qt.quantize(None).export_model(str(out), overwrite=True)
        except Exception as exc:
            raise conversion_failure("ai-edge-quantizer", source.handle.path, exc) from exc
    compact_tensor_names(out)
    return ExportResult(out, label, notes)


def _is_torchscript(source: LoadedModel) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(source.native, torch.jit.ScriptModule)


# One ONNX form per TorchScript source: the pipeline exports the baseline and the artifact.
_ONNX_FORMS: weakref.WeakKeyDictionary[LoadedModel, LoadedModel] = weakref.WeakKeyDictionary()


def _torchscript_via_onnx(source: LoadedModel, out: Path, **options: Any) -> ExportResult:
    """litert-torch traces with torch.export, which cannot read a ScriptModule; torch.onnx's
    TorchScript exporter can. The ONNX graph then takes the ONNX -> TFLite route, checked against
    ONNX Runtime before conversion as every ONNX source is."""
    from edgeopt.exporters import tflite_onnx
    from edgeopt.exporters.onnx import cached_float_graph, torch_to_onnx
    from edgeopt.frameworks.onnx import OnnxModel

    onnx_form = _ONNX_FORMS.get(source)
    if onnx_form is None:
        onnx_form = OnnxModel(source.handle.path, cached_float_graph(source, torch_to_onnx), [], quantized=False,
                              pinned=True)
        _ONNX_FORMS[source] = onnx_form
    result = tflite_onnx.export_onnx(onnx_form, out, **options)
    result.notes.insert(0, f"TorchScript -> TFLite: '{source.handle.path.name}' went through ONNX (torch.onnx's "
                           "TorchScript exporter), since litert-torch cannot export a ScriptModule.")
    return result


def compact_tensor_names(path: Path) -> None:
    """Shorten the tensor names litert-torch writes, in place.

    It names each tensor by the full scope of every op fused into it: qualified class names, the
    layout wrapper, the import name of the user's file, joined with ';'. On a MobileNetV2 that is
    up to 1.4 KB per tensor and 4% of the int8 file. Each name becomes its first scope with bare
    class names ("MobileNetV2_wrapped/Sequential_features/InvertedResidual_17/.../ReLU6_2"), which
    still says where the tensor comes from. Input and output names, which callers use, stay.
    """
    flatbuffers = require("ai_edge_litert.tools.flatbuffer_utils", "Writing TFLite models")
    model = flatbuffers.read_model(str(path))
    for graph in model.subgraphs:
        ends = {*graph.inputs, *graph.outputs}
        for index, tensor in enumerate(graph.tensors):
            if index not in ends and tensor.name:
                tensor.name = _compact_name(tensor.name.decode("utf-8", "replace")).encode()
    flatbuffers.write_model(model, str(path))


# (op, index of its bias input) for the ops whose bias is one value per output channel.
_BIASED = {"CONV_2D": 2, "DEPTHWISE_CONV_2D": 2, "FULLY_CONNECTED": 2, "TRANSPOSE_CONV": 3}


def flat_biases(path: Path) -> None:
    """Give every bias the 1-D shape [C] the TFLite kernels define, in place.

    litert-torch writes a transposed convolution's bias as [1, 1, 1, C] (a broadcast add folded
    into the op); ai-edge-quantizer then gives it one scale per channel along axis 0, of size 1,
    and LiteRT refuses the int8 model ("num_scales must be 1 ... got C"). The values are the same.
    """
    flatbuffers = require("ai_edge_litert.tools.flatbuffer_utils", "Writing TFLite models")
    schema = flatbuffers.schema_fb
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    model = flatbuffers.read_model(str(path))
    changed = False
    for graph in model.subgraphs:
        for op in graph.operators:
            code = model.operatorCodes[op.opcodeIndex]
            slot = _BIASED.get(names.get(max(code.builtinCode, code.deprecatedBuiltinCode)))
            if slot is None or len(op.inputs) <= slot or op.inputs[slot] < 0:
                continue
            tensor = graph.tensors[op.inputs[slot]]
            shape = list(tensor.shape)
            if len(shape) > 1 and all(d == 1 for d in shape[:-1]):
                tensor.shape = np.array(shape[-1:], dtype=np.int32)
                changed = True
    if changed:
        flatbuffers.write_model(model, str(path))


def _compact_name(name: str) -> str:
    scope = next((part for part in name.split(";") if part), name)
    segments = [segment.rsplit(".", 1)[-1] for segment in scope.split("/")
                if not segment.endswith("ChannelLastIOWrapper")]
    return "/".join(segments) or scope


def _channels_first(source: LoadedModel) -> tuple[list[int], list[int]]:
    """Positions of the NCHW image inputs and of the 4-D NCHW outputs, which become NHWC.

    Other inputs (vectors, token ids) and inputs already channels-last stay as they are. Outputs
    move only when forward() returns a tensor or a flat tuple of them, the structure
    ``to_channel_last_io`` indexes.
    """
    inputs = [i for i, t in enumerate(source.handle.inputs) if t.layout == "nchw"]
    outputs = [i for i, t in enumerate(source.handle.outputs) if guess_layout(t.shape, "nchw") == "nchw"]
    if outputs and not _flat_outputs(source):
        outputs = []
    return inputs, outputs


def _flat_outputs(source: LoadedModel) -> bool:
    torch = require("torch", "Converting PyTorch models to TFLite")
    with torch.no_grad():
        raw = source.native(*source.example_inputs())
    return torch.is_tensor(raw) or (isinstance(raw, (list, tuple)) and all(torch.is_tensor(t) for t in raw))


def _recipe(precision: str, calib: Subset | None, int8_io: bool, per_channel: bool = True) -> tuple[Any, str]:
    manager_module = require("ai_edge_quantizer.recipe_manager", "Quantizing TFLite models")
    qtyping = require("ai_edge_quantizer.qtyping", "Quantizing TFLite models")
    algorithms = require("ai_edge_quantizer.algorithm_manager", "Quantizing TFLite models").AlgorithmName
    ops = qtyping.TFLOperationName
    manager = manager_module.RecipeManager()
    if precision == "fp16":
        manager.add_weight_only_config(".*", ops.ALL_SUPPORTED, num_bits=16, algorithm_key=algorithms.FLOAT_CASTING)
        return manager.get_quantization_recipe(), "fp16"
    if calib is None:
        manager.add_dynamic_config(".*", ops.ALL_SUPPORTED, num_bits=8)
        return manager.get_quantization_recipe(), "int8-dynamic"
    granularity = qtyping.QuantGranularity.CHANNELWISE if per_channel else qtyping.QuantGranularity.TENSORWISE
    manager.add_static_config(".*", ops.ALL_SUPPORTED, activation_num_bits=8, weight_num_bits=8,
                              weight_granularity=granularity)
    in_float = qtyping.OpQuantizationConfig(compute_precision=qtyping.ComputePrecision.FLOAT,
                                            explicit_dequantize=False)
    # Later entries win: ops that never run in int8 (exporters.tflite.FLOAT_ONLY_OPS), and unless
    # int8_io, the graph inputs and outputs, with (de)quantize ops inside.
    float_ops = [getattr(ops, name) for name in FLOAT_ONLY_OPS] + ([] if int8_io else [ops.INPUT, ops.OUTPUT])
    for op in float_ops:
        manager.add_quantization_config(".*", op, op_config=in_float, algorithm_key=algorithms.NO_QUANTIZE)
    return manager.get_quantization_recipe(), "int8"


def _calibration(model_path: str, source: LoadedModel, calib: Subset, moved: dict[str, Axes]) -> dict[str, _Rows]:
    """Calibration rows keyed by the TFLite signature's input names (args_0, args_1, ... in order),
    transposed by ``moved`` into the layout the float model takes."""
    litert = require("ai_edge_litert.interpreter", "Reading TFLite models")
    signatures = litert.Interpreter(model_path=model_path).get_signature_list()
    key = next(iter(signatures))
    names = signatures[key]["inputs"]
    if len(names) != len(source.handle.inputs):
        raise ConversionError(f"The TFLite model of '{source.handle.path}' takes {len(names)} inputs; the source "
                              f"takes {len(source.handle.inputs)}.")
    # litert-torch names inputs args_<i> in forward() order, which is the source's order.
    ordered = sorted(names, key=lambda n: int(n.rsplit("_", 1)[-1]) if n.rsplit("_", 1)[-1].isdigit() else 0)
    pairs = list(zip(ordered, source.handle.input_names))
    return {key: _Rows(calib, pairs, moved)}


class _Rows:
    """Calibration rows renamed for the quantizer, streamed again on every pass: it walks the
    data once to count work before walking it to calibrate."""

    def __init__(self, calib: Subset, pairs: list[tuple[str, str]], moved: dict[str, Axes]) -> None:
        self._calib = calib
        self._pairs = pairs
        self._moved = moved

    def __len__(self) -> int:
        return len(self._calib)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for row in self._calib:
            yield {tfl: np.ascontiguousarray(np.transpose(row[name], self._moved[name])) if name in self._moved
                   else row[name] for tfl, name in self._pairs}


@contextlib.contextmanager
def _quiet():
    # Both tools print progress and size tables on stdout, C++ logs on stderr, and the quantizer
    # warns about its own calibration settings.
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), quiet_stderr(), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
