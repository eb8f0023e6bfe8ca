"""NCHW PyTorch models become NHWC TFLite models unless --keep-layout; every session is fed in its
own layout from data in the source's layout, and 4-D outputs come back in the source's layout."""

from __future__ import annotations

import json

import numpy as np
import pytest

import tiny_models
from conftest import run_tflite, tflite_ops
from edgeopt.model import TensorSpec
from edgeopt.targets.base import NCHW_TO_NHWC, NHWC_TO_NCHW, Session, layout_axes

FAST = {"runs": 3, "warmup": 1}
FP32_ATOL = 1e-4
INT8_MIN_COSINE = 0.98

# A conv-only network: its output is a 4-D NCHW image, which the TFLite model returns as NHWC.
CONV_ONLY = '''
import torch
from torch import nn


class ConvOnly(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 4, 3, stride=2, padding=1)

    def forward(self, image):
        return self.conv2(torch.relu(self.conv1(image)))


def build():
    torch.manual_seed(0)
    return ConvOnly()
'''


# --- the one mechanism, without any framework -------------------------------------------------------


@pytest.mark.parametrize("data, own, prefer, expected", [
    ((None, 3, 16, 16), (1, 16, 16, 3), None, NCHW_TO_NHWC),
    ((None, 16, 16, 3), (1, 3, 16, 16), None, NHWC_TO_NCHW),
    ((None, 3, 16, 16), (1, 3, 16, 16), NCHW_TO_NHWC, None),  # same shape: kept, whatever is preferred
    ((None, 8, 8, 8), (1, 8, 8, 8), NCHW_TO_NHWC, NCHW_TO_NHWC),  # H == W == C: the declared layouts decide
    ((None, 8, 8, 8), (1, 8, 8, 8), None, None),
    ((None, 4), (1, 4), NCHW_TO_NHWC, None),  # not an image
    ((None, 3, 16, 16), (1, 5, 7, 9), None, None),  # unrelated shapes: left to the runtime to reject
])
def test_layout_axes(data, own, prefer, expected):
    assert layout_axes(data, own, prefer) == expected


class _Echo(Session):
    """An NHWC 'runtime' that returns its image input and its vector input unchanged."""

    def __init__(self) -> None:
        self.inputs = (TensorSpec("image", (1, 4, 5, 3), "float32", "nhwc"), TensorSpec("meta", (1, 2), "float32"))
        self.outputs = (TensorSpec("out_0", (1, 4, 5, 3), "float32"), TensorSpec("out_1", (1, 2), "float32"))
        self.threads, self.load_seconds = 1, 0.0
        self.fed: dict = {}

    def _prepare(self, feed):
        self.fed = feed

    def run_raw(self):
        pass

    def _run(self, feed):
        self._prepare(feed)
        return [feed["image"], feed["meta"]]


def test_session_feeds_its_own_layout_and_returns_the_sources():
    source_in = (TensorSpec("image", (None, 3, 4, 5), "float32", "nchw"), TensorSpec("meta", (None, 2), "float32"))
    source_out = (TensorSpec("out_0", (None, 3, 4, 5), "float32"), TensorSpec("out_1", (None, 2), "float32"))
    session = _Echo()
    session.set_source(source_in, source_out)
    assert [t.layout for t in session.inputs] == ["nhwc", None]
    image = np.arange(60, dtype=np.float32).reshape(1, 3, 4, 5)
    meta = np.ones((1, 2), np.float32)
    out = session.run({"image": image, "meta": meta})
    assert session.fed["image"].shape == (1, 4, 5, 3) and session.fed["meta"] is meta
    np.testing.assert_array_equal(session.fed["image"], image.transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(out[0], image)  # back in NCHW
    assert session.input_axes("image") == NCHW_TO_NHWC and session.input_axes("meta") is None


def test_session_without_a_source_is_unchanged():
    session = _Echo()
    session.set_source(None)
    image = np.zeros((1, 4, 5, 3), np.float32)
    session.prepare({"image": image, "meta": np.zeros((1, 2), np.float32)})
    assert session.fed["image"] is image


# --- PyTorch -> TFLite, end to end --------------------------------------------------------------------


def _needs_litert_torch():
    pytest.importorskip("torch")
    pytest.importorskip("litert_torch")
    pytest.importorskip("ai_edge_quantizer")


def _inputs_in_order(path) -> list[dict]:
    """The TFLite model's input details in forward() order (litert-torch names them ..._args_<i>)."""
    from ai_edge_litert.interpreter import Interpreter

    details = Interpreter(model_path=str(path)).get_input_details()
    return sorted(details, key=lambda d: int(d["name"].split(":")[0].rsplit("_", 1)[-1]))


def _tflite_shapes(path):
    from ai_edge_litert.interpreter import Interpreter

    outputs = Interpreter(model_path=str(path)).get_output_details()
    return ([tuple(int(x) for x in d["shape"]) for d in _inputs_in_order(path)],
            [tuple(int(x) for x in d["shape"]) for d in outputs])


@pytest.mark.slow
@pytest.mark.parametrize("keep_layout", [False, True])
@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_torch_to_tflite_layout(precision, keep_layout, torch_model, nchw_calib, tmp_path):
    import edgeopt

    _needs_litert_torch()
    spec, weights, _ = torch_model("residual")
    out = tmp_path / "out"
    result = edgeopt.compress(spec, target="tflite", weights=weights, calib=nchw_calib("residual"),
                              precision=precision, keep_layout=keep_layout, output=out, **FAST)
    (artifact,) = result.artifacts
    (shape,), _ = _tflite_shapes(out / f"nets_{precision}.tflite")
    assert shape == ((1, 3, 16, 16) if keep_layout else (1, 16, 16, 3))
    layout = "nchw" if keep_layout else "nhwc"
    assert artifact["input_layout"] == {"image": layout}
    assert f"- Input layout: `image` {layout}" in (out / "report.md").read_text()
    # Fed the NCHW validation data through each model's own layout, compared with the PyTorch model.
    assert artifact["baseline_fidelity"]["max_abs_err"] < FP32_ATOL
    if precision == "fp32":
        assert artifact["fidelity"]["max_abs_err"] < FP32_ATOL
    else:
        assert artifact["fidelity"]["cosine"] >= INT8_MIN_COSINE and artifact["ops"]["full_integer"]
    # An NCHW model starts by moving its input to TFLite's own channels-last layout; an NHWC one does not.
    first = next(op for op, _ins, _outs in tflite_ops(out / f"nets_{precision}.tflite") if op != "QUANTIZE")
    assert (first == "TRANSPOSE") == keep_layout
    assert json.loads((out / "report.json").read_text())["artifacts"][0]["input_layout"] == {"image": layout}


@pytest.mark.slow
def test_two_inputs_move_only_the_image(torch_model, nchw_calib, tmp_path):
    import edgeopt

    _needs_litert_torch()
    spec, weights, reference = torch_model("two_input")
    out = tmp_path / "out"
    result = edgeopt.compress(spec, target="tflite", weights=weights, calib=nchw_calib("two_input"), output=out,
                              **FAST)
    (artifact,) = result.artifacts
    assert _tflite_shapes(out / "nets_int8.tflite")[0] == [(1, 8, 8, 1), (1, 4)]
    assert artifact["input_layout"] == {"image": "nhwc", "meta": None}
    assert artifact["ops"]["full_integer"] and artifact["fidelity"]["cosine"] >= INT8_MIN_COSINE
    # Independently of edgeopt's sessions: the int8 model fed NHWC by hand, against the module.
    import torch

    feed = tiny_models.random_feed("two_input", 16, seed=9)
    image, meta = (d["name"] for d in _inputs_in_order(out / "nets_int8.tflite"))
    nhwc = {image: feed["image"].transpose(0, 2, 3, 1).copy(), meta: feed["meta"]}
    with torch.no_grad():
        expected = reference(*[torch.from_numpy(feed[n]) for n in ("image", "meta")]).numpy()
    assert tiny_models.cosine(run_tflite(out / "nets_int8.tflite", nhwc), expected) >= INT8_MIN_COSINE


@pytest.fixture(scope="module")
def conv_only(tmp_path_factory):
    """(spec, calibration .npz) of the conv-only network, whose output is a 4-D image."""
    root = tmp_path_factory.mktemp("conv_only")
    (root / "conv_only.py").write_text(CONV_ONLY, encoding="utf-8")
    calib = root / "calib.npz"
    np.savez(calib, image=np.random.default_rng(1).random((48, 3, 16, 16), dtype=np.float32))
    return f"{root / 'conv_only.py'}:build", calib


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_image_output_is_nhwc_and_compared_in_nchw(precision, conv_only, tmp_path):
    import edgeopt

    _needs_litert_torch()
    spec, calib = conv_only
    out = tmp_path / "out"
    result = edgeopt.compress(spec, target="tflite", calib=calib, precision=precision, output=out, **FAST)
    (artifact,) = result.artifacts
    assert _tflite_shapes(out / f"conv_only_{precision}.tflite") == ([(1, 16, 16, 3)], [(1, 8, 8, 4)])
    if precision == "fp32":
        assert artifact["fidelity"]["max_abs_err"] < FP32_ATOL
    else:
        assert artifact["fidelity"]["cosine"] >= INT8_MIN_COSINE
    assert "TRANSPOSE" not in artifact["ops"]["counts"]  # channels-last from input to output


# --- edgeopt validate: artifacts of different layouts side by side ------------------------------------


@pytest.fixture(scope="module")
def two_layouts(torch_model, nchw_calib, tmp_path_factory):
    """An NCHW ONNX and an NHWC TFLite model of the same PyTorch network, fp32 and int8 TFLite."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    _needs_litert_torch()
    import edgeopt

    spec, weights, _ = torch_model("residual")
    work = tmp_path_factory.mktemp("two_layouts")
    fp32 = edgeopt.compress(spec, target="onnx,tflite", weights=weights, calib=nchw_calib("residual"),
                            precision="fp32", validate=False, output=work / "fp32")
    int8 = edgeopt.compress(spec, target="tflite", weights=weights, calib=nchw_calib("residual"), validate=False,
                            output=work / "int8")
    return {"onnx": work / "fp32/nets_fp32.onnx", "tflite": work / "fp32/nets_fp32.tflite",
            "int8": work / "int8/nets_int8.tflite", "val": nchw_calib("residual", n=24, seed=5)}


def _validate(*args):
    from click.testing import CliRunner

    from edgeopt.cli import main

    result = CliRunner().invoke(main, ["validate", *map(str, args), "--runs", "3", "--warmup", "1", "-q"])
    assert result.exit_code == 0, result.output
    return result


@pytest.mark.slow
def test_validate_nhwc_tflite_against_nchw_onnx(two_layouts, tmp_path):
    out = tmp_path / "out"
    _validate(two_layouts["tflite"], two_layouts["int8"], "--reference", two_layouts["onnx"],
              "--val", two_layouts["val"], "-o", out)
    report = json.loads((out / "report.json").read_text())
    fp32, int8 = report["artifacts"]
    assert fp32["input_layout"] == int8["input_layout"] == {"image": "nhwc"}
    assert fp32["fidelity"]["cosine"] > 0.99 and fp32["fidelity"]["max_abs_err"] < FP32_ATOL
    assert int8["fidelity"]["cosine"] >= INT8_MIN_COSINE
    assert "- Input layout: `image` nhwc" in (out / "report.md").read_text()


@pytest.mark.slow
def test_validate_in_the_first_artifacts_layout(two_layouts, tmp_path):
    """Without --reference the data follows the first artifact: NHWC data, and the ONNX model is
    fed NCHW."""
    val = tmp_path / "nhwc.npz"
    with np.load(two_layouts["val"]) as data:
        np.savez(val, image=data["image"].transpose(0, 2, 3, 1))
    out = tmp_path / "out"
    _validate(two_layouts["tflite"], two_layouts["onnx"], "--val", val, "-o", out)
    tflite, onnx = json.loads((out / "report.json").read_text())["artifacts"]
    # One input, named as the first artifact names it.
    assert list(tflite["input_layout"].values()) == ["nhwc"] and list(onnx["input_layout"].values()) == ["nchw"]
    assert onnx["fidelity"]["max_abs_err"] < FP32_ATOL


@pytest.mark.slow
def test_remote_runner_feeds_the_artifacts_layout(two_layouts, tmp_path):
    """The device-side runner applies the transposes edgeopt sends (run here without ssh)."""
    import shutil

    from edgeopt.targets.litert import open_session
    from edgeopt.targets import remote_runner

    with np.load(two_layouts["val"]) as data:
        image = data["image"][:4]
    shutil.copy(two_layouts["tflite"], tmp_path / "m.tflite")
    np.savez(tmp_path / "inputs.npz", image=image)
    job = {"inputs": "inputs.npz", "input_names": ["image"], "threads": 1, "runs": 2, "warmup": 0,
           "artifacts": [{"file": "m.tflite", "runtime": "tflite", "order": ["image"], "axes": [list(NCHW_TO_NHWC)]}]}
    (tmp_path / "job.json").write_text(json.dumps(job))
    assert "error" not in remote_runner.run_job(tmp_path / "job.json")
    with np.load(tmp_path / "outputs_0.npz") as outs:
        remote = outs["arr_0"]
    source = (TensorSpec("image", (None, 3, 16, 16), "float32", "nchw"),)
    local = open_session(two_layouts["tflite"], threads=1, input_names=["image"], source_inputs=source)
    np.testing.assert_allclose(remote, local.run_many({"image": image[i:i + 1]} for i in range(4))[0], atol=1e-6)


@pytest.mark.slow
def test_cli_keep_layout_is_saved_in_the_recipe(torch_model, tmp_path):
    from click.testing import CliRunner

    from edgeopt import recipe
    from edgeopt.cli import main

    _needs_litert_torch()
    spec, weights, _ = torch_model("depthwise")
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["compress", spec, "--weights", str(weights), "--input-shape", "1,3,16,16",
                                       "--precision", "fp32", "--keep-layout", "--no-validate", "-q", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert _tflite_shapes(out / "nets_fp32.tflite")[0] == [(1, 3, 16, 16)]
    assert recipe.load(out / "recipe.yaml").keep_layout is True
