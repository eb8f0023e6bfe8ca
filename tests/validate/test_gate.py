"""The CI gate: pass, fail and boundary cases, JUnit and Markdown output, exit codes."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgeopt.errors import InputRejected, UsageError
from edgeopt.report import SCHEMA_VERSION
from edgeopt.validate import gate as g


def report(top1=0.95, agreement=0.99, p50=10.0, p90=10.5, size=1000) -> dict:
    return {"schema_version": 1, "artifacts": [{
        "target": "tflite", "precision": "int8", "path": "m_int8.tflite", "size_bytes": size,
        "latency_ms": {"p50": p50, "p90": p90, "mean": p50, "runs": 100, "warmup": 10, "threads": 2},
        "fidelity": {"top1_agreement": agreement, "cosine": 0.999, "max_abs_err": 0.01, "sqnr_db": 30.0},
        "accuracy": {"top1": top1}}]}


def by_name(checks):
    return {c.name: c for c in checks}


def test_two_point_accuracy_loss_fails_a_one_point_budget():
    checks = g.evaluate(report(top1=0.95), report(top1=0.93), g.GateLimits(max_accuracy_drop=1.0))
    check = by_name(checks)["accuracy_drop"]
    assert not check.passed and check.delta == pytest.approx(2.0)


def test_within_budget_passes():
    checks = g.evaluate(report(top1=0.95), report(top1=0.945), g.GateLimits(max_accuracy_drop=1.0))
    assert all(c.passed for c in checks)


def test_drop_exactly_at_threshold_passes():
    # 0.95 - 0.94 is 1.0000000000000009 points in binary floating point: still "at" the limit.
    checks = g.evaluate(report(top1=0.95), report(top1=0.94), g.GateLimits(max_accuracy_drop=1.0))
    assert by_name(checks)["accuracy_drop"].passed


def test_fidelity_drop_in_points():
    checks = g.evaluate(report(agreement=0.99), report(agreement=0.955), g.GateLimits(max_fidelity_drop=3.0))
    check = by_name(checks)["fidelity_drop"]
    assert check.delta == pytest.approx(3.5) and not check.passed


def test_latency_regression_counts_only_beyond_noise():
    noisy = g.evaluate(report(p50=10.0, p90=13.0), report(p50=12.0, p90=14.0),
                       g.GateLimits(max_latency_regression=10))
    assert by_name(noisy)["latency_regression"].passed  # +20% but inside the 3 ms spread
    real = g.evaluate(report(p50=10.0, p90=10.5), report(p50=12.0, p90=12.4),
                      g.GateLimits(max_latency_regression=10))
    assert not by_name(real)["latency_regression"].passed
    small = g.evaluate(report(p50=10.0, p90=10.1), report(p50=10.8, p90=10.9),
                       g.GateLimits(max_latency_regression=10))
    assert by_name(small)["latency_regression"].passed  # beyond noise but under the threshold


def test_size_limit():
    checks = g.evaluate(report(), report(size=1500), g.GateLimits(max_size=1200))
    assert not by_name(checks)["size"].passed and by_name(checks)["size"].delta == 300


def test_missing_metric_or_limits_is_usage_error():
    no_acc = report()
    del no_acc["artifacts"][0]["accuracy"]
    with pytest.raises(UsageError, match="top-1 accuracy"):
        g.evaluate(report(), no_acc, g.GateLimits(max_accuracy_drop=1))
    with pytest.raises(UsageError, match="No limit"):
        g.evaluate(report(), report(), g.GateLimits())
    other = report()
    other["artifacts"][0]["target"] = "onnx"
    with pytest.raises(UsageError, match="onnx:int8"):
        g.evaluate(report(), other, g.GateLimits(max_size=10))


def test_junit_parses_with_a_junit_parser(tmp_path):
    junitparser = pytest.importorskip("junitparser")
    checks = g.evaluate(report(top1=0.95, size=1000), report(top1=0.93, size=900),
                        g.GateLimits(max_accuracy_drop=1.0, max_size=1000))
    path = tmp_path / "gate.xml"
    path.write_text(g.to_junit(checks))
    xml = junitparser.JUnitXml.fromfile(str(path))
    cases = [case for suite in xml for case in suite]
    assert len(cases) == 2
    failed = [c for c in cases if not c.is_passed]
    assert [c.name for c in failed] == ["accuracy_drop"]
    text = failed[0].result[0].text
    assert "baseline=95" in text and "candidate=93" in text and "threshold=1.0 points" in text


def _cli(tmp_path, base, cand, *flags):
    # A dict is written as JSON; a str as is (json.dumps cannot write 1e999).
    (tmp_path / "base.json").write_text(base if isinstance(base, str) else json.dumps(base))
    (tmp_path / "cand.json").write_text(cand if isinstance(cand, str) else json.dumps(cand))
    return subprocess.run([sys.executable, "-m", "edgeopt.cli", "gate", str(tmp_path / "cand.json"),
                           "--baseline", str(tmp_path / "base.json"), *flags],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "300"})


def test_cli_exit_codes_and_markdown(tmp_path):
    bad = _cli(tmp_path, report(top1=0.95), report(top1=0.93), "--max-accuracy-drop", "1",
               "--markdown", str(tmp_path / "gate.md"), "--junit", str(tmp_path / "gate.xml"))
    assert bad.returncode == 1, bad.stderr
    assert "accuracy_drop" in bad.stderr and "Traceback" not in bad.stderr
    md = (tmp_path / "gate.md").read_text()
    assert "FAILED (1 of 1 checks)" in md and "| tflite:int8 | accuracy_drop |" in md
    good = _cli(tmp_path, report(top1=0.95), report(top1=0.945), "--max-accuracy-drop", "1",
                "--max-latency-regression", "10%")
    assert good.returncode == 0, good.stderr
    broken = copy.deepcopy(report())
    del broken["schema_version"]
    unreadable = _cli(tmp_path, report(), broken, "--max-size", "10")
    assert unreadable.returncode == 3


def _refused(proc, *phrases):
    """Exit 3 with every phrase in the error, and no check run: no table, no pass, no FAIL."""
    output = proc.stdout + proc.stderr
    assert proc.returncode == 3, output
    message = " ".join(proc.stderr.split())
    for phrase in phrases:
        assert phrase in message, f"{phrase!r} not in:\n{proc.stderr}"
    assert "Traceback" not in output and "FAIL" not in output and "passed" not in output, output
    assert "edgeopt gate" not in proc.stdout, output  # the table of checks


@pytest.mark.parametrize("side", ["baseline", "candidate"])
def test_cli_refuses_nan_metrics_and_an_unknown_schema_version(tmp_path, side):
    # The report that once printed "FAIL ... +nan points" and exited 1.
    broken = report()
    broken["schema_version"] = 999
    broken["artifacts"][0]["fidelity"]["cosine"] = float("nan")
    base, cand = (broken, report()) if side == "baseline" else (report(), broken)
    proc = _cli(tmp_path, base, cand, "--max-fidelity-drop", "1", "--max-accuracy-drop", "1")
    name = "base.json" if side == "baseline" else "cand.json"
    _refused(proc, f"{name}' has schema_version 999", f"reads schema_version {SCHEMA_VERSION}")

    broken["schema_version"] = SCHEMA_VERSION
    base, cand = (broken, report()) if side == "baseline" else (report(), broken)
    proc = _cli(tmp_path, base, cand, "--max-fidelity-drop", "1")
    _refused(proc, f"{name}' has artifacts[0].fidelity.cosine = NaN", "expected a finite number")


@pytest.mark.parametrize("side", ["baseline", "candidate"])
@pytest.mark.parametrize("written, field, shown", [
    ('"top1": Infinity', "artifacts[0].accuracy.top1", "Infinity"),
    ('"sqnr_db": -Infinity', "artifacts[0].fidelity.sqnr_db", "-Infinity"),
    ('"p50": 1e999', "artifacts[0].latency_ms.p50", "Infinity"),  # json reads an overflow as inf
])
def test_cli_refuses_infinite_numbers(tmp_path, side, written, field, shown):
    good = json.dumps(report())
    original = {"top1": '"top1": 0.95', "sqnr_db": '"sqnr_db": 30.0', "p50": '"p50": 10.0'}[field.rsplit(".", 1)[1]]
    bad = good.replace(original, written)
    assert bad != good
    base, cand = (bad, good) if side == "baseline" else (good, bad)
    proc = _cli(tmp_path, base, cand, "--max-size", "2000")  # a check that reads none of these fields
    name = "base.json" if side == "baseline" else "cand.json"
    _refused(proc, f"{name}' has {field} = {shown};")


@pytest.mark.parametrize("version", [999, SCHEMA_VERSION + 1, 0, -1, "1", True, 1.0, None])
def test_unknown_or_malformed_schema_versions_are_refused(tmp_path, version):
    path = tmp_path / "report.json"
    path.write_text(json.dumps({**report(), "schema_version": version}))
    with pytest.raises(InputRejected) as info:
        g.load_report(path)
    assert str(path) in info.value.message
    assert f"schema_version {json.dumps(version)};" in info.value.message
    assert f"reads schema_version {SCHEMA_VERSION}" in info.value.message


def test_every_readable_schema_version_and_null_metrics_are_accepted(tmp_path):
    path = tmp_path / "report.json"
    assert SCHEMA_VERSION in g.READABLE_SCHEMA_VERSIONS
    for version in g.READABLE_SCHEMA_VERSIONS:
        unmeasured = report()
        unmeasured["schema_version"] = version
        unmeasured["artifacts"][0]["fidelity"]["sqnr_db"] = None  # how edgeopt writes an exact match
        path.write_text(json.dumps(unmeasured))
        assert g.load_report(path) == unmeasured


def test_non_finite_numbers_outside_artifacts_and_in_lists_are_named(tmp_path):
    path = tmp_path / "report.json"
    path.write_text(json.dumps({**report(), "reference": {"latency_ms": {"samples": [1.0, 2.0, float("inf")]}}}))
    with pytest.raises(InputRejected, match=r"reference\.latency_ms\.samples\[2\] = Infinity"):
        g.load_report(path)


def test_artifacts_that_are_not_a_list_of_objects_are_refused(tmp_path):
    path = tmp_path / "report.json"
    for artifacts in (5, {"target": "tflite"}, [1, 2]):
        path.write_text(json.dumps({"schema_version": SCHEMA_VERSION, "artifacts": artifacts}))
        with pytest.raises(InputRejected, match="'artifacts' field that is not a list of objects"):
            g.load_report(path)


@pytest.mark.slow
def test_a_report_from_before_the_typed_records_gates_against_one_written_now(tmp_path):
    """The bundled digits CNN compressed by the previous version (its report.json, kept as it was
    written) and by this one: gate reads both, pairs them by target and precision, and passes."""
    pytest.importorskip("tensorflow")
    pytest.importorskip("ai_edge_litert")
    root = Path(__file__).resolve().parents[2]
    before = json.loads((Path(__file__).parent / "data" / "compress_report_before_typed_records.json").read_text())
    now = subprocess.run([sys.executable, "-m", "edgeopt.cli", "compress", "examples/digits/digits_cnn.h5",
                          "--target", "tflite", "--calib", "calibration_data/digits/calib.npz",
                          "--val", "calibration_data/digits/val.npz", "-o", str(tmp_path / "now"), "--runs", "30",
                          "-q"], capture_output=True, text=True, cwd=root, timeout=600)
    assert now.returncode == 0, now.stderr
    written = json.loads((tmp_path / "now" / "report.json").read_text())
    assert written["schema_version"] == before["schema_version"] == SCHEMA_VERSION
    assert set(before["artifacts"][0]) <= set(written["artifacts"][0])  # every key it had is still there
    gated = _cli(tmp_path, before, written, "--max-accuracy-drop", "1", "--max-fidelity-drop", "1",
                 "--max-size", "200000", "--markdown", str(tmp_path / "gate.md"))
    assert gated.returncode == 0, gated.stdout + gated.stderr
    table = (tmp_path / "gate.md").read_text()
    assert "| tflite:int8 | accuracy_drop |" in table and "FAIL" not in table
