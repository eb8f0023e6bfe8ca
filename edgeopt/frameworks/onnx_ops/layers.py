"""Convolution, matrix products, normalization, pooling, padding and resizing, in NCHW as ONNX.

Where torch's own op differs from ONNX in a corner (asymmetric pads, ceil-mode windows counting
pads, nearest-neighbour rounding), the op falls back to a formulation that matches ONNX exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from edgeopt.frameworks.onnx_ops.call import F, Call, Value, axis_of, shape_of, to_tensor, torch


def _same_pads(sizes: Sequence[int], kernel: Sequence[int], strides: Sequence[int], dilations: Sequence[int],
               upper: bool) -> list[int]:
    begins, ends = [], []
    for size, k, s, d in zip(sizes, kernel, strides, dilations):
        total = max(0, (math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size)
        small, big = total // 2, total - total // 2
        begins.append(small if upper else big)
        ends.append(big if upper else small)
    return begins + ends


def _pads(c: Call, sizes: Sequence[int], kernel: Sequence[int], strides: Sequence[int],
          dilations: Sequence[int]) -> list[int]:
    auto = c.attr("auto_pad", "NOTSET")
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        return _same_pads(sizes, kernel, strides, dilations, auto == "SAME_UPPER")
    if auto == "VALID":
        return [0] * (2 * len(kernel))
    return list(c.attr("pads", [0] * (2 * len(kernel))))


def _torch_pad(pads: Sequence[int]) -> list[int]:
    """ONNX [b1, b2, ..., e1, e2, ...] as F.pad's (bn, en, ..., b1, e1): last axis first."""
    n = len(pads) // 2
    out: list[int] = []
    for i in reversed(range(n)):
        out += [int(pads[i]), int(pads[i + n])]
    return out


def conv(c: Call) -> Any:
    x, w = c.tensor(0), c.tensor(1)
    bias = c.tensor(2) if c.has(2) else None
    spatial = w.ndim - 2
    kernel = list(c.attr("kernel_shape", shape_of(w)[2:]))
    strides = list(c.attr("strides", [1] * spatial))
    dilations = list(c.attr("dilations", [1] * spatial))
    pads = _pads(c, shape_of(x)[2:], kernel, strides, dilations)
    fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}.get(spatial)
    if fn is None:
        raise c.fail(f"{spatial}-D convolution is not supported")
    if pads[:spatial] == pads[spatial:]:
        padding: Any = pads[:spatial]
    else:
        x, padding = F.pad(x, _torch_pad(pads)), 0  # torch pads both sides alike
    return fn(x, w, bias, strides, padding, dilations, int(c.attr("group", 1)))


def conv_transpose(c: Call) -> Any:
    x, w = c.tensor(0), c.tensor(1)
    spatial = w.ndim - 2
    kernel = list(c.attr("kernel_shape", shape_of(w)[2:]))
    strides = list(c.attr("strides", [1] * spatial))
    dilations = list(c.attr("dilations", [1] * spatial))
    extra = list(c.attr("output_padding", [0] * spatial))
    sizes = shape_of(x)[2:]
    full = [(n - 1) * s + (k - 1) * d + 1 for n, s, k, d in zip(sizes, strides, kernel, dilations)]
    auto = c.attr("auto_pad", "NOTSET")
    if c.attr("output_shape") is not None or auto in ("SAME_UPPER", "SAME_LOWER"):
        wanted = list(c.attr("output_shape", [n * s for n, s in zip(sizes, strides)]))[-spatial:]
        totals = [f + e - o for f, e, o in zip(full, extra, wanted)]
        upper = auto != "SAME_LOWER"
        pads = [t // 2 if upper else t - t // 2 for t in totals] + [t - t // 2 if upper else t // 2 for t in totals]
    elif auto == "VALID":
        pads = [0] * (2 * spatial)
    else:
        pads = list(c.attr("pads", [0] * (2 * spatial)))
    fn = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}.get(spatial)
    if fn is None:
        raise c.fail(f"{spatial}-D transposed convolution is not supported")
    bias = c.tensor(2) if c.has(2) else None
    groups = int(c.attr("group", 1))
    begins, ends = pads[:spatial], pads[spatial:]
    if begins == ends and all(0 <= b and 0 <= e < max(s, d) for b, e, s, d in zip(begins, extra, strides, dilations)):
        return fn(x, w, bias, strides, begins, extra, groups, dilations)
    # Uneven or negative pads: the full output, cut (or grown) to ONNX's window, then the bias.
    y = fn(x, w, None, strides, 0, 0, groups, dilations)
    for i in range(spatial):
        stop = full[i] + extra[i] - ends[i]
        front, back = max(0, -begins[i]), max(0, stop - full[i])
        if front or back:
            y = F.pad(y, _torch_pad([0] * i + [front] + [0] * (spatial - i - 1) +
                                    [0] * i + [back] + [0] * (spatial - i - 1)))
        y = y.narrow(2 + i, begins[i] + front, stop - begins[i])
    return y if bias is None else y + bias.reshape(1, -1, *([1] * spatial))


def gemm(c: Call) -> Any:
    alpha, beta = float(c.attr("alpha", 1.0)), float(c.attr("beta", 1.0))
    trans_a, trans_b = int(c.attr("transA", 0)), int(c.attr("transB", 0))
    a = c.tensor(0)
    a = a.t() if trans_a else a
    bias = c.tensor(2) if c.has(2) else None
    if alpha == 1.0 and (bias is None or beta == 1.0) and (bias is None or bias.ndim <= 1):
        # F.linear becomes TFLite's FULLY_CONNECTED, which takes the weight as (out, in).
        weight = c.tensor(1) if trans_b else c.tensor(1).t()
        if bias is not None and bias.numel() == 1 and weight.shape[0] != 1:
            bias = bias.reshape(()).expand(weight.shape[0])
        return F.linear(a, weight, bias)
    b = c.tensor(1)
    y = torch.matmul(a, b.t() if trans_b else b)
    y = y * alpha if alpha != 1.0 else y
    return y if bias is None else y + (bias * beta if beta != 1.0 else bias)


def matmul(c: Call) -> Value:
    if c.is_static(0, 1):
        return np.matmul(c.value(0), c.value(1))
    a = c.tensor(0)
    if isinstance(c.value(1), np.ndarray) and c.value(1).ndim == 2 and a.ndim >= 2:
        return F.linear(a, c.tensor(1).t())
    return torch.matmul(a, c.tensor(1))


def batch_norm(c: Call) -> Any:
    x = c.tensor(0)
    return F.batch_norm(x, c.tensor(3), c.tensor(4), c.tensor(1), c.tensor(2), training=False,
                        eps=float(c.attr("epsilon", 1e-5)))


def instance_norm(c: Call) -> Any:
    return F.instance_norm(c.tensor(0), weight=c.tensor(1), bias=c.tensor(2), eps=float(c.attr("epsilon", 1e-5)))


def layer_norm(c: Call) -> Any:
    x = c.tensor(0)
    axis = axis_of(int(c.attr("axis", -1)), x.ndim)
    shape = shape_of(x)[axis:]
    scale = c.tensor(1)
    bias = c.tensor(2) if c.has(2) else None
    eps = float(c.attr("epsilon", 1e-5))
    if shape_of(scale) == shape and (bias is None or shape_of(bias) == shape):
        return F.layer_norm(x, shape, scale, bias, eps)
    y = F.layer_norm(x, shape, None, None, eps) * scale
    return y if bias is None else y + bias


def pool(kind: str) -> Callable[[Call], Any]:
    def run(c: Call) -> Any:
        x = c.tensor(0)
        if len(c.node.output) > 1 and c.node.output[1]:
            raise c.fail("the indices output of MaxPool is not supported")
        kernel = list(c.attr("kernel_shape"))
        spatial = len(kernel)
        strides = list(c.attr("strides", [1] * spatial))
        dilations = list(c.attr("dilations", [1] * spatial))
        pads = _pads(c, shape_of(x)[2:], kernel, strides, dilations)
        ceil = bool(c.attr("ceil_mode", 0))
        fits = pads[:spatial] == pads[spatial:] and all(2 * p <= k for p, k in zip(pads, kernel))
        if kind == "max":
            fn = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[spatial]
            if fits:
                return fn(x, kernel, strides, pads[:spatial], dilations, ceil_mode=ceil)
            return fn(F.pad(x, _torch_pad(pads), value=float("-inf")), kernel, strides, 0, dilations, ceil_mode=ceil)
        if any(d != 1 for d in dilations):
            raise c.fail("AveragePool with dilations is not supported")
        fn = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[spatial]
        include = bool(c.attr("count_include_pad", 0))
        if fits and not (ceil and include):
            return fn(x, kernel, strides, pads[:spatial], ceil_mode=ceil, count_include_pad=include)
        # Uneven pads, or ceil mode counting pads: sum over the window, divided by what ONNX counts.
        padded = F.pad(x, _torch_pad(pads))
        total = fn(padded, kernel, strides, 0, ceil_mode=ceil, count_include_pad=True)
        region = F.pad(torch.ones((1, 1, *shape_of(x)[2:]), dtype=x.dtype), _torch_pad(pads), value=float(include))
        counted = fn(region, kernel, strides, 0, ceil_mode=ceil, count_include_pad=True)
        return total / counted
    return run


def global_pool(kind: str) -> Callable[[Call], Any]:
    def run(c: Call) -> Any:
        x = c.tensor(0)
        dims = tuple(range(2, x.ndim))
        if kind == "avg":
            return x.mean(dim=dims, keepdim=True)
        if x.ndim == 4:  # one max pool over the whole map: TFLite quantizes MAX_POOL_2D, not REDUCE_MAX
            return F.max_pool2d(x, shape_of(x)[2:])
        return x.amax(dim=dims, keepdim=True)
    return run


def pad(c: Call) -> Any:
    x = c.value(0)
    rank = len(x.shape)
    if c.opset < 11:
        pads, value = list(c.attr("pads")), float(c.attr("value", 0.0))
    else:
        pads = c.ints(1)
        value = c.static(2).reshape(-1)[0].item() if c.has(2) else 0
        if c.has(3):  # opset 18: pads for the listed axes only
            full = [0] * (2 * rank)
            axes = [axis_of(a, rank) for a in c.ints(3)]
            for j, a in enumerate(axes):
                full[a], full[a + rank] = pads[j], pads[j + len(axes)]
            pads = full
    mode = c.attr("mode", "constant")
    if isinstance(x, np.ndarray):
        widths = list(zip(pads[:rank], pads[rank:]))
        kw = {"constant_values": value} if mode == "constant" else {}
        return np.pad(x, widths, mode={"edge": "edge", "reflect": "reflect", "wrap": "wrap"}.get(mode, "constant"),
                      **kw)
    torch_pads = _torch_pad(pads)
    if mode == "constant":
        return F.pad(x, torch_pads, value=value)
    torch_mode = {"reflect": "reflect", "edge": "replicate", "wrap": "circular"}[mode]
    # torch pads reflect/edge/wrap only on the trailing (spatial) axes; tf2onnx writes them on any
    # axis (basic-pitch's MirrorPad of a (batch, time, 1) signal pads axis 1). One axis at a time,
    # moved last and padded as a 1-D signal, is what ONNX (and numpy) define.
    for axis in range(rank):
        before, after = pads[axis], pads[axis + rank]
        if not (before or after):
            continue
        moved = x.movedim(axis, -1)
        flat = F.pad(moved.reshape(-1, 1, moved.shape[-1]), (before, after), mode=torch_mode)
        x = flat.reshape(*moved.shape[:-1], flat.shape[-1]).movedim(-1, axis)
    return x


def _source_coords(mode: str, out: int, size: int, scale: float) -> np.ndarray:
    """Where each output position samples the input, per ONNX's coordinate_transformation_mode."""
    x = np.arange(out, dtype=np.float64)
    if mode == "align_corners":
        return x * (size - 1) / (out - 1) if out > 1 else np.zeros(out)
    if mode == "asymmetric":
        return x / scale
    if mode == "pytorch_half_pixel":
        return (x + 0.5) / scale - 0.5 if out > 1 else np.zeros(out)
    if mode in ("half_pixel", "half_pixel_symmetric"):
        if mode == "half_pixel_symmetric":
            adjustment = out / (size * scale)
            return (size / 2) * (1 - adjustment) + (x + 0.5) / scale - 0.5
        return (x + 0.5) / scale - 0.5
    raise ValueError(mode)


def _nearest(coords: np.ndarray, rule: str, size: int, scale: float) -> np.ndarray:
    if rule == "simple":  # Upsample and opset-10 Resize: truncate, or round up when shrinking
        rule = "ceil" if scale < 1 else "floor"
    if rule == "floor":
        idx = np.floor(coords)
    elif rule == "ceil":
        idx = np.ceil(coords)
    elif rule == "round_prefer_ceil":
        idx = np.floor(coords + 0.5)
    else:  # round_prefer_floor, the default
        idx = np.ceil(coords - 0.5)
    return np.clip(idx, 0, size - 1).astype(np.int64)


def resize(c: Call) -> Any:
    x = c.tensor(0)
    shape = shape_of(x)
    rank = len(shape)
    if c.node.op_type == "Upsample" or c.opset < 11:
        scales = list(c.attr("scales")) if c.opset < 9 else [float(v) for v in c.static(1).reshape(-1)]
        sizes = None
        coord_mode = "asymmetric"  # Upsample and opset-10 Resize sample as 'asymmetric'
        nearest_rule = "simple"
    else:
        scales_in = c.static(2).reshape(-1) if c.has(2) else np.zeros(0)
        sizes = c.ints(3) if c.has(3) and c.static(3).size else None
        scales = [float(v) for v in scales_in] if scales_in.size else None
        coord_mode = c.attr("coordinate_transformation_mode", "half_pixel")
        nearest_rule = c.attr("nearest_mode", "round_prefer_floor")
        axes = c.attr("axes")
        if axes is not None:  # opset 18: scales/sizes for the listed axes only
            full_s, full_n = [1.0] * rank, list(shape)
            for j, a in enumerate(axis_of(a, rank) for a in axes):
                if scales:
                    full_s[a] = scales[j]
                if sizes:
                    full_n[a] = sizes[j]
            scales, sizes = (full_s if scales else None), (full_n if sizes else None)
        if c.attr("keep_aspect_ratio_policy", "stretch") != "stretch" or c.attr("antialias", 0):
            raise c.fail("keep_aspect_ratio_policy and antialias are not supported")
    mode = c.attr("mode", "nearest")
    if mode not in ("nearest", "linear", "bilinear") or coord_mode == "tf_crop_and_resize":
        raise c.fail(f"mode '{mode}' with coordinate_transformation_mode '{coord_mode}' is not supported")
    if sizes is None:
        sizes = [int(math.floor(n * s)) for n, s in zip(shape, scales)]
        scales_used = scales
    else:
        scales_used = [o / n for o, n in zip(sizes, shape)]
    moved = [a for a in range(rank) if sizes[a] != shape[a] or scales_used[a] != 1.0]
    if not moved:
        return x
    if any(a < 2 for a in moved):
        raise c.fail("resizing the batch or channel axis is not supported")
    coords = {a: _source_coords(coord_mode, sizes[a], shape[a], scales_used[a]) for a in moved}
    exact = all(abs(scales_used[a] - sizes[a] / shape[a]) < 1e-9 for a in moved)
    if mode == "nearest":
        picks = {a: _nearest(coords[a], nearest_rule, shape[a], scales_used[a]) for a in moved}
        # torch's 'nearest' samples floor(i * (in / out)) in float32: where that is ONNX's choice,
        # its resize op is used, which TFLite runs as one op.
        if rank - 2 == len(moved) and rank in (3, 4, 5) and all(np.array_equal(picks[a], np.minimum(
                np.floor(np.arange(sizes[a], dtype=np.float32) * np.float32(shape[a] / sizes[a])), shape[a] - 1))
                for a in moved):
            return F.interpolate(x, size=sizes[2:], mode="nearest")
        for a in moved:
            x = torch.index_select(x, a, to_tensor(picks[a]))
        return x
    if coord_mode in ("half_pixel", "pytorch_half_pixel", "align_corners") and exact and rank == 4 and \
            len(moved) == 2 and all(sizes[a] > 1 for a in moved):
        return F.interpolate(x, size=sizes[2:], mode="bilinear", align_corners=coord_mode == "align_corners")
    for a in moved:  # separable linear interpolation, one axis at a time
        pos = np.clip(coords[a], 0, shape[a] - 1)
        low = np.floor(pos).astype(np.int64)
        high = np.minimum(low + 1, shape[a] - 1)
        frac = (pos - low).astype(np.float32).reshape([-1 if i == a else 1 for i in range(rank)])
        lo, hi = torch.index_select(x, a, to_tensor(low)), torch.index_select(x, a, to_tensor(high))
        x = lo + (hi - lo) * to_tensor(frac).to(x.dtype)
    return x


def depth_space(to_space: bool) -> Callable[[Call], Any]:
    def run(c: Call) -> Any:
        x = c.tensor(0)
        b = int(c.attr("blocksize"))
        n, ch, h, w = shape_of(x)
        if to_space:
            if c.attr("mode", "DCR") == "CRD":
                return F.pixel_shuffle(x, b)
            y = x.reshape(n, b, b, ch // (b * b), h, w).permute(0, 3, 4, 1, 5, 2)
            return y.reshape(n, ch // (b * b), h * b, w * b)
        y = x.reshape(n, ch, h // b, b, w // b, b).permute(0, 3, 5, 1, 2, 4)
        return y.reshape(n, ch * b * b, h // b, w // b)
    return run
