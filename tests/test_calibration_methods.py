"""Calibration methods per target: each backend's own mechanism does the method and the report
names it; a method a backend lacks is refused (exit 2) before any work, with nothing written."""

from __future__ import annotations

import json

import numpy as np
import pytest

# The methods' own ranges are what is checked: the fidelity guard would edit them away.
FAST = ["--runs", "3", "--warmup", "1", "--no-guard"]


def _cli(*args):
    from click.testing import CliRunner

    from edgeopt.cli import main

    return CliRunner().invoke(main, [str(a) for a in args])


def _artifact(out):
    (artifact,) = json.loads((out / "report.json").read_text())["artifacts"]
    return artifact


@pytest.fixture
def no_loading(monkeypatch):
    """Fail the test if the model is loaded: refusals come before any work."""
    import edgeopt.pipeline as pipeline

    monkeypatch.setattr(pipeline, "load_source", lambda *a, **k: pytest.fail("the model was loaded"))


@pytest.mark.parametrize("model, target, method, offered", [
    ("keras", "tflite", "percentile", "auto, minmax"),
    ("keras", "tflite", "entropy", "auto, minmax"),
    ("onnx", "tflite", "percentile", "auto, minmax"),
    ("onnx", "openvino", "entropy", "auto, minmax, percentile, mse"),
])
def test_a_method_the_backend_lacks_exits_2_naming_target_and_method(model, target, method, offered, saved_model,
                                                                      onnx_model, tmp_path, no_loading):
    path = saved_model("conv") if model == "keras" else onnx_model("residual")
    calib = tmp_path / "c.npz"
    np.savez(calib, image=np.zeros((2, 3, 16, 16), np.float32))
    result = _cli("compress", path, "--target", target, "--calib", calib, "--calib-method", method,
                  "-o", tmp_path / "out")
    assert result.exit_code == 2, result.output
    assert f"The {target} target ({model}->{target}) cannot calibrate with method '{method}'" in result.output
    assert f"its quantizer offers: {offered}" in result.output and "never swaps in another method" in result.output
    assert not (tmp_path / "out").exists()


def test_a_method_without_calibration_data_exits_2(onnx_model, tmp_path, no_loading):
    result = _cli("compress", onnx_model("residual"), "--target", "onnx", "--calib-method", "entropy",
                  "-o", tmp_path / "out")
    assert result.exit_code == 2 and "need calibration data" in result.output
    assert not (tmp_path / "out").exists()


def _qdq_scales(path) -> dict[str, np.ndarray]:
    """Each QuantizeLinear/DequantizeLinear input's scale, by the tensor it (de)quantizes."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    return {n.input[0]: inits[n.input[1]] for n in model.graph.node
            if n.op_type in ("QuantizeLinear", "DequantizeLinear") and n.input[1] in inits}


@pytest.mark.slow
def test_onnx_methods_use_onnxruntime_calibrators(onnx_model, nchw_calib, tmp_path):
    pytest.importorskip("onnxruntime")
    scales = {}
    for method, extra in (("minmax", []), ("percentile", ["--percentile", "99"]), ("entropy", []), ("mse", [])):
        out = tmp_path / method
        result = _cli("compress", onnx_model("residual"), "--target", "onnx", "--calib", nchw_calib("residual"),
                      "-o", out, "--calib-method", method, *extra, *FAST)
        assert result.exit_code == 0, result.output
        q = _artifact(out)["quantization"]
        expected = {"minmax": "MinMax", "percentile": "Percentile (CalibPercentile)",
                    "entropy": "Entropy (KL divergence, 2048-bin histograms)"}.get(method)
        if expected is None:  # edgeopt's own ranges, handed to onnxruntime as its calibration cache
            assert q["mechanism"].startswith("edgeopt range setting") and "calibration cache" in q["mechanism"]
        else:
            assert q["mechanism"] == f"onnxruntime quantize_static, CalibrationMethod.{expected}"
        assert q["method"] == method and q["per_channel"] is True
        assert q.get("percentile") == (99.0 if method == "percentile" else None)
        scales[method] = _qdq_scales(out / "residual_int8.onnx")
    # The methods chose different activation ranges: the setting reached the calibrator.
    activation = "relu1"
    assert scales["percentile"][activation] < scales["minmax"][activation]
    assert scales["entropy"][activation] != scales["minmax"][activation]
    assert scales["mse"][activation] <= scales["minmax"][activation]  # never wider than min/max


@pytest.mark.slow
def test_onnx_per_tensor_weights(onnx_model, nchw_calib, tmp_path):
    result = _cli("compress", onnx_model("residual"), "--target", "onnx", "--calib", nchw_calib("residual"),
                  "-o", tmp_path / "out", "--per-tensor", *FAST)
    assert result.exit_code == 0, result.output
    assert _artifact(tmp_path / "out")["quantization"]["per_channel"] is False
    scales = _qdq_scales(tmp_path / "out" / "residual_int8.onnx")
    assert scales["conv1.w_quantized"].size == 1 and scales["conv2.w_quantized"].size == 1


def _fq_ranges(path) -> list[float]:
    import openvino as ov

    model = ov.Core().read_model(str(path))
    ranges = []
    for op in model.get_ordered_ops():
        if op.get_type_name() == "FakeQuantize":
            high = op.input_value(2).get_node()
            if high.get_type_name() == "Constant":
                ranges.append(float(np.max(high.get_data())))
    return ranges


@pytest.mark.slow
def test_openvino_methods_use_nncf_range_estimators(onnx_model, nchw_calib, tmp_path):
    from edgeopt.deps import no_telemetry

    with no_telemetry():
        pytest.importorskip("openvino")
        pytest.importorskip("nncf")
    ranges, per_channel_sizes = {}, {}
    for method, extra in (("auto", []), ("minmax", []), ("percentile", ["--percentile", "99"]),
                          ("mse", ["--per-tensor"])):
        out = tmp_path / method
        result = _cli("compress", onnx_model("depthwise"), "--target", "openvino", "--calib", nchw_calib("depthwise"),
                      "-o", out, "--calib-method", method, *extra, *FAST)
        assert result.exit_code == 0, result.output
        q = _artifact(out)["quantization"]
        assert q["method"] == method and q["mechanism"].startswith("NNCF nncf.quantize")
        assert {"auto": "RangeEstimatorParametersSet.MEAN_MINMAX", "minmax": "RangeEstimatorParametersSet.MINMAX",
                "percentile": "StatisticsType.QUANTILE",
                "mse": "RangeEstimatorParametersSet.HISTOGRAM"}[method] in q["mechanism"]
        ranges[method] = _fq_ranges(out / "depthwise_int8.xml")
        per_channel_sizes[method] = q["per_channel"]
    assert ranges["percentile"] != ranges["minmax"] and ranges["mse"] != ranges["minmax"]
    # NNCF's default takes the mean of per-sample maxima, never above the global maximum, and below it
    # wherever samples differ; weight ranges (global min/max in both) are equal.
    assert len(ranges["auto"]) == len(ranges["minmax"])
    assert all(a <= m * (1 + 1e-6) for a, m in zip(ranges["auto"], ranges["minmax"]))
    assert any(a < 0.99 * m for a, m in zip(ranges["auto"], ranges["minmax"]))
    assert per_channel_sizes == {"auto": True, "minmax": True, "percentile": True, "mse": False}


@pytest.mark.slow
def test_tflite_minmax_per_channel_and_per_tensor(saved_model, calib_file, tmp_path):
    pytest.importorskip("tensorflow")
    litert = pytest.importorskip("ai_edge_litert.interpreter")
    sizes = {}
    for flag in ([], ["--per-tensor"]):
        out = tmp_path / ("tensor" if flag else "channel")
        result = _cli("compress", saved_model("conv"), "--calib", calib_file("conv"), "-o", out, *flag, *FAST)
        assert result.exit_code == 0, result.output
        q = _artifact(out)["quantization"]
        assert q["mechanism"].startswith("TFLite converter representative_dataset (min/max ranges")
        interp = litert.Interpreter(model_path=str(out / "conv_int8.tflite"))
        weights = [t for t in interp.get_tensor_details() if t["dtype"] == np.int8 and len(t["shape"]) == 4
                   and t["shape"][0] == 8 and "conv" in t["name"].lower()
                   and t["quantization_parameters"]["scales"].size]
        sizes[bool(flag)] = weights[0]["quantization_parameters"]["scales"].size
    assert sizes == {False: 8, True: 1}
