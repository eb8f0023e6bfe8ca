"""Every source to every target on the bundled digits example, each artifact proven against its source.

Sources: the Keras CNN (.h5), the PyTorch CNN (digits_net.py + state_dict) and its ONNX export.
Targets: int8 TFLite, ONNX and OpenVINO. Each row is one `edgeopt compress` run (the CLI), with
latency against the same model's fp32 form on the same runtime, measured interleaved.
Prints a table and writes benchmarks/results/nine_paths.md.

    .venv/bin/python benchmarks/nine_paths.py [--runs 200]
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
sys.path.insert(0, str(ROOT / "benchmarks"))

from _results import show_and_save  # noqa: E402
from edgeopt.report import fmt_bytes  # noqa: E402

DATA = ROOT / "calibration_data/digits"
SOURCES = {
    "keras": (["examples/digits/digits_cnn.h5"], DATA / "calib.npz", DATA / "val.npz"),
    "torch": (["examples/digits/digits_net.py:build", "--weights", "examples/digits/digits_torch.pt"],
              DATA / "calib_nchw.npz", DATA / "val_nchw.npz"),
    "onnx": (["examples/digits/digits_net.onnx"], DATA / "calib_nchw.npz", DATA / "val_nchw.npz"),
}
TARGETS = ("tflite", "onnx", "openvino")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args()
    edgeopt = str(Path(sys.executable).parent / "edgeopt")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for source, (model, calib, val) in SOURCES.items():
            for target in TARGETS:
                out = Path(tmp) / f"{source}_{target}"
                start = time.perf_counter()
                proc = subprocess.run([edgeopt, "compress", *model, "--target", target, "--calib", str(calib),
                                       "--val", str(val), "--runs", str(args.runs), "-o", str(out), "-q"],
                                      cwd=ROOT, capture_output=True, text=True)
                wall = time.perf_counter() - start
                if proc.returncode != 0:
                    reason = proc.stderr.strip().splitlines()[0] if proc.stderr.strip() else f"exit {proc.returncode}"
                    rows.append([f"{source} -> {target}", f"failed (exit {proc.returncode}): {reason}"] + [""] * 8)
                    continue
                a = json.loads((out / "report.json").read_text())["artifacts"][0]
                rows.append([f"{source} -> {target}", a["precision"], fmt_bytes(a["size_bytes"]),
                             f"{a['size_bytes'] / a['baseline_size_bytes']:.2f}",
                             f"{a['baseline_latency_ms']['p50']:.4f} -> {a['latency_ms']['p50']:.4f}",
                             f"{a['speedup']:.2f}", f"{a['baseline_fidelity']['cosine']:.6f}",
                             f"{a['fidelity']['top1_agreement']:.3f} / {a['fidelity']['cosine']:.4f}",
                             f"{a['reference_accuracy']['top1']:.3f} -> {a['accuracy']['top1']:.3f}",
                             f"{wall:.1f}"])
    header = ["path", "precision", "int8 size", "x fp32 size", "p50 ms fp32 -> int8", "speed-up",
              "fp32 cosine", "int8 agree / cosine", "top1 source -> int8", "wall s"]
    show_and_save("nine_paths", f"nine paths on the digits example ({args.runs} interleaved runs)",
                  header, rows)


if __name__ == "__main__":
    main()
