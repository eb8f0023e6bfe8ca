"""The "int8 slower than fp32" detector: when it speaks, and the causes it reads from the graph."""

from __future__ import annotations

from edgeopt.report import render_markdown
from edgeopt.validate.slow_int8 import likely_causes, slow_int8_warning


def _entry(p50=0.30, base=0.20, counts=None, float_ops=(), keep_float=(), precision="int8", target="onnx"):
    entry = {"target": target, "path": "out/m_int8.onnx", "precision": precision,
             "latency_ms": {"p50": p50, "p90": p50 + 0.01}, "baseline_latency_ms": {"p50": base, "p90": base + 0.01},
             "ops": {"counts": counts or {"QLinearConv": 3, "QuantizeLinear": 1, "DequantizeLinear": 1},
                     "float_ops": list(float_ops), "full_integer": not float_ops}}
    if keep_float:
        entry["quantization"] = {"keep_float": list(keep_float)}
    return entry


def test_no_warning_when_int8_is_faster_or_not_int8():
    assert slow_int8_warning(_entry(p50=0.10), io_tensors=2) is None
    assert slow_int8_warning(_entry(precision="fp16"), io_tensors=2) is None
    assert slow_int8_warning({"precision": "int8"}, io_tensors=2) is None  # not measured


def test_unfused_quantize_dequantize_pairs_are_counted_beyond_the_io():
    counts = {"Conv": 2, "QuantizeLinear": 4, "DequantizeLinear": 5, "Relu": 2}
    text = slow_int8_warning(_entry(counts=counts, float_ops=["Conv"]), io_tensors=2)
    assert text.startswith("int8 slower than fp32: 'm_int8.onnx' p50 0.300 ms vs 0.200 ms")
    assert "7 Quantize/Dequantize ops beyond the 2 at the model's inputs and outputs" in text
    assert "DequantizeLinear x5, QuantizeLinear x4" in text
    assert "ops left in float: Conv" in text
    assert "within the measured noise" not in text  # 0.1 ms slower, spread 0.01 ms


def test_tflite_float_islands_and_kept_layers():
    counts = {"CONV_2D": 4, "QUANTIZE": 2, "DEQUANTIZE": 2}
    causes = likely_causes(_entry(counts=counts, float_ops=["CONV_2D"], keep_float=["conv2", "conv3"],
                                  target="tflite"), io_tensors=2)
    assert causes[0].startswith("2 Quantize/Dequantize ops beyond the 2")
    assert causes[1].startswith("ops left in float: CONV_2D")
    assert causes[2] == "2 layers kept in float by overrides or the budget search: conv2, conv3"


def test_a_full_integer_graph_points_at_size_or_hardware_and_noise_is_named():
    entry = _entry(p50=0.205, base=0.200)
    entry["latency_ms"]["p90"] = 0.4
    text = slow_int8_warning(entry, io_tensors=2)
    assert "the graph is full integer with no extra conversions" in text
    assert "within the measured noise (p90 - p50 spread 0.195 ms)" in text


def test_the_warning_reaches_report_md():
    report = {"command": "compress", "source": {"path": "m.onnx", "format": "onnx", "sha256": "0" * 64,
                                                "inputs": ["x"]},
              "reference": {}, "artifacts": [], "warnings": ["int8 slower than fp32: 'm_int8.onnx' ..."],
              "notes": [], "versions": {}, "machine": {"processor": "cpu"}, "wall_seconds": 1.0}
    assert "## Warnings\n\n- int8 slower than fp32: 'm_int8.onnx' ..." in render_markdown(report)
