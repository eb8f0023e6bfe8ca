"""The error each layer of an int8 OpenVINO IR adds, from one run: the conv that reads the outlier
tensor of the outlier net comes first, and the others add next to nothing."""

from __future__ import annotations

import numpy as np
import pytest

from edgeopt.deps import no_telemetry

onnx = pytest.importorskip("onnx")
with no_telemetry():
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")

import tiny_models  # noqa: E402
from edgeopt.frameworks import onnx as onnx_loader  # noqa: E402
from edgeopt.model import Format  # noqa: E402
from edgeopt.passes.quantize import convert, openvino_sensitivity, quantize  # noqa: E402
from edgeopt.passes.quantize.openvino import quantized_layers  # noqa: E402


def test_the_reader_of_the_outliers_adds_the_most_error(tmp_path):
    path = tmp_path / "outlier.onnx"
    onnx.save(tiny_models.build_outlier_onnx(), str(path))
    source = onnx_loader.load(path, Format.ONNX)
    rng = np.random.default_rng(1)
    size = tiny_models.OUTLIER_SIZE
    np.savez(tmp_path / "calib.npz", image=rng.random((48, 3, size, size), dtype=np.float32))
    calib = tiny_models.calib_subset(tmp_path / "calib.npz", source.handle.inputs)
    floating = convert("onnx->openvino", source, tmp_path / "float.xml")
    plain = quantize(floating, tmp_path / "int8.xml", precision="int8", calib=calib)
    layers = quantized_layers(floating, plain.path)
    rows = [{"image": rng.random((1, 3, size, size), dtype=np.float32)} for _ in range(8)]
    added = openvino_sensitivity.added_error(floating, plain.path, layers, rows)
    assert set(added) == {layer.name for layer in layers}
    ranked = sorted(added, key=added.get, reverse=True)
    assert ranked[0] == "conv3/WithoutBiases"  # conv2 writes the outlier channels; conv3 reads them quantized
    assert added[ranked[0]] > 10 * max(v for k, v in added.items() if k != ranked[0])
    assert all(v >= 0 for v in added.values())
    # The float IR against itself adds nothing anywhere.
    same = openvino_sensitivity.added_error(floating, floating.path, layers, rows)
    assert max(same.values()) < 1e-10
