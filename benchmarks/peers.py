"""edgeopt's int8 artifacts against the peers' default recipes, side by side, and against the machine's limit.

For every model of ``model_set`` and every target (TFLite, ONNX, OpenVINO): the fp32 artifact,
edgeopt's int8 artifact (``edgeopt.compress``, defaults) and each peer's int8 artifact from its
documented default recipe on the same calibration samples; then all of them measured in this one
process, interleaved, on the same runtime at 1 and 2 threads, and run over the evaluation data.
The compute floor is the model's MACs over the machine's peak int8 (fp32) MAC rate, measured by
``peak_rate.py``. Writes benchmarks/RESULTS.md and benchmarks/results/peers.md.

    .venv/bin/python benchmarks/peers.py [--runs 100] [--budget 4] [--only "ResNet-50 (Keras)"]
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import model_set  # noqa: E402
import peak_rate  # noqa: E402
import peer_tools  # noqa: E402
import results_doc  # noqa: E402
from rich.progress import Progress  # noqa: E402

from edgeopt import registry  # noqa: E402
from edgeopt.fidelity import accuracy, fidelity  # noqa: E402
from edgeopt.validate.latency import measure_interleaved  # noqa: E402

TARGETS = ("tflite", "onnx", "openvino")
THREADS = (1, 2)
PER_TENSOR = "edgeopt --per-tensor"


@dataclass
class Variant:
    """One artifact of one model on one target, and what was measured on it."""

    label: str  # fp32 | edgeopt | a peer's name
    files: list[Path]
    tool_s: float | None = None
    latency: dict[int, object] = field(default_factory=dict)  # threads -> LatencyStats
    quality: dict[str, float] = field(default_factory=dict)
    size: int = 0  # bytes, read when made: the files live in a temporary folder

    def __post_init__(self) -> None:
        self.size = sum(f.stat().st_size for f in self.files)

    @property
    def int8(self) -> bool:
        return self.label != "fp32"


@dataclass
class Cell:
    bench: model_set.Bench
    target: str
    params: int
    macs: int
    variants: list[Variant]

    def get(self, label: str) -> Variant:
        return next(v for v in self.variants if v.label == label)

    @property
    def per_tensor(self) -> Variant | None:
        """edgeopt with --per-tensor, made where the peer's default is per-tensor weights."""
        return next((v for v in self.variants if v.label == PER_TENSOR), None)

    @property
    def peers(self) -> list[Variant]:
        return [v for v in self.variants if v.label != "fp32" and not v.label.startswith("edgeopt")]


def peer_recipes(framework: str, target: str) -> list[tuple[str, object]]:
    if target == "tflite":
        if framework == "keras":
            return [("TFLite converter", peer_tools.tflite_converter)]
        return [("litert-torch PT2E", peer_tools.litert_torch_pt2e), ("AI Edge Quantizer", peer_tools.ai_edge_quantizer)]
    if target == "onnx":
        return [("ORT quantize_static", peer_tools.onnxruntime_quantize_static)]
    return [("nncf.quantize", peer_tools.nncf_quantize)]


def run_peer(name: str, recipe, bench: model_set.Bench, source, fp32: Variant, calib: list[np.ndarray],
             out: Path, target: str) -> Variant:
    keras = bench.framework == "keras"
    start = time.perf_counter()
    files = recipe(peer_tools.Source(keras_path=Path(bench.model) if keras else None,
                                     module=None if keras else source.native,
                                     example=tuple(a[:1] for a in calib) if keras else source.example_inputs(),
                                     fp32_onnx=fp32.files[0] if target == "onnx" else None), calib, out)
    # The onnxruntime quantizer starts from the fp32 ONNX: its export is part of the peer's cost.
    return Variant(name, files, time.perf_counter() - start + (fp32.tool_s if target == "onnx" else 0.0))


def measure_cell(bench: model_set.Bench, target: str, source, work: Path, calib: list[np.ndarray],
                 evaluation: tuple, args: argparse.Namespace, say) -> Cell:
    import edgeopt

    from edgeopt.passes.quantize import export

    exporter = functools.partial(export, f"{bench.framework}->{target}")
    folder = work / f"{bench.name.split()[0]}_{bench.framework}_{target}"
    folder.mkdir(parents=True, exist_ok=True)
    suffix = "xml" if target == "openvino" else target
    say("fp32 export")
    start = time.perf_counter()
    fp32 = exporter(source, folder / f"fp32.{suffix}", precision="fp32")
    variants = [Variant("fp32", [fp32.path, *fp32.extra_files], time.perf_counter() - start)]
    # Where the peer's default is per-tensor weights, edgeopt with --per-tensor shows how much of a size
    # gap is the per-channel scales (reported, not judged).
    runs = [("edgeopt", True)]
    if target == "onnx" or (target == "tflite" and bench.framework == "torch"):
        runs.append((PER_TENSOR, False))
    for label, per_channel in runs:
        say(label)
        start = time.perf_counter()
        result = edgeopt.compress(bench.model, target=target, calib=bench.calib, val=bench.val,
                                  calib_samples=len(calib[0]), validate=False, output=folder / label.replace(" ", ""),
                                  weights=bench.weights, per_channel=per_channel,
                                  input_shapes={source.handle.input_names[0]: bench.input_shape}
                                  if bench.input_shape else None)
        wall = time.perf_counter() - start
        path = Path(result.artifacts[0]["path"])
        variants.append(Variant(label, [path] + ([path.with_suffix(".bin")] if target == "openvino" else []), wall))
    for name, recipe in peer_recipes(bench.framework, target):
        say(name)
        variants.append(run_peer(name, recipe, bench, source, variants[0], calib,
                                 folder / f"peer_{len(variants)}.{suffix}", target))
    open_session = registry.resolve("runtime", target)
    rows, labels, reference = evaluation
    for threads in THREADS:
        say(f"latency, {threads} thread{'s' if threads > 1 else ''}")
        sessions = {v.label: open_session(v.files[0], threads=threads, input_names=source.handle.input_names,
                                          source_inputs=source.handle.inputs, source_outputs=source.handle.outputs)
                    for v in variants}
        stats = measure_interleaved(sessions, rows[0], runs=args.runs, warmup=5, time_budget_s=args.budget)
        for v in variants:
            v.latency[threads] = stats[v.label]
        if threads == max(THREADS):
            say("accuracy")
            for v in variants:
                v.quality = _quality(sessions[v.label].run_many(rows), reference, labels)
    meta = source.handle.metadata
    return Cell(bench, target, int(meta["params"]), int(meta["macs"]), variants)


def _quality(outputs: list[np.ndarray], reference: list[np.ndarray], labels: np.ndarray | None) -> dict[str, float]:
    found = fidelity(reference, outputs)
    if labels is not None:
        found["top1"] = accuracy(outputs[0], labels)["top1"]
        found["drop_points"] = 100 * (accuracy(reference[0], labels)["top1"] - found["top1"])
    else:
        # Random-weight logits sit close together, so one flipped top-1 says little; the drop is edgeopt's
        # fidelity drop for outputs without labels, 100 x (1 - cosine).
        found["drop_points"] = 100 * (1 - found["cosine"])
    return found


def evaluation_set(bench: model_set.Bench, source) -> tuple[list[dict[str, np.ndarray]], np.ndarray | None, list]:
    data = np.load(bench.val)
    name = source.handle.input_names[0]
    images = data[[k for k in data.files if k != "labels"][0]].astype(np.float32)
    rows = [{name: images[i:i + 1]} for i in range(len(images))]
    reference = source.predict({name: images}, batch_size=16)
    return rows, (data["labels"] if "labels" in data.files else None), reference


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100, help="timed rounds per thread count (fewer when --budget ends them)")
    parser.add_argument("--budget", type=float, default=4.0, help="seconds of timing per thread count and cell")
    parser.add_argument("--calib-samples", type=int, default=32, help="calibration samples for the random-weight nets")
    parser.add_argument("--eval-samples", type=int, default=100, help="evaluation samples for the random-weight nets")
    parser.add_argument("--only", action="append", help="model name(s) from the set, e.g. 'ResNet-50 (Keras)'")
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument("--peak-seconds", type=float, default=1.0, help="timed seconds per peak-rate kernel")
    parser.add_argument("--results", type=Path, default=results_doc.RESULTS_MD, help="where RESULTS.md goes")
    args = parser.parse_args()

    from edgeopt.pipeline import load_source

    started = time.perf_counter()
    cells: list[Cell] = []
    with tempfile.TemporaryDirectory() as tmp, Progress() as progress:
        work = Path(tmp)
        task = progress.add_task("peak MAC rates", total=None)
        peak_rows = {t: peak_rate.measure_all(t, seconds=args.peak_seconds) for t in THREADS}
        peaks = {t: peak_rate.peak(rows) for t, rows in peak_rows.items()}
        benches = model_set.build(work, calib_samples=args.calib_samples, eval_samples=args.eval_samples,
                                  only=args.only)
        targets = [t for t in args.targets.split(",") if t]
        progress.update(task, total=len(benches) * len(targets), completed=0)
        for bench in benches:
            progress.update(task, description=f"{bench.name}: loading")
            shapes = {"x": bench.input_shape} if bench.input_shape else None
            source, _ = load_source(Path(bench.model), trust=False, weights=bench.weights, input_shapes=shapes,
                                    calib=bench.calib)
            data = np.load(bench.calib)
            calib = [data[k].astype(np.float32) for k in data.files if k != "labels"]
            evaluation = evaluation_set(bench, source)
            for target in targets:
                def say(step: str, bench=bench, target=target) -> None:
                    progress.update(task, description=f"{bench.name} -> {target}: {step}")

                cells.append(measure_cell(bench, target, source, work, calib, evaluation, args, say))
                progress.advance(task)
    results_doc.write(cells, peak_rows, peaks, time.perf_counter() - started, args)


if __name__ == "__main__":
    main()
