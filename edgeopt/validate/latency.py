"""Latency measured the same way for every variant: warm-up, then interleaved timed runs.

Interleaving (A, B, then B, A, ... the order rotated each round) makes machine drift —
frequency changes, other processes — hit all variants alike, so their ratio is trustworthy.
The protocol itself lives in ``remote_runner`` so that a remote device measures identically.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from edgeopt.targets.base import Session
from edgeopt.targets.remote_runner import UNSTABLE_SPREAD, interleave, latency_stats

__all__ = ["LatencyStats", "measure_interleaved", "UNSTABLE_SPREAD"]


@dataclass(frozen=True)
class LatencyStats:
    p50: float
    p90: float
    p99: float
    min: float
    mean: float
    std: float
    runs: int
    warmup: int
    threads: int
    unstable: bool

    def to_dict(self) -> dict:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def measure_interleaved(sessions: dict[str, Session], feed: dict[str, np.ndarray], *, runs: int = 100,
                        warmup: int = 10, time_budget_s: float | None = None) -> dict[str, LatencyStats]:
    """Time ``runs`` inferences of each session on ``feed``, in milliseconds."""
    names = list(sessions)
    for name in names:
        sessions[name].prepare(feed)
    timings = interleave([sessions[n].run_raw for n in names], runs, warmup, time_budget_s)
    return {name: LatencyStats(**latency_stats(ms, warmup, sessions[name].threads)) for name, ms in zip(names, timings)}
