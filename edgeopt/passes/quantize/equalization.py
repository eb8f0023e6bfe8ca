"""Cross-layer equalization of a float ONNX graph (Nagel et al., "Data-Free Quantization", 2019).

In a chain conv1 -> [Relu | PRelu | LeakyRelu | nothing] -> conv2, output channel c of conv1 may be
scaled by 1/s_c and input channel c of conv2 by s_c without changing what the chain computes:
those activations are positively homogeneous, f(x / s) = f(x) / s for s > 0. With
s_c = sqrt(r1_c / r2_c), r1_c the largest |weight| of conv1's output channel c and r2_c that of
conv2's input channel c, both ranges become sqrt(r1_c * r2_c): per-tensor weights no longer spend
their 256 levels on one channel, and conv1's output channels, one tensor for the activation
quantizer, come closer to one range. Depthwise convolutions (group = channels) take part on
either side. Chains are equalized in a few sweeps, since a conv sits in two of them.

Clip (ReLU6) is left alone: clip(x, 0, 6) / s is not clip(x / s, 0, 6), and replacing it by a Relu
(as the paper does) would change the float model. What runs is in the quantization notes.
"""

from __future__ import annotations

from typing import Any

import numpy as np

HOMOGENEOUS = {"Relu", "PRelu", "LeakyRelu"}
SWEEPS = 4
SMALLEST_RANGE = 1e-8  # a channel of zeros has no scale to move


def equalize(onnx: Any, model: Any) -> int:
    """In place: equalize every conv -> (homogeneous activation) -> conv chain of ``model``; returns
    how many chains were found (0: the model is unchanged)."""
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    values = {name: onnx.numpy_helper.to_array(t).astype(np.float32) for name, t in initializers.items()}
    chains = _chains(graph, initializers, values)
    for _ in range(SWEEPS if chains else 0):
        for first, between, second in chains:
            _equalize_pair(first, between, second, values)
    for name in {n for chain in chains for n in _weights(chain)}:
        initializers[name].CopyFrom(onnx.numpy_helper.from_array(values[name], name))
    return len(chains)


def _chains(graph: Any, initializers: dict[str, Any], values: dict[str, np.ndarray]) -> list[tuple[Any, Any, Any]]:
    """(conv1, activation or None, conv2) where each tensor on the way has one reader, the weights
    are constants read by nobody else, and conv1's output channels are conv2's input channels."""
    readers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    outputs = {v.name for v in graph.output}

    def only_reader(tensor: str) -> Any:
        found = readers.get(tensor, [])
        return found[0] if len(found) == 1 and tensor not in outputs else None

    chains = []
    for first in graph.node:
        if not _plain_conv(first, initializers, readers):
            continue
        between = only_reader(first.output[0])
        second = between
        if between is not None and between.op_type in HOMOGENEOUS:
            if between.op_type == "PRelu" and not _channel_slope(between, values, _out_channels(first, values)):
                continue
            second = only_reader(between.output[0])
        else:
            between = None
        if second is None or not _plain_conv(second, initializers, readers) or second.input[0] != \
                (between.output[0] if between is not None else first.output[0]):
            continue
        channels = _out_channels(first, values)
        w2 = values[second.input[1]]
        group = _group(second)
        if not (group == 1 and w2.shape[1] == channels) and not (group == channels and w2.shape[0] == channels):
            continue
        chains.append((first, between, second))
    return chains


def _plain_conv(node: Any, initializers: dict[str, Any], readers: dict[str, list[Any]]) -> bool:
    """A Conv whose weight (and bias) are constants that only it reads."""
    if node.op_type != "Conv" or len(node.input) < 2:
        return False
    constants = [name for name in node.input[1:] if name]
    return all(name in initializers and len(readers.get(name, [])) == 1 for name in constants)


def _group(node: Any) -> int:
    return next((a.i for a in node.attribute if a.name == "group"), 1)


def _out_channels(node: Any, values: dict[str, np.ndarray]) -> int:
    return int(values[node.input[1]].shape[0])


def _channel_slope(prelu: Any, values: dict[str, np.ndarray], channels: int) -> bool:
    """PRelu's slope is a constant, scalar or per channel: scaling a channel leaves it as it is."""
    slope = values.get(prelu.input[1])
    return slope is not None and (slope.size == 1 or slope.size == channels)


def _weights(chain: tuple[Any, Any, Any]) -> list[str]:
    first, _, second = chain
    return [name for name in (*first.input[1:], second.input[1]) if name]


def _equalize_pair(first: Any, between: Any, second: Any, values: dict[str, np.ndarray]) -> None:
    w1, w2 = values[first.input[1]], values[second.input[1]]
    channels = w1.shape[0]
    r1 = np.abs(w1.reshape(channels, -1)).max(axis=1)
    depthwise = _group(second) == channels and w2.shape[0] == channels and _group(second) != 1
    r2 = np.abs(w2.reshape(channels, -1)).max(axis=1) if depthwise else \
        np.abs(np.moveaxis(w2, 1, 0).reshape(channels, -1)).max(axis=1)
    usable = (r1 > SMALLEST_RANGE) & (r2 > SMALLEST_RANGE)
    scale = np.ones(channels, np.float32)
    scale[usable] = np.sqrt(r1[usable] / r2[usable])
    shape1 = (channels,) + (1,) * (w1.ndim - 1)
    values[first.input[1]] = (w1 / scale.reshape(shape1)).astype(np.float32)
    if len(first.input) > 2 and first.input[2]:
        values[first.input[2]] = (values[first.input[2]] / scale).astype(np.float32)
    if depthwise:
        values[second.input[1]] = (w2 * scale.reshape((channels,) + (1,) * (w2.ndim - 1))).astype(np.float32)
    else:
        values[second.input[1]] = (w2 * scale.reshape((1, channels) + (1,) * (w2.ndim - 2))).astype(np.float32)
