"""Prune -> distill -> int8 through the CLI and recipes, on the bundled digits example."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EDGEOPT = [sys.executable, "-m", "edgeopt.cli"]

pytest.importorskip("tensorflow")


def _run(*args, cwd=ROOT):
    return subprocess.run([*EDGEOPT, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_prune50_distill_int8_recipe_keeps_accuracy(tmp_path):
    recipe = (ROOT / "recipes/prune50_distill_int8.yaml").read_text()
    path = tmp_path / "recipe.yaml"
    path.write_text(recipe.replace("output: edgeopt_out/digits_cnn_prune50", f"output: {tmp_path / 'out'}"))
    proc = _run("run", path, "-q")
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "out/report.json").read_text())
    art = report["artifacts"][0]
    drop = (art["reference_accuracy"]["top1"] - art["accuracy"]["top1"]) * 100
    assert drop <= 1.5, drop
    assert art["ops"]["full_integer"]
    stages = {s["stage"]: s for s in report["stages"]}
    original, pruned = stages["original"], stages["pruned (channels 0.5)"]
    assert pruned["params"] < 0.5 * original["params"] and pruned["macs"] < 0.5 * original["macs"]
    assert pruned["fp32_size_bytes"] < 0.5 * original["fp32_size_bytes"]
    assert art["size_bytes"] < 0.12 * art["baseline_size_bytes"]
    distilled = stages["distilled"]
    assert distilled["accuracy"]["top1"] > pruned["accuracy"]["top1"] + 0.3  # what distillation bought
    assert {"history", "best_epoch"} <= set(distilled["details"])


@pytest.mark.slow
def test_magnitude_pruning_reports_sparsity_and_gzip_size(tmp_path):
    proc = _run("compress", "examples/digits/digits_cnn.h5", "--calib", "calibration_data/digits/calib.npz",
                "--val", "calibration_data/digits/val.npz", "--prune", "magnitude:0.8", "--distill",
                "--distill-data", "calibration_data/digits/train.npz", "--distill-epochs", "10",
                "--runs", "5", "-o", tmp_path / "out", "-q")
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "out/report.json").read_text())
    art = report["artifacts"][0]
    sparsity = {row["layer"]: row for row in report["stages"][2]["details"]["sparsity"]}
    pruned = [r for r in sparsity.values() if r["sparsity"] > 0]
    total = sum(r["params"] for r in pruned)
    assert sum(r["sparsity"] * r["params"] for r in pruned) / total >= 0.79
    assert sparsity["stem_conv"]["sparsity"] == 0 and sparsity["probs"]["sparsity"] == 0  # excluded
    assert art["gzip_size_bytes"] < 0.6 * art["size_bytes"]  # zeros compress; dense formats do not shrink
    assert (art["reference_accuracy"]["top1"] - art["accuracy"]["top1"]) * 100 <= 1.5


@pytest.mark.parametrize("spec, needle", [
    ("channels:1.5", "prune.ratio"),
    ("channels:0", "prune.ratio"),
    ("shrink:0.5", "prune.method"),
])
def test_bad_prune_settings_exit_2_naming_the_setting(tmp_path, spec, needle):
    proc = _run("compress", "examples/digits/digits_cnn.h5", "--prune", spec, "-o", tmp_path / "out")
    assert proc.returncode == 2
    assert needle in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_pruning_a_layer_that_does_not_exist_exits_2(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"""version: 1
model: {ROOT / 'examples/digits/digits_cnn.h5'}
calibration: {{data: {ROOT / 'calibration_data/digits/calib.npz'}}}
prune: {{method: channels, ratio: 0.5, layers: {{"no_such_conv": 0.3}}}}
output: {tmp_path / 'out'}
""")
    proc = _run("run", recipe)
    assert proc.returncode == 2, proc.stderr
    assert "no_such_conv" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()
