"""int8 within a budget: overrides, the sensitivity ranking, and the search for the fewest layers
to keep in float, on a model built with outlier channels (tiny_models.build_outlier_*), where one
int8 scale for a whole tensor erases the ordinary channels."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import tiny_models
from edgeopt import budget, recipe
from edgeopt.exporters.base import Layer
from edgeopt.validate.evaluate import fidelity_drop

FAST = ["--runs", "5", "--warmup", "1"]
OUTLIER_PAIR = ["conv2", "conv3"]  # the conv that makes the outliers and the one that reads them


# --- pieces without a model ------------------------------------------------------------------

def test_overrides_last_match_wins_and_unmatched_patterns_warn():
    layers = [Layer("net/conv1/Conv2D", "CONV_2D", "conv1"), Layer("net/conv2/Conv2D", "CONV_2D", "conv2"),
              Layer("net/fc/MatMul", "FULLY_CONNECTED", "fc")]
    chosen, warnings = budget.apply_overrides({"conv": "float", "conv2": "int8", "^lstm": "float"}, layers,
                                              "the tflite artifact 'm.tflite'")
    assert chosen == {"net/conv1/Conv2D": "float", "net/conv2/Conv2D": "int8"}
    assert warnings == ["Override '^lstm' -> float matched no layer of the tflite artifact 'm.tflite'; its layers "
                        "are: conv1, conv2, fc."]


def test_budget_checks_pass_at_the_limit_and_need_a_value():
    limits = recipe.BudgetsConfig(max_fidelity_drop=1.0, max_accuracy_drop=0.5, min_speedup=2.0, max_size=1000)
    found = {c.name: c.passed for c in budget.checks(limits, fidelity_drop=1.0, accuracy_drop=None, speedup=2.0,
                                                     size=1001)}
    assert found == {"max_accuracy_drop": False, "max_fidelity_drop": True, "min_speedup": True, "max_size": False}


def test_fidelity_drop_is_top1_for_classifiers_and_cosine_otherwise():
    assert fidelity_drop({"top1_agreement": 0.97, "cosine": 0.5}) == pytest.approx(3.0)
    assert fidelity_drop({"cosine": 0.995}) == pytest.approx(0.5)


# --- the outlier model ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def outlier(tmp_path_factory):
    """Files of the outlier model: ONNX (NCHW) and Keras (NHWC), with unlabelled data for each."""
    pytest.importorskip("onnx")
    import onnx

    root = tmp_path_factory.mktemp("outlier")
    rng = np.random.default_rng(1)
    calib = rng.random((48, 3, tiny_models.OUTLIER_SIZE, tiny_models.OUTLIER_SIZE), dtype=np.float32)
    val = rng.random((100, 3, tiny_models.OUTLIER_SIZE, tiny_models.OUTLIER_SIZE), dtype=np.float32)
    onnx.save(tiny_models.build_outlier_onnx(), str(root / "outlier.onnx"))
    np.savez(root / "calib_nchw.npz", image=calib)
    np.savez(root / "val_nchw.npz", image=val)
    np.savez(root / "calib_nhwc.npz", image=calib.transpose(0, 2, 3, 1))
    np.savez(root / "val_nhwc.npz", image=val.transpose(0, 2, 3, 1))
    return root


def _cli(*args):
    from click.testing import CliRunner

    from edgeopt.cli import main

    return CliRunner().invoke(main, [str(a) for a in args])


def _compress_onnx(outlier, out, *extra):
    return _cli("compress", outlier / "outlier.onnx", "--target", "onnx", "--calib", outlier / "calib_nchw.npz",
                "--val", outlier / "val_nchw.npz", "-o", out, *FAST, *extra)


def _check_search(artifact: dict, expected_kept: list[str]) -> dict:
    q = artifact["quantization"]
    search = q["search"]
    assert search["needed"] and search["met"]
    assert search["before"]["fidelity_drop"] > 10.0  # plain int8 breaks the 1-point budget by far
    assert search["after"]["fidelity_drop"] <= 1.0
    assert q["keep_float"] == expected_kept
    assert len(q["keep_float"]) <= 0.2 * q["layers"]
    ranked = [r["layer"] for r in search["ranking"]]
    assert sorted(ranked[:len(expected_kept)]) == sorted(expected_kept)
    assert [t["passed"] for t in search["tried"]][-1] is True and not search["tried"][0]["passed"]
    whole = max(t["samples"] for t in search["tried"])
    for t in search["tried"]:  # a try settled on its first samples was far over the limit there
        assert t["samples"] == whole or (t["samples"] == 16 and t["fidelity_drop"] > 2.0 and not t["passed"])
    if search["ranking_method"].startswith("error each layer adds"):
        assert search["ranking"][0]["added_nsr"] > 10 * search["ranking"][-1]["added_nsr"]
        if search["edits"]:  # one run ranks; the tries are edits, and the edit that held is the artifact
            assert search["exports"] == 1
            assert search["edits"] == 1 + len(search["tried"]) - 1  # the first is the probe
        else:  # one run ranks; plain int8, then one quantization per try
            assert search["exports"] == len(search["tried"])
    else:
        assert search["ranking"][0]["fidelity_drop"] > 10.0 and search["ranking"][-1]["fidelity_drop"] < 1.0
        if search["edits"]:  # a try per layer and per search step, each an edit (after the probe)
            assert search["ranking_method"].endswith("(edits of the int8 model)")
            assert search["exports"] == 1
            assert search["edits"] == 1 + len(search["ranking"]) + len(search["tried"]) - 1
        else:  # plain int8, then one quantization per layer and per try
            assert search["exports"] == 1 + len(search["ranking"]) + len(search["tried"]) - 1
    assert artifact["budgets"] == [{"budget": "max_fidelity_drop", "limit": 1.0,
                                    "value": pytest.approx(search["after"]["fidelity_drop"], abs=1e-3),
                                    "passed": True}]
    cost = q["latency_cost"]
    assert cost["int8_p50_ms"] > 0 and cost["p50_ms"] == artifact["latency_ms"]["p50"]
    assert artifact["variants"]["int8 (no layer in float)"]["fidelity"]["cosine"] < 0.9
    return q


@pytest.mark.slow
def test_onnx_budget_search_keeps_the_reader_of_the_outliers_in_float(outlier, tmp_path):
    onnx = pytest.importorskip("onnx")
    out = tmp_path / "out"
    result = _compress_onnx(outlier, out, "--max-fidelity-drop", "1")
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    (artifact,) = report["artifacts"]
    # With conv2's outliers no longer quantized where conv3 reads them, conv3 alone in float holds
    # the budget.
    q = _check_search(artifact, ["conv3"])
    assert "ladder" not in q["search"] and "precisions" not in q  # --fallback-cost p50: float, the fastest
    assert q["mechanism"] == "onnxruntime quantize_static, CalibrationMethod.MinMax (its default)"
    # The edit, where conv3 reads conv2's float output, holds the budget and is the artifact
    # (nodes_to_exclude=[conv3] would still quantize conv3's input while conv2 is quantized).
    assert q["keep_float_mechanism"].startswith("the int8 model edited so those layers read float inputs")
    assert "as onnxruntime quantize_static(nodes_to_exclude=...) keeps them" in q["keep_float_mechanism"]
    assert report["budgets"] == {"limits": {"max_fidelity_drop": 1.0}, "passed": True}
    # The terminal says what was kept and why.
    assert "1 of 10 layers kept in float to meet the budget" in result.output and "conv3" in result.output
    assert "## Quantization and budgets" in (out / "report.md").read_text()
    # Independently: conv3 reads float weights, every other conv dequantized int8 ones, and ONNX
    # Runtime's outputs match the float model.
    model = onnx.load(str(out / "outlier_int8.onnx"))
    produced_by = {o: n.op_type for n in model.graph.node for o in n.output}
    int8_weights = {n.name: produced_by.get(n.input[1]) == "DequantizeLinear" for n in model.graph.node
                    if n.op_type == "Conv"}
    assert int8_weights == {f"conv{i}": f"conv{i}" != "conv3" for i in range(tiny_models.OUTLIER_CONVS)}
    feed = {"image": np.load(outlier / "val_nchw.npz")["image"][:20]}
    expected = tiny_models.run_onnx(outlier / "outlier.onnx", feed)[0]
    assert tiny_models.cosine(tiny_models.run_onnx(out / "outlier_int8.onnx", feed)[0], expected) > 0.99


@pytest.mark.slow
def test_with_size_as_the_cost_layers_out_of_int8_get_16_bit_activations_where_that_holds(outlier, tmp_path):
    """A calibration sample with a spike stretches the activation ranges, which 16-bit activations
    over the same ranges absorb; conv3's tiny weights for conv2's outlier channels (rounded to 0 in
    int8) are a weight error they cannot, and conv3 stays float."""
    onnx = pytest.importorskip("onnx")
    out, result, q = _spiky_search(outlier, tmp_path, "onnx", samples=slice(0, 1))
    kept = q["keep_float"]
    assert q["precisions"]["float"] == ["conv3"] and set(q["precisions"]["int16"]) == set(kept) - {"conv3"}
    assert len(kept) >= 3
    row = next(r for r in q["search"]["ladder"] if r["passed"] and r["int16"] == len(kept) - 1)
    assert row["rung"] == "int16"
    assert q["search"]["after"]["fidelity_drop"] == row["fidelity_drop"] <= 1.0
    assert "kept out of int8" in result.output and "int16 activations with int8 weights" in result.output
    # In the file: each int16 layer reads int8 weights and 16-bit activations; conv3 float weights.
    model = onnx.load(str(out / "outlier_int8.onnx"))
    produced_by = {o: n for n in model.graph.node for o in n.output}
    types = {t.name: t.data_type for t in model.graph.initializer}
    for node in model.graph.node:
        if node.name in q["precisions"]["int16"]:
            pair = produced_by[node.input[0]]
            assert pair.domain == "com.microsoft" and types[pair.input[2]] == onnx.TensorProto.UINT16, node.name
            assert produced_by[node.input[1]].op_type == "DequantizeLinear", node.name
        if node.name == "conv3":
            assert node.input[1] not in produced_by  # its float weight initializer
    feed = {"image": np.load(outlier / "val_nchw.npz")["image"][:20]}
    expected = tiny_models.run_onnx(outlier / "outlier.onnx", feed)[0]
    assert tiny_models.cosine(tiny_models.run_onnx(out / "outlier_int8.onnx", feed)[0], expected) > 0.99


SPIKE = 50.0


def _spiky_search(outlier: Path, tmp_path: Path, target: str, samples: slice) -> tuple[Path, Any, dict]:
    """The outlier model compressed for ``target`` within a 1-point budget, size as the cost, its
    calibration ``samples`` holding a spike of SPIKE: (out dir, CLI result, artifacts[0].quantization)."""
    calib = np.load(outlier / "calib_nchw.npz")["image"].copy()
    calib[samples, :, 0, 0] = SPIKE
    np.savez(tmp_path / "spiky.npz", image=calib)
    out = tmp_path / "out"
    result = _cli("compress", outlier / "outlier.onnx", "--target", target, "--calib", tmp_path / "spiky.npz",
                  "--val", outlier / "val_nchw.npz", "-o", out, "--max-fidelity-drop", "1",
                  "--fallback-cost", "size", *FAST)
    assert result.exit_code == 0, result.output
    (artifact,) = json.loads((out / "report.json").read_text())["artifacts"]
    return out, result, artifact["quantization"]


@pytest.mark.slow
def test_tflite_from_onnx_with_size_as_the_cost_gives_kept_layers_16_bit_activations(outlier, tmp_path):
    """Calibration data with a spike in every sample (the TFLite path's range rule averages a lone
    one away) on the onnx->tflite path: ai-edge-quantizer's A16W8 recipe entries quantize each
    int16 try."""
    pytest.importorskip("litert_torch")
    pytest.importorskip("ai_edge_quantizer")
    out, _result, q = _spiky_search(outlier, tmp_path, "tflite", samples=slice(None))
    assert q["precisions"]["int16"], q["search"]["ladder"]
    assert q["search"]["after"]["fidelity_drop"] <= 1.0
    # In the file: int16 tensors (the 16-bit activations) beside int8 ones.
    from edgeopt.tflite_file import check_tflite

    dtypes = {t.dtype for t in check_tflite(out / "outlier_int8.tflite")}
    assert {"int16", "int8"} <= dtypes, dtypes


@pytest.mark.slow
def test_tflite_budget_search_denylists_the_outlier_pair(outlier, tmp_path):
    pytest.importorskip("tensorflow")
    pytest.importorskip("ai_edge_litert")
    from conftest import tflite_ops

    model_path = tmp_path / "outlier.h5"
    tiny_models.build_outlier_keras().save(model_path)
    out = tmp_path / "out"
    result = _cli("compress", model_path, "--target", "tflite", "--calib", outlier / "calib_nhwc.npz",
                  "--val", outlier / "val_nhwc.npz", "-o", out, *FAST, "--max-fidelity-drop", "1")
    assert result.exit_code == 0, result.output
    (artifact,) = json.loads((out / "report.json").read_text())["artifacts"]
    q = _check_search(artifact, OUTLIER_PAIR)
    assert "mlir_quantize" in q["keep_float_mechanism"] and "denylisted_nodes" in q["keep_float_mechanism"]
    convs = [(inputs[0], inputs[1]) for op, inputs, _ in tflite_ops(out / "outlier_int8.tflite") if op == "CONV_2D"]
    assert [str(a) for a, _ in convs] == ["float32" if i in (2, 3) else "int8" for i in range(10)]


def _searched(outlier: Path, target: str, tmp_path: Path, *extra: str) -> tuple[Path, dict]:
    """The outlier ONNX model compressed for ``target`` within a 1-point fidelity budget."""
    out = tmp_path / "out"
    result = _cli("compress", outlier / "outlier.onnx", "--target", target, "--calib", outlier / "calib_nchw.npz",
                  "--val", outlier / "val_nchw.npz", "-o", out, *FAST, "--max-fidelity-drop", "1", *extra)
    assert result.exit_code == 0, result.output
    (artifact,) = json.loads((out / "report.json").read_text())["artifacts"]
    return out, artifact


@pytest.mark.slow
def test_tflite_budget_search_from_onnx_keeps_the_outlier_pair_in_float(outlier, tmp_path):
    pytest.importorskip("litert_torch")
    pytest.importorskip("ai_edge_quantizer")
    from conftest import tflite_ops

    out, artifact = _searched(outlier, "tflite", tmp_path)
    # ai-edge-quantizer leaves an op in float with float inputs, dequantizing what it reads: like
    # onnxruntime's nodes_to_exclude, conv3 needs the writer of the outliers, conv2, in float too.
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(out / "outlier_int8.tflite"))
    names = {t["index"]: t["name"] for t in interp.get_tensor_details()}
    written = [names[op["outputs"][0]] for op in interp._get_ops_details() if op["op_name"] == "CONV_2D"]
    q = _check_search(artifact, artifact["quantization"]["keep_float"])
    assert sorted(q["keep_float"]) == sorted(written[2:4])  # what conv2 and conv3 write, in graph order
    assert "NO_QUANTIZE" in q["keep_float_mechanism"]
    ops = [(inputs[0], inputs[1]) for op, inputs, _ in tflite_ops(out / "outlier_int8.tflite") if op == "CONV_2D"]
    assert [str(a) for a, _ in ops] == ["float32" if i in (2, 3) else "int8" for i in range(10)]


@pytest.mark.slow
def test_openvino_budget_search_ignores_the_conv_reading_the_outliers(outlier, tmp_path):
    from edgeopt.deps import no_telemetry

    with no_telemetry():
        pytest.importorskip("openvino")
        pytest.importorskip("nncf")
    _out, artifact = _searched(outlier, "openvino", tmp_path, "--fallback-cost", "size")
    # NNCF quantizes a layer's inputs, so keeping the reader of the outlier tensor in float is enough.
    q = _check_search(artifact, ["conv3/WithoutBiases"])
    # The tries were edits of NNCF's IR (``openvino_float_edit``), and the artifact is the one that held.
    assert q["keep_float_mechanism"].startswith("the int8 model edited so those layers read float inputs") \
        and q["keep_float_mechanism"].endswith("as NNCF nncf.quantize(ignored_scope=nncf.IgnoredScope(names=...)) "
                                               "keeps them")
    assert q["search"]["exports"] == 1 and q["search"]["edits"] >= 3
    import openvino as ov

    convs = [op for op in ov.Core().read_model(artifact["path"]).get_ordered_ops()
             if op.get_type_name() == "Convolution"]
    reads_fq = {op.get_friendly_name(): op.input(0).get_source_output().get_node().get_type_name() == "FakeQuantize"
                for op in convs}
    assert len(reads_fq) == 10 and [n for n, q8 in reads_fq.items() if not q8] == ["conv3/WithoutBiases"]
    # With size as the cost, its weights are stored in fp16, which holds the budget too.
    assert q["precisions"] == {"fp16": ["conv3/WithoutBiases"], "float": []}
    (row,) = q["search"]["ladder"]
    assert row["rung"] == "fp16" and row["passed"] and q["search"]["after"]["fidelity_drop"] == row["fidelity_drop"]
    # conv3 holds 576 weights: 2 bytes each instead of 1, where float would be 4
    assert q["size_cost"]["bytes"] - q["size_cost"]["int8_bytes"] < 2 * 576


@pytest.mark.slow
def test_a_budget_no_search_can_meet_exits_1_and_writes_the_best_try(outlier, tmp_path):
    out = tmp_path / "out"
    # conv2 and conv3 forced to int8: no layer left in float can undo the outliers.
    result = _compress_onnx(outlier, out, "--max-fidelity-drop", "1", "--max-size", "1KiB", "--recipe",
                            _recipe(tmp_path, {"conv[23]$": "int8", "no_such_layer": "float"}))
    assert result.exit_code == 1, result.output
    assert "Budget missed: onnx: max_fidelity_drop" in result.output and "max_size" in result.output
    assert "matched no layer" in result.output  # the unmatched override, in the terminal
    report = json.loads((out / "report.json").read_text())
    assert (out / "outlier_int8.onnx").is_file() and report["budgets"]["passed"] is False
    (artifact,) = report["artifacts"]
    search = artifact["quantization"]["search"]
    assert not search["met"] and [t["kept_in_float"] for t in search["tried"]] == [0, 1, 2, 4, 8]
    assert {r["layer"] for r in search["ranking"]}.isdisjoint({"conv2", "conv3"})
    assert any("Override 'no_such_layer' -> float matched no layer" in w for w in report["warnings"])
    assert any("No number of layers kept in float" in w for w in report["warnings"])
    assert "max_size 1024: " in result.output and "MISSED" in result.output and "e+0" not in result.output


def _recipe(tmp_path: Path, overrides: dict) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(recipe.to_yaml(recipe.build("test", model="unused.onnx", overrides=overrides)))
    return path


@pytest.mark.slow
def test_overrides_alone_keep_layers_in_float_without_a_search(outlier, tmp_path):
    out = tmp_path / "out"
    result = _compress_onnx(outlier, out, "--keep-float", "conv[23]$", "--no-guard")
    assert result.exit_code == 0, result.output
    (artifact,) = json.loads((out / "report.json").read_text())["artifacts"]
    q = artifact["quantization"]
    assert q["keep_float"] == OUTLIER_PAIR and "search" not in q and q["overrides"]["float"] == OUTLIER_PAIR
    assert artifact["fidelity"]["cosine"] > 0.99
    assert "2 of 10 layers kept in float (overrides)" in result.output


def test_accuracy_budget_without_labels_exits_2_before_writing(outlier, tmp_path):
    result = _compress_onnx(outlier, tmp_path / "out", "--max-accuracy-drop", "1")
    assert result.exit_code == 2
    assert "--max-accuracy-drop needs labelled validation data" in result.output and "val_nchw.npz" in result.output
    assert not (tmp_path / "out").exists()


def test_budgets_on_a_path_without_float_layers_are_refused_before_any_work(tmp_path, monkeypatch):
    import edgeopt.pipeline as pipeline

    monkeypatch.setattr(pipeline, "load_source", lambda *a, **k: pytest.fail("the model was loaded"))
    calib = tmp_path / "c.npz"
    np.savez(calib, image=np.zeros((2, 3, 8, 8), np.float32))
    # A path whose backend cannot keep layers in float (its record has no keep_float) is refused.
    from dataclasses import replace

    from edgeopt import registry

    record = registry.export_path("torch->tflite")
    monkeypatch.setitem(registry._EXPORTS, record.key, replace(record, keep_float=None, layers=None))
    result = _cli("compress", "nets.py:build", "--target", "tflite", "--calib", calib, "--max-fidelity-drop", "1",
                  "-o", tmp_path / "out")
    assert result.exit_code == 2
    assert "tflite target (torch->tflite) cannot keep chosen layers in float" in result.output
    result = _cli("compress", "nets.py:build", "--precision", "fp16", "--keep-float", "conv", "-o", tmp_path / "out")
    assert result.exit_code == 2 and "precision is fp16" in result.output
    result = _cli("compress", "nets.py:build", "--calib", calib, "--max-fidelity-drop", "1", "--no-validate",
                  "-o", tmp_path / "out")
    assert result.exit_code == 2 and "validation is turned off" in result.output
    # Without calibration data int8 is dynamic range: nothing to keep in float, never silently.
    result = _cli("compress", "nets.py:build", "--target", "onnx", "--keep-float", "conv", "-o", tmp_path / "out")
    assert result.exit_code == 2 and "(--keep-float)" in result.output and "--calib" in result.output
    result = _cli("compress", "nets.py:build", "--target", "onnx", "--val", calib, "--max-fidelity-drop", "1",
                  "-o", tmp_path / "out")
    assert result.exit_code == 2 and "no calibration data" in result.output
    assert not (tmp_path / "out").exists()


def test_the_narrowing_step_aims_where_the_measured_excess_crosses_the_budget():
    from edgeopt.validate.evaluate import Quality

    limits = recipe.BudgetsConfig(max_fidelity_drop=2.0)
    quality = lambda drop: (None, Quality({}, None, drop, None))  # noqa: E731
    # Excess 3 with 0 layers in float, 0.5 with 8: the line crosses 1 at 6.4.
    assert budget._between(0, 8, {0: quality(6.0), 8: quality(1.0)}, limits) == 6
    # Always strictly inside the bracket, and no guess without a falling line through 1.
    assert budget._between(4, 6, {4: quality(100.0), 6: quality(0.0)}, limits) == 5
    assert budget._between(0, 8, {0: quality(1.0), 8: quality(1.0)}, limits) is None
