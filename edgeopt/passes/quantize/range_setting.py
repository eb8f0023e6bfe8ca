"""edgeopt's own activation ranges: per tensor, the range among min/max, the mean of per-sample
min/max, high percentiles and shrunken min/max ranges whose uint8 quantization makes the least
squared error on that tensor's calibration values.

Global min/max (onnxruntime's default) spends the 256 levels of a tensor on its rarest values: on
PP-OCRv4's detector a handful of activations a hundred times their typical size leave most of a
map in a few levels. A clipped range trades a little error on those values for finer steps on
all the others; which trade is best differs per tensor, so it is measured per tensor.

Values are a strided subsample of each tensor on each sample (an unbiased sample of its values,
tails included in proportion) with the exact min and max kept apart; ranges always hold 0, as
onnxruntime's zero point needs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

LEVELS = 256  # uint8 activations
VALUES_PER_SAMPLE = 2048
SHRINK = np.linspace(0.2, 1.0, 17)  # fractions of the min/max range tried, in steps of 0.05
MAX_VALUES = 32768  # values a choice is judged on
PERCENTILES = (99.9, 99.99, 99.999)


@dataclass
class TensorValues:
    """What one tensor took on the calibration samples."""

    low: float = np.inf
    high: float = -np.inf
    sample_lows: list[float] = field(default_factory=list)
    sample_highs: list[float] = field(default_factory=list)
    values: list[np.ndarray] = field(default_factory=list)

    def add(self, array: np.ndarray, keep_values: bool) -> None:
        flat = np.asarray(array, dtype=np.float32).ravel()
        if flat.size == 0:
            return
        lo, hi = float(flat.min()), float(flat.max())
        self.low, self.high = min(self.low, lo), max(self.high, hi)
        self.sample_lows.append(lo)
        self.sample_highs.append(hi)
        if keep_values:
            step = max(1, flat.size // VALUES_PER_SAMPLE)
            self.values.append(flat[step // 2::step].copy())


def quantization_error(values: np.ndarray, lo: float, hi: float) -> float:
    """Mean squared error of ``values`` through uint8 quantization of [lo, hi] (0 inside)."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    if hi - lo <= 0:
        return float(np.mean(values.astype(np.float64) ** 2))
    scale = np.float32((hi - lo) / (LEVELS - 1))
    zero = np.float32(np.round(-lo / scale))
    diff = (np.clip(np.round(values / scale) + zero, 0, LEVELS - 1) - zero) * scale - values
    return float(np.dot(diff, diff)) / diff.size


def candidates(t: TensorValues, values: np.ndarray) -> dict[str, tuple[float, float]]:
    found = {"minmax": (t.low, t.high)}
    if t.sample_lows:
        found["mean_minmax"] = (float(np.mean(t.sample_lows)), float(np.mean(t.sample_highs)))
    for p in PERCENTILES:
        found[f"percentile {p:g}"] = (float(np.percentile(values, 100 - p)), float(np.percentile(values, p)))
    for a in SHRINK[:-1]:
        found[f"min/max x {a:.3f}"] = (t.low * a, t.high * a)
        found[f"max x {a:.3f}"] = (t.low, t.high * a)
        found[f"min x {a:.3f}"] = (t.low * a, t.high)
    return found


def choose(t: TensorValues) -> tuple[float, float, str]:
    """The range of least quantization error for ``t``, and the rule that gave it. Without kept
    values (a tensor too small to sample), min/max."""
    if not t.values or not np.isfinite(t.low):
        return t.low, t.high, "minmax"
    values = np.concatenate(t.values).astype(np.float32)
    if values.size > MAX_VALUES:
        values = values[:: values.size // MAX_VALUES + 1]
    best = None
    for name, (lo, hi) in candidates(t, values).items():
        if not (np.isfinite(lo) and np.isfinite(hi)) or hi < lo:
            continue
        error = quantization_error(values, lo, hi)
        # Ties go to the earlier, simpler rule: min/max first.
        if best is None or error < best[0] * (1 - 1e-6):
            best = (error, lo, hi, name)
    assert best is not None
    return best[1], best[2], best[3]
