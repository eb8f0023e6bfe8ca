"""``reference.yaml``: per model and target, what edgeopt's default run and the best peer default
measured on the same data, and the tolerance the tests allow around them."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import yaml

PATH = Path(__file__).with_name("reference.yaml")
# Cosines move with the CPU's int8 kernels (VNNI, AMX) by about 1e-4; the loss may grow by this.
COSINE_SLACK = 0.002


def load() -> dict[str, Any]:
    return yaml.safe_load(PATH.read_text(encoding="utf-8")) if PATH.is_file() else {"models": {}}


def agreement_tolerance(p: float, n: int) -> float:
    """What chance alone moves a top-1 agreement of ``p`` on ``n`` samples by: two standard errors,
    and never less than two samples' worth."""
    return max(2.0 / n, 2.0 * math.sqrt(max(p * (1 - p), 1.0 / n) / n))


def floor(reference: float, task: str, samples: int) -> float:
    """The lowest score a run may give and still match ``reference`` (a measured score)."""
    if task == "classifier":
        return reference - agreement_tolerance(reference, samples)
    return 1.0 - ((1.0 - reference) * 1.1 + COSINE_SLACK)


def cell_entry(row: dict[str, Any]) -> dict[str, Any]:
    """One target's entry from a runner row."""
    if row["rc"] not in (0, 1):
        return {"exit_code": row["rc"], "refusal": _said(row)}
    entry = {"exit_code": row["rc"], "fp32_cosine": _round(row.get("fp32_cosine"), 6),
             "int8": _round(row.get("int8"), 4), "layers_out_of_int8": row.get("kept"),
             "size_bytes": row.get("size_bytes"), "fp32_size_bytes": row.get("fp32_size_bytes"),
             "int8_p50_over_fp32": _round(1.0 / row["speedup"], 3) if row.get("speedup") else None,
             "seconds": row.get("seconds")}
    if row["rc"] == 1:
        entry["guard"] = _said(row)
    entry.update(peer_entries(row.get("peers") or {}))
    return entry


def _said(row: dict[str, Any]) -> str:
    """The error line a run ended with."""
    lines = [line.strip() for line in row.get("error", "").splitlines() if line.strip()]
    return next((line for line in lines if line.lower().startswith("error")), lines[-1] if lines else "")[:300]


def peer_entries(found: dict[str, Any]) -> dict[str, Any]:
    """``peers`` and ``best_peer`` from what the runner measured of each peer."""
    entry: dict[str, Any] = {}
    peers = {name: ({"int8": _round(p["score"], 4), "size_bytes": p.get("size_bytes"), "seconds": p.get("seconds")}
                    if p.get("score") is not None else {"error": p.get("error", "")[:200]})
             for name, p in found.items()}
    if peers:
        entry["peers"] = peers
        scored = {n: p["int8"] for n, p in peers.items() if "int8" in p}
        if scored:
            best = max(scored, key=scored.get)
            entry["best_peer"] = {"name": best, "int8": scored[best]}
    return entry


def _round(value, digits):
    return None if value is None else round(float(value), digits)


def update_peers(case, target: str, found: dict[str, Any]) -> None:
    """Replace one cell's peer figures, keeping edgeopt's."""
    data = load()
    entry = data["models"][case.id]["targets"][target]
    entry.pop("peers", None)
    entry.pop("best_peer", None)
    entry.update(peer_entries(found))
    _dump(data)


def write(rows: list[dict[str, Any]], cases: dict[str, Any], machine: str) -> Path:
    data = load()
    data.setdefault("models", {})
    data["version"] = 1
    data["measured_on"] = machine
    data["score"] = "top-1 agreement with the float model for classifiers, else the cosine of all outputs"
    for row in rows:
        case = cases[row["case"]]
        model = data["models"].setdefault(case.id, {})
        model.update({"package": case.package, "file": case.member, "what": case.what, "traits": list(case.traits),
                      "task": case.task, "samples": {"calibration": case.calib_samples,
                                                     "validation": case.val_samples}})
        targets = model.setdefault("targets", {})
        entry, before = cell_entry(row), targets.get(row["target"], {})
        if "peers" not in entry and "peers" in before:  # a run without the peers keeps their figures
            entry.update(peers=before["peers"], **({"best_peer": before["best_peer"]} if "best_peer" in before else {}))
        targets[row["target"]] = entry
    _dump(data)
    return PATH


def _dump(data: dict[str, Any]) -> None:
    PATH.write_text("# Written by `python -m tests.conformance.runner --write`; the tests read it.\n"
                    + yaml.safe_dump(data, sort_keys=False, width=110), encoding="utf-8")
