"""The fidelity guard, on by default: plain int8 that drops more than its limit is searched for
the layers to keep out of int8; a run no mix can hold exits 1 with the best artifact written;
--no-guard and budgets turn it off. On the outlier model of test_budget, where int8 breaks by far."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgeopt import guard, recipe
from edgeopt.calibration import Subset
from edgeopt.validate.evaluate import Metric, Reference
from test_budget import _compress_onnx, _recipe, outlier  # noqa: F401  (the fixture)


class _Rows:
    """The least of a data source a Reference reads: no labels."""

    whole: frozenset = frozenset()

    def label_values(self, _indices):
        return None


def _reference(outputs: np.ndarray) -> Reference:
    source = _Rows()
    return Reference([outputs], Subset(source, tuple(range(len(outputs)))), Metric("top1"))


def _config(**changes) -> recipe.CompressConfig:
    return recipe.CompressConfig(model="m.onnx", **changes)


def test_the_limit_is_a_point_and_never_less_than_one_sample():
    logits = np.random.default_rng(0).random((50, 7)).astype(np.float32)
    few = guard.for_run(_config(), _reference(logits))
    assert few.agreement and few.limit == pytest.approx(2.0) and few.one_sample == pytest.approx(2.0)
    many = guard.for_run(_config(), _reference(np.tile(logits, (8, 1))))
    assert many.limit == guard.LIMIT_POINTS == 1.0
    maps = guard.for_run(_config(), _reference(logits.reshape(50, 7, 1)))
    assert not maps.agreement and maps.limit == 1.0 and maps.one_sample is None
    assert maps.budgets(recipe.BudgetsConfig(max_size=10)).model_dump() == \
        {"max_accuracy_drop": None, "max_fidelity_drop": 1.0, "min_speedup": None, "max_size": 10}


def test_the_guard_is_off_by_request_replaced_by_budgets_and_idle_without_data():
    reference = _reference(np.random.default_rng(0).random((400, 7)).astype(np.float32))
    assert guard.for_run(_config(guard=False), reference) is None
    assert guard.for_run(_config(budgets={"max_fidelity_drop": 3.0}), reference) is None
    assert guard.for_run(_config(), None) is None
    assert guard.for_run(_config(budgets={"max_size": 1000}), reference) is not None  # a checked-only budget


def test_the_agreement_interval_is_wilsons():
    lo, hi = guard.interval95(1.0, 360)
    assert hi == 1.0 and lo == pytest.approx(0.98944, abs=1e-4)
    lo, hi = guard.interval95(0.9, 100)
    assert (lo, hi) == (pytest.approx(0.8256, abs=1e-3), pytest.approx(0.9448, abs=1e-3))


@pytest.mark.slow
def test_the_guard_searches_by_default_and_holds(outlier, tmp_path):  # noqa: F811
    out = tmp_path / "out"
    result = _compress_onnx(outlier, out)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    (artifact,) = report["artifacts"]
    g = artifact["guard"]
    assert g["held"] and g["searched"] and g["limit"] == 1.0 and g["measure"] == "100 x (1 - cosine)"
    assert g["samples"] == 100 and g["fidelity_drop"] <= 1.0 and "agreement_95" not in g
    q = artifact["quantization"]
    assert q["search"]["before"]["fidelity_drop"] > 10.0 and q["keep_float"] == ["conv3"]
    assert artifact["budgets"][0]["budget"] == "fidelity_guard" and artifact["budgets"][0]["passed"]
    assert report["guard"] == {"limit": 1.0, "measure": "100 x (1 - cosine)", "samples": 100, "held": True}
    assert "budgets" not in report  # the guard is no budget of the user's
    assert "to hold the fidelity guard" in result.output and "held after the search" in result.output
    assert "Fidelity guard:" in (out / "report.md").read_text()


@pytest.mark.slow
def test_no_guard_writes_plain_int8(outlier, tmp_path):  # noqa: F811
    out = tmp_path / "out"
    result = _compress_onnx(outlier, out, "--no-guard")
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    (artifact,) = report["artifacts"]
    assert "guard" not in artifact and "guard" not in report and "search" not in artifact["quantization"]
    assert artifact["fidelity"]["cosine"] < 0.9
    assert recipe.load(out / "recipe.yaml").guard is False


@pytest.mark.slow
def test_a_guard_no_mix_holds_exits_1_with_the_best_artifact(outlier, tmp_path):  # noqa: F811
    out = tmp_path / "out"
    # conv2 and conv3 forced to int8: no layer left in float can undo the outliers.
    result = _compress_onnx(outlier, out, "--recipe", _recipe(tmp_path, {"conv[23]$": "int8"}))
    assert result.exit_code == 1, result.output
    assert "Fidelity guard: the onnx artifact drops" in result.output and "(limit 1)" in result.output
    assert "--no-guard" in result.output
    report = json.loads((out / "report.json").read_text())
    (artifact,) = report["artifacts"]
    assert (out / "outlier_int8.onnx").is_file() and not artifact["guard"]["held"] and not report["guard"]["held"]
    assert artifact["guard"]["fidelity_drop"] > 10.0 and "MISSED" in result.output
