"""The measuring half of remote validation, self-contained: it runs on the device with the device's
own Python, numpy and runtime (LiteRT/tflite-runtime, onnxruntime or OpenVINO), and imports
nothing from edgeopt. Locally, edgeopt uses the same functions, so both sides measure alike.

    python3 remote_runner.py job.json      # writes results.json and outputs_<i>.npz beside it
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np

UNSTABLE_SPREAD = 0.5  # a variant whose p90 exceeds its p50 by more than this is marked unstable


def quantize(value: np.ndarray, dtype: np.dtype, scale: float, zero_point: int) -> np.ndarray:
    """Float -> the tensor's integer type with its scale and zero point (identity for floats)."""
    dtype = np.dtype(dtype)
    if dtype.kind in "iu" and scale:
        info = np.iinfo(dtype)
        return np.clip(np.round(value / scale + zero_point), info.min, info.max).astype(dtype)
    return value.astype(dtype, copy=False)


def dequantize(value: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    if value.dtype.kind in "iu" and scale:
        return (value.astype(np.float32) - zero_point) * scale
    return value.copy()


def latency_stats(ms: list[float], warmup: int, threads: int) -> dict:
    a = np.asarray(ms)
    p50, p90, p99 = (float(x) for x in np.percentile(a, [50, 90, 99]))
    return {"p50": p50, "p90": p90, "p99": p99, "min": float(a.min()), "mean": float(a.mean()),
            "std": float(a.std()), "runs": int(len(a)), "warmup": warmup, "threads": threads,
            "unstable": bool(p90 > p50 * (1 + UNSTABLE_SPREAD))}


def interleave(runners: list, runs: int, warmup: int, time_budget_s: float | None) -> list[list[float]]:
    """Warm each runner up, then time them in rotated order each round; milliseconds per run."""
    for _ in range(warmup):
        for run in runners:
            run()
    samples: list[list[float]] = [[] for _ in runners]
    deadline = None if time_budget_s is None else time.perf_counter() + time_budget_s
    n = len(runners)
    for i in range(runs):
        for k in [(i + j) % n for j in range(n)]:
            start = time.perf_counter()
            runners[k]()
            samples[k].append((time.perf_counter() - start) * 1000.0)
        if deadline is not None and time.perf_counter() > deadline and i >= 9:
            break
    return samples


class _TFLite:
    def __init__(self, path: str, threads: int) -> None:
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:
            from tflite_runtime.interpreter import Interpreter  # older devices
        self.interp = Interpreter(model_path=path, num_threads=threads)
        self.interp.allocate_tensors()
        self.ins, self.outs = self.interp.get_input_details(), self.interp.get_output_details()

    def set(self, arrays: list[np.ndarray]) -> None:
        for detail, value in zip(self.ins, arrays):
            scale, zero = detail["quantization"]
            self.interp.set_tensor(detail["index"], quantize(value, detail["dtype"], scale, zero))

    def invoke(self) -> None:
        self.interp.invoke()

    def results(self) -> list[np.ndarray]:
        return [dequantize(self.interp.get_tensor(d["index"]), *d["quantization"]) for d in self.outs]


class _Onnx:
    def __init__(self, path: str, threads: int) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.names = [i.name for i in self.session.get_inputs()]
        self.feed: dict = {}
        self.last: list = []

    def set(self, arrays: list[np.ndarray]) -> None:
        self.feed = dict(zip(self.names, arrays))

    def invoke(self) -> None:
        self.last = self.session.run(None, self.feed)

    def results(self) -> list[np.ndarray]:
        return [np.asarray(o) for o in self.last]


class _OpenVino:
    def __init__(self, path: str, threads: int) -> None:
        # OpenVINO's usage telemetry stays off when it believes it runs under CI.
        os.environ.setdefault("CI", "true")
        import openvino as ov

        core = ov.Core()
        self.compiled = core.compile_model(path, "CPU", {"INFERENCE_NUM_THREADS": threads})
        self.request = self.compiled.create_infer_request()

    def set(self, arrays: list[np.ndarray]) -> None:
        for i, value in enumerate(arrays):
            self.request.set_input_tensor(i, __import__("openvino").Tensor(np.ascontiguousarray(value)))

    def invoke(self) -> None:
        self.request.infer()

    def results(self) -> list[np.ndarray]:
        return [np.array(self.request.get_output_tensor(i).data) for i in range(len(self.compiled.outputs))]


RUNTIMES = {"tflite": _TFLite, "onnx": _Onnx, "openvino": _OpenVino}


def _sample(data, order: list[str], axes: list, s: int) -> list[np.ndarray]:
    """Sample ``s`` of each input, transposed into the artifact's own layout where edgeopt says so
    (outputs go back as they are; edgeopt turns them back into the data's layout)."""
    return [np.ascontiguousarray(np.transpose(data[n][s:s + 1], a)) if a else data[n][s:s + 1]
            for n, a in zip(order, axes)]


def run_job(job_path: Path) -> dict:
    job = json.loads(job_path.read_text())
    job["threads"] = job.get("threads") or os.cpu_count() or 1  # default: every core of the device
    folder = job_path.parent
    data = np.load(folder / job["inputs"])
    names = job["input_names"]
    count = len(data[names[0]])
    models, results = [], []
    for i, art in enumerate(job["artifacts"]):
        start = time.perf_counter()
        model = RUNTIMES[art["runtime"]](str(folder / art["file"]), job["threads"])
        load_seconds = time.perf_counter() - start
        order = art.get("order", names)
        axes = art.get("axes") or [None] * len(order)
        per_output: list[list[np.ndarray]] = []
        for s in range(count):
            model.set(_sample(data, order, axes, s))
            model.invoke()
            outs = model.results()
            per_output = per_output or [[] for _ in outs]
            for bucket, out in zip(per_output, outs):
                bucket.append(out)
        np.savez(folder / f"outputs_{i}.npz", *[np.concatenate(b) for b in per_output])
        model.set(_sample(data, order, axes, 0))
        models.append(model)
        results.append({"load_seconds": load_seconds})
    timings = interleave([m.invoke for m in models], job["runs"], job["warmup"], job.get("time_budget_s"))
    for entry, ms in zip(results, timings):
        entry["latency_ms"] = latency_stats(ms, job["warmup"], job["threads"])
    import platform

    return {"artifacts": results, "device": {"machine": platform.machine(), "python": platform.python_version(),
                                             "numpy": np.__version__}}


def main(argv: list[str]) -> int:
    job_path = Path(argv[1])
    try:
        result = run_job(job_path)
    except ImportError as exc:
        result = {"error": f"the device's Python lacks a runtime: {exc}"}
    except Exception as exc:  # reported back to edgeopt, which explains it
        result = {"error": f"{type(exc).__name__}: {exc}"}
    (job_path.parent / "results.json").write_text(json.dumps(result))
    return 0 if "error" not in result else 3


if __name__ == "__main__":
    sys.exit(main(sys.argv))
