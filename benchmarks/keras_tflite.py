"""edgeopt's int8 TFLite against the TFLite converter's own default full-integer PTQ.

For each model: edgeopt compress (CLI), the converter's default recipe on the same calibration
samples, and the fp32 TFLite; all three measured in one process, interleaved, on LiteRT.
Prints a table and writes it to benchmarks/results/keras_tflite.md.

    .venv/bin/python benchmarks/keras_tflite.py [--runs 200] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from _results import show_and_save  # noqa: E402
from edgeopt.calibration import open_data, select  # noqa: E402
from edgeopt.frameworks.keras import load  # noqa: E402
from edgeopt.model import Format  # noqa: E402
from edgeopt.targets.litert import open_session  # noqa: E402
from edgeopt.validate.fidelity import fidelity  # noqa: E402
from edgeopt.validate.latency import measure_interleaved  # noqa: E402


def make_models(work: Path) -> list[tuple[str, Path, Path]]:
    """(name, model file, calibration npz) for each benchmarked model."""
    from edgeopt.deps import require

    keras = require("keras", "The TFLite benchmark")  # imported quietly, as edgeopt does

    models = [("digits CNN", ROOT / "examples/digits/digits_cnn.h5", ROOT / "calibration_data/digits/calib.npz")]
    keras.utils.set_random_seed(0)
    mnv2 = keras.applications.MobileNetV2(weights=None, input_shape=(224, 224, 3))
    mnv2.save(work / "mobilenetv2.h5")
    rng = np.random.default_rng(0)
    np.savez(work / "mnv2_calib.npz", x=rng.uniform(-1, 1, (120, 224, 224, 3)).astype(np.float32))
    models.append(("MobileNetV2 (random weights)", work / "mobilenetv2.h5", work / "mnv2_calib.npz"))
    return models


def converter_default(model_path: Path, calib_npz: Path, samples: int, out_path: Path) -> float:
    """The converter's documented full-integer recipe; returns its wall time in seconds."""
    import keras
    import tensorflow as tf

    start = time.perf_counter()
    model = keras.models.load_model(model_path, compile=False)
    data = np.load(calib_npz)
    arr = data[data.files[0]][:samples]

    def representative():
        for row in arr:
            yield [row[None].astype(np.float32)]

    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = representative
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    out_path.write_bytes(conv.convert())
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--samples", type=int, default=100)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name, model_path, calib in make_models(work):
            out_dir = work / model_path.stem
            start = time.perf_counter()
            subprocess.run([str(Path(sys.executable).parent / "edgeopt"), "compress", str(model_path),
                            "--calib", str(calib), "--calib-samples", str(args.samples), "-o", str(out_dir),
                            "--no-validate", "-q"], check=True, stdout=subprocess.DEVNULL)
            edge_wall = time.perf_counter() - start
            edge = out_dir / f"{model_path.stem}_int8.tflite"
            peer = work / f"{model_path.stem}_peer_int8.tflite"
            peer_wall = converter_default(model_path, calib, args.samples, peer)
            fp32 = work / f"{model_path.stem}_fp32.tflite"
            subprocess.run([str(Path(sys.executable).parent / "edgeopt"), "compress", str(model_path),
                            "--precision", "fp32", "-o", str(work / "fp32"), "--no-validate", "-q"],
                           check=True, stdout=subprocess.DEVNULL)
            fp32 = work / "fp32" / f"{model_path.stem}_fp32.tflite"

            source = load(model_path, Format.KERAS_H5)
            data = open_data(calib, source.handle.inputs)
            _, held = select(data, samples=1, seed=1, holdout=min(data.count // 5, 50))
            names = source.handle.input_names
            sessions = {k: open_session(p, threads=args.threads, input_names=names)
                        for k, p in (("fp32", fp32), ("edgeopt", edge), ("converter", peer))}
            ref = source.predict(held.stacked())
            agree = {k: fidelity(ref, s.run_many(held)) for k, s in sessions.items()}
            lat = measure_interleaved(sessions, next(iter(held)), runs=args.runs, warmup=20)
            for k, path in (("fp32", fp32), ("edgeopt", edge), ("converter", peer)):
                rows.append([name, k, f"{path.stat().st_size / 1e6:.2f}",
                             f"{path.stat().st_size / fp32.stat().st_size:.3f}",
                             f"{lat[k].p50:.3f}", f"{lat[k].p90:.3f}", f"{lat[k].p50 / lat['fp32'].p50:.3f}",
                             f"{agree[k].get('top1_agreement', float('nan')):.3f}", f"{agree[k]['cosine']:.4f}",
                             f"{edge_wall:.1f}" if k == "edgeopt" else (f"{peer_wall:.1f}" if k == "converter" else "-")])
    header = ["model", "variant", "size MB", "x fp32 size", "p50 ms", "p90 ms", "x fp32 p50",
              "top1 agree", "cosine", "tool s"]
    show_and_save("keras_tflite", f"int8 TFLite, LiteRT/XNNPACK, {args.threads} threads, {args.runs} interleaved runs",
                  header, rows)


if __name__ == "__main__":
    main()
