"""Layers of NNCF's int8 IR put back in float by editing it (``openvino_float_edit``), against
NNCF's own ``ignored_scope`` on a hand-built net where one FakeQuantize, moved up through a
MaxPool, serves two convolutions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgeopt.deps import no_telemetry

with no_telemetry():
    ov = pytest.importorskip("openvino")
    nncf = pytest.importorskip("nncf")

from edgeopt.exporters.base import ExportResult, FloatArtifact  # noqa: E402
from edgeopt.passes.quantize.openvino_float_edit import keep_in_float  # noqa: E402

pytestmark = pytest.mark.slow


def _conv(ops, x, channels_in: int, channels_out: int, name: str, rng) -> object:
    weight = ops.constant((rng.normal(size=(channels_out, channels_in, 3, 3)) / (3 * channels_in) ** 0.5)
                          .astype(np.float32))
    conv = ops.convolution(x, weight, [1, 1], [1, 1], [1, 1], [1, 1], name=name)
    bias = ops.constant(rng.normal(scale=0.1, size=(1, channels_out, 1, 1)).astype(np.float32))
    return ops.add(conv, bias, name=f"{name}/bias")


def _net(path: Path) -> None:
    """x -> conv0 -> relu -> maxpool -> (conv1, conv2) -> concat -> conv3: NNCF puts the
    quantizer of conv1's and conv2's shared input in front of the MaxPool."""
    from openvino import opset13 as ops

    rng = np.random.default_rng(0)
    x = ops.parameter([1, 3, 16, 16], np.float32, name="image")
    y = ops.relu(_conv(ops, x, 3, 8, "conv0", rng))
    y = ops.max_pool(y, [2, 2], [1, 1], [0, 0], [0, 0], [2, 2], name="pool").output(0)
    both = ops.concat([_conv(ops, y, 8, 8, "conv1", rng), _conv(ops, y, 8, 8, "conv2", rng)], 1)
    out = _conv(ops, ops.relu(both), 16, 4, "conv3", rng)
    ov.save_model(ov.Model([ops.result(out)], [x], "net"), str(path), compress_to_fp16=False)


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    root = tmp_path_factory.mktemp("ov_edit")
    _net(root / "float.xml")
    rng = np.random.default_rng(1)
    calib = [rng.normal(size=(1, 3, 16, 16)).astype(np.float32) for _ in range(32)]
    return root, calib, [rng.normal(size=(1, 3, 16, 16)).astype(np.float32) for _ in range(16)]


def _quantized(root: Path, calib: list[np.ndarray], ignored: list[str], name: str) -> Path:
    with no_telemetry():
        model = ov.Core().read_model(str(root / "float.xml"))
        scope = nncf.IgnoredScope(names=ignored) if ignored else None
        q = nncf.quantize(model, nncf.Dataset(calib), subset_size=len(calib), ignored_scope=scope)
        ov.save_model(q, str(root / name), compress_to_fp16=False)
    return root / name


def _outputs(path: Path, rows: list[np.ndarray]) -> np.ndarray:
    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    return np.concatenate([compiled(row)[0] for row in rows])


def _error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


class _Handle:
    input_names = ["image"]


class _Model:
    handle = _Handle()


def _edit(root: Path, int8: Path, names: tuple[str, ...], tag: str) -> ExportResult:
    floating = FloatArtifact(path=root / "float.xml", model=_Model(), key="onnx->openvino")
    result = keep_in_float(floating, int8, names, root / f"{tag}.xml")
    assert result is not None and result.path.is_file() and result.float_fallback == bool(names)
    return result


def _reads_quantized(path: Path) -> dict[str, bool]:
    """Convolution -> whether a FakeQuantize is on its activation path (through pools and concats)."""
    def quantized(output) -> bool:
        node = output.get_node()
        if node.get_type_name() == "FakeQuantize":
            return True
        if node.get_type_name() in ("MaxPool", "Concat", "Relu"):
            return any(quantized(i.get_source_output()) for i in node.inputs())
        return False

    ops = ov.Core().read_model(str(path)).get_ordered_ops()
    return {op.get_friendly_name(): quantized(op.input(0).get_source_output())
            for op in ops if op.get_type_name() == "Convolution"}


def test_every_layer_edited_back_gives_the_float_net(net):
    root, calib, val = net
    int8 = _quantized(root, calib, [], "int8.xml")
    reference = _outputs(root / "float.xml", val)
    assert _error(_outputs(int8, val), reference) > 3e-3  # int8 is measurably off
    edited = _edit(root, int8, ("conv0", "conv1", "conv2", "conv3"), "all")
    assert _error(_outputs(edited.path, val), reference) < 1e-5
    assert set(_reads_quantized(edited.path).values()) == {False}


def test_one_layer_edited_matches_ignored_scope(net):
    """conv1 shares its quantized input with conv2: the edit gives conv1 the float tensor and leaves
    conv2 reading the quantized one, as NNCF's ignored_scope does; the outputs agree to 2% of the
    int8 error."""
    root, calib, val = net
    int8 = _quantized(root, calib, [], "int8.xml")
    ignored = _quantized(root, calib, ["conv1"], "ignored.xml")
    edited = _edit(root, int8, ("conv1",), "conv1")
    assert _reads_quantized(edited.path) == _reads_quantized(ignored) == \
        {"conv0": True, "conv1": False, "conv2": True, "conv3": True}
    reference, plain = _outputs(root / "float.xml", val), _outputs(int8, val)
    by_edit, by_nncf = _outputs(edited.path, val), _outputs(ignored, val)
    assert _error(by_edit, by_nncf) < 0.02 * _error(plain, reference)
    # The edit restored conv1's float weights and bias (NNCF's bias correction shifted the int8 one).
    float_ops = {op.get_friendly_name(): op for op in ov.Core().read_model(str(root / "float.xml")).get_ordered_ops()}
    edited_ops = {op.get_friendly_name(): op for op in ov.Core().read_model(str(edited.path)).get_ordered_ops()}
    for name, port in (("conv1", 1), ("conv1/bias", 1)):
        a = float_ops[name].input(port).get_source_output().get_node().get_data()
        b = edited_ops[name].input(port).get_source_output().get_node().get_data()
        np.testing.assert_array_equal(a, b)


def test_an_unknown_layer_is_no_edit(net):
    root, calib, _ = net
    int8 = _quantized(root, calib, [], "int8.xml")
    floating = FloatArtifact(path=root / "float.xml", model=_Model(), key="onnx->openvino")
    assert keep_in_float(floating, int8, ("no_such_layer",), root / "none.xml") is None
