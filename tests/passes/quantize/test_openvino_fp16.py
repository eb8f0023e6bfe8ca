"""The fp16 rung of the mixed-precision ladder on OpenVINO: the int8 IR saved again with the
float constants of the layers NNCF left in float as fp16; int8 weights stay int8."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import numpy as np
import pytest

pytest.importorskip("openvino")
pytest.importorskip("nncf")

import tiny_models  # noqa: E402
from edgeopt.frameworks import onnx as onnx_loader  # noqa: E402
from edgeopt.model import Format  # noqa: E402
from edgeopt.passes.quantize import convert, quantize  # noqa: E402
from edgeopt.passes.quantize.config import DEFAULT_QUANT  # noqa: E402
from edgeopt.passes.quantize.openvino import float_weights_in_fp16  # noqa: E402


def _constants(path) -> Counter:
    import openvino as ov

    model = ov.Core().read_model(str(path))
    return Counter(op.get_output_element_type(0).get_type_name() for op in model.get_ops()
                   if op.get_type_name() == "Constant" and int(np.prod(op.get_output_shape(0))) > 16)


def test_float_layers_weights_become_fp16_and_int8_ones_stay(onnx_model, nchw_calib, tmp_path):
    import openvino as ov

    source = onnx_loader.load(onnx_model("residual"), Format.ONNX)
    calib = tiny_models.calib_subset(nchw_calib("residual"), source.handle.inputs)
    floating = convert("onnx->openvino", source, tmp_path / "float.xml")
    float_ops = [op.get_friendly_name() for op in ov.Core().read_model(str(floating.path)).get_ops()
                 if op.get_type_name() == "Convolution"]
    kept = replace(DEFAULT_QUANT, keep_float=(float_ops[0],))
    mixed = quantize(floating, tmp_path / "mixed.xml", precision="int8", calib=calib, quant=kept)
    halved = float_weights_in_fp16(mixed.path, tmp_path / "halved.xml")
    before, after = _constants(mixed.path), _constants(halved.path)
    assert before["i8"] >= 2 and after["i8"] == before["i8"]  # the int8 convs' weights
    assert before["f32"] >= 1 and after["f16"] >= 1 and after["f32"] < before["f32"]  # the kept conv's weight
    assert halved.path.with_suffix(".bin").stat().st_size < mixed.path.with_suffix(".bin").stat().st_size
    feed = tiny_models.random_feed("residual", 8, seed=3)
    core = ov.Core()
    compiled = [core.compile_model(str(p), "CPU") for p in (mixed.path, halved.path)]
    outputs = [np.concatenate([c({k: v[i:i + 1] for k, v in feed.items()})[0] for i in range(8)]) for c in compiled]
    # fp16 keeps 11 significant bits of each weight: outputs within 1% of the fp32-weight ones.
    np.testing.assert_allclose(outputs[1], outputs[0], atol=1e-2 * float(np.abs(outputs[0]).max()))
    assert not np.array_equal(outputs[1], outputs[0])  # the weights did change
