"""Peak multiply-accumulate rate of this machine, int8 and fp32, on LiteRT and onnxruntime.

Three compute-bound single-op kernels with random weights are built in code:
- 3x3 convolution, 256 -> 256 channels on 28x28
- 1x1 convolution, 512 -> 2048 channels on 14x14
- matmul 256x2048 by 2048x2048
each as TFLite (fp32, and full-integer int8 with per-channel weights and int8 I/O; the matmul becomes
FULLY_CONNECTED) run by LiteRT with its default XNNPACK delegate, and as ONNX (fp32, and int8 from
onnxruntime's static QDQ quantizer with uint8 activations and per-channel int8 weights, which
onnxruntime fuses into QLinearConv / QLinearMatMul) run by onnxruntime's CPU provider.
Each model runs a few warm-up times, then repeatedly for about --seconds; its rate is the op's MACs over
the median time per run. The peak for a dtype is the best rate over all kernels and runtimes.
Standalone, it measures at 1 and 2 threads, prints a table and writes benchmarks/results/peak_rate.md.

    .venv/bin/python benchmarks/peak_rate.py [--seconds 1.0]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from _results import show_and_save  # noqa: E402
from edgeopt.deps import quiet_stderr, require  # noqa: E402


@dataclass(frozen=True)
class Kernel:
    name: str
    x_shape: tuple[int, ...]  # NHWC for convolutions, (M, K) for matmul
    w_shape: tuple[int, ...]  # HWIO for convolutions, (K, N) for matmul

    @property
    def is_conv(self) -> bool:
        return len(self.w_shape) == 4

    @property
    def macs(self) -> int:
        return int(np.prod(self.x_shape[:-1]) * np.prod(self.w_shape))


KERNELS = (Kernel("conv 3x3 256->256 on 28x28", (1, 28, 28, 256), (3, 3, 256, 256)),
           Kernel("conv 1x1 512->2048 on 14x14", (1, 14, 14, 512), (1, 1, 512, 2048)),
           Kernel("matmul 256x2048 by 2048x2048", (256, 2048), (2048, 2048)))


@dataclass(frozen=True)
class Row:
    runtime: str
    kernel: str
    dtype: str
    threads: int
    macs: int
    median_s: float

    @property
    def rate(self) -> float:
        return self.macs / self.median_s


def _weights(k: Kernel) -> np.ndarray:
    # Scaled so activations stay near unit range, which keeps the int8 calibration meaningful.
    fan_in = int(np.prod(k.w_shape[:-1]))
    return np.random.default_rng(0).normal(0, fan_in ** -0.5, k.w_shape).astype(np.float32)


def _samples(shape: tuple[int, ...]) -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    return [rng.uniform(-1, 1, shape).astype(np.float32) for _ in range(4)]


@cache
def _tflite(k: Kernel, dtype: str) -> bytes:
    tf = require("tensorflow", "Building TFLite kernels")
    w = tf.constant(_weights(k))

    @tf.function(input_signature=[tf.TensorSpec(k.x_shape, tf.float32)])
    def op(x):
        return tf.nn.conv2d(x, w, 1, "SAME") if k.is_conv else tf.matmul(x, w)

    converter = tf.lite.TFLiteConverter.from_concrete_functions([op.get_concrete_function()])
    if dtype == "int8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([s] for s in _samples(k.x_shape))
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        # int8 I/O so the timed graph is the one integer op, with no QUANTIZE/DEQUANTIZE around it.
        converter.inference_input_type = converter.inference_output_type = tf.int8
    with contextlib.redirect_stdout(io.StringIO()), quiet_stderr():
        return converter.convert()


@cache
def _onnx(k: Kernel, dtype: str) -> bytes:
    onnx = require("onnx", "Building ONNX kernels")
    from onnx import TensorProto, helper, numpy_helper
    w = _weights(k)
    if k.is_conv:
        x_shape = (k.x_shape[0], k.x_shape[3], *k.x_shape[1:3])  # NCHW
        y_shape = (x_shape[0], w.shape[3], *x_shape[2:])
        pad = w.shape[0] // 2
        node = helper.make_node("Conv", ["x", "w"], ["y"], pads=[pad] * 4)
        w = w.transpose(3, 2, 0, 1)  # OIHW
    else:
        x_shape, y_shape = k.x_shape, (k.x_shape[0], w.shape[1])
        node = helper.make_node("MatMul", ["x", "w"], ["y"])
    graph = helper.make_graph([node], "kernel", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
                              [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    if dtype == "fp32":
        return model.SerializeToString()
    # Float I/O: the quantize, dequantize and layout transposes left around the fused op cost a few
    # percent of the time, so the int8 rate here slightly understates the kernel's own.
    from onnxruntime.quantization import CalibrationDataReader, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter({"x": s} for s in _samples(x_shape))

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.it, None)

    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()), quiet_stderr():
        fp32, int8 = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        onnx.save(model, fp32)
        quantize_static(fp32, int8, Reader(), per_channel=True, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8)
        return int8.read_bytes()


def _litert_runner(k: Kernel, dtype: str, threads: int) -> Callable[[], object]:
    litert = require("ai_edge_litert.interpreter", "Running TFLite kernels")
    with quiet_stderr():  # "Created TensorFlow Lite XNNPACK delegate", once per process
        interp = litert.Interpreter(model_content=_tflite(k, dtype), num_threads=threads)
        interp.allocate_tensors()
    inp = interp.get_input_details()[0]
    interp.set_tensor(inp["index"], np.random.default_rng(2).integers(-128, 128, inp["shape"]).astype(inp["dtype"])
                      if dtype == "int8" else _samples(tuple(inp["shape"]))[0])
    return interp.invoke


def _ort_runner(k: Kernel, dtype: str, threads: int) -> Callable[[], object]:
    ort = require("onnxruntime", "Running ONNX kernels")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    session = ort.InferenceSession(_onnx(k, dtype), opts, providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    feed = {inp.name: _samples(tuple(inp.shape))[0]}
    return lambda: session.run(None, feed)


def _median_time(run: Callable[[], object], seconds: float) -> float:
    for _ in range(3):
        run()
    times: list[float] = []
    end = time.perf_counter() + seconds
    # At least five runs so a slow kernel still gets a median, not a single sample.
    while time.perf_counter() < end or len(times) < 5:
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure_all(threads: int, *, seconds: float = 1.0) -> list[Row]:
    """One row per runtime, kernel and dtype, at ``threads`` threads."""
    return [Row(runtime, k.name, dtype, threads, k.macs, _median_time(make(k, dtype, threads), seconds))
            for k in KERNELS for dtype in ("int8", "fp32")
            for runtime, make in (("LiteRT/XNNPACK", _litert_runner), ("onnxruntime CPU", _ort_runner))]


def peak(rows: list[Row]) -> dict[str, float | str]:
    """The best rate per dtype in ``rows``, with the runtime and kernel that gave it."""
    out: dict[str, float | str] = {}
    for dtype in ("int8", "fp32"):
        best = max((r for r in rows if r.dtype == dtype), key=lambda r: r.rate)
        out[dtype] = best.rate
        out[f"{dtype}_how"] = f"{best.runtime} {best.kernel}, {best.macs / 1e6:.0f} MMAC"
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="timed seconds per model")
    args = parser.parse_args()
    by_threads = {t: measure_all(t, seconds=args.seconds) for t in (1, 2)}
    rows = [[r.runtime, r.kernel, r.dtype, str(r.threads), f"{r.macs / 1e6:.0f} M", f"{r.median_s * 1e3:.2f}",
             f"{r.rate / 1e9:.1f}"] for measured in by_threads.values() for r in measured]
    show_and_save("peak_rate", f"Peak MAC rate, median over ~{args.seconds:g} s of runs per model",
                  ["runtime", "kernel", "dtype", "threads", "MACs", "median ms", "GMAC/s"], rows)
    for threads, measured in by_threads.items():
        best = peak(measured)
        int8, fp32 = float(best["int8"]), float(best["fp32"])
        print(f"{threads} thread(s): int8 {int8 / 1e9:.1f} GMAC/s ({best['int8_how']}), "
              f"fp32 {fp32 / 1e9:.1f} GMAC/s ({best['fp32_how']}), int8/fp32 {int8 / fp32:.2f}x")


if __name__ == "__main__":
    main()
