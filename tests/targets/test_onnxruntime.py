"""The ONNX Runtime session: the Session interface, name matching, pinned threads, and the ops the
runtime really executes after its fusions."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import tiny_models  # noqa: E402
from edgeopt.errors import InputRejected  # noqa: E402
from edgeopt.frameworks import onnx as onnx_loader  # noqa: E402
from edgeopt.model import Format  # noqa: E402
from edgeopt.targets.base import op_summary, precision_of  # noqa: E402
from edgeopt.targets import onnxruntime as ort_target  # noqa: E402
from edgeopt.passes.quantize import export  # noqa: E402


@pytest.fixture(scope="module")
def int8_residual(onnx_model, nchw_calib, tmp_path_factory):
    source = onnx_loader.load(onnx_model("residual"), Format.ONNX)
    calib = tiny_models.calib_subset(nchw_calib("residual"), source.handle.inputs)
    out = tmp_path_factory.mktemp("ort") / "residual_int8.onnx"
    return export("onnx->onnx", source, out, precision="int8", calib=calib).path


def test_session_interface(onnx_model):
    path = onnx_model("two_input", batch=1)
    session = ort_target.open_session(path, threads=1, input_names=["image", "meta"])
    assert session.threads == 1 and session.load_seconds > 0
    assert [(t.name, t.shape, t.dtype) for t in session.inputs] == [("image", (1, 1, 8, 8), "float32"),
                                                                   ("meta", (1, 4), "float32")]
    assert session.inputs[0].layout == "nchw"
    feed = tiny_models.random_feed("two_input", 5)
    rows = [{k: v[i:i + 1] for k, v in feed.items()} for i in range(5)]
    (stacked,) = session.run_many(rows)
    np.testing.assert_allclose(stacked, tiny_models.run_onnx(path, feed)[0], atol=1e-6)
    (one,) = session.run(rows[2])
    np.testing.assert_allclose(one, stacked[2:3])
    session.prepare(rows[0])
    session.run_raw()


def test_inputs_matched_by_position_when_names_differ(onnx_model):
    path = onnx_model("two_input", batch=1)
    session = ort_target.open_session(path, input_names=["pixels", "extra"])
    assert [t.name for t in session.inputs] == ["pixels", "extra"]
    feed = tiny_models.random_feed("two_input", 1)
    (out,) = session.run({"pixels": feed["image"], "extra": feed["meta"]})
    np.testing.assert_allclose(out, tiny_models.run_onnx(path, feed)[0], atol=1e-6)


def test_worker_threads_are_pinned_to_allowed_cpus():
    assert ort_target._affinities(1) is None
    if not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two CPUs")
    cpus = sorted(os.sched_getaffinity(0))
    assert ort_target._affinities(2) == str(cpus[1] + 1)  # 1-based; the caller's thread is left alone
    assert ort_target._affinities(len(cpus) + 1) is None


def test_int8_ops_are_the_fused_integer_kernels(int8_residual):
    session = ort_target.open_session(int8_residual, threads=1)
    ops = session.ops()
    names = [op["op"] for op in ops]
    assert names.count("QLinearConv") == 2 and "Conv" not in names
    assert all(op["inputs"] == ["uint8"] for op in ops if op["op"].startswith("QLinear"))
    summary = op_summary(session.ops())
    assert summary["full_integer"], summary
    assert precision_of(ops) == "int8"  # what `edgeopt validate` reports, and gate pairs by


def test_float_model_ops_are_float(onnx_model):
    ops = ort_target.open_session(onnx_model("residual"), threads=1).ops()
    summary = op_summary(ops)
    assert not summary["full_integer"] and "Conv" in summary["float_ops"]
    assert precision_of(ops) == "fp32"


def test_dynamic_int8_reads_as_dynamic(onnx_model, tmp_path):
    source = onnx_loader.load(onnx_model("residual"), Format.ONNX)
    dynamic = export("onnx->onnx", source, tmp_path / "d.onnx", precision="int8").path
    assert precision_of(ort_target.open_session(dynamic, threads=1).ops()) == "int8-dynamic"


def test_unreadable_file_is_rejected(tmp_path):
    path = tmp_path / "bad.onnx"
    path.write_bytes(b"\x08\x07not a model")
    with pytest.raises(InputRejected, match="ONNX Runtime cannot load") as info:
        ort_target.open_session(path)
    assert info.value.exit_code == 3


def test_cpu_nodes_counts_nodes_a_profile_places_on_the_cpu(tmp_path):
    import json

    from edgeopt.targets.onnxruntime import cpu_nodes

    events = [
        {"cat": "Node", "name": "conv1_kernel_time", "args": {"op_name": "Conv", "provider": "CUDAExecutionProvider"}},
        {"cat": "Node", "name": "resize_kernel_time", "args": {"op_name": "Resize", "provider": "CPUExecutionProvider"}},
        {"cat": "Node", "name": "resize_fence_before", "args": {"op_name": "Resize", "provider": "CPUExecutionProvider"}},
        {"cat": "Node", "name": "nms_kernel_time", "args": {"op_name": "NonMaxSuppression",
                                                            "provider": "CPUExecutionProvider"}},
        {"cat": "Session", "name": "model_run", "args": {}},
    ]
    profile = tmp_path / "profile.json"
    profile.write_text(json.dumps(events))
    assert cpu_nodes(profile) == {"NonMaxSuppression": 1, "Resize": 1}


def test_a_real_profile_on_the_cpu_names_every_node(onnx_model):
    """On the CPU provider every node is a 'CPU' node: the profile parsing sees them all."""
    import onnxruntime as ort

    from edgeopt.targets.onnxruntime import cpu_nodes

    session = ort_target.open_session(onnx_model("residual"), threads=1)
    options = ort.SessionOptions()
    options.enable_profiling = True
    options.profile_file_prefix = str(Path(session.path).parent / "edgeopt_profile")
    profiled = ort.InferenceSession(str(session.path), options, providers=["CPUExecutionProvider"])
    profiled.run(None, session._zeros())
    counts = cpu_nodes(Path(profiled.end_profiling()))
    assert counts.get("Conv", 0) >= 2 and sum(counts.values()) >= 4
    assert session.fallback_ops() == {}  # nothing to report when no GPU was asked for
