"""The CI gate: compare a candidate report.json against a baseline, check by check.

A drop exactly at its threshold passes. A latency regression fails only when it exceeds both
the threshold and the measured noise (the wider p90 - p50 spread of the two runs), so a noisy
machine does not fail a build on its own.
"""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeopt.errors import InputRejected, UsageError
from edgeopt.report import SCHEMA_VERSION, markdown_table

TOLERANCE = 1e-9  # float round-off must not turn "exactly at the threshold" into a failure
# The report's stable keys stay from one version to the next (report.py), so every version up to
# this edgeopt's own can be gated; a newer one may mean something this edgeopt cannot know.
READABLE_SCHEMA_VERSIONS = tuple(range(1, SCHEMA_VERSION + 1))


@dataclass(frozen=True)
class GateLimits:
    max_accuracy_drop: float | None = None  # points (percent of samples)
    max_fidelity_drop: float | None = None  # points: 100 x (1 - top1_agreement), or cosine if no top-1
    max_latency_regression: float | None = None  # percent of the baseline p50
    max_size: int | None = None  # bytes

    def any(self) -> bool:
        return any(v is not None for v in (self.max_accuracy_drop, self.max_fidelity_drop,
                                           self.max_latency_regression, self.max_size))


@dataclass(frozen=True)
class Check:
    artifact: str
    name: str
    baseline: float | None
    candidate: float
    delta: float
    threshold: float
    unit: str
    passed: bool
    detail: str = ""

    def describe(self) -> str:
        base = "-" if self.baseline is None else f"{self.baseline:.4g}"
        return (f"{self.name} for {self.artifact}: baseline {base}, candidate {self.candidate:.4g}, "
                f"delta {self.delta:+.4g} {self.unit}, threshold {self.threshold:g} {self.unit}"
                + (f" ({self.detail})" if self.detail else ""))


def load_report(path: Path | str) -> dict[str, Any]:
    path = Path(path)
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputRejected(f"The report '{path}' does not exist.") from None
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise InputRejected(f"'{path}' is not a JSON report: {exc}.",
                            hint="Pass a report.json written by edgeopt compress or validate.") from None
    if not isinstance(report, dict) or "artifacts" not in report or "schema_version" not in report:
        raise InputRejected(f"'{path}' is JSON but not an edgeopt report (no schema_version/artifacts).")
    version = report["schema_version"]
    # bool is an int in Python; `true` is not a version.
    if type(version) is not int or version not in READABLE_SCHEMA_VERSIONS:
        readable = ", ".join(map(str, READABLE_SCHEMA_VERSIONS))
        raise InputRejected(f"'{path}' has schema_version {json.dumps(version)}; this edgeopt reads "
                            f"schema_version {readable}.",
                            hint="Gate reports written by this edgeopt version or an older one; upgrade edgeopt "
                                 "to read newer reports.")
    if not isinstance(report["artifacts"], list) or not all(isinstance(a, dict) for a in report["artifacts"]):
        raise InputRejected(f"'{path}' has an 'artifacts' field that is not a list of objects.",
                            hint="Pass a report.json written by edgeopt compress or validate.")
    bad = _non_finite(report)
    if bad is not None:
        field, value = bad
        token = "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
        raise InputRejected(f"'{path}' has {field} = {token}; expected a finite number (or null for a metric "
                            "that was not measured).",
                            hint="edgeopt never writes NaN or Infinity; regenerate the report with edgeopt "
                                 "compress or validate.")
    return report


def _non_finite(report: dict) -> tuple[str, float] | None:
    """The first NaN or ±Inf in ``report`` and where it is. Python's json accepts the NaN and
    Infinity tokens, and reads 1e999 as Infinity; a comparison with NaN is always false, so such a
    metric would pass or fail a check for no reason. A stack, not recursion: a deeply nested report
    must not exhaust the recursion limit."""
    pending: list[tuple[str, Any]] = [("", report)]
    while pending:
        where, value = pending.pop()
        if isinstance(value, float) and not math.isfinite(value):
            return where, value
        if isinstance(value, dict):
            pending.extend((f"{where}.{k}" if where else str(k), v) for k, v in reversed(value.items()))
        elif isinstance(value, list):
            pending.extend((f"{where}[{i}]", v) for i, v in reversed(list(enumerate(value))))
    return None


def _key(artifact: dict) -> str:
    return f"{artifact.get('target', '?')}:{artifact.get('precision', '?')}"


def pair_artifacts(baseline: dict, candidate: dict) -> list[tuple[str, dict, dict]]:
    """Match artifacts by target and precision; unmatched candidates are an error, not a pass."""
    base = {_key(a): a for a in baseline["artifacts"]}
    pairs = []
    for art in candidate["artifacts"]:
        key = _key(art)
        if key not in base:
            raise UsageError(f"The candidate's {key} artifact has no counterpart in the baseline "
                             f"(baseline has {sorted(base) or 'none'}).",
                             hint="Gate reports made with the same targets and precision.")
        pairs.append((key, base[key], art))
    if not pairs:
        raise UsageError("The candidate report has no artifacts to gate.")
    return pairs


def _fidelity_points(art: dict) -> float | None:
    fidelity = art.get("fidelity") or {}
    if fidelity.get("top1_agreement") is not None:
        return 100.0 * fidelity["top1_agreement"]
    if fidelity.get("cosine") is not None:
        return 100.0 * fidelity["cosine"]
    return None


def _need(value, what: str, which: str, key: str):
    if value is None:
        raise UsageError(f"The {which} report has no {what} for its {key} artifact, so that limit cannot be checked.",
                         hint="Validate with labelled data (--val with 'labels') or drop the limit.")
    return value


def evaluate(baseline: dict, candidate: dict, limits: GateLimits) -> list[Check]:
    if not limits.any():
        raise UsageError("No limit given: nothing to gate.",
                         hint="Pass at least one of --max-accuracy-drop, --max-fidelity-drop, "
                              "--max-latency-regression, --max-size.")
    checks: list[Check] = []
    for key, base, cand in pair_artifacts(baseline, candidate):
        if limits.max_accuracy_drop is not None:
            b = _need((base.get("accuracy") or {}).get("top1"), "top-1 accuracy", "baseline", key) * 100
            c = _need((cand.get("accuracy") or {}).get("top1"), "top-1 accuracy", "candidate", key) * 100
            drop = b - c
            checks.append(Check(key, "accuracy_drop", b, c, drop, limits.max_accuracy_drop, "points",
                                drop <= limits.max_accuracy_drop + TOLERANCE))
        if limits.max_fidelity_drop is not None:
            b = _need(_fidelity_points(base), "fidelity", "baseline", key)
            c = _need(_fidelity_points(cand), "fidelity", "candidate", key)
            drop = b - c
            checks.append(Check(key, "fidelity_drop", b, c, drop, limits.max_fidelity_drop, "points",
                                drop <= limits.max_fidelity_drop + TOLERANCE))
        if limits.max_latency_regression is not None:
            bl = _need(base.get("latency_ms"), "latency", "baseline", key)
            cl = _need(cand.get("latency_ms"), "latency", "candidate", key)
            delta_ms = cl["p50"] - bl["p50"]
            pct = 100.0 * delta_ms / bl["p50"] if bl["p50"] else 0.0
            noise = max(bl.get("p90", bl["p50"]) - bl["p50"], cl.get("p90", cl["p50"]) - cl["p50"])
            beyond_noise = delta_ms > noise
            passed = pct <= limits.max_latency_regression + TOLERANCE or not beyond_noise
            detail = f"noise {noise:.4g} ms" + ("" if beyond_noise or pct <= limits.max_latency_regression
                                              else "; within noise, so not a regression")
            checks.append(Check(key, "latency_regression", bl["p50"], cl["p50"], pct, limits.max_latency_regression,
                                "%", passed, detail))
        if limits.max_size is not None:
            size = cand["size_bytes"]
            checks.append(Check(key, "size", base.get("size_bytes"), size, size - limits.max_size, limits.max_size,
                                "bytes", size <= limits.max_size))
    return checks


def to_junit(checks: list[Check]) -> str:
    failures = sum(not c.passed for c in checks)
    suites = ET.Element("testsuites", name="edgeopt gate", tests=str(len(checks)), failures=str(failures))
    suite = ET.SubElement(suites, "testsuite", name="edgeopt gate", tests=str(len(checks)),
                          failures=str(failures), errors="0", skipped="0")
    for c in checks:
        case = ET.SubElement(suite, "testcase", classname=f"edgeopt.gate.{c.artifact}", name=c.name)
        if not c.passed:
            failure = ET.SubElement(case, "failure", message=c.describe(), type="GateFailed")
            failure.text = (f"baseline={c.baseline}\ncandidate={c.candidate}\ndelta={c.delta}\n"
                            f"threshold={c.threshold} {c.unit}\n{c.detail}")
    return ET.tostring(suites, encoding="unicode", xml_declaration=True) + "\n"


def rows(checks: list[Check]) -> tuple[list[str], list[list[str]]]:
    header = ["artifact", "check", "baseline", "candidate", "delta", "limit", "result"]
    body = [[c.artifact, c.name, "-" if c.baseline is None else f"{c.baseline:.4g}", f"{c.candidate:.4g}",
             f"{c.delta:+.4g} {c.unit}", f"{c.threshold:g} {c.unit}", "pass" if c.passed else "FAIL"]
            for c in checks]
    return header, body


def to_markdown(checks: list[Check]) -> str:
    header, body = rows(checks)
    failed = [c for c in checks if not c.passed]
    title = "### edgeopt gate: " + ("passed" if not failed else f"FAILED ({len(failed)} of {len(checks)} checks)")
    marked = [r[:-1] + ["✅ pass" if r[-1] == "pass" else "❌ FAIL"] for r in body]
    return "\n".join([title, "", *markdown_table(header, marked)]) + "\n"
