"""Rebuild a Keras 3 model without the channels a prune plan removes.

The model is rebuilt from its config with fewer filters/units, and every layer that reads or
writes a pruned channel axis gets the matching weight slices: producers lose kernel columns for
their removed outputs and kernel rows for their removed inputs; depthwise and separable convs
lose the depthwise filters of removed input channels (all ``depth_multiplier`` of them);
batch-norm loses the statistics of removed channels.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgeopt.passes.prune.keras_channel_graph import (
    DEPTHWISE, PER_CHANNEL_PARAMS, SEPARABLE, Layout, Trace, layer_configs, operations,
)


def kept(t: Trace, keep: dict[int, np.ndarray], layout: Layout) -> np.ndarray | None:
    """Indices kept along a tensor's channel axis, or None when nothing there is pruned."""
    parts, width, changed = [], 0, False
    for seg in layout.segments:
        chosen = keep.get(t.graph.find(seg.sid))
        changed |= chosen is not None
        idx = chosen if chosen is not None else np.arange(seg.channels)
        parts.append(width + _expand(idx, seg.repeat))
        width += seg.channels * seg.repeat
    if not changed:
        return None
    idx = np.concatenate(parts)
    if layout.spatial is not None:  # channels-last flatten: row = position * width + channel
        idx = (np.arange(layout.spatial)[:, None] * width + idx[None, :]).reshape(-1)
    return idx


def _expand(idx: np.ndarray, repeat: int) -> np.ndarray:
    """Channel c repeated ``repeat`` times sits at c*repeat .. c*repeat+repeat-1 (depthwise order)."""
    return (np.asarray(idx)[:, None] * repeat + np.arange(repeat)[None, :]).reshape(-1)


def rebuild(model: Any, t: Trace, keep: dict[int, np.ndarray]) -> Any:
    """A new model with the kept channels only and the remaining weights copied."""
    layers, config = layer_configs(model)
    by_name = {lc["config"]["name"]: lc for lc in config["layers"]}
    producers = {p for names in t.graph.producers.values() for p in names}
    new_weights: dict[str, list[np.ndarray]] = {}
    ops = operations(model)
    for lc in layers:
        name, cls, conf = lc["config"]["name"], lc["class_name"], lc["config"]
        weights = ops[name].get_weights() if hasattr(ops[name], "get_weights") else []
        out_keep = kept(t, keep, t.layouts[name])
        ins = t.inputs.get(name)
        in_keep = kept(t, keep, ins[0]) if ins else None
        if name in producers:
            if out_keep is not None:
                target = by_name[name]["config"]
                target["filters" if "filters" in target else "units"] = len(out_keep)
            if cls in SEPARABLE:
                weights = _separable(weights, in_keep, out_keep, int(conf.get("depth_multiplier", 1)))
            else:
                weights = _producer(weights, in_keep, out_keep)
        elif cls in DEPTHWISE and weights:
            kernel = weights[0] if in_keep is None else np.take(weights[0], in_keep, axis=-2)
            weights = [kernel, *(w if out_keep is None else w[out_keep] for w in weights[1:])]
        elif cls in PER_CHANNEL_PARAMS and out_keep is not None:
            weights = [w[out_keep] for w in weights]
        new_weights[name] = weights
    for lc in config["layers"]:
        lc.pop("build_config", None)  # the old input shapes no longer hold
    rebuilt = model.__class__.from_config(config)
    for name, weights in new_weights.items():
        if weights:
            rebuilt.get_layer(name).set_weights(weights)
    return rebuilt


def _producer(weights: list[np.ndarray], in_keep, out_keep) -> list[np.ndarray]:
    """Conv/Dense: kernel (..., in, out) and bias (out,)."""
    kernel, rest = weights[0], weights[1:]
    if in_keep is not None:
        kernel = np.take(kernel, in_keep, axis=-2)
    if out_keep is not None:
        kernel = kernel[..., out_keep]
        rest = [w[out_keep] for w in rest]
    return [kernel, *rest]


def _separable(weights: list[np.ndarray], in_keep, out_keep, multiplier: int) -> list[np.ndarray]:
    """Depthwise kernel (..., in, m), pointwise kernel (1.., in*m, out), bias (out,): a removed
    input channel takes its m depthwise filters and the m pointwise rows they fed with it."""
    depthwise, pointwise, rest = weights[0], weights[1], weights[2:]
    if in_keep is not None:
        depthwise = np.take(depthwise, in_keep, axis=-2)
        pointwise = np.take(pointwise, _expand(in_keep, multiplier), axis=-2)
    if out_keep is not None:
        pointwise = pointwise[..., out_keep]
        rest = [w[out_keep] for w in rest]
    return [depthwise, pointwise, *rest]
