"""Structured channel pruning for Keras 3 models: whole filters and units are removed.

Channels are tracked as *spaces*: a Conv/Dense layer creates one for its outputs; layers that act
per channel (batch-norm, depthwise conv, activations, pooling) pass it on; element-wise merges
(Add, Multiply, ...) tie their inputs' spaces into one group that must be pruned alike; a
Concatenate lays spaces side by side; Flatten -> Dense maps each channel to its rows. Any layer
the analysis does not understand, and every model input and output, pins the spaces it touches,
so the pruned network always computes the same shapes at its boundaries.

The model is rebuilt from its config with fewer filters/units and the kept weight slices.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgeopt.errors import UsageError

PRODUCERS = {"Conv1D", "Conv2D", "Conv3D", "Dense"}
PER_CHANNEL_PARAMS = {"BatchNormalization", "LayerNormalization"}
PASSTHROUGH = {
    "Activation", "ReLU", "LeakyReLU", "ELU", "Dropout", "SpatialDropout1D", "SpatialDropout2D",
    "SpatialDropout3D", "GaussianNoise", "GaussianDropout", "AlphaDropout", "ActivityRegularization",
    "MaxPooling1D", "MaxPooling2D", "MaxPooling3D", "AveragePooling1D", "AveragePooling2D", "AveragePooling3D",
    "GlobalAveragePooling1D", "GlobalAveragePooling2D", "GlobalAveragePooling3D", "GlobalMaxPooling1D",
    "GlobalMaxPooling2D", "GlobalMaxPooling3D", "ZeroPadding1D", "ZeroPadding2D", "ZeroPadding3D",
    "Cropping1D", "Cropping2D", "Cropping3D", "UpSampling1D", "UpSampling2D", "UpSampling3D", "Identity",
}
MERGES = {"Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum"}


@dataclass(frozen=True)
class ChannelPruneConfig:
    """``ratio`` of channels removed per group; ``layers`` maps a layer-name regex to its own
    ratio (last match wins); ``exclude`` lists regexes of layers whose outputs stay whole."""

    ratio: float
    layers: tuple[tuple[str, float], ...] = ()
    exclude: tuple[str, ...] = ()
    exclude_first: bool = True
    criterion: str = "l2"

    def __post_init__(self) -> None:
        for name, r in (("ratio", self.ratio), *((f"layers['{p}']", v) for p, v in self.layers)):
            if not 0.0 < r < 1.0:
                raise UsageError(f"Pruning {name} must be strictly between 0 and 1; got {r}.",
                                 hint="For example --prune channels:0.5 removes half the channels.")
        if self.criterion not in ("l1", "l2"):
            raise UsageError(f"Pruning criterion must be 'l1' or 'l2'; got '{self.criterion}'.")


@dataclass
class _Layout:
    """The channel axis of a tensor: segments of spaces, and for Flatten output a spatial size."""

    segments: list[tuple[int, int]]  # (space id, channels)
    spatial: int | None = None  # set when the channels were flattened with this many positions


@dataclass
class _Graph:
    parent: dict[int, int] = field(default_factory=dict)
    size: dict[int, int] = field(default_factory=dict)
    pinned: set[int] = field(default_factory=set)
    producers: dict[int, list[str]] = field(default_factory=dict)  # space -> layers creating it

    def new(self, channels: int) -> int:
        sid = len(self.parent)
        self.parent[sid] = sid
        self.size[sid] = channels
        return sid

    def find(self, sid: int) -> int:
        while self.parent[sid] != sid:
            self.parent[sid] = self.parent[self.parent[sid]]
            sid = self.parent[sid]
        return sid

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra

    def pin(self, layout: _Layout | None) -> None:
        if layout is not None:
            self.pinned.update(sid for sid, _ in layout.segments)


def _inbound(layer_cfg: dict) -> list[str]:
    names: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("class_name") == "__keras_tensor__":
                names.append(node["config"]["keras_history"][0])
            else:
                for v in node.values():
                    walk(v)
        elif isinstance(node, (list, tuple)):
            for v in node:
                walk(v)

    nodes = layer_cfg.get("inbound_nodes") or []
    if len(nodes) > 1:
        return ["<shared>"]
    walk(nodes)
    return names


def _layer_configs(model: Any) -> tuple[list[dict], dict]:
    """Layer configs with explicit inbound names (Sequential models are chained)."""
    config = model.get_config()
    layers = config["layers"]
    if model.__class__.__name__ == "Sequential":
        chained, previous = [], None
        for cfg in layers:
            name = cfg["config"]["name"]
            chained.append({**cfg, "name": name, "_inbound": [previous] if previous else []})
            previous = name
        return chained, config
    return [{**cfg, "_inbound": _inbound(cfg)} for cfg in layers], config


@dataclass
class PrunePlan:
    keep: dict[int, np.ndarray]  # root space -> kept channel indices
    layouts: dict[str, _Layout]  # layer name -> output layout
    inputs: dict[str, list[_Layout]]  # layer name -> input layouts
    graph: _Graph
    summary: list[dict]  # per producer: channels before/after


def plan(model: Any, cfg: ChannelPruneConfig) -> PrunePlan:
    layers, _ = _layer_configs(model)
    g = _Graph()
    layouts: dict[str, _Layout] = {}
    inputs: dict[str, list[_Layout]] = {}
    model_inputs = {t.name for t in model.inputs}
    first_producers: set[str] = set()
    for lc in layers:
        name, cls, conf = lc["config"]["name"], lc["class_name"], lc["config"]
        layer = model.get_layer(name)
        ins = [layouts.get(n) for n in lc["_inbound"]]
        inputs[name] = [i for i in ins if i is not None]
        out_channels = _channels(layer)
        if cls == "InputLayer" or not lc["_inbound"]:
            layouts[name] = _Layout([(g.new(out_channels), out_channels)])
            g.pin(layouts[name])
            continue
        if None in ins or "<shared>" in lc["_inbound"]:
            for i in ins:
                g.pin(i)
            layouts[name] = _Layout([(g.new(out_channels), out_channels)])
            g.pin(layouts[name])
            continue
        if cls in PRODUCERS and conf.get("groups", 1) == 1 and len(ins) == 1:
            if ins[0].spatial is not None and cls != "Dense":
                g.pin(ins[0])
            sid = g.new(out_channels)
            g.producers.setdefault(sid, []).append(name)
            layouts[name] = _Layout([(sid, out_channels)])
            if any(n in model_inputs for n in lc["_inbound"]):
                first_producers.add(name)
        elif (cls in PASSTHROUGH or cls in PER_CHANNEL_PARAMS or _is_depthwise(cls, conf) or
              _is_scalar_rescaling(cls, conf)) and len(ins) == 1 and ins[0].spatial is None:
            if cls in PER_CHANNEL_PARAMS and conf.get("axis") not in (-1, [-1], len(layer.input.shape) - 1,
                                                                          [len(layer.input.shape) - 1]):
                g.pin(ins[0])
            layouts[name] = ins[0]
        elif cls in MERGES and all(len(i.segments) == 1 and i.spatial is None for i in ins):
            for other in ins[1:]:
                g.union(ins[0].segments[0][0], other.segments[0][0])
            layouts[name] = ins[0]
        elif cls == "Concatenate" and conf.get("axis") in (-1, len(layer.output.shape) - 1) and \
                all(i.spatial is None for i in ins):
            layouts[name] = _Layout([seg for i in ins for seg in i.segments])
        elif cls == "Flatten" and len(ins) == 1 and ins[0].spatial is None:
            total = int(np.prod(layer.input.shape[1:]))
            channels = sum(c for _, c in ins[0].segments)
            layouts[name] = _Layout(ins[0].segments, spatial=total // channels)
        else:  # not understood: keep everything it touches whole
            for i in ins:
                g.pin(i)
            layouts[name] = _Layout([(g.new(out_channels), out_channels)])
            g.pin(layouts[name])
    for t in model.outputs:
        g.pin(layouts[t._keras_history[0].name])
    return _choose(model, cfg, g, layouts, inputs, first_producers)


def _channels(layer: Any) -> int:
    shape = layer.output.shape
    return int(shape[-1]) if shape and shape[-1] is not None else 0


def _is_depthwise(cls: str, conf: dict) -> bool:
    return cls in ("DepthwiseConv2D", "DepthwiseConv1D") and conf.get("depth_multiplier", 1) == 1


def _is_scalar_rescaling(cls: str, conf: dict) -> bool:
    return cls == "Rescaling" and np.ndim(conf.get("scale", 1.0)) == 0 and np.ndim(conf.get("offset", 0.0)) == 0


def _choose(model, cfg: ChannelPruneConfig, g: _Graph, layouts, inputs, first_producers) -> PrunePlan:
    all_names = [layer.name for layer in model.layers]
    for pattern, _ in cfg.layers:
        if not any(re.fullmatch(pattern, n) for n in all_names):
            raise UsageError(f"Pruning setting layers['{pattern}'] matches no layer of the model.",
                             hint="Layer names: " + ", ".join(all_names[:30]) + ("…" if len(all_names) > 30 else ""))
    for pattern in cfg.exclude:
        if not any(re.fullmatch(pattern, n) for n in all_names):
            raise UsageError(f"Pruning setting exclude '{pattern}' matches no layer of the model.",
                             hint="Layer names: " + ", ".join(all_names[:30]))
    groups: dict[int, list[int]] = {}
    for sid in g.parent:
        groups.setdefault(g.find(sid), []).append(sid)
    pinned_roots = {g.find(s) for s in g.pinned}
    keep: dict[int, np.ndarray] = {}
    summary = []
    for root, members in groups.items():
        producers = [p for s in members for p in g.producers.get(s, [])]
        if not producers or root in pinned_roots:
            continue
        if any(re.fullmatch(p, n) for p in cfg.exclude for n in producers):
            continue
        if cfg.exclude_first and first_producers.intersection(producers):
            continue
        ratio = cfg.ratio
        for pattern, r in cfg.layers:
            if any(re.fullmatch(pattern, n) for n in producers):
                ratio = r
        channels = g.size[root]
        kept = max(1, int(round(channels * (1.0 - ratio))))
        if kept >= channels:
            continue
        score = np.zeros(channels)
        for p in producers:
            kernel = model.get_layer(p).get_weights()[0]
            flat = np.abs(kernel.reshape(-1, kernel.shape[-1]))
            norm = flat.sum(0) if cfg.criterion == "l1" else np.sqrt((flat ** 2).sum(0))
            score += norm / (norm.max() or 1.0)  # each producer counts equally in a tied group
        keep[root] = np.sort(np.argsort(-score, kind="stable")[:kept])
        summary.extend({"layer": p, "channels_before": channels, "channels_after": kept} for p in producers)
    return PrunePlan(keep, layouts, inputs, g, sorted(summary, key=lambda s: all_names.index(s["layer"])))


def _kept(plan: PrunePlan, layout: _Layout) -> np.ndarray | None:
    """Indices kept along a tensor's channel axis, or None when nothing there is pruned."""
    parts, offset, changed = [], 0, False
    for sid, channels in layout.segments:
        keep = plan.keep.get(plan.graph.find(sid))
        changed |= keep is not None
        parts.append(offset + (keep if keep is not None else np.arange(channels)))
        offset += channels
    if not changed:
        return None
    idx = np.concatenate(parts)
    if layout.spatial is not None:  # channels-last flatten: row = position * channels + channel
        idx = (np.arange(layout.spatial)[:, None] * offset + idx[None, :]).reshape(-1)
    return idx


def apply(model: Any, plan_: PrunePlan) -> Any:
    """A new model with the planned channels removed and the remaining weights copied."""
    layers, config = _layer_configs(model)
    new_weights: dict[str, list[np.ndarray]] = {}
    by_name = {lc["config"]["name"]: lc for lc in config["layers"]}
    for lc in layers:
        name, cls = lc["config"]["name"], lc["class_name"]
        weights = model.get_layer(name).get_weights()
        out_keep = _kept(plan_, plan_.layouts[name])
        in_keep = _kept(plan_, plan_.inputs[name][0]) if plan_.inputs.get(name) else None
        target = by_name[name]
        if cls in PRODUCERS and name in _producer_names(plan_):
            if out_keep is not None:
                key = "filters" if "filters" in target["config"] else "units"
                target["config"][key] = len(out_keep)
            weights = _slice(weights, in_keep, out_keep, kernel_in_axis=-2)
        elif weights and (cls in PER_CHANNEL_PARAMS or _is_depthwise(cls, lc["config"])) and out_keep is not None:
            if _is_depthwise(cls, lc["config"]):
                weights = [weights[0][..., out_keep, :]] + [w[out_keep] for w in weights[1:]]
            else:
                weights = [w[out_keep] for w in weights]
        new_weights[name] = weights
    for lc in config["layers"]:
        lc.pop("build_config", None)  # the old input shapes no longer hold
    rebuilt = model.__class__.from_config(config)
    for name, weights in new_weights.items():
        if weights:
            rebuilt.get_layer(name).set_weights(weights)
    return rebuilt


def _producer_names(plan_: PrunePlan) -> set[str]:
    return {p for names in plan_.graph.producers.values() for p in names}


def _slice(weights: list[np.ndarray], in_keep, out_keep, kernel_in_axis: int) -> list[np.ndarray]:
    kernel = weights[0]
    if in_keep is not None:
        kernel = np.take(kernel, in_keep, axis=kernel_in_axis)
    rest = weights[1:]
    if out_keep is not None:
        kernel = kernel[..., out_keep]
        rest = [w[out_keep] for w in rest]
    return [kernel, *rest]


def prune_channels(model: Any, cfg: ChannelPruneConfig) -> tuple[Any, list[dict]]:
    """Return the pruned model and, per pruned layer, its channel counts before and after."""
    p = plan(model, cfg)
    if not p.keep:
        return model, []
    return apply(model, p), p.summary
