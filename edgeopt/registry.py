"""One record per path, which picks an implementation by name. Implementations are named as
"module:attribute" and resolved lazily, so nothing heavy is imported until a run needs it, and a
test resolves every one and checks every export record is complete.

A new backend adds one record here: everything about a path (what it needs installed, the
calibration methods its quantizer does, how it keeps layers in float) lives in that record, so
no second table can fall out of step with it.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from edgeopt.errors import ConversionError

# What a path needs installed, as (import name, distribution) pairs; `edgeopt doctor` reads them.
Requires = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Loader:
    key: str  # source format (a formats.Format value)
    loader: str  # "module:attr"
    requires: Requires


@dataclass(frozen=True)
class ExportPath:
    key: str  # "<source framework>-><target>"
    # "module:attr" of ``(model, out, *, keep_layout, calib) -> FloatArtifact``: the float artifact,
    # once per run and target.
    convert: str
    # "module:attr" of ``(float artifact, out, *, precision, calib, int8_io, quant) -> ExportResult``:
    # every other precision, made from that one float artifact (edgeopt.passes.quantize).
    quantize: str
    requires: Requires
    # Calibration methods the int8 quantizer offers, each with the backend mechanism that does it.
    # A method missing here is refused before any work (exit 2), never replaced by another; "auto"
    # is the backend's own default, which is what its users get without edgeopt.
    calibration: Mapping[str, str]
    # The backend mechanism that keeps named layers in float; None: the path refuses per-layer
    # overrides and accuracy budgets.
    keep_float: str | None = None
    # "module:attr" of ``(float artifact, int8 artifact, *, calib, quant) -> [Layer]``: the layers
    # the int8 artifact quantized, named as ``keep_float`` names them (overrides, the budget
    # search, --list-layers); set exactly when ``keep_float`` is.
    layers: str | None = None
    # "module:attr" of ``(float artifact, int8 artifact, layer names, out) -> ExportResult | None``: the
    # artifact with those layers put back in float by editing it, without quantizing again. The
    # budget search ranks and tries layers on edits where a path has one; None: each try exports.
    float_edit: str | None = None
    # "module:attr" of ``(float artifact, int8 artifact, layers, rows) -> {layer: error it adds} | None``:
    # a ranking from one run, used with ``float_edit`` instead of one try per layer.
    sensitivity: str | None = None
    # The mixed-precision rungs between int8 and float (``edgeopt.budget.LADDER``). "module:attr" of
    # ``(artifact, layer names, out) -> ExportResult | None``: those layers' activations at 16 bits,
    # their weights int8; and of ``(artifact, out) -> ExportResult | None``: the weights of the
    # layers left in float stored as fp16. None: the path has no such rung.
    int16_edit: str | None = None
    fp16_edit: str | None = None
    # Where the quantizer itself gives named layers 16-bit activations (``QuantConfig.int16_activations``),
    # its mechanism; a path without an int16 edit then quantizes each int16 try.
    int16_layers: str | None = None
    # edgeopt's own algorithms that learn from the int8 artifact, by the name --optimize takes
    # ("adaround": ``passes.quantize.onnx_adaround``); a path without one refuses it before work.
    optimizers: tuple[str, ...] = ()

    def __post_init__(self):
        # Several records share one calibration dict; frozen means nobody can edit it through one.
        object.__setattr__(self, "calibration", MappingProxyType(dict(self.calibration)))


@dataclass(frozen=True)
class Runtime:
    key: str  # artifact format
    open_session: str  # "module:attr"
    requires: Requires


@dataclass(frozen=True)
class Pass:
    key: str  # "<step>:<source framework>"
    run: str  # "module:attr"
    requires: Requires


KERAS, H5PY, TF = ("keras", "keras"), ("h5py", "h5py"), ("tensorflow", "tensorflow-cpu")
TORCH, ONNX, ORT = ("torch", "torch"), ("onnx", "onnx"), ("onnxruntime", "onnxruntime")
LITERT, LITERT_TORCH = ("ai_edge_litert", "ai-edge-litert"), ("litert_torch", "litert-torch")
AEQ, TF2ONNX, ONNXSCRIPT = ("ai_edge_quantizer", "ai-edge-quantizer"), ("tf2onnx", "tf2onnx"), ("onnxscript", "onnxscript")
OPENVINO, NNCF, TORCH_PRUNING = ("openvino", "openvino"), ("nncf", "nncf"), ("torch_pruning", "torch-pruning")

LOADERS: tuple[Loader, ...] = (
    Loader("keras_h5", "edgeopt.frameworks.keras:load", (KERAS, H5PY)),
    Loader("keras", "edgeopt.frameworks.keras:load", (KERAS,)),
    Loader("saved_model", "edgeopt.frameworks.keras:load", (TF,)),
    Loader("onnx", "edgeopt.frameworks.onnx:load", (ONNX, ORT)),
    Loader("torch_module", "edgeopt.frameworks.torch:load", (TORCH,)),
    Loader("torchscript", "edgeopt.frameworks.torch:load", (TORCH,)),
    Loader("torch_export", "edgeopt.frameworks.torch:load", (TORCH,)),
    Loader("torch_pickle", "edgeopt.frameworks.torch:load", (TORCH,)),
)

_TFLITE_KEEP = ("TFLite converter: the model calibrated once, then mlir_quantize(denylisted_nodes=...), as its "
                "QuantizationDebugger does")
_AEQ_CALIB = {"auto": "ai-edge-quantizer static recipe, min_max_uniform_quant, with activation ranges from global "
                      "min/max or its moving average, whichever is closer to the float model on calibration samples "
                      "(edgeopt.passes.quantize.tflite_ranges)",
              "minmax": "ai-edge-quantizer static recipe, min_max_uniform_quant, ranges chosen as for auto"}
_ORT_ = "onnxruntime quantize_static, CalibrationMethod."
_ORT_CALIB = {"auto": _ORT_ + "MinMax (its default)", "minmax": _ORT_ + "MinMax",
              "percentile": _ORT_ + "Percentile (CalibPercentile)",
              "entropy": _ORT_ + "Entropy (KL divergence, 2048-bin histograms)",
              "mse": "edgeopt range setting: per tensor, the range of least uint8 error among min/max, "
                     "mean min/max, percentiles and clipped ranges, in onnxruntime's calibration cache"}
_ORT_KEEP = "onnxruntime quantize_static(nodes_to_exclude=...)"
_NNCF_ = "NNCF nncf.quantize, activations_range_estimator_params=RangeEstimatorParametersSet."
_NNCF_CALIB = {"auto": "NNCF nncf.quantize defaults: activation ranges from the mean of per-sample "
                       "min/max (RangeEstimatorParametersSet.MEAN_MINMAX)",
               "minmax": _NNCF_ + "MINMAX",
               "percentile": "NNCF nncf.quantize, activation ranges from mean per-sample quantiles "
                             "(StatisticsType.QUANTILE, AggregatorType.MEAN)",
               "mse": _NNCF_ + "HISTOGRAM (ranges minimising the L2 quantization error)"}
_NNCF_KEEP = "NNCF nncf.quantize(ignored_scope=nncf.IgnoredScope(names=...))"
_ORT_QUANTIZE, _NNCF_QUANTIZE, _AEQ_QUANTIZE = (f"edgeopt.passes.quantize.{m}:quantize"
                                                for m in ("onnx", "openvino", "tflite_aeq"))
_ORT_LAYERS, _NNCF_LAYERS = ("edgeopt.passes.quantize.onnx:quantized_layers",
                             "edgeopt.passes.quantize.openvino:quantized_layers")
_AEQ_KEEP = "ai-edge-quantizer recipe, NO_QUANTIZE entries for the ops' output tensor names"
_AEQ_LAYERS = "edgeopt.passes.quantize.tflite_aeq:quantized_layers"
_AEQ_INT16 = "ai-edge-quantizer recipe, 16-bit activation (A16W8) entries for the ops' output tensor names"
_ORT_EDIT = "edgeopt.passes.quantize.onnx_float_edit:keep_in_float"
_ORT_SENSITIVITY = "edgeopt.passes.quantize.onnx_sensitivity:added_error"
_ORT_INT16 = "edgeopt.passes.quantize.onnx_int16_edit:widen_activations"
_NNCF_FP16 = "edgeopt.passes.quantize.openvino:float_weights_in_fp16"
_ORT_OPTIMIZERS = ("adaround",)
_NNCF_SENSITIVITY = "edgeopt.passes.quantize.openvino_sensitivity:added_error"
_NNCF_EDIT = "edgeopt.passes.quantize.openvino_float_edit:keep_in_float"

EXPORTS: tuple[ExportPath, ...] = (
    ExportPath("keras->tflite", "edgeopt.exporters.tflite:convert_keras", "edgeopt.passes.quantize.tflite:quantize",
               (TF,),
               calibration={"auto": "TFLite converter representative_dataset (min/max ranges, its only method)",
                            "minmax": "TFLite converter representative_dataset (min/max ranges)"},
               keep_float=_TFLITE_KEEP, layers="edgeopt.passes.quantize.tflite:keras_layers"),
    ExportPath("torch->tflite", "edgeopt.exporters.tflite_onnx:convert_torch", _AEQ_QUANTIZE, (LITERT_TORCH, AEQ),
               calibration=_AEQ_CALIB, keep_float=_AEQ_KEEP, layers=_AEQ_LAYERS,
               int16_layers=_AEQ_INT16),
    ExportPath("onnx->tflite", "edgeopt.exporters.tflite_onnx:convert_onnx", _AEQ_QUANTIZE,
               (ONNX, ORT, TORCH, LITERT_TORCH, AEQ), calibration=_AEQ_CALIB, keep_float=_AEQ_KEEP, layers=_AEQ_LAYERS,
               int16_layers=_AEQ_INT16),
    ExportPath("keras->onnx", "edgeopt.exporters.onnx:convert_keras", _ORT_QUANTIZE, (TF2ONNX, ORT),
               calibration=_ORT_CALIB, keep_float=_ORT_KEEP, layers=_ORT_LAYERS,
               float_edit=_ORT_EDIT, sensitivity=_ORT_SENSITIVITY, int16_edit=_ORT_INT16,
               optimizers=_ORT_OPTIMIZERS),
    ExportPath("torch->onnx", "edgeopt.exporters.onnx:convert_torch", _ORT_QUANTIZE, (TORCH, ONNXSCRIPT, ORT),
               calibration=_ORT_CALIB, keep_float=_ORT_KEEP, layers=_ORT_LAYERS,
               float_edit=_ORT_EDIT, sensitivity=_ORT_SENSITIVITY, int16_edit=_ORT_INT16,
               optimizers=_ORT_OPTIMIZERS),
    ExportPath("onnx->onnx", "edgeopt.exporters.onnx:convert_onnx", _ORT_QUANTIZE, (ONNX, ORT),
               calibration=_ORT_CALIB, keep_float=_ORT_KEEP, layers=_ORT_LAYERS,
               float_edit=_ORT_EDIT, sensitivity=_ORT_SENSITIVITY, int16_edit=_ORT_INT16,
               optimizers=_ORT_OPTIMIZERS),
    ExportPath("keras->openvino", "edgeopt.exporters.openvino:convert_keras", _NNCF_QUANTIZE, (TF, OPENVINO, NNCF),
               calibration=_NNCF_CALIB, keep_float=_NNCF_KEEP, layers=_NNCF_LAYERS,
               float_edit=_NNCF_EDIT, sensitivity=_NNCF_SENSITIVITY, fp16_edit=_NNCF_FP16),
    ExportPath("torch->openvino", "edgeopt.exporters.openvino:convert_torch", _NNCF_QUANTIZE, (TORCH, OPENVINO, NNCF),
               calibration=_NNCF_CALIB, keep_float=_NNCF_KEEP, layers=_NNCF_LAYERS,
               float_edit=_NNCF_EDIT, sensitivity=_NNCF_SENSITIVITY, fp16_edit=_NNCF_FP16),
    ExportPath("onnx->openvino", "edgeopt.exporters.openvino:convert_onnx", _NNCF_QUANTIZE, (OPENVINO, NNCF),
               calibration=_NNCF_CALIB, keep_float=_NNCF_KEEP, layers=_NNCF_LAYERS,
               float_edit=_NNCF_EDIT, sensitivity=_NNCF_SENSITIVITY, fp16_edit=_NNCF_FP16),
)

RUNTIMES: tuple[Runtime, ...] = (
    Runtime("tflite", "edgeopt.targets.litert:open_session", (LITERT,)),
    Runtime("onnx", "edgeopt.targets.onnxruntime:open_session", (ORT,)),
    Runtime("openvino", "edgeopt.targets.openvino:open_session", (OPENVINO,)),
)

PASSES: tuple[Pass, ...] = (
    Pass("prune:keras", "edgeopt.passes.prune.keras:run", (KERAS,)),
    Pass("distill:keras", "edgeopt.passes.distill.keras:run", (TF,)),
    Pass("prune:torch", "edgeopt.passes.prune.torch:run", (TORCH, TORCH_PRUNING)),
    Pass("distill:torch", "edgeopt.passes.distill.torch:run", (TORCH,)),
)


# (kind, key) -> ("module:attr", requires), derived from the records, in the order `doctor` lists.
# A "quant-layers" entry needs nothing of its own: its path's exporter entry names the requirements.
_ENTRIES: dict[tuple[str, str], tuple[str, Requires]] = {
    **{("loader", r.key): (r.loader, r.requires) for r in LOADERS},
    **{("converter", r.key): (r.convert, r.requires) for r in EXPORTS},
    **{("quantizer", r.key): (r.quantize, r.requires) for r in EXPORTS},
    **{("runtime", r.key): (r.open_session, r.requires) for r in RUNTIMES},
    **{("quant-layers", r.key): (r.layers, ()) for r in EXPORTS if r.layers},
    **{("pass", r.key): (r.run, r.requires) for r in PASSES},
}
_EXPORTS = {r.key: r for r in EXPORTS}


def entries() -> list[tuple[str, str]]:
    """Every (kind, key) that resolves, loaders first, as `edgeopt doctor` lists them."""
    return list(_ENTRIES)


def reference(kind: str, key: str) -> str:
    """The "module:attr" that ``resolve(kind, key)`` imports."""
    return _ENTRIES[(kind, key)][0]


def requirements(kind: str, key: str) -> Requires:
    """What the entry needs installed; () for an unknown one."""
    return _ENTRIES.get((kind, key), (None, ()))[1]


def export_path(key: str) -> ExportPath | None:
    """The record of exporter ``key`` ("keras->onnx"), None when there is no such path."""
    return _EXPORTS.get(key)


def resolve(kind: str, key: str) -> Any:
    try:
        target = _ENTRIES[(kind, key)][0]
    except KeyError:
        raise ConversionError(f"No {kind} for '{key}'.", hint=f"Available: {', '.join(available(kind))}.") from None
    return load(target)


def load(reference: str) -> Any:
    """The object a record's "module:attr" names, imported now."""
    module_name, attr = reference.split(":")
    return getattr(importlib.import_module(module_name), attr)


def available(kind: str) -> list[str]:
    return sorted(k for (k_kind, k) in _ENTRIES if k_kind == kind)
