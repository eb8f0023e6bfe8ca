"""Shape and indexing ops. On static values they compute in numpy, which is how shape arithmetic
(Shape -> Gather -> Concat -> Reshape) becomes constants before torch.export sees it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from edgeopt.frameworks.onnx_ops.call import Call, Value, axis_of, shape_of, to_tensor, torch


def _reshape_to(x: Value, shape: Sequence[int]) -> Value:
    return np.reshape(x, shape) if isinstance(x, np.ndarray) else x.reshape(tuple(int(d) for d in shape))


def shape_op(c: Call) -> np.ndarray:
    dims = shape_of(c.value(0))
    start, end = c.attr("start", 0), c.attr("end", None)
    return np.array(dims[start:end], dtype=np.int64)


def reshape(c: Call) -> Value:
    x = c.value(0)
    if c.opset < 5:
        wanted = list(c.attr("shape"))
    else:
        wanted = c.ints(1)
    if not c.attr("allowzero", 0):
        wanted = [shape_of(x)[i] if d == 0 else d for i, d in enumerate(wanted)]
    return _reshape_to(x, wanted)


def flatten(c: Call) -> Value:
    x = c.value(0)
    shape = shape_of(x)
    axis = axis_of(int(c.attr("axis", 1)), len(shape))
    return _reshape_to(x, [int(np.prod(shape[:axis])), int(np.prod(shape[axis:]))])


def squeeze(c: Call) -> Value:
    x = c.value(0)
    shape = shape_of(x)
    axes = c.attr("axes") if c.opset < 13 else (c.ints(1) if c.has(1) else None)
    drop = {i for i, d in enumerate(shape) if d == 1} if axes is None else {axis_of(a, len(shape)) for a in axes}
    return _reshape_to(x, [d for i, d in enumerate(shape) if i not in drop])


def unsqueeze(c: Call) -> Value:
    x = c.value(0)
    axes = c.attr("axes") if c.opset < 13 else c.ints(1)
    shape = list(shape_of(x))
    rank = len(shape) + len(axes)
    for a in sorted(axis_of(a, rank) for a in axes):
        shape.insert(a, 1)
    return _reshape_to(x, shape)


def transpose(c: Call) -> Value:
    x = c.value(0)
    perm = list(c.attr("perm", list(reversed(range(len(x.shape))))))
    return np.transpose(x, perm) if isinstance(x, np.ndarray) else x.permute(*perm)


def concat(c: Call) -> Value:
    present = [i for i in range(len(c.values)) if c.has(i)]
    axis = int(c.attr("axis"))
    if c.is_static():
        return np.concatenate([c.value(i) for i in present], axis=axis)
    return torch.cat([c.tensor(i) for i in present if int(np.prod(shape_of(c.value(i)))) > 0], dim=axis)


def split(c: Call) -> tuple[Value, ...]:
    x = c.value(0)
    axis = axis_of(int(c.attr("axis", 0)), len(x.shape))
    count = len(c.node.output)
    sizes = c.attr("split") if c.opset < 13 else (c.ints(1) if c.has(1) else None)
    if sizes is None:
        dim = shape_of(x)[axis]
        parts = int(c.attr("num_outputs", count))
        step = -(-dim // parts)  # opset 18: equal parts, the last one smaller
        sizes = [min(step, dim - i * step) for i in range(parts)]
    if isinstance(x, np.ndarray):
        return tuple(np.split(x, np.cumsum(sizes)[:-1], axis=axis))
    return tuple(torch.split(x, [int(s) for s in sizes], dim=axis))


def slice_op(c: Call) -> Value:
    x = c.value(0)
    rank = len(x.shape)
    if c.opset < 10:
        starts, ends = list(c.attr("starts")), list(c.attr("ends"))
        axes = list(c.attr("axes", range(len(starts))))
        steps = [1] * len(starts)
    else:
        starts, ends = c.ints(1), c.ints(2)
        axes = c.ints(3) if c.has(3) else list(range(len(starts)))
        steps = c.ints(4) if c.has(4) else [1] * len(starts)
    index: list[Any] = [slice(None)] * rank
    backwards: list[tuple[int, np.ndarray]] = []
    for start, end, axis, step in zip(starts, ends, axes, steps):
        axis = axis_of(axis, rank)
        dim = shape_of(x)[axis]
        start, end = start + dim if start < 0 else start, end + dim if end < 0 else end
        if step > 0:
            index[axis] = slice(min(max(start, 0), dim), min(max(end, 0), dim), step)
        else:
            start, end = min(max(start, 0), dim - 1), min(max(end, -1), dim - 1)
            index[axis] = slice(start, None if end < 0 else end, step)
            backwards.append((axis, np.arange(start, end, step, dtype=np.int64)))
    if isinstance(x, np.ndarray):
        return np.asarray(x[tuple(index)])
    for axis, _ in backwards:
        index[axis] = slice(None)
    y = x[tuple(index)]
    for axis, idx in backwards:  # torch slicing has no negative steps
        y = torch.index_select(y, axis, to_tensor(idx))
    return y


def gather(c: Call) -> Value:
    data = c.value(0)
    axis = axis_of(int(c.attr("axis", 0)), len(data.shape))
    dim = shape_of(data)[axis]
    if c.is_static(1):
        idx = c.static(1).astype(np.int64)
        idx = np.where(idx < 0, idx + dim, idx)
        if isinstance(data, np.ndarray):
            return np.take(data, idx, axis=axis)
        x = c.tensor(0)
        if idx.ndim == 0:
            return x.select(axis, int(idx))
        flat = torch.index_select(x, axis, to_tensor(idx.reshape(-1)))
        return flat.reshape(*shape_of(x)[:axis], *idx.shape, *shape_of(x)[axis + 1:])
    x, idx_t = c.tensor(0), c.tensor(1).to(torch.int64)
    idx_t = torch.where(idx_t < 0, idx_t + dim, idx_t)
    flat = torch.index_select(x, axis, idx_t.reshape(-1))
    return flat.reshape(*shape_of(x)[:axis], *shape_of(idx_t), *shape_of(x)[axis + 1:])


def gather_elements(c: Call) -> Any:
    x = c.tensor(0)
    axis = axis_of(int(c.attr("axis", 0)), x.ndim)
    idx = c.tensor(1).to(torch.int64)
    return torch.gather(x, axis, torch.where(idx < 0, idx + int(x.shape[axis]), idx))


def constant(c: Call) -> np.ndarray:
    for key in ("value", "value_float", "value_floats", "value_int", "value_ints"):
        if key in c.attrs:
            value = c.attrs[key]
            if key.startswith("value_float"):
                return np.asarray(value, dtype=np.float32)
            if key.startswith("value_int"):
                return np.asarray(value, dtype=np.int64)
            return np.asarray(value)
    raise c.fail("only tensor, float and int constants are supported")


def constant_of_shape(c: Call) -> np.ndarray:
    value = c.attr("value", np.zeros(1, dtype=np.float32))
    return np.full(c.ints(0), value.reshape(-1)[0], dtype=value.dtype)


def expand(c: Call) -> Value:
    x = c.value(0)
    out = np.broadcast_shapes(shape_of(x), tuple(c.ints(1)))
    return np.broadcast_to(x, out).copy() if isinstance(x, np.ndarray) else x.expand(*out)


def tile(c: Call) -> Value:
    x, reps = c.value(0), c.ints(1)
    return np.tile(x, reps) if isinstance(x, np.ndarray) else x.repeat(*reps)


def range_op(c: Call) -> np.ndarray:
    start, limit, delta = (c.static(i).reshape(()) for i in range(3))
    return np.arange(start, limit, delta).astype(start.dtype)
