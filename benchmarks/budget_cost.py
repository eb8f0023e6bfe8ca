"""What the accuracy-budget search costs against a plain int8 run of the same model, on real models.

For each case (a conformance model and a target), ``edgeopt compress`` runs twice as a user would
run it, one after the other on this machine: plain int8, then with ``--max-fidelity-drop POINTS``
set below what plain int8 reaches, so the search must run. The table gives both wall times, their
ratio, the layers the artifact quantized, the exports (quantizer runs) and edits the search made,
and the fidelity drop before and after. Saved to benchmarks/results/budget_cost.md.

    .venv/bin/python benchmarks/budget_cost.py [--cases ppocr_det_v4:onnx,...]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.conformance import zoo  # noqa: E402

# (case, target, budget in points): each budget sits below plain int8's fidelity drop there.
CASES = (("ppocr_det_v4", "onnx", 2.0), ("ppocr_rec_v4", "onnx", 5.0), ("silero_vad_op15", "onnx", 2.0),
         ("mobilenet_v2_imagenet", "openvino", 5.0), ("mobilenet_v2_imagenet", "tflite", 8.0))


def _compress(case: zoo.Case, target: str, work: Path, calib: Path, val: Path, *extra: str) -> tuple[float, dict]:
    out = work / f"out_{target}_{len(extra)}"
    cmd = [sys.executable, "-m", "edgeopt.cli", "compress", *case.model_args(), "--target", target,
           "--calib", str(calib), "--val", str(val), "-o", str(out), "-q", *case.flags, *extra]
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    seconds = time.perf_counter() - started
    if done.returncode not in (0, 1):
        raise SystemExit(f"{case.id} -> {target} failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
    return seconds, json.loads((out / "report.json").read_text())["artifacts"][0]


def run(cases) -> list[list[str]]:
    rows = []
    for case_id, target, points in cases:
        case = zoo.BY_ID[case_id]
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            calib, val = zoo.write_data(case, work / "data", calib=case.calib_samples, val=case.val_samples)
            plain_s, _ = _compress(case, target, work, calib, val)
            search_s, art = _compress(case, target, work, calib, val, "--max-fidelity-drop", str(points))
        q = art["quantization"]
        search = q.get("search", {})
        rows.append([case_id, target, str(q.get("layers", "?")), f"{points:g}",
                     f"{search.get('before', {}).get('fidelity_drop', float('nan')):.2f}",
                     f"{search.get('after', {}).get('fidelity_drop', float('nan')):.2f}",
                     str(len(q.get("keep_float", []))), str(search.get("exports", "?")), str(search.get("edits", 0)),
                     f"{plain_s:.1f}", f"{search_s:.1f}", f"{search_s / plain_s:.2f}"])
        print(" | ".join(rows[-1]), flush=True)
    return rows


HEADER = ["model", "target", "layers", "budget (points)", "drop before", "drop after", "kept in float",
          "exports", "edits", "plain int8 s", "with budget s", "x plain"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", help="comma-separated case:target (budgets as in CASES)")
    args = parser.parse_args()
    cases = CASES
    if args.cases:
        wanted = set(args.cases.split(","))
        cases = tuple(c for c in CASES if f"{c[0]}:{c[1]}" in wanted)
    rows = run(cases)
    lines = ["# Budget search cost", "", "Wall time of `edgeopt compress` with `--max-fidelity-drop` against the "
             "same command without it, one after the other on one machine.", "",
             "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    out = ROOT / "benchmarks" / "results" / "budget_cost.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
