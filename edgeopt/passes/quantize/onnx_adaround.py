"""Learned rounding of the int8 weights of a QDQ ONNX model (AdaRound: Nagel et al., "Up or Down?
Adaptive Rounding for Post-Training Quantization", 2020), opt-in with ``--optimize adaround``.

Rounding each weight to its nearest int8 level minimizes the error of each weight, not of the
layer's output: errors of neighbouring weights add up over the products a channel sums. Per
layer, AdaRound learns whether each weight rounds down or up (a soft choice h in [0, 1] pushed
to 0 or 1 by an annealed regularizer) so that the layer's output on the float model's own inputs
changes least; scales and zero points stay as the quantizer set them, so the artifact keeps its
ops and size. Conv (2-D and 1-D, grouped), Gemm and MatMul layers with int8 weights take part.

It runs on a time limit: each layer gets an equal share of what is left, and layers the limit
does not reach keep the nearest rounding. torch does the optimization (``edgeopt[torch]``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeopt.deps import require
from edgeopt.exporters.base import FloatArtifact
from edgeopt.passes.quantize.onnx_prepared import prepared_graph
from edgeopt.passes.quantize.onnx_sensitivity import tapped_session

ZETA, GAMMA = 1.1, -0.1  # the rectified sigmoid's stretch, so that h reaches 0 and 1 exactly
REGULARIZATION = 10.0  # on the error share: strong enough that the soft choices end hard
BETA = (20.0, 2.0)  # the regularizer's exponent, annealed: soft choices first, then hard ones
WARMUP = 0.2  # share of the iterations that fit the output before the regularizer starts
LEARNING_RATE = 1e-2
MIN_ITERATIONS = 50
CROP = 16  # spatial crop of a conv's input per sample: the loss needs outputs, not whole maps
ROWS_PER_LAYER = 4096  # rows of a Gemm/MatMul input kept
LAYER_OPS = {"Conv", "Gemm", "MatMul"}


@dataclass(frozen=True)
class Rounded:
    """What learned rounding did: layers optimized, of how many, and the output error it left as
    a share of the nearest rounding's (mean over the layers)."""

    layers: int
    of: int
    error_ratio: float | None
    seconds: float


@dataclass
class _Layer:
    node: Any
    weight: Any  # the int8 initializer
    scale: np.ndarray
    zero: np.ndarray
    axis: int
    float_weight: np.ndarray
    tapped: str  # the float tensor it reads in the prepared graph


def optimize(floating: FloatArtifact, artifact: Path, rows: list[dict[str, np.ndarray]], seconds: float,
             seed: int = 0) -> Rounded:
    """Learn the rounding of ``artifact``'s int8 weights in place, within ``seconds``."""
    started = time.perf_counter()
    torch = require("torch", "Learned rounding (--optimize adaround)")
    onnx = require("onnx", "Editing ONNX models")
    data = prepared_graph(floating)
    model = onnx.load(str(artifact))
    layers = _layers(onnx, model, onnx.load_from_string(data)) if data is not None and rows else []
    if not layers:
        return Rounded(0, 0, None, 0.0)
    prepared = onnx.load_from_string(data)
    run = tapped_session(onnx, prepared, [layer.tapped for layer in layers], floating.model.handle.input_names)
    rng = np.random.default_rng(seed)
    inputs: list[list[np.ndarray]] = [[] for _ in layers]
    for row in rows:
        for i, value in enumerate(run(row)):
            inputs[i].append(_sample(layers[i].node, np.asarray(value, np.float32), rng))
    torch.manual_seed(seed)
    ratios, done = [], 0
    for i, layer in enumerate(layers):
        left = seconds - (time.perf_counter() - started)
        if left <= 0:
            break
        x = np.concatenate(inputs[i], axis=0)
        inputs[i] = []
        ratio = _learn(torch, layer, x, left / (len(layers) - i))
        if ratio is not None:
            ratios.append(ratio)
            done += 1
    onnx.save(model, str(artifact))
    return Rounded(done, len(layers), float(np.mean(ratios)) if ratios else None,
                   round(time.perf_counter() - started, 1))


def _layers(onnx: Any, model: Any, prepared: Any) -> list[_Layer]:
    """The layers whose weight is an int8 initializer behind a DequantizeLinear, with the float
    weight and input tensor of the same node in the prepared graph."""
    producer = {o: node for node in model.graph.node for o in node.output}
    values = {t.name: t for t in model.graph.initializer}
    float_nodes = {node.name: node for node in prepared.graph.node if node.name}
    float_values = {t.name: t for t in prepared.graph.initializer}
    found = []
    for node in model.graph.node:
        twin = float_nodes.get(node.name)
        if node.op_type not in LAYER_OPS or twin is None or len(node.input) < 2 or len(twin.input) < 2:
            continue
        dq = producer.get(node.input[1])
        if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in values or \
                values[dq.input[0]].data_type != onnx.TensorProto.INT8 or twin.input[1] not in float_values:
            continue
        attrs = {a.name: a for a in node.attribute}
        if node.op_type == "Gemm" and attrs.get("transA") is not None and attrs["transA"].i:
            continue
        if "auto_pad" in attrs and attrs["auto_pad"].s not in (b"", b"NOTSET"):
            continue  # padding worked out at run time: the crops could not reproduce it
        weight = values[dq.input[0]]
        scale = onnx.numpy_helper.to_array(values[dq.input[1]]).astype(np.float32)
        zero = onnx.numpy_helper.to_array(values[dq.input[2]]).astype(np.float32) \
            if len(dq.input) > 2 and dq.input[2] in values else np.zeros_like(scale)
        axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
        float_weight = onnx.numpy_helper.to_array(float_values[twin.input[1]]).astype(np.float32)
        if tuple(float_weight.shape) != tuple(weight.dims) or (node.op_type == "Conv" and float_weight.ndim not in (3, 4)):
            continue
        found.append(_Layer(node, weight, scale, zero, axis % float_weight.ndim, float_weight, twin.input[0]))
    return found


def _sample(node: Any, value: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random spatial crop of a conv input (batch kept), or rows of a Gemm/MatMul input."""
    if node.op_type == "Conv":
        slices = [slice(None), slice(None)]
        for size in value.shape[2:]:
            start = int(rng.integers(0, max(1, size - CROP + 1)))
            slices.append(slice(start, start + CROP))
        return value[tuple(slices)]
    flat = value.reshape(-1, value.shape[-1])
    keep = rng.choice(len(flat), size=min(len(flat), max(1, ROWS_PER_LAYER // 16)), replace=False)
    return flat[np.sort(keep)]


def _learn(torch: Any, layer: _Layer, x: np.ndarray, seconds: float) -> float | None:
    """Learn ``layer``'s rounding on inputs ``x`` for about ``seconds``; writes the int8 weight and
    returns the output error left over the nearest rounding's (None: nothing to learn)."""
    shape = [1] * layer.float_weight.ndim
    shape[layer.axis] = -1
    scale = torch.from_numpy(np.where(layer.scale == 0, 1.0, layer.scale).reshape(shape).astype(np.float32))
    zero = torch.from_numpy(layer.zero.reshape(shape).astype(np.float32))
    w = torch.from_numpy(layer.float_weight)
    floor = torch.floor(w / scale)
    rest = (w / scale - floor).clamp(0.01, 0.99)
    v = torch.log((rest - GAMMA) / (ZETA - rest)).detach().requires_grad_(True)  # h(v) = rest at the start
    low, high = -128 - zero, 127 - zero
    forward = _forward(torch, layer)
    inputs = torch.from_numpy(x)
    with torch.no_grad():
        target = forward(inputs, w)
        nearest = ((forward(inputs, scale * torch.clamp(torch.round(w / scale), low, high)) - target) ** 2).mean()
    if float(nearest) == 0.0:
        return None

    def soft(values: Any) -> Any:
        return torch.clamp(torch.sigmoid(values) * (ZETA - GAMMA) + GAMMA, 0, 1)

    optimizer = torch.optim.Adam([v], lr=LEARNING_RATE)
    started, step, budget = time.perf_counter(), 0, None
    while True:
        elapsed = time.perf_counter() - started
        if budget is None and step == 10:  # iterations the time share affords, from the first ten
            budget = max(MIN_ITERATIONS, int(seconds / max(elapsed / 10, 1e-6)))
        if budget is not None and step >= budget:
            break
        progress = step / budget if budget else 0.0
        h = soft(v)
        # The output error as a share of nearest rounding's, so that the regularizer's weight
        # means the same on every layer.
        loss = ((forward(inputs, scale * torch.clamp(floor + h, low, high)) - target) ** 2).mean() / nearest
        if progress > WARMUP:
            beta = BETA[0] + (BETA[1] - BETA[0]) * (progress - WARMUP) / (1 - WARMUP)
            loss = loss + REGULARIZATION * (1 - (2 * h - 1).abs() ** beta).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        step += 1
    with torch.no_grad():
        q = torch.clamp(floor + (v >= 0).float(), low, high)
        learned = ((forward(inputs, scale * q) - target) ** 2).mean()
        if learned >= nearest:  # never worse than the quantizer's own rounding
            return 1.0
        q = (q + zero).round().clamp(-128, 127).to(torch.int8).numpy()
    from onnx import numpy_helper

    layer.weight.CopyFrom(numpy_helper.from_array(q, layer.weight.name))
    return float(learned / nearest)


def _forward(torch: Any, layer: _Layer) -> Any:
    """(input, weight) -> the layer's output without its bias."""
    functional = torch.nn.functional
    node = layer.node
    attrs = {a.name: a for a in node.attribute}
    if node.op_type == "Conv":
        spatial = layer.float_weight.ndim - 2
        ints = {name: list(attrs[name].ints) for name in ("strides", "dilations", "pads") if name in attrs}
        strides = ints.get("strides") or [1] * spatial
        dilations = ints.get("dilations") or [1] * spatial
        pads = ints.get("pads") or [0] * (2 * spatial)
        group = attrs["group"].i if "group" in attrs else 1
        conv = functional.conv2d if spatial == 2 else functional.conv1d
        symmetric = pads[:spatial] == pads[spatial:]

        def run(x: Any, w: Any) -> Any:
            if not symmetric:  # ONNX allows begin and end pads to differ; torch's conv does not
                x = functional.pad(x, [p for i in reversed(range(spatial)) for p in (pads[i], pads[i + spatial])])
            return conv(x, w, None, strides, pads[:spatial] if symmetric else 0, dilations, group)
        return run
    transposed = node.op_type == "Gemm" and "transB" in attrs and attrs["transB"].i
    return (lambda x, w: x @ w.T) if transposed else (lambda x, w: x @ w)
