"""The error each layer of an int8 model makes by its own quantization, from one run of its float
model (ONNX Runtime and OpenVINO): the layer that reads the outlier tensor of the outlier net
comes first, and the others make next to nothing."""

from __future__ import annotations

import importlib
from dataclasses import replace

import numpy as np
import pytest

from edgeopt.deps import no_telemetry

pytest.importorskip("onnx")

import tiny_models  # noqa: E402
from edgeopt.exporters.base import FloatArtifact  # noqa: E402
from edgeopt.passes.quantize import convert, onnx_sensitivity, quantize  # noqa: E402
from edgeopt.passes.quantize.config import DEFAULT_QUANT  # noqa: E402

# target -> (what it needs, its float artifact's suffix, the name its lister gives conv3)
BACKENDS = {"onnx": (("onnxruntime",), ".onnx", "conv3"),
            "openvino": (("openvino", "nncf"), ".xml", "conv3/WithoutBiases")}


@pytest.mark.parametrize("target", list(BACKENDS))
def test_the_reader_of_the_outliers_adds_the_most_error(target, tmp_path):
    needs, suffix, conv3 = BACKENDS[target]
    with no_telemetry():
        for module in needs:
            pytest.importorskip(module)
    backend = importlib.import_module(f"edgeopt.passes.quantize.{target}")
    ranking = importlib.import_module(f"edgeopt.passes.quantize.{target}_sensitivity")
    _, source, calib, rng = tiny_models.outlier_source(tmp_path)
    size = tiny_models.OUTLIER_SIZE
    floating = convert(f"onnx->{target}", source, tmp_path / f"float{suffix}")
    # Cross-layer equalization alone repairs this net (test_equalization); the ranking is tested here.
    plain = quantize(floating, tmp_path / f"int8{suffix}", precision="int8", calib=calib,
                     quant=replace(DEFAULT_QUANT, equalization=False))
    layers = backend.quantized_layers(floating, plain.path)
    rows = [{"image": rng.random((1, 3, size, size), dtype=np.float32)} for _ in range(8)]
    added = ranking.added_error(floating, plain.path, layers, rows)
    assert set(added) == {layer.name for layer in layers}
    ranked = sorted(added, key=added.get, reverse=True)
    assert ranked[0] == conv3  # conv2 writes the outlier channels; conv3 reads them quantized
    assert added[conv3] > 10 * max(v for k, v in added.items() if k != conv3)
    assert all(v >= 0 for v in added.values())


def test_without_a_prepared_graph_there_is_no_onnx_ranking(tmp_path):
    unknown = FloatArtifact("onnx->onnx", None, tmp_path / "float.onnx")  # never quantized
    assert onnx_sensitivity.added_error(unknown, tmp_path / "none.onnx", [], []) is None
