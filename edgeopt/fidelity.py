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
    return Outputs(reference).compare(candidate)


class Outputs:
    """Reference outputs as ``fidelity`` compares them, prepared once: a search judges many
    candidates against the same reference. Sums are taken in float64 over the outputs' own
    float32 values and the error goes into one buffer kept for the next candidate: on PP-OCRv4's
    recognizer (17 M values a run) a float64 copy per candidate cost 0.5 s a judgement, nearly
    all of it page faults on fresh memory."""

    def __init__(self, reference: list[np.ndarray]) -> None:
        self.first = reference[0]
        self.rows = math.gcd(*(len(r) for r in reference)) if reference else 0
        self.values = self._joined(reference)
        self.norms = np.sqrt(_row_dots(self.values, self.values))
        self.signal = float(np.sum(self.norms ** 2))
        self._error: np.ndarray | None = None

    def _joined(self, outputs: list[np.ndarray]) -> np.ndarray:
        parts = [o.reshape(self.rows, -1) for o in outputs]
        joined = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)
        return joined if joined.dtype in (np.float32, np.float64) else joined.astype(np.float64)

    def compare(self, candidate: list[np.ndarray]) -> dict[str, float]:
        ref, cand = self.values, self._joined(candidate)
        if ref.shape != cand.shape:
            raise ValueError(f"output shapes differ: {ref.shape} vs {cand.shape}")
        norms = self.norms * np.sqrt(_row_dots(cand, cand))
        cos = np.divide(_row_dots(ref, cand), norms, out=np.zeros(len(norms)), where=norms > 0)
        for i in np.flatnonzero(~(norms > 0)):  # an all-zero sample matches only itself
            cos[i] = 1.0 if np.array_equal(ref[i], cand[i]) else 0.0
        kind = np.result_type(ref.dtype, cand.dtype)
        if self._error is None or self._error.dtype != kind:
            self._error = np.empty(ref.shape, kind)
        error = np.subtract(cand, ref, out=self._error)
        noise = float(np.einsum("ij,ij->", error, error, dtype=np.float64))
        result: dict[str, float] = {}
        if is_classifier(self.first):
            result["top1_agreement"] = float(np.mean(self.first.argmax(1) == candidate[0].argmax(1)))
        result["cosine"] = float(np.mean(cos))
        result["max_abs_err"] = float(np.max(np.abs(error, out=error))) if error.size else 0.0
        result["sqnr_db"] = float(10 * np.log10(self.signal / noise)) if noise > 0 else float("inf")
        return result


def _row_dots(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Each row's dot product, summed in float64."""
    return np.einsum("ij,ij->i", a, b, dtype=np.float64)


def accuracy(output: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    result = {"top1": float(np.mean(output.argmax(1) == labels))}
    if output.shape[1] > 5:
        top5 = np.argsort(output, axis=1)[:, -5:]
        result["top5"] = float(np.mean(np.any(top5 == labels[:, None], axis=1)))
    return result
