"""The one table that picks an implementation by name. Entries are resolved lazily, so nothing
heavy is imported until a run needs it, and a test resolves every entry.
"""

from __future__ import annotations

import importlib
from typing import Any

from edgeopt.errors import ConversionError

# (kind, key) -> "module:attribute"
ENTRIES: dict[tuple[str, str], str] = {
    # importers, by source format
    ("loader", "keras_h5"): "edgeopt.frameworks.keras:load",
    ("loader", "keras"): "edgeopt.frameworks.keras:load",
    ("loader", "saved_model"): "edgeopt.frameworks.keras:load",
    ("loader", "onnx"): "edgeopt.frameworks.onnx:load",
    ("loader", "torch_module"): "edgeopt.frameworks.torch:load",
    ("loader", "torchscript"): "edgeopt.frameworks.torch:load",
    ("loader", "torch_export"): "edgeopt.frameworks.torch:load",
    ("loader", "torch_pickle"): "edgeopt.frameworks.torch:load",
    # exporters, by "<source framework>-><target>"
    ("exporter", "keras->tflite"): "edgeopt.exporters.tflite:export_keras",
    ("exporter", "torch->tflite"): "edgeopt.exporters.tflite_torch:export_torch",
    ("exporter", "onnx->tflite"): "edgeopt.exporters.tflite_onnx:export_onnx",
    ("exporter", "keras->onnx"): "edgeopt.exporters.onnx:export_keras",
    ("exporter", "torch->onnx"): "edgeopt.exporters.onnx:export_torch",
    ("exporter", "onnx->onnx"): "edgeopt.exporters.onnx:export_onnx",
    ("exporter", "keras->openvino"): "edgeopt.exporters.openvino:export_keras",
    ("exporter", "torch->openvino"): "edgeopt.exporters.openvino:export_torch",
    ("exporter", "onnx->openvino"): "edgeopt.exporters.openvino:export_onnx",
    # runtimes, by artifact format
    ("runtime", "tflite"): "edgeopt.targets.litert:open_session",
    ("runtime", "onnx"): "edgeopt.targets.onnxruntime:open_session",
    ("runtime", "openvino"): "edgeopt.targets.openvino:open_session",
    # the layers an int8 artifact quantized, named as the backend's exclusion mechanism names them
    # (per-layer overrides and the accuracy-budget search), by exporter key
    ("quant-layers", "keras->tflite"): "edgeopt.exporters.tflite:keras_layers",
    ("quant-layers", "keras->onnx"): "edgeopt.exporters.onnx:quantized_layers",
    ("quant-layers", "torch->onnx"): "edgeopt.exporters.onnx:quantized_layers",
    ("quant-layers", "onnx->onnx"): "edgeopt.exporters.onnx:quantized_layers",
    ("quant-layers", "keras->openvino"): "edgeopt.exporters.openvino:quantized_layers",
    ("quant-layers", "torch->openvino"): "edgeopt.exporters.openvino:quantized_layers",
    ("quant-layers", "onnx->openvino"): "edgeopt.exporters.openvino:quantized_layers",
    # passes, by "<step>:<source framework>"
    ("pass", "prune:keras"): "edgeopt.passes.prune.keras:run",
    ("pass", "distill:keras"): "edgeopt.passes.distill.keras:run",
    ("pass", "prune:torch"): "edgeopt.passes.prune.torch:run",
    ("pass", "distill:torch"): "edgeopt.passes.distill.torch:run",
}


# What each entry needs installed, as (import name, distribution) pairs; `edgeopt doctor` reads it.
REQUIRES: dict[tuple[str, str], tuple[tuple[str, str], ...]] = {
    ("loader", "keras_h5"): (("keras", "keras"), ("h5py", "h5py")),
    ("loader", "keras"): (("keras", "keras"),),
    ("loader", "saved_model"): (("tensorflow", "tensorflow-cpu"),),
    ("exporter", "keras->tflite"): (("tensorflow", "tensorflow-cpu"),),
    ("runtime", "tflite"): (("ai_edge_litert", "ai-edge-litert"),),
    ("loader", "onnx"): (("onnx", "onnx"), ("onnxruntime", "onnxruntime")),
    ("loader", "torch_module"): (("torch", "torch"),),
    ("loader", "torchscript"): (("torch", "torch"),),
    ("loader", "torch_export"): (("torch", "torch"),),
    ("loader", "torch_pickle"): (("torch", "torch"),),
    ("exporter", "torch->tflite"): (("litert_torch", "litert-torch"), ("ai_edge_quantizer", "ai-edge-quantizer")),
    ("exporter", "onnx->tflite"): (("onnx", "onnx"), ("onnxruntime", "onnxruntime"), ("torch", "torch"),
                                   ("litert_torch", "litert-torch"), ("ai_edge_quantizer", "ai-edge-quantizer")),
    ("exporter", "keras->onnx"): (("tf2onnx", "tf2onnx"), ("onnxruntime", "onnxruntime")),
    ("exporter", "torch->onnx"): (("torch", "torch"), ("onnxscript", "onnxscript"), ("onnxruntime", "onnxruntime")),
    ("exporter", "onnx->onnx"): (("onnx", "onnx"), ("onnxruntime", "onnxruntime")),
    ("exporter", "keras->openvino"): (("tensorflow", "tensorflow-cpu"), ("openvino", "openvino"), ("nncf", "nncf")),
    ("exporter", "torch->openvino"): (("torch", "torch"), ("openvino", "openvino"), ("nncf", "nncf")),
    ("exporter", "onnx->openvino"): (("openvino", "openvino"), ("nncf", "nncf")),
    ("runtime", "onnx"): (("onnxruntime", "onnxruntime"),),
    ("runtime", "openvino"): (("openvino", "openvino"),),
    ("pass", "prune:keras"): (("keras", "keras"),),
    ("pass", "distill:keras"): (("tensorflow", "tensorflow-cpu"),),
    ("pass", "prune:torch"): (("torch", "torch"), ("torch_pruning", "torch-pruning")),
    ("pass", "distill:torch"): (("torch", "torch"),),
}


# Calibration methods each exporter's int8 quantizer offers, with the backend mechanism that does it.
# A method missing here is refused before any work (exit 2), never replaced by another.
_ORT = "onnxruntime quantize_static, CalibrationMethod."
_NNCF = "NNCF nncf.quantize, activations_range_estimator_params=RangeEstimatorParametersSet."
# "auto" is the backend's own default, which is what its users get without edgeopt.
_AEQ = {"auto": "ai-edge-quantizer static recipe, min_max_uniform_quant, with activation ranges from global "
                "min/max or its moving average, whichever is closer to the float model on calibration samples "
                "(edgeopt.exporters.tflite_ranges)",
        "minmax": "ai-edge-quantizer static recipe, min_max_uniform_quant, ranges chosen as for auto"}
CALIBRATION: dict[str, dict[str, str]] = {
    "keras->tflite": {"auto": "TFLite converter representative_dataset (min/max ranges, its only method)",
                      "minmax": "TFLite converter representative_dataset (min/max ranges)"},
    "torch->tflite": _AEQ,
    "onnx->tflite": _AEQ,
    **{f"{fw}->onnx": {"auto": _ORT + "MinMax (its default)", "minmax": _ORT + "MinMax", "percentile": _ORT + "Percentile (CalibPercentile)",
                        "entropy": _ORT + "Entropy (KL divergence, 2048-bin histograms)"}
       for fw in ("keras", "torch", "onnx")},
    **{f"{fw}->openvino": {"auto": "NNCF nncf.quantize defaults: activation ranges from the mean of per-sample "
                                    "min/max (RangeEstimatorParametersSet.MEAN_MINMAX)",
                            "minmax": _NNCF + "MINMAX",
                            "percentile": "NNCF nncf.quantize, activation ranges from mean per-sample quantiles "
                                          "(StatisticsType.QUANTILE, AggregatorType.MEAN)",
                            "mse": _NNCF + "HISTOGRAM (ranges minimising the L2 quantization error)"}
       for fw in ("keras", "torch", "onnx")},
}

# How each exporter keeps named layers in float; exporters missing here refuse overrides and budgets.
KEEP_FLOAT: dict[str, str] = {
    "keras->tflite": "TFLite QuantizationDebugger, QuantizationDebugOptions(denylisted_nodes=...)",
    **{f"{fw}->onnx": "onnxruntime quantize_static(nodes_to_exclude=...)" for fw in ("keras", "torch", "onnx")},
    **{f"{fw}->openvino": "NNCF nncf.quantize(ignored_scope=nncf.IgnoredScope(names=...))"
       for fw in ("keras", "torch", "onnx")},
}


def resolve(kind: str, key: str) -> Any:
    try:
        target = ENTRIES[(kind, key)]
    except KeyError:
        known = sorted(k for (k_kind, k) in ENTRIES if k_kind == kind)
        raise ConversionError(f"No {kind} for '{key}'.", hint=f"Available: {', '.join(known)}.") from None
    module_name, attr = target.split(":")
    return getattr(importlib.import_module(module_name), attr)


def available(kind: str) -> list[str]:
    return sorted(k for (k_kind, k) in ENTRIES if k_kind == kind)
