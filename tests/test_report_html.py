"""report.html renders in a real headless Chromium: plots present, no script errors, no network."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from edgeopt.report_html import render_html

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _report() -> dict:
    lat = {"p50": 2.0, "p90": 2.4, "p99": 3.0, "min": 1.8, "mean": 2.1, "std": 0.2, "runs": 100, "warmup": 10,
           "threads": 2, "unstable": False}
    return {"schema_version": 1, "command": "compress", "created": "2026-01-01T00:00:00+00:00",
            "source": {"path": "model.h5", "format": "keras_h5", "sha256": "0" * 64, "inputs": [], "outputs": []},
            "reference": {"accuracy": {"top1": 0.99}},
            "artifacts": [{"target": "tflite", "path": "out/model_int8.tflite", "precision": "int8",
                           "size_bytes": 1000, "baseline_size_bytes": 4000,
                           "latency_ms": {**lat, "p50": 1.0, "p90": 1.2, "p99": 1.5, "min": 0.9, "mean": 1.05},
                           "baseline_latency_ms": lat, "fidelity": {"top1_agreement": 0.98, "cosine": 0.99},
                           "baseline_fidelity": {"top1_agreement": 1.0, "cosine": 1.0},
                           "accuracy": {"top1": 0.98}, "reference_accuracy": {"top1": 0.99}}],
            "stages": [{"stage": "original", "params": 1000, "macs": 5000, "details": {}}],
            "versions": {"edgeopt": "0.1.0", "tensorflow-cpu": "2.21.0"}, "machine": {"processor": "cpu"},
            "notes": ["a <note> & more"], "wall_seconds": 1.0}


def test_html_is_self_contained_and_escaped():
    html = render_html(_report())
    assert 'id="latency-plot"' in html and 'id="size-fidelity-plot"' in html
    assert html.count('class="box"') == 2 and html.count('class="point"') == 2
    assert "<script" not in html and "src=" not in html and "href=" not in html
    assert "a &lt;note&gt; &amp; more" in html
    assert 'id="stages"' in html and "tensorflow-cpu" in html


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium not installed (scripts/system-packages.sh installs it)")
def test_renders_in_headless_chromium(tmp_path):
    page = tmp_path / "report.html"
    page.write_text(render_html(_report()))
    profile = tmp_path / "profile"
    dom = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
                          "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert dom.stdout.count("<svg") == 2 and dom.stdout.count('class="box"') == 2
    assert "Uncaught" not in dom.stderr and "SyntaxError" not in dom.stderr
    shot = tmp_path / "report.png"
    proc = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "--window-size=1100,1400",
                           f"--screenshot={shot}", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and shot.stat().st_size > 10_000  # a rendered page, not a blank
