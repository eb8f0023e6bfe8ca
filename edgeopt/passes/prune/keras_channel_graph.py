"""Which channels of a Keras 3 model must be pruned together, and which must stay whole.

Channels are tracked as *spaces*: a Conv/Dense/SeparableConv layer creates one for its outputs;
layers that act per channel (batch-norm, depthwise conv, activations, pooling) pass it on, a
depthwise conv with a depth multiplier repeating each channel in place; element-wise merges
(Add, Multiply, ...) tie their inputs' spaces into one group that must be pruned alike; a
Concatenate lays spaces side by side; Flatten -> Dense maps each channel to its rows. Any layer
the analysis does not understand, and every model input and output, pins the spaces it touches
with a reason, so the pruned network always computes the same shapes at its boundaries.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

PRODUCERS = {"Conv1D", "Conv2D", "Conv3D", "Dense"}
SEPARABLE = {"SeparableConv1D", "SeparableConv2D"}
DEPTHWISE = {"DepthwiseConv1D", "DepthwiseConv2D"}
PER_CHANNEL_PARAMS = {"BatchNormalization", "LayerNormalization"}
PASSTHROUGH = {
    "Activation", "ReLU", "LeakyReLU", "ELU", "Softmax", "Dropout", "SpatialDropout1D", "SpatialDropout2D",
    "SpatialDropout3D", "GaussianNoise", "GaussianDropout", "AlphaDropout", "ActivityRegularization",
    "MaxPooling1D", "MaxPooling2D", "MaxPooling3D", "AveragePooling1D", "AveragePooling2D", "AveragePooling3D",
    "GlobalAveragePooling1D", "GlobalAveragePooling2D", "GlobalAveragePooling3D", "GlobalMaxPooling1D",
    "GlobalMaxPooling2D", "GlobalMaxPooling3D", "ZeroPadding1D", "ZeroPadding2D", "ZeroPadding3D",
    "Cropping1D", "Cropping2D", "Cropping3D", "UpSampling1D", "UpSampling2D", "UpSampling3D", "Identity",
}
MERGES = {"Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum"}
# Element by element, so a flattened tensor's rows still line up with the Dense after them.
ELEMENTWISE = {
    "Activation", "ReLU", "LeakyReLU", "ELU", "Dropout", "GaussianNoise", "GaussianDropout", "AlphaDropout",
    "ActivityRegularization", "Identity", *PER_CHANNEL_PARAMS, *MERGES,
}


class Segment(NamedTuple):
    """``channels`` of space ``sid``, each repeated ``repeat`` times in a row along the axis."""

    sid: int
    channels: int
    repeat: int = 1


@dataclass
class Layout:
    """The channel axis of a tensor: segments of spaces, and for Flatten output a spatial size."""

    segments: list[Segment]
    spatial: int | None = None  # set when the channels were flattened with this many positions

    def structure(self) -> tuple:
        return tuple((s.channels, s.repeat) for s in self.segments), self.spatial


@dataclass
class Graph:
    parent: dict[int, int] = field(default_factory=dict)
    size: dict[int, int] = field(default_factory=dict)
    pins: dict[int, list[str]] = field(default_factory=dict)  # space -> why it must stay whole
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

    def pin(self, layout: Layout | None, reason: str) -> None:
        if layout is not None:
            for seg in layout.segments:
                reasons = self.pins.setdefault(seg.sid, [])
                if reason not in reasons:
                    reasons.append(reason)

    def groups(self) -> dict[int, list[int]]:
        """Root space -> every space tied to it."""
        out: dict[int, list[int]] = {}
        for sid in self.parent:
            out.setdefault(self.find(sid), []).append(sid)
        return out


@dataclass
class Trace:
    graph: Graph
    layouts: dict[str, Layout]  # layer name -> output layout
    inputs: dict[str, list[Layout]]  # layer name -> input layouts
    consumers: dict[str, list[str]]  # layer name -> layers reading its output
    first_producers: set[str]  # producers reading a model input directly


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


def layer_configs(model: Any) -> tuple[list[dict], dict]:
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


def operations(model: Any) -> dict[str, Any]:
    """Every layer and keras.ops call of the model by name (ops are absent from ``model.layers``)."""
    return {op.name: op for op in (getattr(model, "operations", None) or model.layers)}


def _channels(layer: Any) -> int:
    shape = layer.output.shape
    return int(shape[-1]) if shape and shape[-1] is not None else 0


def _is_scalar_rescaling(cls: str, conf: dict) -> bool:
    return cls == "Rescaling" and np.ndim(conf.get("scale", 1.0)) == 0 and np.ndim(conf.get("offset", 0.0)) == 0


def _last_axis(axis: Any, rank: int) -> bool:
    axes = axis if isinstance(axis, (list, tuple)) else [axis]
    return len(axes) == 1 and axes[0] in (-1, rank - 1)


def _refusal(cls: str, name: str, conf: dict, layer: Any, ins: list[Layout]) -> str | None:
    """Why a layer of a kind the analysis knows still cannot carry pruned channels, if it cannot."""
    if conf.get("data_format") == "channels_first":
        return f"{cls} '{name}' uses data_format channels_first; channel pruning expects channels_last"
    if cls not in ELEMENTWISE | {"Dense"} and any(i.spatial is not None for i in ins):
        return f"{cls} '{name}' reads a flattened tensor; expected Dense or an element-wise layer after a Flatten"
    if cls in PRODUCERS | SEPARABLE | DEPTHWISE | PER_CHANNEL_PARAMS | PASSTHROUGH and len(ins) != 1:
        return f"{cls} '{name}' takes {len(ins)} inputs; expected one"
    if cls in PRODUCERS and conf.get("groups", 1) != 1:
        return f"{cls} '{name}' is a grouped convolution (groups={conf['groups']}); expected groups=1"
    if cls in PER_CHANNEL_PARAMS and not _last_axis(conf.get("axis"), len(layer.input.shape)):
        return f"{cls} '{name}' normalizes over axis {conf.get('axis')}; expected the channel axis -1"
    if cls in MERGES and len({i.structure() for i in ins}) != 1:
        return f"{cls} '{name}' joins tensors whose channels are laid out differently"
    if cls == "Concatenate" and conf.get("axis") not in (-1, len(layer.output.shape) - 1):
        return f"Concatenate '{name}' joins on axis {conf.get('axis')}; expected the channel axis -1"
    return None


def trace(model: Any) -> Trace:
    """Follow every layer's channels from the model inputs to its outputs."""
    layers, _ = layer_configs(model)
    g = Graph()
    layouts: dict[str, Layout] = {}
    inputs: dict[str, list[Layout]] = {}
    consumers: dict[str, list[str]] = {}
    model_inputs = {t.name for t in model.inputs}
    first: set[str] = set()
    ops = operations(model)
    for lc in layers:
        name, cls, conf = lc["config"]["name"], lc["class_name"], lc["config"]
        layer = ops[name]
        for n in lc["_inbound"]:
            consumers.setdefault(n, []).append(name)
        ins = [layouts.get(n) for n in lc["_inbound"]]
        inputs[name] = [i for i in ins if i is not None]
        out_channels = _channels(layer)

        def opaque(reason: str) -> None:
            for i in inputs[name]:
                g.pin(i, reason)
            layouts[name] = Layout([Segment(g.new(out_channels), out_channels)])
            g.pin(layouts[name], reason)

        if cls == "InputLayer" or not lc["_inbound"]:
            opaque(f"'{name}' is a model input")
            continue
        if "<shared>" in lc["_inbound"]:
            opaque(f"{cls} '{name}' is called more than once (shared weights); expected one call")
            continue
        if None in ins:  # configs list layers in call order, so this means a nested or odd graph
            opaque(f"{cls} '{name}' reads a layer the config does not list before it")
            continue
        if lc.get("module", "keras.layers") != "keras.layers":  # a keras.ops call or a custom layer
            opaque(f"{cls} '{name}' ({lc.get('module')}) is not a built-in Keras layer; channel pruning "
                   "cannot see through it")
            continue
        known = cls in PRODUCERS | SEPARABLE | DEPTHWISE | PER_CHANNEL_PARAMS | PASSTHROUGH | MERGES or \
            cls in ("Concatenate", "Flatten") or _is_scalar_rescaling(cls, conf)
        if not known:
            opaque(f"{cls} '{name}' is a layer channel pruning cannot see through")
            continue
        refusal = _refusal(cls, name, conf, layer, ins)
        if refusal:
            opaque(refusal)
            continue
        if cls in PRODUCERS | SEPARABLE:
            sid = g.new(out_channels)
            g.producers.setdefault(sid, []).append(name)
            layouts[name] = Layout([Segment(sid, out_channels)])
            if any(n in model_inputs for n in lc["_inbound"]):
                first.add(name)
        elif cls in DEPTHWISE:  # input channel c becomes outputs c*m .. c*m+m-1
            m = int(conf.get("depth_multiplier", 1))
            layouts[name] = Layout([s._replace(repeat=s.repeat * m) for s in ins[0].segments])
        elif cls in MERGES:
            for other in ins[1:]:
                for a, b in zip(ins[0].segments, other.segments):
                    g.union(a.sid, b.sid)
            layouts[name] = ins[0]
        elif cls == "Concatenate":
            layouts[name] = Layout([seg for i in ins for seg in i.segments])
        elif cls == "Flatten":
            total = int(np.prod(layer.input.shape[1:]))
            width = sum(s.channels * s.repeat for s in ins[0].segments)
            layouts[name] = Layout(ins[0].segments, spatial=total // width)
        else:  # per channel: batch-norm, activations, pooling, padding, scalar rescaling
            layouts[name] = ins[0]
    for t in model.outputs:
        last = t._keras_history[0].name
        g.pin(layouts[last], f"reaches the model output '{last}'")
    return Trace(g, layouts, inputs, consumers, first)
