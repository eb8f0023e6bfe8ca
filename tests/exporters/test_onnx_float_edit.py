"""Layers of an int8 ONNX model put back in float by editing it: the same model onnxruntime's
quantizer writes with ``nodes_to_exclude``, without calibrating again."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import tiny_models  # noqa: E402
from edgeopt.exporters import onnx as onnx_export  # noqa: E402
from edgeopt.exporters import onnx_float_edit  # noqa: E402
from edgeopt.exporters.base import DEFAULT_QUANT  # noqa: E402
from edgeopt.frameworks import onnx as onnx_loader  # noqa: E402
from edgeopt.model import Format  # noqa: E402


def _reads_float_weights(path) -> dict[str, bool]:
    model = onnx.load(str(path))
    produced_by = {o: n.op_type for n in model.graph.node for o in n.output}
    return {n.name: produced_by.get(n.input[1]) != "DequantizeLinear" for n in model.graph.node if n.op_type == "Conv"}


def test_an_edit_equals_quantizing_with_the_layer_excluded(onnx_model, nchw_calib, tmp_path):
    source = onnx_loader.load(onnx_model("residual"), Format.ONNX)
    calib = tiny_models.calib_subset(nchw_calib("residual"), source.handle.inputs)
    quant = replace(DEFAULT_QUANT, per_channel=False)  # one quantization each way, no granularity choice
    plain = onnx_export.export_onnx(source, tmp_path / "plain.onnx", precision="int8", calib=calib, quant=quant)
    convs = list(_reads_float_weights(plain.path))
    assert convs and not any(_reads_float_weights(plain.path).values())
    keep = (convs[0],)
    edited = onnx_float_edit.keep_in_float(source, plain.path, keep, tmp_path / "edited.onnx")
    excluded = onnx_export.export_onnx(source, tmp_path / "excluded.onnx", precision="int8", calib=calib,
                                       quant=replace(quant, keep_float=keep))
    assert _reads_float_weights(edited.path) == {name: name in keep for name in convs}
    onnx.checker.check_model(onnx.load(str(edited.path)))
    feed = tiny_models.random_feed("residual", 16, seed=7)
    got, want = tiny_models.run_onnx(edited.path, feed)[0], tiny_models.run_onnx(excluded.path, feed)[0]
    float_out, int8_out = source.predict(feed)[0], tiny_models.run_onnx(plain.path, feed)[0]
    # The same graph: equal to rounding, and closer to float than the all-int8 model.
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert np.abs(got - float_out).mean() < np.abs(int8_out - float_out).mean()
    # No dangling quantizers: every Q/DQ node's output is read.
    model = onnx.load(str(edited.path))
    read = {name for node in model.graph.node for name in node.input} | {v.name for v in model.graph.output}
    assert all(o in read for n in model.graph.node if "QuantizeLinear" in n.op_type for o in n.output)


def test_without_a_remembered_graph_there_is_no_edit(tmp_path):
    class Unknown:
        pass

    assert onnx_float_edit.keep_in_float(Unknown(), tmp_path / "none.onnx", ("x",), tmp_path / "out.onnx") is None
