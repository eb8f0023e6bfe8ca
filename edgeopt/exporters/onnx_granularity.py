"""Per-channel or per-tensor int8 weights for an ONNX artifact, chosen by the error they cause.

Per-channel weights are the better choice on most networks, and edgeopt's default; yet on real
models onnxruntime's per-channel QDQ can lose more than its per-tensor default: on ddddocr's
YOLOX-style detector the output cosine was 0.985 per channel against 0.994 per tensor, and on a
trained mini-Xception 0.938 against 0.957 top-1 agreement. Both are written (the calibration is
cached, so the second costs one more quantization, not another calibration), both run on a few
calibration samples next to the float graph, and the closer one is kept: top-1 agreement for
classifier outputs, else the cosine of all outputs; a tie keeps per-channel.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from edgeopt.calibration import Subset
from edgeopt.deps import require
from edgeopt.exporters.base import QuantSettings
from edgeopt.validate import fidelity as fid

JUDGED_SAMPLES = 32


def choose(quantize: Callable[[Path, QuantSettings], Any], float_path: Path, out: Path, calib: Subset,
           quant: QuantSettings, pairs: list[tuple[str, str]]) -> tuple[Any, str]:
    """``quantize(path, settings)`` both ways; the better model ends at ``out``. Returns it and a note."""
    tried = {}
    for label, settings in (("per-channel", quant), ("per-tensor", replace(quant, per_channel=False))):
        path = out.with_name(f".{out.name}.{label}.onnx")
        tried[label] = (path, quantize(path, settings))
    feeds = _feeds(calib, pairs)
    reference = _outputs(float_path, feeds)
    scores = {label: _score(reference, _outputs(path, feeds)) for label, (path, _) in tried.items()}
    best = "per-tensor" if scores["per-tensor"] > scores["per-channel"] else "per-channel"
    other = "per-channel" if best == "per-tensor" else "per-tensor"
    path, model = tried[best]
    path.replace(out)
    tried[other][0].unlink(missing_ok=True)
    what = "top-1 agreement" if fid.is_classifier(reference[0]) else "cosine"
    note = (f"ONNX int8 weights of '{out.name}': {best}, chosen over {other} by {what} with the float model on "
            f"{len(feeds)} calibration samples ({scores[best][0]:.4f} against {scores[other][0]:.4f}).")
    return model, note


def _feeds(calib: Subset, pairs: list[tuple[str, str]]) -> list[dict[str, np.ndarray]]:
    """Up to JUDGED_SAMPLES calibration rows under the graph's input names."""
    feeds = []
    for row in calib:
        feeds.append({onnx_name: row[name] for onnx_name, name in pairs})
        if len(feeds) == JUDGED_SAMPLES:
            break
    return feeds


def _outputs(path: Path, feeds: list[dict[str, np.ndarray]]) -> list[np.ndarray]:
    ort = require("onnxruntime", "Running ONNX models")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    outs = [session.run(None, feed) for feed in feeds]
    return [np.concatenate([np.asarray(o[i], np.float32) for o in outs]) for i in range(len(outs[0]))]


def _score(reference: list[np.ndarray], candidate: list[np.ndarray]) -> tuple[float, float]:
    found = fid.fidelity(reference, candidate)
    return (found.get("top1_agreement", found["cosine"]), found["cosine"])
