"""Every recipe in recipes/ runs on the bundled digits example, as a user runs it from the
repository root, and a saved recipe.yaml re-run gives the same artifact bytes where the backend
allows it (TFLite, ONNX; OpenVINO's weights, see README "Recipes and budgets").

recipes/prune50_distill_int8.yaml is exercised by tests/passes/test_prune_pipeline.py."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
pytest.importorskip("tensorflow")

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--runs", "5", "--warmup", "1"]  # flags override the recipe's validation.runs/warmup


def _cli(*args):
    from click.testing import CliRunner

    from edgeopt.cli import main

    return CliRunner().invoke(main, [str(a) for a in args])


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _run_recipe(name: str, out: Path, monkeypatch) -> dict:
    monkeypatch.chdir(ROOT)  # recipes name their files relative to the repository root
    result = _cli("compress", "--recipe", f"recipes/{name}", "-o", out, *FAST)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    for artifact in report["artifacts"]:
        drop = (artifact["reference_accuracy"]["top1"] - artifact["accuracy"]["top1"]) * 100
        assert drop <= 1.0, (artifact["target"], drop)
    return report


def _rerun_gives_same_bytes(out: Path, files: list[str]) -> None:
    before = {f: _sha(out / f) for f in files}
    result = _cli("run", out / "recipe.yaml", "-q")
    assert result.exit_code == 0, result.output
    assert {f: _sha(out / f) for f in files} == before


def test_int8_tflite_recipe_reproduces_its_artifact(tmp_path, monkeypatch):
    pytest.importorskip("ai_edge_litert")
    out = tmp_path / "out"
    report = _run_recipe("int8_tflite.yaml", out, monkeypatch)
    (artifact,) = report["artifacts"]
    assert artifact["ops"]["full_integer"] and artifact["quantization"]["method"] == "auto"
    _rerun_gives_same_bytes(out, ["digits_cnn_int8.tflite"])


def test_int8_onnx_recipe_reproduces_its_artifact_across_processes(tmp_path, monkeypatch):
    pytest.importorskip("tf2onnx")
    out = tmp_path / "out"
    report = _run_recipe("int8_onnx.yaml", out, monkeypatch)
    (artifact,) = report["artifacts"]
    q = artifact["quantization"]
    assert (q["method"], q["percentile"]) == ("percentile", 99.999) and "CalibrationMethod.Percentile" in q["mechanism"]
    _rerun_gives_same_bytes(out, ["digits_cnn_int8.onnx"])
    # A fresh process with another hash seed: tf2onnx's generated names are renumbered, so the
    # bytes still match.
    first = _sha(out / "digits_cnn_int8.onnx")
    script = Path(sys.executable).with_name("edgeopt")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "edgeopt.cli"]
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    proc = subprocess.run([*command, "run", str(out / "recipe.yaml"), "-q"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert _sha(out / "digits_cnn_int8.onnx") == first


def test_int8_openvino_recipe(tmp_path, monkeypatch):
    from edgeopt.deps import no_telemetry

    with no_telemetry():
        pytest.importorskip("openvino")
        pytest.importorskip("nncf")
    out = tmp_path / "out"
    report = _run_recipe("int8_openvino.yaml", out, monkeypatch)
    (artifact,) = report["artifacts"]
    assert "HISTOGRAM" in artifact["quantization"]["mechanism"]
    # The weights reproduce; the .xml names some constants from a process-wide counter.
    _rerun_gives_same_bytes(out, ["digits_cnn_int8.bin"])


def test_int8_accuracy_budget_recipe_meets_its_budgets(tmp_path, monkeypatch):
    pytest.importorskip("tf2onnx")
    out = tmp_path / "out"
    report = _run_recipe("int8_accuracy_budget.yaml", out, monkeypatch)
    assert report["budgets"]["passed"] is True
    assert report["budgets"]["limits"] == {"max_accuracy_drop": 0.25, "max_fidelity_drop": 0.5, "max_size": 204800}
    for artifact in report["artifacts"]:
        checks = {c["budget"]: c for c in artifact["budgets"]}
        assert set(checks) == {"max_accuracy_drop", "max_fidelity_drop", "max_size"}
        assert all(c["passed"] for c in checks.values())
        q = artifact["quantization"]
        assert "probs" not in " ".join(q["keep_float"])  # the override keeps the classifier in int8
        if q["search"]["needed"]:
            assert 1 <= len(q["keep_float"]) <= 2 and q["search"]["ranking"]
            assert "latency_cost" in q
    assert not [w for w in report["warnings"] if "matched no layer" in w]
    _rerun_gives_same_bytes(out, ["digits_cnn_int8.tflite"])
