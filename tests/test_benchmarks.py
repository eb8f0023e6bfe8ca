"""The peer benchmark end to end on the smallest cell: the bundled digits CNN to TFLite.

Runs benchmarks/peers.py as `make bench` does, with short timings and its report written to a
temporary file, then checks what the report says against the artifacts' real figures. Latency
is printed by the script, never asserted here.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> str:
    pytest.importorskip("tensorflow")
    pytest.importorskip("ai_edge_litert")
    pytest.importorskip("onnxruntime")
    out = tmp_path_factory.mktemp("bench") / "RESULTS.md"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks/peers.py"), "--only", "digits CNN (Keras)",
                           "--targets", "tflite", "--runs", "20", "--budget", "0.2", "--peak-seconds", "0.05",
                           "--results", str(out)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return out.read_text()


def _row(report: str, first: str, second: str) -> list[str]:
    for line in report.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) > 2 and cells[0] == first and cells[1] == second:
            return cells
    raise AssertionError(f"no row '{first} | {second}' in:\n{report}")


def test_report_names_machine_versions_and_peak(report):
    assert re.search(r"CPU: .+, \d+ cores visible", report)
    assert "tensorflow" in report and "ai-edge-litert" in report
    peak = [line for line in report.splitlines() if re.match(r"\| [12] \| [\d.]+ \| ", line)]
    assert len(peak) == 2
    for line in peak:
        cells = [c.strip() for c in line.strip("|").split("|")]
        int8, fp32 = float(cells[1]), float(cells[3])
        assert 1 < fp32 < int8, cells  # GMAC/s; int8 never slower than fp32 at peak on a CPU with int8 dot products


def test_edgeopt_and_converter_rows_agree_with_the_artifacts(report):
    fp32 = _row(report, "digits CNN (Keras)", "fp32")
    edge = _row(report, "digits CNN (Keras)", "edgeopt")
    peer = _row(report, "digits CNN (Keras)", "TFLite converter")
    size = lambda row: int(row[2].replace(",", ""))  # noqa: E731
    # Same converter, same recipe: the same int8 graph within a few hundred bytes of names and metadata.
    assert abs(size(edge) - size(peer)) < 0.02 * size(peer)
    assert 0.25 < size(edge) / size(fp32) < 0.32  # int8 weights, float scales and graph
    assert float(edge[3]) == pytest.approx(size(edge) / size(fp32), abs=1e-3)
    assert float(edge[4]) == pytest.approx(size(edge) / 108_618, abs=1e-3)  # x params
    for row in (fp32, edge, peer):
        assert row[9] == "99.44%", row  # top-1 on the 360 labelled validation images
        assert float(row[10]) == pytest.approx(0.0, abs=1e-9)  # no drop against the Keras model


def test_summary_and_reading(report):
    summary = _row(report, "digits CNN (Keras)", "tflite")
    assert summary[2] == "TFLite converter"
    assert float(summary[5]) <= 1.02  # size edgeopt / smallest peer
    assert "model/target cells" in report and "## TFLite on LiteRT (XNNPACK)" in report


def test_accuracy_rows_measured_replace_their_cells_and_keep_the_others():
    """benchmarks/accuracy.py measures a subset at a time: the saved table keeps the other cells,
    in the conformance suite's order, and a column an older table lacked reads "-"."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import accuracy

    saved = ("title\n\n| model | target | edgeopt default | loss | loss |\n|---|---|---|---|---|\n"
             "| ppocr_det_v4 | onnx | 0.9900 | 0.01 | 0.08 |\n| fer_emotion_h5 | onnx | 0.9000 | 0.1 | 0.04 |\n")
    header = ["model", "target", "edgeopt default", "loss", "loss", "edgeopt s (whole run)"]
    rows = accuracy.merged(header, [["fer_emotion_h5", "onnx", "0.9922", "0.0078", "0.0430", "15.0"]], saved)
    assert rows == [["fer_emotion_h5", "onnx", "0.9922", "0.0078", "0.0430", "15.0"],
                    ["ppocr_det_v4", "onnx", "0.9900", "0.01", "0.08", "-"]]
