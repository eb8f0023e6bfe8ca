"""Framework-neutral descriptions of models and their tensors. No heavy imports here."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any


class Format(str, Enum):
    KERAS_H5 = "keras_h5"
    KERAS_V3 = "keras"
    SAVED_MODEL = "saved_model"
    TORCH_MODULE = "torch_module"
    TORCHSCRIPT = "torchscript"
    TORCH_EXPORT = "torch_export"
    TORCH_PICKLE = "torch_pickle"
    ONNX = "onnx"
    TFLITE = "tflite"
    OPENVINO = "openvino"

    @property
    def framework(self) -> str:
        return _FRAMEWORK[self]


_FRAMEWORK = {
    Format.KERAS_H5: "keras",
    Format.KERAS_V3: "keras",
    Format.SAVED_MODEL: "keras",
    Format.TORCH_MODULE: "torch",
    Format.TORCHSCRIPT: "torch",
    Format.TORCH_EXPORT: "torch",
    Format.TORCH_PICKLE: "torch",
    Format.ONNX: "onnx",
    Format.TFLITE: "tflite",
    Format.OPENVINO: "openvino",
}


# Permutations between the image layouts: a converter moves inputs channels-last with them, and a
# runtime session moves feeds and outputs between the source's layout and its artifact's.
Axes = tuple[int, ...]
NCHW_TO_NHWC: Axes = (0, 2, 3, 1)
NHWC_TO_NCHW: Axes = (0, 3, 1, 2)


@dataclass(frozen=True)
class TensorSpec:
    """One input or output: ``None`` in ``shape`` marks a free (batch) dimension."""

    name: str
    shape: tuple[int | None, ...]
    dtype: str
    layout: str | None = None  # "nhwc", "nchw" or None when not an image tensor

    def describe(self) -> str:
        dims = ",".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.name}: {self.dtype}[{dims}]"

    @property
    def sample_shape(self) -> tuple[int | None, ...]:
        """The shape of one sample: the leading batch axis removed."""
        return self.shape[1:]


@dataclass(frozen=True)
class ModelHandle:
    """A model on disk and what it looks like from outside; the live object stays in its framework."""

    path: Path
    format: Format
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    metadata: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def framework(self) -> str:
        return self.format.framework

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    def input(self, name: str) -> TensorSpec:
        for t in self.inputs:
            if t.name == name:
                return t
        raise KeyError(name)
