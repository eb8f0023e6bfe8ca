"""The typed records report.json is written from.

One ``ArtifactEntry`` per artifact (compress and validate write the same record), with the
``QuantizationInfo`` and ``SearchInfo`` the budget search fills in; ``report.envelope`` puts the
keys every report shares around them. ``to_dict`` gives the schema's keys (documented in
``report.py``), leaving out what was not measured: a field left at None is no key in the file,
so readers of schema 1 see what they saw.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, is_dataclass
from typing import Any


def plain(value: Any) -> Any:
    """A record, or anything holding records, as JSON-ready dicts and lists."""
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in fields(value) if getattr(value, f.name) is not None}
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


# The fidelity guard's check in artifacts[].budgets (edgeopt.guard).
GUARD_CHECK = "fidelity_guard"


class Record:
    def to_dict(self) -> dict[str, Any]:
        return plain(self)


@dataclass
class SearchInfo(Record):
    """``artifacts[].quantization.search``: what the accuracy-budget search tried and found."""

    before: dict[str, Any]  # the plain int8 artifact's Quality
    exports: int  # quantizer runs
    needed: bool | None = None
    met: bool | None = None
    ranking_method: str | None = None
    ranking: list[dict[str, Any]] | None = None
    edits: int | None = None
    tried: list[dict[str, Any]] | None = None
    after: dict[str, Any] | None = None
    kept_in_float: int | None = None
    ladder: list[dict[str, Any]] | None = None  # the tries lowering kept layers to int16 / fp16
    wall_seconds: float | None = None


@dataclass
class QuantizationInfo(Record):
    """``artifacts[].quantization``: how an int8 artifact was calibrated and which layers stayed float."""

    method: str
    per_channel: bool
    mechanism: str  # the backend mechanism that does ``method``
    percentile: float | None = None
    keep_float_mechanism: str | None = None
    layers: int | None = None  # layers the plain int8 artifact quantized
    overrides: dict[str, list[str]] | None = None
    keep_float: list[str] | None = None  # every layer out of int8, whatever precision it ended on
    # those layers by precision (int16, fp16, float), where some ended on a cheaper rung than float
    precisions: dict[str, list[str]] | None = None
    search: SearchInfo | None = None
    latency_cost: dict[str, float] | None = None
    size_cost: dict[str, float] | None = None  # the artifact's size against all-int8


@dataclass
class ArtifactEntry(Record):
    """``artifacts[]``: one artifact, measured against the reference."""

    target: str
    path: str
    precision: str
    size_bytes: int
    device: str | None = None  # validate
    gzip_size_bytes: int | None = None
    io_dtypes: dict[str, str] | None = None
    input_layout: dict[str, str | None] | None = None
    ops: dict[str, Any] | None = None
    float_fallback: bool | None = None
    baseline_size_bytes: int | None = None
    size_ratio: float | None = None
    baseline_fidelity: dict[str, float] | None = None
    fidelity: dict[str, float] | None = None
    reference_accuracy: dict[str, float] | None = None
    accuracy: dict[str, float] | None = None
    metrics: dict[str, float] | None = None  # validate --metric
    baseline_latency_ms: dict[str, Any] | None = None
    latency_ms: dict[str, Any] | None = None
    speedup: float | None = None
    load_seconds: float | None = None  # validate
    peak_rss_mb: float | None = None  # validate, on this machine
    cpu_fallback_ops: dict[str, int] | None = None  # validate --device gpu
    variants: dict[str, dict[str, Any]] | None = None
    quantization: QuantizationInfo | None = None
    budgets: list[dict[str, Any]] | None = None
    guard: dict[str, Any] | None = None  # the fidelity guard's verdict (edgeopt.guard)
    notes: list[str] | None = None
