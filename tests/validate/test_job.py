"""`edgeopt validate`: several artifacts of one model side by side, on the real CPU runtimes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "examples/digits/digits_cnn.h5"
CALIB = ROOT / "calibration_data/digits/calib.npz"
VAL = ROOT / "calibration_data/digits/val.npz"

pytest.importorskip("tensorflow")
pytest.importorskip("ai_edge_litert")


def _cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "edgeopt.cli", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def three_artifacts(tmp_path_factory):
    import edgeopt

    work = tmp_path_factory.mktemp("artifacts")
    paths = []
    for precision in ("fp32", "fp16", "int8"):
        result = edgeopt.compress(MODEL, calib=CALIB, val=VAL, precision=precision, validate=False,
                                  output=work / precision)
        paths.append(Path(result.artifacts[0]["path"]))
    return paths


@pytest.mark.slow
def test_three_artifacts_side_by_side(three_artifacts, tmp_path):
    metric = tmp_path / "metric.py"
    metric.write_text("import numpy as np\n"
                      "def mean_confidence(outputs, labels):\n"
                      "    return {'mean_confidence': float(outputs[0].max(1).mean())}\n")
    proc = _cli("validate", *three_artifacts, "--reference", MODEL, "--val", VAL, "--runs", "30",
                "--metric", f"{metric}:mean_confidence", "-o", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    for name in ("report.json", "report.md", "report.html"):
        assert (tmp_path / "out" / name).stat().st_size > 500
    report = json.loads((tmp_path / "out/report.json").read_text())
    assert report["command"] == "validate" and report["schema_version"] == 1
    arts = {Path(a["path"]).name: a for a in report["artifacts"]}
    assert set(arts) == {"digits_cnn_fp32.tflite", "digits_cnn_fp16.tflite", "digits_cnn_int8.tflite"}
    fp32, int8 = arts["digits_cnn_fp32.tflite"], arts["digits_cnn_int8.tflite"]
    assert fp32["fidelity"]["max_abs_err"] < 1e-4 and fp32["fidelity"]["top1_agreement"] == 1.0
    assert int8["fidelity"]["top1_agreement"] >= 0.98 and int8["fidelity"]["cosine"] > 0.98
    assert abs(int8["accuracy"]["top1"] - report["reference"]["accuracy"]["top1"]) <= 0.01
    for a in arts.values():
        lat = a["latency_ms"]
        assert lat["runs"] == 30 and lat["warmup"] == 10 and lat["threads"] >= 1
        assert lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"]
        assert a["load_seconds"] >= 0 and a["peak_rss_mb"] > 10
        assert 0 < a["metrics"]["mean_confidence"] <= 1
    assert int8["size_bytes"] < 0.3 * fp32["size_bytes"]
    md = (tmp_path / "out/report.md").read_text()
    assert "| digits_cnn_int8.tflite | tflite |" in md
    html = (tmp_path / "out/report.html").read_text()
    assert html.count('class="box"') == 3 and html.count('class="point"') == 3
    assert "<script" not in html and "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")


def test_gpu_without_one_is_exit_5(three_artifacts, tmp_path):
    proc = _cli("validate", three_artifacts[0], "--val", VAL, "--device", "gpu", "-o", tmp_path / "out")
    assert proc.returncode == 5, proc.stderr
    assert "--device gpu" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("device, code", [("tpu", 2), ("ssh://user:secret@host", 2)])
def test_bad_device_is_usage_error_without_echoing_secrets(three_artifacts, tmp_path, device, code):
    proc = _cli("validate", three_artifacts[0], "--val", VAL, "--device", device, "-o", tmp_path / "out")
    assert proc.returncode == code, proc.stderr
    assert "secret" not in proc.stderr + proc.stdout


def test_wrong_validation_data_is_rejected(three_artifacts, tmp_path):
    proc = _cli("validate", three_artifacts[0], "--val", CALIB.parent / "missing.npz", "-o", tmp_path / "out")
    assert proc.returncode == 3 and "missing.npz" in proc.stderr
