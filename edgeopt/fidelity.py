"""How closely an artifact reproduces its source model, and how accurate each is."""

from __future__ import annotations

import math

import numpy as np


def is_classifier(output: np.ndarray) -> bool:
    """A 2-D (samples, classes) output with several classes: top-1 comparisons make sense."""
    return output.ndim == 2 and output.shape[1] >= 2


def fidelity(reference: list[np.ndarray], candidate: list[np.ndarray]) -> dict[str, float]:
    """Compare outputs sample by sample. Every output counts for cosine, error and SQNR;
    top-1 agreement uses the first output when it is a classifier.

    Outputs are the samples' outputs joined along axis 0. Most have one row per sample; a model
    fed whole tensors may give a sample several (a (2, batch, 128) recurrent state), and the
    samples' blocks still lie one after another: the greatest common divisor of the lengths
    splits every output into the same rows, one per sample."""
    rows = math.gcd(*(len(r) for r in reference)) if reference else 0
    ref = np.concatenate([r.reshape(rows, -1) for r in reference], axis=1).astype(np.float64)
    cand = np.concatenate([c.reshape(rows, -1) for c in candidate], axis=1).astype(np.float64)
    if ref.shape != cand.shape:
        raise ValueError(f"output shapes differ: {ref.shape} vs {cand.shape}")
    norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(cand, axis=1)
    dots = np.sum(ref * cand, axis=1)
    cos = np.where(norms > 0, dots / np.where(norms > 0, norms, 1.0), np.where(np.all(ref == cand, axis=1), 1.0, 0.0))
    noise = float(np.sum((ref - cand) ** 2))
    signal = float(np.sum(ref ** 2))
    result: dict[str, float] = {}
    if is_classifier(reference[0]):
        result["top1_agreement"] = float(np.mean(reference[0].argmax(1) == candidate[0].argmax(1)))
    result["cosine"] = float(np.mean(cos))
    result["max_abs_err"] = float(np.max(np.abs(ref - cand)))
    result["sqnr_db"] = float(10 * np.log10(signal / noise)) if noise > 0 else float("inf")
    return result


def accuracy(output: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    result = {"top1": float(np.mean(output.argmax(1) == labels))}
    if output.shape[1] > 5:
        top5 = np.argsort(output, axis=1)[:, -5:]
        result["top5"] = float(np.mean(np.any(top5 == labels[:, None], axis=1)))
    return result
