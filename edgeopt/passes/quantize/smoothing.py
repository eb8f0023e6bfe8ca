"""SmoothQuant-style migration of activation outliers into weights, for the MatMul and Gemm layers
of a float ONNX graph (Xiao et al., "SmoothQuant", 2023).

A MatMul reads activation channels k whose ranges can differ by orders of magnitude: a few
outlier channels set the one int8 scale of the whole tensor, and the others are left with a few
levels. Since x @ W = (x / s) @ (diag(s) W), channel k of the activation may be divided by s_k
and row k of the weight multiplied by it without changing the product. With
s_k = max|x_k| ** alpha / max|W_k| ** (1 - alpha) (alpha = 0.5), both become sqrt(max|x_k| max|W_k|):
the activation's channels come closer to one range, and per-channel weights absorb the rest.

1/s is folded into the per-channel affine step that writes the activation (LayerNormalization's
scale and bias, or a Mul by a constant with an optional Add of one, as exported layer norms end),
so the graph gains no node. An activation read by anything but such layers (a residual Add, a
graph output) is left alone, as are activations without outliers: a channel spread below
``OUTLIER_SPREAD`` has nothing to migrate.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

ALPHA = 0.5
OUTLIER_SPREAD = 5.0  # largest channel max over the median one, from which a group is smoothed
SCALE_LIMITS = (1e-4, 1e4)


@dataclass
class Group:
    """One activation, the weighted layers that read it, and the constants that write it."""

    tensor: str
    channels: int
    # (weight initializer, its input-channel axis) per layer reading the activation
    weights: list[tuple[str, int]] = field(default_factory=list)
    # per-channel constants of the affine step that writes the activation: each is divided by s
    affine: list[str] = field(default_factory=list)


def groups(onnx: Any, model: Any) -> list[Group]:
    """Every activation of ``model`` that only MatMul/Gemm layers with constant weights read, and
    that a per-channel affine step with constant scale (and bias) writes."""
    graph = model.graph
    values = {t.name: t for t in graph.initializer}
    readers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    producer = {o: node for node in graph.node for o in node.output}
    outputs = {v.name for v in graph.output}

    def only_for(name: str, node: Any) -> bool:
        # Nodes compared by their first output: unique in a graph, where names may be missing.
        return name in values and [n.output[0] for n in readers.get(name, [])] == [node.output[0]] \
            and name not in outputs

    def layers(tensor: str) -> list[tuple[Any, tuple[str, ...]]] | None:
        """(layer, the shapes of the Reshapes on the way) for each layer reading ``tensor``, through Reshapes
        (onnxruntime's pre-processing puts MatMul + Add as Reshape -> Gemm -> Reshape); None
        where anything else reads it."""
        found: list[tuple[Any, tuple[str, ...]]] = []
        for node in readers.get(tensor, []):
            if node.op_type == "Reshape" and node.input[0] == tensor and node.input[1] in values \
                    and node.output[0] not in outputs:
                below = layers(node.output[0])
                if below is None:
                    return None
                found += [(layer, (node.input[1], *shapes)) for layer, shapes in below]
            elif node.input[0] == tensor:
                found.append((node, ()))
            else:
                return None
        return found or None

    found = []
    for tensor in readers:
        if tensor in values or tensor in outputs or tensor not in producer:
            continue
        reached = layers(tensor)
        weights = [_weight(node, values, readers) for node, _ in reached or []]
        if not reached or not all(weights) or len({values[w].dims[a] for w, a in weights}) != 1:
            continue
        channels = int(values[weights[0][0]].dims[weights[0][1]])
        if any(_last(onnx, values[shape]) != channels for _, shapes in reached for shape in shapes):
            continue  # a Reshape that moves the channels
        affine = _affine(producer[tensor], producer, readers, values, channels, only_for)
        if affine:
            found.append(Group(tensor, channels, list(weights), affine))
    return found


def _last(onnx: Any, shape: Any) -> int | None:
    dims = onnx.numpy_helper.to_array(shape).tolist()
    return int(dims[-1]) if dims else None


def _weight(node: Any, values: dict[str, Any], readers: dict[str, list[Any]]) -> tuple[str, int] | None:
    """The constant 2-D weight a MatMul/Gemm multiplies its first input by, and the axis of that
    input's channels in it; None for any other reader."""
    if node.op_type not in ("MatMul", "Gemm") or len(node.input) < 2 or node.input[1] not in values:
        return None
    attrs = {a.name: a.i for a in node.attribute}
    if attrs.get("transA", 0) or len(values[node.input[1]].dims) != 2 or len(readers[node.input[1]]) != 1:
        return None
    return node.input[1], 1 if attrs.get("transB", 0) else 0


def _affine(node: Any, producer: dict[str, Any], readers: dict[str, list[Any]], values: dict[str, Any],
            channels: int, only_for: Callable[[str, Any], bool]) -> list[str]:
    """The per-channel constants of the step that writes a group's activation (LayerNormalization
    over the last axis; Mul by a constant, optionally followed by an Add of one), or []."""

    def per_channel(name: str) -> bool:
        dims = list(values[name].dims)
        return bool(dims) and dims[-1] == channels and int(np.prod(dims)) == channels

    if node.op_type == "LayerNormalization":
        axis = next((a.i for a in node.attribute if a.name == "axis"), -1)
        constants = [n for n in node.input[1:3] if n]
        if axis == -1 and len(node.output) == 1 and all(only_for(n, node) and per_channel(n) for n in constants):
            return constants
        return []
    bias: list[str] = []
    if node.op_type == "Add":
        constant = next((n for n in node.input if n in values), None)
        other = next((n for n in node.input if n not in values), None)
        if constant is None or other is None or not (only_for(constant, node) and per_channel(constant)):
            return []
        before = producer.get(other)
        if before is None or len(readers.get(other, [])) != 1:
            return []
        bias, node = [constant], before
    if node.op_type == "Mul":
        constant = next((n for n in node.input if n in values), None)
        if constant is not None and only_for(constant, node) and per_channel(constant) and \
                any(n not in values for n in node.input):
            return [constant, *bias]
    return []


def channel_maxima(run: Callable[[dict], list[np.ndarray]], rows: Iterable[dict], tensors: list[str]
                   ) -> dict[str, np.ndarray]:
    """max |x| per channel (the last axis) of each tensor over ``rows``; ``run(row)`` returns the
    tensors in that order."""
    found: dict[str, np.ndarray] = {}
    for row in rows:
        for name, value in zip(tensors, run(row)):
            value = np.abs(np.asarray(value, np.float32))
            here = value.reshape(-1, value.shape[-1]).max(axis=0)
            found[name] = here if name not in found else np.maximum(found[name], here)
    return found


def has_outliers(maxima: np.ndarray) -> bool:
    median = float(np.median(maxima))
    return median > 0 and float(maxima.max()) / median >= OUTLIER_SPREAD


def smooth(onnx: Any, model: Any, found: list[Group], maxima: dict[str, np.ndarray], alpha: float = ALPHA
           ) -> list[str]:
    """In place: migrate the outliers of each group of ``found`` whose activation ``maxima``
    (``channel_maxima``) shows them; returns the activations smoothed."""
    values = {t.name: t for t in model.graph.initializer}
    done = []
    for group in found:
        amax = maxima.get(group.tensor)
        if amax is None or amax.shape != (group.channels,) or not has_outliers(amax):
            continue
        arrays = {w: onnx.numpy_helper.to_array(values[w]).astype(np.float32) for w, _ in group.weights}
        wmax = np.max([np.abs(np.moveaxis(arrays[w], axis, 0)).max(axis=1) for w, axis in group.weights], axis=0)
        scale = np.ones(group.channels, np.float32)
        usable = (amax > 0) & (wmax > 0)
        scale[usable] = np.clip(amax[usable] ** alpha / wmax[usable] ** (1 - alpha), *SCALE_LIMITS)
        for w, axis in group.weights:
            shape = (-1, 1) if axis == 0 else (1, -1)
            values[w].CopyFrom(onnx.numpy_helper.from_array((arrays[w] * scale.reshape(shape)).astype(np.float32), w))
        for name in group.affine:
            array = onnx.numpy_helper.to_array(values[name]).astype(np.float32)
            values[name].CopyFrom(onnx.numpy_helper.from_array((array / scale.reshape(array.shape)).astype(np.float32),
                                                               name))
        done.append(group.tensor)
    return done
