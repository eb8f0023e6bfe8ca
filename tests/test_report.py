"""report.json is a contract: its stable keys, JSON without NaN/Infinity, and the Markdown view."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest

from edgeopt import __version__, recipe, report
from edgeopt.model import Format, ModelHandle, TensorSpec
from edgeopt.report_types import ArtifactEntry, QuantizationInfo, SearchInfo


def _report(tmp_path: Path, sqnr: float = math.inf) -> dict:
    model = tmp_path / "m.h5"
    model.write_bytes(b"x" * 1234)
    handle = ModelHandle(path=model, format=Format.KERAS_H5,
                         inputs=(TensorSpec("image", (None, 8, 8, 1), "float32", "nhwc"),),
                         outputs=(TensorSpec("probs", (None, 3), "float32"),), metadata={"params": 42})
    latency = {"p50": 1.0, "p90": 1.5, "p99": 2.0, "min": 0.9, "mean": 1.1, "std": 0.1, "runs": 5,
               "warmup": 1, "threads": 2, "unstable": False}
    artifact = ArtifactEntry(target="tflite", path=str(tmp_path / "m_int8.tflite"), precision="int8",
                             size_bytes=250, baseline_size_bytes=1000, latency_ms=latency,
                             baseline_latency_ms={**latency, "p50": 2.0},
                             fidelity={"top1_agreement": 1.0, "cosine": 0.999, "max_abs_err": 0.01, "sqnr_db": sqnr},
                             reference_accuracy={"top1": 0.9}, accuracy={"top1": 0.875},
                             ops={"counts": {"CONV_2D": 1}, "float_ops": [], "full_integer": True})
    return report.build_report(
        command="compress", config=recipe.build("test", model=model), source=SimpleNamespace(handle=handle),
        source_sha256="ab" * 32, calibration={"path": "c.npz", "samples": 40, "seed": 0, "sha256": "cd" * 32},
        validation=None, artifacts=[artifact], notes=["a note"], wall_seconds=1.234)


def test_contract_keys(tmp_path):
    r = _report(tmp_path)
    assert r["schema_version"] == report.SCHEMA_VERSION == 1
    assert r["source"] == {"path": str(tmp_path / "m.h5"), "format": "keras_h5", "sha256": "ab" * 32,
                           "inputs": ["image: float32[?,8,8,1]"], "outputs": ["probs: float32[?,3]"], "params": 42}
    assert r["reference"]["size_bytes"] == 1000
    assert r["reference"]["latency_ms"]["p50"] == 2.0
    assert r["reference"]["accuracy"] == {"top1": 0.9}
    assert r["reference"]["source_size_bytes"] == 1234
    assert r["artifacts"][0]["size_ratio"] == 0.25
    assert r["calibration"]["samples"] == 40
    assert r["versions"]["edgeopt"] == __version__
    assert r["settings"]["model"] == str(tmp_path / "m.h5")
    assert r["wall_seconds"] == 1.23


def test_typed_entries_write_the_schema_keys_and_leave_out_what_was_not_measured():
    quantization = QuantizationInfo(method="auto", per_channel=True, mechanism="m", keep_float=[],
                                    search=SearchInfo(before={"fidelity_drop": 3.0}, exports=1))
    entry = ArtifactEntry(target="onnx", path="a.onnx", precision="int8", size_bytes=10, float_fallback=False,
                          ops={}, quantization=quantization, budgets=[{"budget": "max_size", "value": None}])
    assert entry.to_dict() == {
        "target": "onnx", "path": "a.onnx", "precision": "int8", "size_bytes": 10, "ops": {},
        "float_fallback": False, "budgets": [{"budget": "max_size", "value": None}],
        "quantization": {"method": "auto", "per_channel": True, "mechanism": "m", "keep_float": [],
                         "search": {"before": {"fidelity_drop": 3.0}, "exports": 1}}}


def test_infinite_sqnr_is_written_as_null(tmp_path):
    r = _report(tmp_path, sqnr=math.inf)
    assert r["artifacts"][0]["fidelity"]["sqnr_db"] is None
    path = tmp_path / "report.json"
    report.write_json(path, r)
    assert json.loads(path.read_text())["artifacts"][0]["fidelity"]["sqnr_db"] is None


def test_json_refuses_nan(tmp_path):
    with pytest.raises(ValueError):
        report.write_json(tmp_path / "r.json", {"x": math.nan})


def test_markdown_shows_the_same_facts(tmp_path):
    text = report.render_markdown(_report(tmp_path, sqnr=40.0))
    assert "| tflite fp32 (baseline) | fp32 | 1000 B | 1.00 | 2.000 |" in text
    assert "| m_int8.tflite | int8 | 250 B | 0.25 | 1.000 | 1.500 |" in text
    assert "| 0.875 | 1.000 | 0.9990 | 40.0 |" in text
    assert "- Full integer: yes" in text
    assert "- a note" in text


def test_formatting_helpers():
    assert report.fmt_bytes(None) == "-"
    assert report.fmt_bytes(512) == "512 B"
    assert report.fmt_bytes(1536) == "1.5 KiB"
    assert report.fmt_bytes(3 << 20) == "3.0 MiB"
    assert report.fmt_num(None) == "-"
    assert report.fmt_num(0.12345, 2) == "0.12"


def test_markdown_ranking_names_a_layer_without_a_ratio(tmp_path):
    """A layer whose tensors hold inf (a log of silence) has no noise-to-signal ratio: report.json
    holds null, and report.md says so instead of failing on it."""
    r = _report(tmp_path, sqnr=40.0)
    r["artifacts"][0]["quantization"] = {
        "method": "auto", "per_channel": True, "mechanism": "m", "keep_float": ["log"],
        "search": {"before": {"fidelity_drop": 4.2}, "after": {"fidelity_drop": 0.05}, "exports": 1,
                   "needed": True, "ranking_method": "one run",
                   "ranking": [{"layer": "log", "name": "log", "op": "Log", "added_nsr": None},
                               {"layer": "conv", "name": "conv", "op": "Conv", "added_nsr": 0.0594}]}}
    text = report.render_markdown(r)
    assert "| `log` | Log | not finite |" in text and "| `conv` | Conv | 0.0594 |" in text
