"""Activation ranges for ai-edge-quantizer's int8, chosen by the error they cause.

The quantizer's own calibrator keeps a moving average of per-sample ranges (weight 0.95 on the
past). That clips rare large activations: on a trained MobileNetV2 it cost 22 points of top-1
agreement against global min/max ranges (0.63 against 0.85 on 160 ImageNet-style crops), the rule
the TFLite converter and onnxruntime use. Yet on maps and regressions the tighter ranges can be
the better ones. So both are computed (one more calibration pass), both models are written, and
the one closer to the float model on calibration samples is kept (``closest``). Models with
layers kept in float reuse the rule and the ranges the plain int8 model was made with.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgeopt.deps import require
from edgeopt.passes.quantize import closest

GLOBAL, MOVING = "global min/max", "moving-average min/max (ai-edge-quantizer's default)"


def calibrate(qt: Any, rows: dict[str, Any]) -> dict[str, Any]:
    """The activation ranges of both rules, rule -> ai-edge-quantizer's calibration result."""
    calibrator = require("ai_edge_quantizer.calibrator", "Quantizing TFLite models")
    qsv_utils = require("ai_edge_quantizer.utils.qsv_utils", "Quantizing TFLite models")
    moving = qt.calibrate(rows)
    # Quantizer.calibrate takes no update rule; its own calibrator does, fed the quantizer's float
    # model and recipe (private attributes of ai-edge-quantizer 0.10: check them on an upgrade).
    run = calibrator.Calibrator(qt._float_model_buffer, qsv_update_func=qsv_utils.min_max_update)
    run.calibrate(rows, qt._recipe_manager)
    return {GLOBAL: run.get_model_qsvs(), MOVING: moving}


def choose(qt: Any, ranges: dict[str, Any], rows: dict[str, Any], float_path: Path, out: Path,
           model_name: str) -> tuple[str, str]:
    """Write the better of the two int8 models to ``out``; returns the rule and the note that says which."""
    paths = {}
    for i, (rule, qsvs) in enumerate(ranges.items()):
        paths[rule] = out.with_name(f".{out.name}.range{i}.tflite")
        qt.quantize(qsvs).export_model(str(paths[rule]), overwrite=True)
    feeds = closest.first_rows(rows[next(iter(rows))])
    best, what, scores = closest.closest(_outputs(float_path, feeds),
                                         {rule: _outputs(path, feeds) for rule, path in paths.items()})
    for rule, path in paths.items():
        if rule == best:
            path.replace(out)
        else:
            path.unlink(missing_ok=True)
    return best, closest.describe(f"TFLite int8 activation ranges of '{model_name}'", best, what, scores, len(feeds))


def _outputs(path: Path, feeds: list[dict[str, np.ndarray]]) -> list[np.ndarray]:
    litert = require("ai_edge_litert.interpreter", "Running TFLite models")
    runner = litert.Interpreter(model_path=str(path)).get_signature_runner()
    return closest.stacked([got[k] for k in sorted(got)] for got in (runner(**feed) for feed in feeds))
