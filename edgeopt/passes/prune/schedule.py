"""The gradual sparsity schedule shared by every framework's magnitude pruning.

sparsity_t = s * (1 - (1 - t)^3), t the fraction of the ramp done; the ramp covers the first 70%
of fine-tuning steps, so the last 30% train at the final masks.
"""

from __future__ import annotations

RAMP_FRACTION = 0.7
RECOMPUTE_STEP = 0.01  # new masks only when the target moved this much: masks are not free


def sparsity_at(step: int, total: int, final: float) -> float:
    progress = min(1.0, step / max(1.0, RAMP_FRACTION * total))
    return final * (1.0 - (1.0 - progress) ** 3)


def needs_update(step: int, total: int, target: float, last: float) -> bool:
    return target - last >= RECOMPUTE_STEP or (step == total and target != last)
