"""Two runs with the same inputs and seed give byte-identical artifacts and the same metrics.

Where this holds: every artifact of two `edgeopt compress` processes — TFLite, ONNX and OpenVINO
(.xml and .bin) from Keras, and ONNX from ONNX or PyTorch. Where it does not: within one Python
process, a second Keras->ONNX or any ->OpenVINO conversion names its generated nodes from counters
that tf2onnx and OpenVINO keep per process ("convolution__13" becomes "convolution__41",
"Constant_83121" becomes "Constant_105004"), so the weights are identical but the files are not.
Latency is measured, not computed, and is never compared.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from .harness import assert_outcome, run_cli

COMPARED = ("precision", "size_bytes", "gzip_size_bytes", "io_dtypes", "ops", "float_fallback", "fidelity",
            "baseline_fidelity", "accuracy", "reference_accuracy")


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _artifacts(out: Path) -> dict[str, str]:
    return {p.name: _digest(p) for p in sorted(out.iterdir()) if p.suffix in (".tflite", ".onnx", ".xml", ".bin")}


def _metrics(out: Path) -> list[dict]:
    report = json.loads((out / "report.json").read_text())
    return [{k: a.get(k) for k in COMPARED} for a in report["artifacts"]] + [report.get("calibration")]


def test_two_processes_give_identical_artifacts_and_metrics(tmp_path, assets):
    pytest.importorskip("tf2onnx")
    pytest.importorskip("openvino")
    runs = []
    for name in ("first", "second"):
        out = tmp_path / name
        outcome = run_cli("compress", assets.keras(), "--target", "tflite,onnx,openvino", "--calib",
                          assets.nhwc_data(40), "--seed", 7, "--runs", 2, "--warmup", 0, "-o", out, "-q", cwd=tmp_path)
        assert_outcome(outcome, 0)
        runs.append((_artifacts(out), _metrics(out)))
    (first_files, first_metrics), (second_files, second_metrics) = runs
    assert set(first_files) == {"conv_int8.tflite", "conv_int8.onnx", "conv_int8.xml", "conv_int8.bin"}
    assert first_files == second_files
    assert first_metrics == second_metrics
    assert first_metrics[0]["fidelity"]["cosine"] > 0.9  # measured, not empty


@pytest.mark.parametrize("source", ["onnx", "torch"])
def test_one_process_gives_identical_onnx_artifacts(source, tmp_path, assets):
    pytest.importorskip("onnxruntime")
    import edgeopt

    model, extra = (assets.onnx(), {}) if source == "onnx" else (assets.torch()[0], {"weights": assets.torch()[1]})
    runs = []
    for name in ("first", "second"):
        result = edgeopt.compress(model, target="onnx", calib=assets.nchw_data(24), seed=3, runs=2, warmup=0,
                                  output=tmp_path / name, **extra)
        runs.append((_artifacts(result.output_dir), _metrics(result.output_dir)))
    assert runs[0] == runs[1]
