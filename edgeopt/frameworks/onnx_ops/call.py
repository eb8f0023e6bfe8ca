"""What every ONNX op function works with: the node's inputs as static numpy values or tensors.

A value is a numpy array while it depends only on constants and tensor shapes, so that shape
arithmetic reaches torch.export as plain Python numbers; a value that depends on the model's
inputs is a torch tensor. :class:`Call` hands an op its inputs in whichever form it needs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Union

import numpy as np

from edgeopt.deps import require
from edgeopt.errors import ConversionError

torch = require("torch", "Converting ONNX models to TFLite")
F = torch.nn.functional

Value = Union[np.ndarray, "torch.Tensor"]

TORCH_DTYPES = {np.dtype(k): v for k, v in {
    "float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "int64": torch.int64,
    "int32": torch.int32, "int16": torch.int16, "int8": torch.int8, "uint8": torch.uint8, "bool": torch.bool}.items()}


class Call:
    """One node's execution: attributes, and input values as numpy (static) or torch tensors."""

    def __init__(self, node: Any, attrs: dict[str, Any], values: list[Value | None], opset: int,
                 weight: Callable[[int], Any]) -> None:
        self.node = node
        self.attrs = attrs
        self.values = values
        self.opset = opset
        self._weight = weight  # the registered buffer for a constant input, else None

    @property
    def name(self) -> str:
        return self.node.name or self.node.output[0]

    def attr(self, key: str, default: Any = None) -> Any:
        return self.attrs.get(key, default)

    def has(self, i: int) -> bool:
        return i < len(self.values) and self.values[i] is not None

    def value(self, i: int) -> Value:
        if not self.has(i):
            raise self.fail(f"input {i} is missing")
        return self.values[i]

    def is_static(self, *indices: int) -> bool:
        picked = indices or range(len(self.values))
        return all(not self.has(i) or isinstance(self.values[i], np.ndarray) for i in picked)

    def static(self, i: int) -> np.ndarray:
        value = self.value(i)
        if not isinstance(value, np.ndarray):
            raise self.fail(f"input {i} ('{self.node.input[i]}') depends on the model's inputs, but must be "
                            "known before the model runs (a shape, axis or size)",
                            hint="Re-export the model with fixed input shapes, so that sizes are constants.")
        return value

    def ints(self, i: int) -> list[int]:
        return [int(v) for v in self.static(i).reshape(-1)]

    def tensor(self, i: int) -> Any:
        value = self.value(i)
        if isinstance(value, np.ndarray):
            buffer = self._weight(i)
            return buffer if buffer is not None else to_tensor(value)
        return value

    def operand(self, i: int, other: Value | None = None) -> Any:
        """A tensor, or a Python number for a one-element constant that does not widen ``other``."""
        value = self.value(i)
        if isinstance(value, np.ndarray) and value.size == 1 and (other is None or value.ndim <= other.ndim):
            return value.reshape(()).item()
        return self.tensor(i)

    def fail(self, why: str, hint: str | None = None) -> ConversionError:
        return ConversionError(f"ONNX node '{self.name}' ({self.node.op_type}): {why}.",
                               hint=hint or "Replace this node in the model, or choose --target onnx or openvino, "
                                            "whose runtimes run the ONNX graph as it is.")


def to_tensor(value: np.ndarray) -> Any:
    return torch.from_numpy(np.array(value, copy=True))


def np_dtype(onnx_type: int) -> np.dtype:
    onnx = require("onnx", "Converting ONNX models to TFLite")
    return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(onnx_type))


def shape_of(value: Value) -> tuple[int, ...]:
    return tuple(int(d) for d in value.shape)


def axis_of(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis
