"""edgeopt's default int8 against each peer's default and each peer's best documented settings, on
the real trained models of the conformance suite, on the same calibration and validation data.

Per model and target: the score (top-1 agreement with the float model for classifiers, else the
cosine of all outputs; the map IoU at 0.3 as well for the PP-OCR text detector), the fidelity
loss (1 - score), tool time, and edgeopt's int8 p50 over fp32 on the same runtime. Peers' best
settings: the TFLite converter's 16x8 mode, onnxruntime with per-channel weights and its
Percentile calibrator, NNCF with ``fast_bias_correction=False``. Saved to
benchmarks/results/accuracy.md and into RESULTS.md's accuracy section.

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


def measure(case: zoo.Case, target: str, work: Path) -> dict:
    calib, val = zoo.write_data(case, work / "data", calib=case.calib_samples, val=case.val_samples)
    mine = runner.edgeopt_compress(case, target, work, calib, val)
    art = mine.get("artifact") or {}
    row = {"case": case, "target": target, "rc": mine["rc"], "seconds": mine["seconds"],
           "score": runner.score(art.get("fidelity"), case.task),
           "p50_over_fp32": 1.0 / art["speedup"] if art.get("speedup") else None,
           "kept": len(((art.get("quantization") or {}).get("keep_float")) or []),
           "iou": map_iou(case, target, Path(art["path"]), val) if art.get("path") else None}
    fp32_onnx = runner._fp32_onnx(case, work, calib) if target == "onnx" and case.kind != "onnx" else None
    for kind, best in (("default", False), ("best", True)):
        started = time.perf_counter()
        found = runner.peer_defaults(case, target, work, calib, val, fp32_onnx, best=best)
        row[kind] = {name: {**p, "iou": map_iou(case, target, _peer_path(work, name, target), val)
                            if p.get("score") is not None else None} for name, p in found.items()}
        row[f"{kind}_seconds"] = round(time.perf_counter() - started, 1)
    return row


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
              "edgeopt s", "slowest peer s", "edgeopt int8 p50 / fp32"]
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
                     _fmt(b_score), ratio, f"{r['seconds']:.1f}", "-" if not slowest else f"{slowest:.1f}",
                     _fmt(r["p50_over_fp32"], 2)])
    return header, rows


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
