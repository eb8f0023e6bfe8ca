"""The prepared float graph an int8 ONNX model was quantized from, kept in its float artifact's
memo by the quantize pass (``onnx``) and read by what edits or measures that model (the float
edit, the ranking, the bias correction), which the pass itself uses in turn."""

from __future__ import annotations

from edgeopt.exporters.base import FloatArtifact

MEMO_KEY = "prepared"


def prepared_graph(artifact: FloatArtifact) -> bytes | None:
    """The serialized graph the latest int8 model of ``artifact`` was quantized from, if known:
    what edits restore float inputs from (``onnx_float_edit``)."""
    return artifact.memo.get(MEMO_KEY)
