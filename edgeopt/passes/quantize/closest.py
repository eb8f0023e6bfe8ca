"""Choosing between candidate int8 models by measurement: the one whose outputs are closer to the
float model's on a few calibration samples. The TFLite activation-range rule and the ONNX weight
granularity are both chosen this way."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from edgeopt import fidelity as fid

JUDGED_SAMPLES = 32


def first_rows(rows: Iterable[dict[str, Any]], rename: Any = None) -> list[dict[str, Any]]:
    """Up to JUDGED_SAMPLES rows, each passed through ``rename`` when given."""
    picked: list[dict[str, Any]] = []
    for row in rows:
        picked.append(rename(row) if rename else row)
        if len(picked) == JUDGED_SAMPLES:
            break
    return picked


def closest(reference: list[np.ndarray], candidates: dict[str, list[np.ndarray]]) -> tuple[str, str, dict]:
    """(the best candidate, what judged it, every candidate's score). Scores are top-1 agreement
    for a classifier output, else the cosine of all outputs, with the cosine as tie-break; on a
    full tie the first candidate wins."""
    scores = {}
    prepared = fid.Outputs(reference)
    for label, outputs in candidates.items():
        found = prepared.compare(outputs)
        scores[label] = (found.get("top1_agreement", found["cosine"]), found["cosine"])
    best = next(iter(candidates))
    for label in candidates:
        if scores[label] > scores[best]:
            best = label
    what = "top-1 agreement" if fid.is_classifier(reference[0]) else "cosine"
    return best, what, scores


def describe(subject: str, best: str, what: str, scores: dict, samples: int) -> str:
    others = [label for label in scores if label != best]
    against = ", ".join(f"{scores[label][0]:.4f} {label}" for label in others)
    return (f"{subject}: {best}, chosen over {' and '.join(others)} by {what} with the float model on {samples} "
            f"calibration samples ({scores[best][0]:.4f} against {against}).")


def stacked(per_sample: Iterator[list[np.ndarray]]) -> list[np.ndarray]:
    """Per-sample output lists joined along the batch axis."""
    outs = list(per_sample)
    return [np.concatenate([np.asarray(o[i], np.float32) for o in outs]) for i in range(len(outs[0]))]
