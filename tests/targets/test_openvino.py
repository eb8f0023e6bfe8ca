"""The OpenVINO session: the Session interface, f32 compute, pinned threads, and the precision each
runtime layer computes in."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from edgeopt.deps import no_telemetry  # noqa: E402

with no_telemetry():  # importing OpenVINO or NNCF otherwise reports usage over the network
    ov = pytest.importorskip("openvino")
    pytest.importorskip("nncf")
pytest.importorskip("onnx")

import tiny_models  # noqa: E402
from edgeopt.errors import InputRejected  # noqa: E402
from edgeopt.frameworks import onnx as onnx_loader  # noqa: E402
from edgeopt.model import Format  # noqa: E402
from edgeopt.targets.base import op_summary, precision_of  # noqa: E402
from edgeopt.targets import openvino as ov_target  # noqa: E402
from edgeopt.passes.quantize import export  # noqa: E402


@pytest.fixture(scope="module")
def irs(onnx_model, nchw_calib, tmp_path_factory):
    """fp32 and int8 IRs of the two-input ONNX model."""
    source = onnx_loader.load(onnx_model("two_input"), Format.ONNX)
    calib = tiny_models.calib_subset(nchw_calib("two_input"), source.handle.inputs)
    root = tmp_path_factory.mktemp("ov")
    return {p: export("onnx->openvino", source, root / f"two_{p}.openvino", precision=p, calib=calib).path
            for p in ("fp32", "int8")}


def test_session_interface(irs, onnx_model):
    session = ov_target.open_session(irs["fp32"], threads=1, input_names=["image", "meta"])
    assert session.threads == 1 and session.load_seconds > 0
    assert [(t.name, t.shape, t.dtype) for t in session.inputs] == [("image", (1, 1, 8, 8), "float32"),
                                                                   ("meta", (1, 4), "float32")]
    feed = tiny_models.random_feed("two_input", 4)
    rows = [{k: v[i:i + 1] for k, v in feed.items()} for i in range(4)]
    (stacked,) = session.run_many(rows)
    np.testing.assert_allclose(stacked, tiny_models.run_onnx(onnx_model("two_input"), feed)[0], atol=1e-5)
    session.prepare(rows[1])
    session.run_raw()
    (again,) = session.run(rows[1])
    np.testing.assert_allclose(again, stacked[1:2], atol=1e-6)


def test_plugin_settings_are_pinned(irs):
    session = ov_target.open_session(irs["fp32"], threads=2)
    compiled = session._compiled
    assert compiled.get_property("INFERENCE_NUM_THREADS") == 2
    assert compiled.get_property("NUM_STREAMS") == 1
    assert compiled.get_property("ENABLE_CPU_PINNING") is True
    assert str(compiled.get_property("INFERENCE_PRECISION_HINT")) in ("<Type: 'float32'>", "f32")


def test_int8_layers_compute_in_8_bit(irs):
    session = ov_target.open_session(irs["int8"], threads=1)
    ops = session.ops()
    convolutions = [op for op in ops if op["op"] == "Convolution"]
    assert convolutions and all(op["inputs"][0] in ("uint8", "int8") for op in convolutions), ops
    float_summary = op_summary(ov_target.open_session(irs["fp32"], threads=1).ops())
    assert "Convolution" in float_summary["float_ops"]
    assert "Convolution" not in op_summary(session.ops())["float_ops"]
    assert precision_of(ops) == "int8" and precision_of(ov_target.open_session(irs["fp32"]).ops()) == "fp32"


def test_missing_bin_is_rejected(irs, tmp_path):
    lonely = tmp_path / "lonely.xml"
    shutil.copyfile(irs["fp32"], lonely)
    with pytest.raises(InputRejected, match="no weights file 'lonely.bin'") as info:
        ov_target.open_session(lonely)
    assert info.value.exit_code == 3
