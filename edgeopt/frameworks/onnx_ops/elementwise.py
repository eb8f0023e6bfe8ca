"""Elementwise ops, activations, softmax, reductions: numpy when every input is static."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from edgeopt.frameworks.onnx_ops.call import F, TORCH_DTYPES, Call, Value, axis_of, np_dtype, shape_of, torch


def unary(np_fn: Callable[[np.ndarray], np.ndarray], torch_fn: Callable[[Any], Any]) -> Callable[[Call], Value]:
    def run(c: Call) -> Value:
        x = c.value(0)
        return np.asarray(np_fn(x)).astype(x.dtype, copy=False) if isinstance(x, np.ndarray) else torch_fn(x)
    return run


def trunc_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if np.issubdtype(np.result_type(a, b), np.integer):  # ONNX integer Div truncates toward zero
        return (np.sign(a) * np.sign(b) * (np.abs(a) // np.abs(b))).astype(np.result_type(a, b))
    return np.divide(a, b)


def torch_div(a: Any, b: Any) -> Any:
    floating = any(isinstance(v, float) or (torch.is_tensor(v) and v.is_floating_point()) for v in (a, b))
    return torch.div(a, b) if floating else torch.div(a, b, rounding_mode="trunc")


def binary(np_fn: Callable[[Any, Any], Any], torch_fn: Callable[[Any, Any], Any]) -> Callable[[Call], Value]:
    def run(c: Call) -> Value:
        if c.is_static(0, 1):
            return np.asarray(np_fn(c.value(0), c.value(1)))
        if isinstance(c.value(0), np.ndarray):  # torch ops want a tensor on the left
            return torch_fn(c.tensor(0), c.value(1))
        return torch_fn(c.value(0), c.operand(1, c.value(0)))
    return run


def power(c: Call) -> Value:
    if c.is_static(0, 1):
        return np.power(c.value(0), c.value(1)).astype(c.value(0).dtype)
    exponent = c.operand(1, c.tensor(0))
    if isinstance(exponent, (int, float)) and float(exponent) == 2.0:
        x = c.tensor(0)
        return x * x  # a multiply, which every TFLite kernel quantizes well
    return torch.pow(c.tensor(0), exponent if not torch.is_tensor(exponent) else exponent.to(c.tensor(0).dtype))


def variadic(np_fn: Callable[[Any, Any], Any], torch_fn: Callable[[Any, Any], Any]) -> Callable[[Call], Value]:
    def run(c: Call) -> Value:
        present = [i for i in range(len(c.values)) if c.has(i)]
        if c.is_static():
            out = c.value(present[0])
            for i in present[1:]:
                out = np_fn(out, c.value(i))
            return np.asarray(out)
        out = c.tensor(present[0])
        for i in present[1:]:
            out = torch_fn(out, c.tensor(i))
        return out
    return run


def mean(c: Call) -> Value:
    total = variadic(np.add, torch.add)(c)
    count = sum(1 for i in range(len(c.values)) if c.has(i))
    return total / count if torch.is_tensor(total) else np.asarray(total / count).astype(total.dtype)


def cast(c: Call) -> Value:
    dtype = np_dtype(c.attr("to"))
    x = c.value(0)
    return x.astype(dtype) if isinstance(x, np.ndarray) else x.to(TORCH_DTYPES[dtype])


def cast_like(c: Call) -> Value:
    x, like = c.value(0), c.value(1)
    dtype = like.dtype if isinstance(like, np.ndarray) else next(k for k, v in TORCH_DTYPES.items() if v == like.dtype)
    return x.astype(dtype) if isinstance(x, np.ndarray) else x.to(TORCH_DTYPES[np.dtype(dtype)])


def where(c: Call) -> Value:
    if c.is_static(0, 1, 2):
        return np.where(c.value(0), c.value(1), c.value(2))
    return torch.where(c.tensor(0).to(torch.bool), c.tensor(1), c.tensor(2))


def clip(c: Call) -> Value:
    if c.opset < 11:
        low, high = c.attr("min", None), c.attr("max", None)
    else:
        low = c.operand(1) if c.has(1) else None
        high = c.operand(2) if c.has(2) else None
    if low is None and high is None:
        return c.value(0)
    if c.is_static(0) and not torch.is_tensor(low) and not torch.is_tensor(high):
        return np.clip(c.value(0), low, high)
    x = c.tensor(0)
    if low == 0.0 and high == 6.0 and x.is_floating_point():
        return F.relu6(x)
    return torch.clamp(x, low, high)


def leaky_relu(x: Any, alpha: float) -> Any:
    # max(x, alpha * x) is the same function for 0 <= alpha <= 1, and TFLite's int8 quantizer takes
    # MUL and MAXIMUM, where it leaves LEAKY_RELU in float.
    return torch.maximum(x, x * alpha) if 0.0 <= alpha <= 1.0 else F.leaky_relu(x, alpha)


def hard_sigmoid(c: Call) -> Any:
    alpha, beta = c.attr("alpha", 0.2), c.attr("beta", 0.5)
    x = c.tensor(0)
    if math.isclose(alpha, 1 / 6, rel_tol=1e-6) and beta == 0.5:
        return F.hardsigmoid(x)
    return torch.clamp(x * alpha + beta, 0.0, 1.0)


def prelu(c: Call) -> Any:
    x, slope = c.tensor(0), c.tensor(1)
    # F.prelu (TFLite's PRELU) scales axis 1 per channel; other slope shapes broadcast as written.
    padded = (1,) * (x.ndim - slope.ndim) + shape_of(slope)
    if slope.numel() == 1 or (x.ndim >= 2 and padded[1] == x.shape[1] and
                              all(d == 1 for i, d in enumerate(padded) if i != 1)):
        return F.prelu(x, slope.reshape(-1))
    return torch.where(x >= 0, x, x * slope)


def softmax(log: bool) -> Callable[[Call], Any]:
    def run(c: Call) -> Any:
        x = c.tensor(0)
        fn = torch.log_softmax if log else torch.softmax
        if c.opset >= 13:
            return fn(x, axis_of(c.attr("axis", -1), x.ndim))
        # Before opset 13 the input is flattened to 2-D around ``axis`` and normalized per row.
        axis = axis_of(c.attr("axis", 1), x.ndim)
        if axis == x.ndim - 1:
            return fn(x, axis)
        shape = shape_of(x)
        rows = int(np.prod(shape[:axis]))
        return fn(x.reshape(rows, -1), 1).reshape(shape)
    return run


def reduce(kind: str) -> Callable[[Call], Value]:
    def run(c: Call) -> Value:
        x = c.value(0)
        rank = len(x.shape)
        # ReduceSum takes axes as an input from opset 13, the other reductions from opset 18.
        if c.opset >= (13 if kind == "sum" else 18):
            axes = c.ints(1) if c.has(1) else []
        else:
            axes = list(c.attr("axes", []))
        if not axes:
            if c.attr("noop_with_empty_axes", 0):
                return x
            axes = list(range(rank))
        dims = tuple(sorted(axis_of(a, rank) for a in axes))
        keep = bool(c.attr("keepdims", 1))
        if isinstance(x, np.ndarray):
            fn = {"mean": np.mean, "max": np.max, "min": np.min, "sum": np.sum, "prod": np.prod,
                  "l2": lambda v, **kw: np.sqrt(np.sum(v * v, **kw)),
                  "sumsquare": lambda v, **kw: np.sum(v * v, **kw)}[kind]
            return np.asarray(fn(x, axis=dims, keepdims=keep)).astype(x.dtype)
        if kind == "mean":
            return x.mean(dim=dims, keepdim=keep)
        if kind == "sum":
            return x.sum(dim=dims, keepdim=keep)
        if kind == "max" and x.ndim == 4 and dims == (2, 3):  # a global max pool, which int8 TFLite keeps integer
            pooled = F.max_pool2d(x, shape_of(x)[2:])
            return pooled if keep else pooled.reshape(shape_of(x)[:2])
        if kind == "max":
            return x.amax(dim=dims, keepdim=keep)
        if kind == "min":
            return x.amin(dim=dims, keepdim=keep)
        if kind == "l2":
            return torch.sqrt((x * x).sum(dim=dims, keepdim=keep))
        if kind == "sumsquare":
            return (x * x).sum(dim=dims, keepdim=keep)
        out = x
        for d in sorted(dims, reverse=True):
            out = out.prod(dim=d, keepdim=keep)
        return out
    return run


def arg(kind: str) -> Callable[[Call], Any]:
    def run(c: Call) -> Any:
        x = c.tensor(0)
        if c.attr("select_last_index", 0):
            raise c.fail("select_last_index is not supported")
        axis = axis_of(int(c.attr("axis", 0)), x.ndim)
        fn = torch.argmax if kind == "max" else torch.argmin
        return fn(x, dim=axis, keepdim=bool(c.attr("keepdims", 1)))
    return run


def topk(c: Call) -> tuple[Any, Any]:
    x = c.tensor(0)
    k = int(c.attr("k")) if c.opset < 10 else c.ints(1)[0]
    axis = axis_of(int(c.attr("axis", -1)), x.ndim)
    values, indices = torch.topk(x, k, dim=axis, largest=bool(c.attr("largest", 1)), sorted=True)
    return values, indices


def identity(c: Call) -> Value:
    return c.value(0)


def dropout(c: Call) -> Value | tuple[Value, Value]:
    x = c.value(0)
    if len(c.node.output) > 1 and c.node.output[1]:
        return x, np.ones(shape_of(x), dtype=bool)
    return x


def einsum(c: Call) -> Any:
    present = [i for i in range(len(c.values)) if c.has(i)]
    return torch.einsum(c.attr("equation"), *[c.tensor(i) for i in present])


def act(fn: Callable[[Any, Call], Any]) -> Callable[[Call], Any]:
    return lambda c: fn(c.tensor(0), c)


def np_sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))
