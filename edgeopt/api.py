"""The Python API, mirroring the CLI: keyword-only options, validated like the CLI's flags."""

from __future__ import annotations

from pathlib import Path

from edgeopt import recipe
from edgeopt.pipeline import Progress, Result
from edgeopt.pipeline import compress as _run


def compress(model: str | Path, *, target: str = "tflite", calib: str | Path | None = None,
             val: str | Path | None = None, precision: str = "int8", int8_io: bool = False, keep_layout: bool = False,
             calib_samples: int = 300, seed: int = 0, output: str | Path | None = None,
             trust_model: bool = False, validate: bool = True, runs: int = 100, warmup: int = 10,
             threads: int | None = None, weights: str | Path | None = None,
             input_shapes: dict[str, tuple[int, ...]] | None = None, prune: dict | None = None,
             distill: dict | None = None, calib_method: str = "auto", percentile: float | None = None,
             per_channel: bool = True, metric: str = "top1", budgets: dict | None = None,
             overrides: dict[str, str] | None = None, progress: Progress | None = None) -> Result:
    """Compress ``model`` for ``target`` (comma-separated for several) and validate the result.

    Same defaults and checks as ``edgeopt compress``; raises :class:`edgeopt.errors.EdgeoptError`
    subclasses for bad input. A PyTorch model is named ``"net.py:build_model"`` with ``weights``
    (a state_dict file) and ``input_shapes`` (``{"image": (1, 3, 224, 224)}``, or taken from ``calib``);
    its TFLite model takes NHWC images unless ``keep_layout``, while the data stays NCHW.
    ``prune`` and ``distill`` take the recipe's settings, e.g. ``prune={"method": "channels", "ratio": 0.5}``.
    ``budgets`` takes ``max_accuracy_drop``, ``max_fidelity_drop`` (points), ``min_speedup`` and
    ``max_size``; ``overrides`` maps a layer-name regex to ``"float"`` or ``"int8"`` (last match
    wins). A missed budget raises :class:`edgeopt.errors.BudgetMissed` after the outputs are
    written; its ``result`` holds the best try.
    """
    config = recipe.build(
        "the compress() arguments", model=Path(model), targets=target, precision=precision, int8_io=int8_io,
        keep_layout=keep_layout,
        trust_model=trust_model, output=output, weights=weights, input_shapes=input_shapes,
        calibration={"data": calib, "samples": calib_samples, "seed": seed, "method": calib_method,
                     "percentile": percentile, "per_channel": per_channel},
        validation={"enabled": validate, "data": val, "runs": runs, "warmup": warmup, "threads": threads,
                    "metric": metric},
        prune=prune, distill=distill, budgets=budgets or {}, overrides=overrides or {})
    return _run(config, progress)
