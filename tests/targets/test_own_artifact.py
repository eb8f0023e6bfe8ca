"""A runtime refusing an artifact edgeopt wrote is edgeopt's failure (exit 4), never the user's file's."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from edgeopt.errors import ConversionError, InputRejected
from edgeopt.model import TensorSpec
from edgeopt.targets.base import open_own_artifact


@pytest.mark.parametrize("target, suffix, module", [("tflite", "tflite", "ai_edge_litert"),
                                                    ("onnx", "onnx", "onnxruntime")])
def test_an_unloadable_own_artifact_is_a_conversion_error(tmp_path, target, suffix, module):
    pytest.importorskip(module)
    broken = tmp_path / f"model_int8.{suffix}"
    broken.write_bytes(b"\x00" * 64)
    spec = TensorSpec("x", (1, 4), "float32", None)
    source = SimpleNamespace(handle=SimpleNamespace(path=Path("user_model.onnx"), input_names=["x"], inputs=(spec,),
                                                    outputs=(spec,)))
    with pytest.raises(ConversionError) as caught:
        open_own_artifact(target, broken, source)
    text = str(caught.value)
    assert "edgeopt wrote for 'user_model.onnx'" in text and "not in the model you gave" in text
    assert caught.value.exit_code == 4 and isinstance(caught.value.__cause__, InputRejected)
