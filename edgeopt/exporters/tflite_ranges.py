"""Activation ranges for ai-edge-quantizer's int8, chosen by the error they cause.

The quantizer's own calibrator keeps a moving average of per-sample ranges (weight 0.95 on the
past). That clips rare large activations: on a trained MobileNetV2 it cost 22 points of top-1
agreement against global min/max ranges (0.63 against 0.85 on 160 ImageNet-style crops), the rule
the TFLite converter and onnxruntime use. Yet on maps and regressions the tighter ranges can be
the better ones. So both are computed (one more calibration pass), both models are written, and
the one closer to the float model on calibration samples is kept: top-1 agreement for
classifier outputs, the cosine of all outputs otherwise. The note says which, and by how much.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgeopt.deps import require
from edgeopt.validate import fidelity as fid

JUDGED_SAMPLES = 32


def choose(qt: Any, rows: dict[str, Any], float_path: Path, out: Path, model_name: str) -> str:
    """Write the better of the two int8 models to ``out``; returns the note that says which."""
    calibrator = require("ai_edge_quantizer.calibrator", "Quantizing TFLite models")
    qsv_utils = require("ai_edge_quantizer.utils.qsv_utils", "Quantizing TFLite models")
    moving = qt.calibrate(rows)
    run = calibrator.Calibrator(qt._float_model_buffer, qsv_update_func=qsv_utils.min_max_update)
    run.calibrate(rows, qt._recipe_manager)
    candidates = {"global min/max": run.get_model_qsvs(), "moving-average min/max (ai-edge-quantizer's default)": moving}
    paths = {}
    for i, (rule, qsvs) in enumerate(candidates.items()):
        paths[rule] = out.with_name(f".{out.name}.range{i}.tflite")
        qt.quantize(qsvs).export_model(str(paths[rule]), overwrite=True)
    feeds = _feeds(rows)
    reference = _outputs(float_path, feeds)
    scores = {rule: _score(reference, _outputs(path, feeds)) for rule, path in paths.items()}
    best = max(scores, key=lambda r: scores[r])
    paths[best].replace(out)
    for path in paths.values():
        path.unlink(missing_ok=True)
    other = next(r for r in scores if r != best)
    what = "top-1 agreement" if fid.is_classifier(reference[0]) else "cosine"
    return (f"TFLite int8 activation ranges of '{model_name}': {best}, chosen over {other} by {what} with the "
            f"float model on {len(feeds)} calibration samples ({scores[best][0]:.4f} against {scores[other][0]:.4f}).")


def _feeds(rows: dict[str, Any]) -> list[dict[str, np.ndarray]]:
    key = next(iter(rows))
    feeds = []
    for row in rows[key]:
        feeds.append(row)
        if len(feeds) == JUDGED_SAMPLES:
            break
    return feeds


def _outputs(path: Path, feeds: list[dict[str, np.ndarray]]) -> list[np.ndarray]:
    litert = require("ai_edge_litert.interpreter", "Running TFLite models")
    interpreter = litert.Interpreter(model_path=str(path))
    runner = interpreter.get_signature_runner()
    outs: list[list[np.ndarray]] = []
    for feed in feeds:
        got = runner(**feed)
        outs.append([np.asarray(got[k], np.float32) for k in sorted(got)])
    return [np.concatenate(parts) for parts in zip(*outs)]


def _score(reference: list[np.ndarray], candidate: list[np.ndarray]) -> tuple[float, float]:
    """(the measure the case is judged by, cosine as the tie-break)."""
    found = fid.fidelity(reference, candidate)
    return (found.get("top1_agreement", found["cosine"]), found["cosine"])
