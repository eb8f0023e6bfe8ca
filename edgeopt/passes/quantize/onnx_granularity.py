"""Per-channel or per-tensor int8 weights, and onnxruntime's or edgeopt's activation ranges, for an
ONNX artifact, chosen by the error they cause.

Per-channel weights are the better choice on most networks, and edgeopt's default; yet on real
models onnxruntime's per-channel QDQ can lose more than its per-tensor default: on ddddocr's
YOLOX-style detector the output cosine was 0.985 per channel against 0.994 per tensor, and on a
trained mini-Xception 0.938 against 0.957 top-1 agreement. Both are written (the calibration is
cached, so the second costs one more quantization, not another calibration), both run on a few
calibration samples next to the float graph, and the closer one is kept (``closest``);
a tie keeps per-channel.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from edgeopt.calibration import Subset
from edgeopt.deps import require
from edgeopt.errors import ConversionError
from edgeopt.passes.quantize import closest
from edgeopt.passes.quantize.config import QuantConfig


def options(quant: QuantConfig, equalizable: bool = False, smoothable: bool = False
            ) -> list[tuple[str, QuantConfig]]:
    """What the plain int8 model is chosen from: per-channel and per-tensor weights and, with the
    default calibration, edgeopt's ranges (``range_setting``) with its bias correction
    (``onnx_bias_correction``) beside onnxruntime's min/max. On the conformance models they took
    MobileNetV2 from 0.81 to 0.88 top-1 agreement, PP-OCRv4's detector from 0.936 to 0.968 cosine
    and its recognizer from 0.905 to 0.973; a trained mini-Xception from 0.938 to 0.984, where
    edgeopt's ranges alone reach 0.988: only a measurement says which serves a model."""
    found = [("per-channel", quant), ("per-tensor", replace(quant, per_channel=False))]
    if quant.method == "auto":
        found.append(("per-channel with edgeopt's ranges and bias correction",
                      replace(quant, method="mse", bias_correction=True)))
    if equalizable:  # a graph with conv -> conv chains (``equalization``)
        found.append(("per-tensor after cross-layer equalization", replace(quant, per_channel=False,
                                                                          equalize=True)))
        if quant.method == "auto":
            found.append(("per-channel after cross-layer equalization, with edgeopt's ranges and bias correction",
                          replace(quant, method="mse", bias_correction=True, equalize=True)))
    if smoothable:  # MatMul/Gemm layers reading activations with outlier channels (``smoothing``)
        found.append(("per-channel after SmoothQuant migration" + (", with edgeopt's ranges and bias correction"
                                                                    if quant.method == "auto" else ""),
                      replace(quant, smooth=True, **({"method": "mse", "bias_correction": True}
                                                     if quant.method == "auto" else {}))))
    return found


def choose(quantize: Callable[[Path, QuantConfig], Any], float_path: Path, out: Path, calib: Subset,
           quant: QuantConfig, pairs: list[tuple[str, str]], equalizable: bool = False, smoothable: bool = False
           ) -> tuple[Any, str, QuantConfig]:
    """``quantize(path, settings)`` for each of ``options(quant, equalizable, smoothable)``; the
    closest model ends at ``out``. Returns it, a note and its settings."""
    tried, settings_of = {}, {}
    for i, (label, settings) in enumerate(options(quant, equalizable, smoothable)):
        path = out.with_name(f".{out.name}.{i}.onnx")
        tried[label] = (path, quantize(path, settings))
        settings_of[label] = settings
    feeds = closest.first_rows(calib, lambda row: {onnx_name: row[name] for onnx_name, name in pairs})
    outputs, failures = {}, {}
    for label, (path, _) in tried.items():
        try:
            outputs[label] = _outputs(path, feeds)
        except Exception as exc:  # onnxruntime raises its own types, for a model it will not load or run
            failures[label] = str(exc).splitlines()[0][:300]
    if not outputs:
        raise ConversionError(
            f"The int8 ONNX model edgeopt wrote for '{out.name}' does not run in onnxruntime, with any weight "
            f"granularity or ranges: {failures['per-channel']}",
            hint="This is a fault in edgeopt's quantization, not in the model you gave. Run again with --debug "
                 "and report the output; --target openvino or --precision fp16 may work meanwhile.")
    best, what, scores = closest.closest(_outputs(float_path, feeds), outputs)
    for label, (path, _) in tried.items():
        if label == best:
            path.replace(out)
        else:
            path.unlink(missing_ok=True)
    if failures:
        dropped = next(iter(failures))
        note = (f"ONNX int8 quantization of '{out.name}': {best}; the {dropped} model did not run in onnxruntime "
                f"({failures[dropped]}).")
    else:
        note = closest.describe(f"ONNX int8 quantization of '{out.name}'", best, what, scores, len(feeds))
    return tried[best][1], note, settings_of[best]


def _outputs(path: Path, feeds: list[dict[str, np.ndarray]]) -> list[np.ndarray]:
    ort = require("onnxruntime", "Running ONNX models")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return closest.stacked(session.run(None, feed) for feed in feeds)
