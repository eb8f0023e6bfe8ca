"""The fidelity guard, on by default: every artifact is judged on the validation data against the
source model, and an int8 artifact that drops more than the guard's limit goes through the budget
search (edgeopt.budget) for the fewest layers out of int8 that hold it.

The limit is one point of the measure ``--max-fidelity-drop`` uses: 100 x (1 - top-1 agreement)
for classifiers, 100 x (1 - cosine) otherwise. On the conformance models a point is where int8
stops being rounding: the int8 artifacts of MTCNN, NudeNet and ddddocr's detector lie within
0.01-0.6 points of their float models, while PP-OCRv4's detector with onnxruntime's default
ranges is 6.5 points off and Silero VAD's int8 is 40-90 points off. A top-1 agreement
moves in steps of one sample: the guard never chases a drop smaller than one sample's worth.

Budgets the user sets replace the guard; ``--no-guard`` (recipe ``guard: false``) turns it off.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from edgeopt import fidelity as fid
from edgeopt.recipe import BudgetsConfig, CompressConfig
from edgeopt.validate.evaluate import Quality, Reference

LIMIT_POINTS = 1.0
Z95 = 1.959964


@dataclass(frozen=True)
class Guard:
    """The guard of one run: its limit, and what it is measured on."""

    limit: float  # points of fidelity drop
    samples: int
    agreement: bool  # top-1 agreement (else cosine)

    @property
    def one_sample(self) -> float | None:
        """Points one sample's flip moves the top-1 agreement by."""
        return 100.0 / self.samples if self.agreement else None

    @property
    def measure(self) -> str:
        return "100 x (1 - top-1 agreement)" if self.agreement else "100 x (1 - cosine)"

    def budgets(self, given: BudgetsConfig) -> BudgetsConfig:
        """The budgets the search and the checks work with: the given ones and the guard's drop."""
        return given.model_copy(update={"max_fidelity_drop": self.limit})

    def judge(self, quality: Quality | None, *, searched: bool) -> dict[str, Any]:
        """``artifacts[].guard``: the limit, the measured drop, with a 95% interval for agreement."""
        entry: dict[str, Any] = {"limit": round(self.limit, 4), "measure": self.measure, "samples": self.samples}
        if self.one_sample is not None:
            entry["one_sample_points"] = round(self.one_sample, 4)
        if quality is None:
            return {**entry, "held": False, "fidelity_drop": None}
        entry["fidelity_drop"] = round(quality.fidelity_drop, 4)
        agreement = quality.fidelity.get("top1_agreement")
        if self.agreement and agreement is not None:
            entry["agreement_95"] = [round(v, 4) for v in interval95(agreement, self.samples)]
        entry["held"] = quality.fidelity_drop <= self.limit + 1e-9
        entry["searched"] = searched
        return entry


def for_run(config: CompressConfig, reference: Reference | None) -> Guard | None:
    """The run's guard; None where it is off, replaced by budgets the user set, or has no data."""
    if not config.guard or reference is None or config.budgets.drives_search():
        return None
    agreement = fid.is_classifier(reference.outputs[0])  # what fidelity() gives top-1 agreement for
    limit = max(LIMIT_POINTS, 100.0 / reference.samples) if agreement else LIMIT_POINTS
    return Guard(limit=limit, samples=reference.samples, agreement=agreement)


def interval95(p: float, n: int) -> tuple[float, float]:
    """Wilson's 95% interval for a proportion ``p`` measured on ``n`` samples."""
    if n <= 0:
        return 0.0, 1.0
    denom = 1.0 + Z95 ** 2 / n
    centre = (p + Z95 ** 2 / (2 * n)) / denom
    half = Z95 * math.sqrt(p * (1 - p) / n + Z95 ** 2 / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)
