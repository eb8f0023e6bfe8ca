"""Layers of a PyTorch model's int8 TFLite artifact kept in float through ai-edge-quantizer's
recipe, quantized from one float artifact whose activation ranges are calibrated once."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("litert_torch")
pytest.importorskip("ai_edge_quantizer")

import tiny_models  # noqa: E402
from edgeopt.model import Format  # noqa: E402
from edgeopt.passes.quantize import convert, quantize  # noqa: E402
from edgeopt.passes.quantize.config import DEFAULT_QUANT  # noqa: E402
from edgeopt.passes.quantize.tflite_aeq import quantized_layers  # noqa: E402

pytestmark = pytest.mark.slow  # litert-torch takes seconds to import and convert


def _written(path) -> dict[str, str]:
    """Each compute op's first output tensor -> its dtype, in a .tflite file."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path))
    tensors = {t["index"]: t for t in interp.get_tensor_details()}
    return {tensors[op["outputs"][0]]["name"]: np.dtype(tensors[op["outputs"][0]]["dtype"]).name
            for op in interp._get_ops_details() if op["op_name"] not in ("QUANTIZE", "DEQUANTIZE")}


def _outputs(path, feed) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_path=str(path)).get_signature_runner()
    name = next(iter(feed))
    return np.concatenate([runner(args_0=np.ascontiguousarray(np.transpose(x[None], (0, 2, 3, 1))))["output_0"]
                           for x in feed[name]])


def test_named_layers_stay_in_float_and_all_of_them_give_the_float_model(torch_model, nchw_calib, tmp_path):
    from edgeopt.frameworks import torch as torch_loader

    spec, weights, _ = torch_model("residual")
    source = torch_loader.load(spec, Format.TORCH_MODULE, weights=weights,
                               input_shapes={k: (1, *v) for k, v in tiny_models.INPUTS["residual"].items()})
    calib = tiny_models.calib_subset(nchw_calib("residual"), source.handle.inputs)
    floating = convert("torch->tflite", source, tmp_path / "float.tflite", calib=calib)
    plain = quantize(floating, tmp_path / "plain.tflite", precision="int8", calib=calib)
    layers = quantized_layers(floating, plain.path)
    assert [layer.op for layer in layers][:2] == ["CONV_2D", "CONV_2D"] and len(layers) >= 4
    assert all(_written(plain.path)[layer.name] == "int8" for layer in layers)
    # One layer kept in float: it alone writes float32; the ranges were not calibrated again.
    memo = dict(floating.memo)
    first = replace(DEFAULT_QUANT, keep_float=(layers[0].name,))
    kept = quantize(floating, tmp_path / "kept.tflite", precision="int8", calib=calib, quant=first)
    written = _written(kept.path)
    assert written[layers[0].name] == "float32"
    assert all(written[layer.name] == "int8" for layer in layers[1:])
    assert kept.float_fallback and any("NO_QUANTIZE" in note for note in kept.notes)
    assert set(floating.memo) == set(memo)
    # Every layer in float: the float model again, to float rounding.
    every = replace(DEFAULT_QUANT, keep_float=tuple(layer.name for layer in layers))
    floated = quantize(floating, tmp_path / "every.tflite", precision="int8", calib=calib, quant=every)
    assert set(_written(floated.path).values()) == {"float32"}
    feed = tiny_models.random_feed("residual", 8, seed=3)
    np.testing.assert_allclose(_outputs(floated.path, feed), _outputs(floating.path, feed), atol=1e-5)
    assert np.abs(_outputs(plain.path, feed) - _outputs(floating.path, feed)).max() > 1e-4  # int8 does differ
