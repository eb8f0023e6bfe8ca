"""Latency measured the same way for every variant: warm-up, then interleaved timed runs.

Interleaving (A, B, A, B ... with the order rotated each round) makes machine drift — frequency
changes, other processes — hit all variants alike, so their ratio is trustworthy.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np

from edgeopt.targets.base import Session

# A variant whose p90 exceeds its p50 by more than this is marked unstable.
UNSTABLE_SPREAD = 0.5


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
    for _ in range(warmup):
        for name in names:
            sessions[name].run_raw()
    samples: dict[str, list[float]] = {name: [] for name in names}
    deadline = None if time_budget_s is None else time.perf_counter() + time_budget_s
    for i in range(runs):
        order = names[i % len(names):] + names[:i % len(names)]
        for name in order:
            session = sessions[name]
            start = time.perf_counter()
            session.run_raw()
            samples[name].append((time.perf_counter() - start) * 1000.0)
        if deadline is not None and time.perf_counter() > deadline and i >= 9:
            break
    return {name: _stats(samples[name], warmup, sessions[name].threads) for name in names}


def _stats(ms: list[float], warmup: int, threads: int) -> LatencyStats:
    a = np.asarray(ms)
    p50, p90, p99 = (float(x) for x in np.percentile(a, [50, 90, 99]))
    return LatencyStats(p50=p50, p90=p90, p99=p99, min=float(a.min()), mean=float(a.mean()),
                        std=float(a.std()), runs=len(a), warmup=warmup, threads=threads,
                        unstable=bool(p90 > p50 * (1 + UNSTABLE_SPREAD)))
