"""The compress job end to end through ``edgeopt.compress``: every fixture model to TFLite,
checked against Keras independently of edgeopt's own measurements."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow
pytest.importorskip("tensorflow")
pytest.importorskip("ai_edge_litert")

import edgeopt  # noqa: E402
from conftest import (CALIB_SAMPLES, assert_full_integer, build_model, keras_predict,  # noqa: E402
                      mean_cosine, random_inputs, run_tflite, tflite_ops)
from edgeopt import recipe  # noqa: E402
from edgeopt.errors import ConversionError, UnsafeModel  # noqa: E402
from edgeopt.passes.quantize import tflite as tflite_quant  # noqa: E402
from edgeopt.outputs import STAGE_PREFIX  # noqa: E402
from edgeopt.targets.litert import default_threads  # noqa: E402

MODELS = ("conv", "depthwise", "dense", "batchnorm", "residual", "concat", "pooling", "two_input")
VAL_SAMPLES = 20
# Random-weight nets prove the plumbing, not accuracy: the fidelity guard is off for them.
FAST = {"runs": 5, "warmup": 1, "guard": False}


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def val_file(tmp_path_factory):
    """Factory: name -> .npz of VAL_SAMPLES random inputs (seed 2) with random labels."""
    root = tmp_path_factory.mktemp("val")

    def get(name: str) -> Path:
        path = root / f"{name}.npz"
        if not path.exists():
            model = build_model(name)
            classes = int(model.outputs[0].shape[-1])
            labels = np.random.default_rng(2).integers(0, classes, VAL_SAMPLES)
            np.savez(path, labels=labels, **random_inputs(model, VAL_SAMPLES, seed=2))
        return path

    return get


@pytest.fixture(scope="module")
def int8_run(tmp_path_factory, saved_model, calib_file, val_file):
    """Factory: (name, suffix) -> Result of an int8 compress, run once per module."""
    cache = {}

    def get(name: str, suffix: str = ".h5"):
        if (name, suffix) not in cache:
            out = tmp_path_factory.mktemp(f"{name}_int8")
            cache[(name, suffix)] = edgeopt.compress(saved_model(name, suffix), calib=calib_file(name),
                                                     val=val_file(name), output=out, **FAST)
        return cache[(name, suffix)]

    return get


def _val_feed(path: Path, model) -> tuple[dict[str, np.ndarray], np.ndarray]:
    with np.load(path) as data:
        return {t.name: data[t.name] for t in model.inputs}, data["labels"]


# --- int8 for every fixture model ----------------------------------------------------------

@pytest.mark.parametrize("name", MODELS)
def test_int8_report_contract(int8_run, saved_model, name):
    result = int8_run(name)
    report = result.report
    source_path = saved_model(name)

    on_disk = json.loads((result.output_dir / "report.json").read_text())
    assert on_disk == json.loads(json.dumps(report))
    assert {f"{name}_int8.tflite", "report.json", "report.md", "recipe.yaml"} <= set(result.files)
    # The folder holds exactly what the run says it wrote: no stage or temp file left behind.
    assert sorted(p.name for p in result.output_dir.iterdir()) == sorted(result.files)

    assert report["schema_version"] == 1
    assert report["source"]["path"] == str(source_path)
    assert report["source"]["format"] == "keras_h5"
    assert report["source"]["sha256"] == _sha256(source_path)

    reference = report["reference"]
    assert reference["size_bytes"] > 0
    assert {"p50", "p90", "mean", "runs", "warmup", "threads"} <= set(reference["latency_ms"])
    assert set(reference["accuracy"]) >= {"top1"}

    (artifact,) = report["artifacts"]
    path = result.output_dir / f"{name}_int8.tflite"
    assert artifact["target"] == "tflite"
    assert artifact["path"] == str(path) and path.is_file()
    assert artifact["precision"] == "int8"
    assert artifact["size_bytes"] == path.stat().st_size
    latency = artifact["latency_ms"]
    assert (latency["runs"], latency["warmup"], latency["threads"]) == (5, 1, default_threads())
    assert 0 < latency["p50"] <= latency["p90"]
    assert latency["mean"] > 0
    assert set(artifact["fidelity"]) == {"top1_agreement", "cosine", "max_abs_err", "sqnr_db"}
    assert 0.0 <= artifact["accuracy"]["top1"] <= 1.0

    calibration = report["calibration"]
    assert (calibration["samples"], calibration["seed"]) == (CALIB_SAMPLES, 0)
    assert report["validation"]["samples"] == VAL_SAMPLES
    assert report["versions"]["edgeopt"] == edgeopt.__version__
    assert "tensorflow-cpu" in report["versions"] or "tensorflow" in report["versions"]
    assert report["notes"] == []

    assert recipe.load(result.output_dir / "recipe.yaml").model_dump(mode="json") == report["settings"]
    assert f"`{name}_int8.tflite`" in (result.output_dir / "report.md").read_text()


@pytest.mark.parametrize("name", MODELS)
def test_int8_is_full_integer(int8_run, name):
    result = int8_run(name)
    (artifact,) = result.artifacts
    assert artifact["ops"]["full_integer"] is True
    assert artifact["ops"]["float_ops"] == []
    assert artifact["float_fallback"] is False
    assert_full_integer(artifact["path"])
    counted = {}
    for op, _inputs, _outputs in tflite_ops(artifact["path"]):
        counted[op] = counted.get(op, 0) + 1
    assert artifact["ops"]["counts"] == dict(sorted(counted.items()))


@pytest.mark.parametrize("name", MODELS)
def test_int8_fidelity_against_keras(int8_run, val_file, name):
    result = int8_run(name)
    (artifact,) = result.artifacts
    model = build_model(name)
    feed, labels = _val_feed(val_file(name), model)
    expected = keras_predict(model, feed)
    got = run_tflite(artifact["path"], feed)

    cosine = mean_cosine(expected, got)
    assert cosine >= 0.98
    # edgeopt's numbers are the same measurement, made independently here.
    fidelity = artifact["fidelity"]
    assert fidelity["cosine"] == pytest.approx(cosine, abs=1e-6)
    assert fidelity["max_abs_err"] == pytest.approx(float(np.max(np.abs(expected - got))), abs=1e-6)
    assert fidelity["top1_agreement"] == float(np.mean(expected.argmax(1) == got.argmax(1)))
    assert result.report["reference"]["accuracy"]["top1"] == float(np.mean(expected.argmax(1) == labels))
    assert artifact["accuracy"]["top1"] == float(np.mean(got.argmax(1) == labels))


def test_calibration_digest_names_the_data(int8_run, calib_file):
    result = int8_run("two_input")
    digest = hashlib.sha256()
    with np.load(calib_file("two_input")) as data:
        for i in range(CALIB_SAMPLES):  # a separate val set: every sample calibrates, in order
            for name in ("image", "meta"):
                digest.update(name.encode())
                digest.update(np.ascontiguousarray(data[name][i:i + 1]).tobytes())
    assert result.report["calibration"]["sha256"] == digest.hexdigest()
    assert result.artifacts[0]["io_dtypes"] == {"image": "float32", "meta": "float32"}


@pytest.mark.parametrize("name", ["conv", "two_input"])
def test_keras_v3_files(int8_run, val_file, name):
    result = int8_run(name, ".keras")
    (artifact,) = result.artifacts
    assert result.report["source"]["format"] == "keras"
    assert artifact["precision"] == "int8" and artifact["ops"]["full_integer"] is True
    assert_full_integer(artifact["path"])
    model = build_model(name)
    feed, _ = _val_feed(val_file(name), model)
    assert mean_cosine(keras_predict(model, feed), run_tflite(artifact["path"], feed)) >= 0.98


def test_same_inputs_give_the_same_artifact(int8_run, saved_model, calib_file, val_file, tmp_path):
    first = int8_run("residual")
    again = edgeopt.compress(saved_model("residual"), calib=calib_file("residual"), val=val_file("residual"),
                             output=tmp_path, **FAST)
    name = "residual_int8.tflite"
    assert _sha256(again.files[name]) == _sha256(first.files[name])
    assert again.report["calibration"]["sha256"] == first.report["calibration"]["sha256"]


def test_content_decides_and_a_misleading_suffix_is_noted(saved_model, calib_file, tmp_path):
    renamed = tmp_path / "conv_v3.h5"
    renamed.write_bytes(saved_model("conv", ".keras").read_bytes())
    result = edgeopt.compress(renamed, calib=calib_file("conv"), validate=False, output=tmp_path / "out")
    assert result.report["source"]["format"] == "keras"
    assert "'conv_v3.h5' is named like a .h5 file but holds a keras model; using keras." in result.report["notes"]
    assert result.artifacts[0]["ops"]["full_integer"] is True


# --- other precisions and options ----------------------------------------------------------

def test_fp32(saved_model, calib_file, val_file, tmp_path):
    result = edgeopt.compress(saved_model("conv"), precision="fp32", calib=calib_file("conv"),
                              val=val_file("conv"), output=tmp_path, **FAST)
    (artifact,) = result.artifacts
    assert artifact["precision"] == "fp32"
    assert artifact["fidelity"]["max_abs_err"] < 1e-4
    assert artifact["fidelity"]["top1_agreement"] == 1.0
    assert artifact["size_ratio"] == 1.0  # the artifact is the fp32 baseline itself
    model = build_model("conv")
    feed, _ = _val_feed(val_file("conv"), model)
    assert np.max(np.abs(run_tflite(artifact["path"], feed) - keras_predict(model, feed))) < 1e-4


def test_fp16(saved_model, calib_file, val_file, tmp_path):
    result = edgeopt.compress(saved_model("pooling"), precision="fp16", calib=calib_file("pooling"),
                              val=val_file("pooling"), output=tmp_path, **FAST)
    (artifact,) = result.artifacts
    assert artifact["precision"] == "fp16"
    assert artifact["fidelity"]["cosine"] > 0.9999
    assert artifact["fidelity"]["max_abs_err"] < 1e-2
    assert artifact["size_bytes"] < artifact["baseline_size_bytes"]
    halves = [op for op in tflite_ops(artifact["path"]) if op[0] == "DEQUANTIZE" and op[1] == [np.float16]]
    assert halves  # weights stored as float16, widened at load


def test_int8_without_calibration_is_dynamic_range(saved_model, val_file, tmp_path):
    result = edgeopt.compress(saved_model("dense"), val=val_file("dense"), output=tmp_path, **FAST)
    (artifact,) = result.artifacts
    assert artifact["precision"] == "int8-dynamic"
    assert result.report["calibration"] is None
    dynamic_notes = [n for n in result.report["notes"] if "dynamic-range" in n]
    assert len(dynamic_notes) == 1 and "--calib" in dynamic_notes[0]
    assert artifact["fidelity"]["cosine"] >= 0.98
    assert result.files["dense_int8.tflite"].name == "dense_int8.tflite"


def test_no_data_at_all_still_measures_latency(saved_model, tmp_path):
    result = edgeopt.compress(saved_model("dense"), output=tmp_path, **FAST)
    (artifact,) = result.artifacts
    assert result.report["validation"] is None
    assert "fidelity" not in artifact
    assert artifact["notes"] == ["No validation data: fidelity and accuracy not measured; latency on random inputs."]
    assert artifact["latency_ms"]["runs"] == 5


def test_int8_io(saved_model, calib_file, val_file, tmp_path):
    result = edgeopt.compress(saved_model("two_input"), int8_io=True, calib=calib_file("two_input"),
                              val=val_file("two_input"), output=tmp_path, **FAST)
    (artifact,) = result.artifacts
    assert artifact["io_dtypes"] == {"image": "int8", "meta": "int8"}
    assert artifact["ops"]["full_integer"] is True
    litert = pytest.importorskip("ai_edge_litert.interpreter")
    interp = litert.Interpreter(model_path=artifact["path"])
    assert [d["dtype"] for d in interp.get_input_details()] == [np.int8, np.int8]
    assert [d["dtype"] for d in interp.get_output_details()] == [np.int8]
    model = build_model("two_input")
    feed, _ = _val_feed(val_file("two_input"), model)
    cosine = mean_cosine(keras_predict(model, feed), run_tflite(artifact["path"], feed))
    assert cosine >= 0.98
    assert artifact["fidelity"]["cosine"] == pytest.approx(cosine, abs=1e-6)


def test_held_out_validation_by_default(saved_model, calib_file, tmp_path):
    result = edgeopt.compress(saved_model("batchnorm"), calib=calib_file("batchnorm"), output=tmp_path, **FAST)
    report = result.report
    assert report["calibration"]["samples"] == CALIB_SAMPLES - 8
    assert report["validation"]["samples"] == 8
    assert report["validation"]["held_out_from_calibration"] is True
    assert report["validation"]["sha256"] != report["calibration"]["sha256"]
    assert report["artifacts"][0]["fidelity"]["cosine"] >= 0.98


def test_no_validate_skips_measurements(saved_model, calib_file, tmp_path, monkeypatch):
    from edgeopt import registry
    from edgeopt.report import summary_rows

    exported = []
    resolve = registry.resolve

    def recording(kind, key):
        found = resolve(kind, key)
        if kind != "converter":
            return found
        return lambda *a, **k: exported.append("float") or found(*a, **k)

    monkeypatch.setattr(registry, "resolve", recording)
    steps = []
    result = edgeopt.compress(saved_model("conv"), calib=calib_file("conv"), validate=False, output=tmp_path,
                              progress=steps.append)
    (artifact,) = result.artifacts
    assert "fidelity" not in artifact and "latency_ms" not in artifact
    # One conversion, of the model quantized: no fp32 baseline, since nothing compares it.
    assert exported == ["float"] and "baseline_size_bytes" not in artifact
    # Nothing is held back for a validation that does not run: every calibration sample calibrates.
    assert result.report["calibration"]["samples"] == len(np.load(calib_file("conv"))["image"])
    assert [row[0] for row in summary_rows(result.report)[1]] == ["conv_int8.tflite"]
    assert artifact["ops"]["full_integer"] is True
    assert steps[0] == "Loading the model" and steps[-1] == "Writing outputs"
    assert not any(s.startswith("Measuring latency") for s in steps)


# --- SavedModel folders ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def exported_conv(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("saved") / "conv_saved"
    build_model("conv").export(str(folder), verbose=False)
    return folder


def test_saved_model_refused_without_trust(exported_conv, calib_file, tmp_path):
    with pytest.raises(UnsafeModel) as info:
        edgeopt.compress(exported_conv, calib=calib_file("conv"), output=tmp_path / "out")
    assert info.value.exit_code == 3
    assert not (tmp_path / "out").exists()


def test_saved_model_converts_with_trust(exported_conv, calib_file, val_file, tmp_path):
    calib = tmp_path / "calib.npz"
    with np.load(calib_file("conv")) as data:
        np.savez(calib, data["image"])  # one unnamed array: the signature may name its input otherwise
    result = edgeopt.compress(exported_conv, trust_model=True, calib=calib, output=tmp_path / "out", **FAST)
    (artifact,) = result.artifacts
    assert result.report["source"]["format"] == "saved_model"
    assert artifact["precision"] == "int8" and artifact["ops"]["full_integer"] is True
    assert Path(artifact["path"]).name == "conv_saved_int8.tflite"
    assert_full_integer(artifact["path"])
    model = build_model("conv")
    feed, _ = _val_feed(val_file("conv"), model)
    assert mean_cosine(keras_predict(model, feed), run_tflite(artifact["path"], feed)) >= 0.98


# --- failures inside the output stage --------------------------------------------------------

@pytest.fixture
def earlier_outputs(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    files = {"conv_int8.tflite": os.urandom(3000), "report.json": b'{"schema_version": 1}\n',
             "recipe.yaml": b"model: conv.h5\n"}
    for name, data in files.items():
        (out / name).write_bytes(data)
    return out, files


@pytest.mark.parametrize("error", [ConversionError("op XYZ has no kernel"), KeyboardInterrupt()])
def test_failure_mid_run_keeps_earlier_outputs(saved_model, calib_file, monkeypatch, earlier_outputs, error):
    out, files = earlier_outputs
    calls = []

    def fails_on_int8(floating, path, *, precision, **kwargs):
        calls.append((floating.path.is_file(), precision))
        path.write_bytes(b"TFL3 half written")
        raise error

    monkeypatch.setattr(tflite_quant, "quantize", fails_on_int8)
    with pytest.raises(type(error)):
        edgeopt.compress(saved_model("conv"), calib=calib_file("conv"), output=out, **FAST)
    assert calls == [(True, "int8")]  # it failed inside the stage, after real work (the float artifact)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == files
    assert not any(p.name.startswith(STAGE_PREFIX) for p in out.parent.rglob("*"))
