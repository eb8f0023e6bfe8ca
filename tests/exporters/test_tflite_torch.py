"""PyTorch -> TFLite through litert-torch and ai-edge-quantizer: float accuracy, full-integer int8
with float or int8 I/O, fp16 weights, and NHWC image inputs (NCHW kept on request)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("litert_torch")
pytest.importorskip("ai_edge_quantizer")

import tiny_models  # noqa: E402
from conftest import assert_full_integer, run_tflite, tflite_ops  # noqa: E402
from edgeopt.formats import detect_format  # noqa: E402
from edgeopt.model import Format  # noqa: E402
from edgeopt.exporters import tflite_torch  # noqa: E402
from edgeopt.passes.quantize import export  # noqa: E402

pytestmark = pytest.mark.slow  # litert-torch takes seconds to import and convert

FP32_ATOL = 1e-4
INT8_MIN_COSINE = 0.98
VAL = 16


def _source(torch_model, name):
    from edgeopt.frameworks import torch as torch_loader

    spec, weights, _ = torch_model(name)
    return torch_loader.load(spec, Format.TORCH_MODULE, weights=weights,
                             input_shapes={k: (1, *v) for k, v in tiny_models.INPUTS[name].items()})


def _by_position(path, feed):
    """The TFLite signature calls inputs args_0, args_1...: feed them in forward() order, NCHW
    images moved channels-last where the model takes NHWC."""
    from ai_edge_litert.interpreter import Interpreter

    details = Interpreter(model_path=str(path)).get_input_details()
    ordered = sorted(details, key=lambda d: int(d["name"].rsplit("_", 1)[-1]))
    fed = {}
    for detail, value in zip(ordered, feed.values()):
        if value.ndim == 4 and tuple(detail["shape"][1:]) != value.shape[1:]:
            value = np.ascontiguousarray(value.transpose(0, 2, 3, 1))
        fed[detail["name"]] = value
    return fed


@pytest.mark.parametrize("keep_layout, shape", [(False, (1, 16, 16, 3)), (True, (1, 3, 16, 16))])
def test_fp32_matches_source_in_nhwc_or_kept_nchw(keep_layout, shape, torch_model, tmp_path):
    source = _source(torch_model, "residual")
    result = export("torch->tflite", source, tmp_path / "m.tflite", precision="fp32", keep_layout=keep_layout)
    assert result.precision == "fp32" and detect_format(result.path) is Format.TFLITE
    from ai_edge_litert.interpreter import Interpreter

    (detail,) = Interpreter(model_path=str(result.path)).get_input_details()
    assert tuple(detail["shape"]) == shape
    feed = tiny_models.random_feed("residual", VAL, seed=7)
    assert np.abs(run_tflite(result.path, _by_position(result.path, feed)) - source.predict(feed)[0]).max() < FP32_ATOL


@pytest.mark.parametrize("int8_io", [False, True])
def test_int8_two_input_is_full_integer(int8_io, torch_model, nchw_calib, tmp_path):
    source = _source(torch_model, "two_input")
    calib = tiny_models.calib_subset(nchw_calib("two_input"), source.handle.inputs)
    result = export("torch->tflite", source, tmp_path / "m.tflite", precision="int8", calib=calib,
                                       int8_io=int8_io)
    assert result.precision == "int8"
    assert_full_integer(result.path)
    ops = tflite_ops(result.path)
    from ai_edge_litert.interpreter import Interpreter

    io_dtypes = {d["dtype"] for d in Interpreter(model_path=str(result.path)).get_input_details()}
    assert io_dtypes == ({np.int8} if int8_io else {np.float32})
    assert ("QUANTIZE" in [op[0] for op in ops]) != int8_io
    feed = tiny_models.random_feed("two_input", VAL, seed=7)
    out = run_tflite(result.path, _by_position(result.path, feed))
    assert tiny_models.cosine(out, source.predict(feed)[0]) >= INT8_MIN_COSINE


def test_fp16_and_dynamic(torch_model, tmp_path):
    source = _source(torch_model, "depthwise")
    half = export("torch->tflite", source, tmp_path / "h.tflite", precision="fp16")
    assert half.precision == "fp16"
    assert any(np.float16 in inputs for _name, inputs, _outs in tflite_ops(half.path))
    dynamic = export("torch->tflite", source, tmp_path / "d.tflite", precision="int8")
    assert dynamic.precision == "int8-dynamic"
    conv_weights = [inputs[1] for name, inputs, _outs in tflite_ops(dynamic.path) if name == "CONV_2D"]
    assert conv_weights and all(d == np.int8 for d in conv_weights)
    feed = tiny_models.random_feed("depthwise", VAL, seed=7)
    ref = source.predict(feed)[0]
    assert np.abs(run_tflite(half.path, _by_position(half.path, feed)) - ref).max() < 1e-2
    assert tiny_models.cosine(run_tflite(dynamic.path, _by_position(dynamic.path, feed)), ref) >= INT8_MIN_COSINE


def test_tensor_names_are_compacted_and_outputs_unchanged(torch_model, nchw_calib, tmp_path, monkeypatch):
    """litert-torch's scope names (qualified classes, the layout wrapper, the import name of the
    user's file) become short module paths; I/O names and every output stay as they were."""
    from ai_edge_litert.tools import flatbuffer_utils

    source = _source(torch_model, "residual")
    calib = tiny_models.calib_subset(nchw_calib("residual"), source.handle.inputs)
    result = export("torch->tflite", source, tmp_path / "m.tflite", precision="int8", calib=calib)
    compacted = flatbuffer_utils.read_model(str(result.path))
    graph = compacted.subgraphs[0]
    names = [t.name.decode() for t in graph.tensors]
    assert max(len(n) for n in names) < 120, max(names, key=len)
    assert not any(";" in n or "ChannelLastIOWrapper" in n or "edgeopt_user_model" in n for n in names)
    assert any(n.startswith("Residual_wrapped/") for n in names), names
    # Unique: ai-edge-quantizer keys ranges by tensor name, and its recipe picks layers by them.
    assert len(set(n for n in names if n)) == len([n for n in names if n])
    # The same model with the long names put back (at conversion, where they are compacted) runs
    # to the same outputs and is larger.
    raw = tmp_path / "raw.tflite"
    monkeypatch.setattr(tflite_torch, "compact_tensor_names", lambda path: None)
    export("torch->tflite", source, raw, precision="int8", calib=calib)
    long_names = [t.name.decode() for t in flatbuffer_utils.read_model(str(raw)).subgraphs[0].tensors]
    assert [long_names[i] for i in (*graph.inputs, *graph.outputs)] == [names[i] for i in (*graph.inputs, *graph.outputs)]
    assert raw.stat().st_size > result.path.stat().st_size
    feed = tiny_models.random_feed("residual", VAL, seed=7)
    np.testing.assert_array_equal(run_tflite(result.path, _by_position(result.path, feed)),
                                  run_tflite(raw, _by_position(raw, feed)))


UPSAMPLER = '''
import torch
from torch import nn


class Upsampler(nn.Module):
    """A DB-head-like tail: conv, then a transposed conv with a bias, then a sigmoid map."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.up = nn.ConvTranspose2d(8, 4, 2, stride=2)

    def forward(self, x):
        return torch.sigmoid(self.up(torch.relu(self.conv(x))))


def build():
    torch.manual_seed(0)
    return Upsampler()
'''


def test_transposed_conv_bias_quantizes_to_a_loadable_model(tmp_path):
    """litert-torch writes the transposed conv's bias as [1,1,1,C]; quantized as it is, LiteRT
    refuses the file ('num_scales must be 1 ... got C')."""
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_litert.tools import flatbuffer_utils

    from edgeopt.frameworks import torch as torch_loader

    (tmp_path / "up.py").write_text(UPSAMPLER)
    source = torch_loader.load(f"{tmp_path / 'up.py'}:build", Format.TORCH_MODULE, input_shapes={"x": (1, 3, 16, 16)})
    feed = {"x": np.random.default_rng(0).random((24, 3, 16, 16), dtype=np.float32)}
    np.savez(tmp_path / "calib.npz", **feed)
    calib = tiny_models.calib_subset(tmp_path / "calib.npz", source.handle.inputs, samples=24)
    result = export("torch->tflite", source, tmp_path / "up.tflite", precision="int8", calib=calib)
    Interpreter(model_path=str(result.path)).allocate_tensors()  # raised before the fix
    model = flatbuffer_utils.read_model(str(result.path))
    graph = model.subgraphs[0]
    biased = [op for op in graph.operators if len(op.inputs) > 3]  # TRANSPOSE_CONV's bias is its 4th input
    assert biased and all(len(graph.tensors[op.inputs[3]].shape) == 1 for op in biased)
    note = next(n for n in result.notes if "activation ranges" in n)
    assert "chosen over" in note and "cosine" in note  # a map, not a classifier: judged by cosine
    got = run_tflite(result.path, {"x": np.ascontiguousarray(feed["x"][:8].transpose(0, 2, 3, 1))})
    want = source.predict({"x": feed["x"][:8]})[0].transpose(0, 2, 3, 1)
    assert tiny_models.cosine(got, want) >= INT8_MIN_COSINE
