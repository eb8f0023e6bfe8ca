"""LiteRT sessions: outputs named by the model's signature keys, and paired with the source's
outputs by name, whatever order the converter wrote them in."""

from __future__ import annotations

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
pytest.importorskip("ai_edge_litert.interpreter")

from edgeopt.model import TensorSpec  # noqa: E402
from edgeopt.targets import litert  # noqa: E402


@pytest.fixture(scope="module")
def two_maps(tmp_path_factory):
    """A TFLite model with two same-shaped outputs, 'onset' = 2x and 'note' = 3x, from a SavedModel
    signature (the layout of basic-pitch's note model)."""
    folder = tmp_path_factory.mktemp("two_maps")

    class Maps(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec((1, 6), tf.float32, name="audio")])
        def serve(self, audio):
            return {"onset": audio * 2.0, "note": audio * 3.0}

    module = Maps()
    tf.saved_model.save(module, str(folder / "saved"), signatures={"serving_default": module.serve})
    path = folder / "maps.tflite"
    path.write_bytes(tf.lite.TFLiteConverter.from_saved_model(str(folder / "saved")).convert())
    return path


def test_outputs_are_named_by_signature_key(two_maps):
    session = litert.open_session(two_maps, threads=1)
    assert sorted(t.name for t in session.outputs) == ["note", "onset"]


@pytest.mark.parametrize("first", ["note", "onset"])
def test_outputs_pair_with_the_source_by_name(two_maps, first):
    own = litert.open_session(two_maps, threads=1).outputs
    wanted = sorted(own, key=lambda t: t.name != first)  # the source lists `first` first
    session = litert.open_session(two_maps, threads=1, source_inputs=None,
                                  source_outputs=tuple(TensorSpec(t.name, t.shape, t.dtype) for t in wanted))
    x = np.arange(6, dtype=np.float32).reshape(1, 6)
    outputs = session.run({"audio": x})
    factors = {"onset": 2.0, "note": 3.0}
    for spec, value in zip(wanted, outputs):
        np.testing.assert_allclose(value, factors[spec.name] * x, rtol=1e-6)
    assert [t.name for t in session.outputs] == [t.name for t in wanted]


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_precision_is_read_from_the_ops(precision, saved_model, calib_file, tmp_path):
    """What `edgeopt validate` reports for a TFLite file, and gate pairs artifacts by."""
    from edgeopt.pipeline import load_source
    from edgeopt.passes.quantize import export
    from edgeopt.targets.base import precision_of
    import tiny_models

    source, _ = load_source(saved_model("conv"), trust=False)
    calib = tiny_models.calib_subset(calib_file("conv"), source.handle.inputs) if precision == "int8" else None
    path = export("keras->tflite", source, tmp_path / "m.tflite", precision=precision, calib=calib).path
    assert precision_of(litert.open_session(path).ops()) == precision
