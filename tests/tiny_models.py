"""Tiny PyTorch and ONNX models built in code, for the ONNX/OpenVINO/PyTorch paths.

PyTorch models are source text written to a ``nets.py`` file, because edgeopt takes PyTorch
models as ``nets.py:build_<name>`` plus a weights file. ONNX models are assembled node by node
with ``onnx.helper`` from seeded numpy weights, so they need neither torch nor TensorFlow.

The same three shapes of network serve both: a residual block, a depthwise (grouped) conv with
batch norm and ReLU6, and a model with an image input and a vector input.
"""

from __future__ import annotations

import pathlib
from typing import Dict, Tuple

import numpy as np

# Per-sample input shapes (no batch axis), by model name, in forward() order.
INPUTS: Dict[str, Dict[str, Tuple[int, ...]]] = {
    "residual": {"image": (3, 16, 16)},
    "depthwise": {"image": (3, 16, 16)},
    "two_input": {"image": (1, 8, 8), "meta": (4,)},
}
OUTPUTS = {"residual": 5, "depthwise": 5, "two_input": 3}

TORCH_NETS = '''
import torch
from torch import nn


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 5)

    def forward(self, image):
        x = torch.relu(self.conv1(image))
        x = torch.relu(x + self.bn(self.conv2(x)))
        return self.fc(x.mean(dim=(2, 3)))


class Depthwise(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 5)

    def forward(self, image):
        x = torch.clamp(self.bn(self.dw(self.conv(image))), 0.0, 6.0)
        return self.fc(x.mean(dim=(2, 3)))


class TwoInput(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.meta_fc = nn.Linear(4, 4)
        self.fc = nn.Linear(8, 3)

    def forward(self, image, meta):
        x = torch.relu(self.conv(image)).mean(dim=(2, 3))
        m = torch.relu(self.meta_fc(meta))
        return torch.softmax(self.fc(torch.cat([x, m], dim=1)), dim=1)


def _seeded(cls):
    torch.manual_seed(0)
    return cls()


def build_residual():
    return _seeded(Residual)


def build_depthwise():
    return _seeded(Depthwise)


def build_two_input():
    return _seeded(TwoInput)
'''


def write_torch_nets(folder: pathlib.Path) -> pathlib.Path:
    path = folder / "nets.py"
    path.write_text(TORCH_NETS, encoding="utf-8")
    return path


def import_nets(path: pathlib.Path):
    """The nets module imported from ``path`` (separately from edgeopt, as an independent reference)."""
    import importlib.util

    import sys

    name = f"reference_nets_{abs(hash(str(path)))}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # so that torch.save can pickle whole modules built from it
    spec.loader.exec_module(module)
    return module


def trained_state(module, seed: int = 1) -> dict:
    """A state_dict unlike the builder's own weights, with non-trivial batch-norm statistics, so a
    loader that ignored the weights file or dropped batch norm would be caught."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, value in module.state_dict().items():
        if not value.is_floating_point():
            state[name] = value.clone()
        elif name.endswith("running_var"):
            state[name] = torch.rand(value.shape, generator=generator) + 0.5
        elif name.endswith("running_mean") or name.endswith("bias"):
            state[name] = torch.rand(value.shape, generator=generator) - 0.5
        else:
            state[name] = (torch.rand(value.shape, generator=generator) - 0.5) * 0.8
    return state


def random_feed(name: str, n: int, seed: int = 0, layout: str = "nchw") -> Dict[str, np.ndarray]:
    """float32 inputs in [0, 1) for model ``name``; ``layout="nhwc"`` moves channels last."""
    rng = np.random.default_rng(seed)
    feed = {}
    for key, shape in INPUTS[name].items():
        if layout == "nhwc" and len(shape) == 3:
            shape = (shape[1], shape[2], shape[0])
        feed[key] = rng.random((n, *shape), dtype=np.float32)
    return feed


# --- ONNX graphs ---------------------------------------------------------------------------------

IR_VERSION = 9  # what onnxruntime 1.20+ reads; newer onnx writes a newer one by default
OPSET = 17


class _Graph:
    """Collects nodes and seeded weights for onnx.helper.make_graph."""

    def __init__(self, seed: int, weights_as_constants: bool = False) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list = []
        self.initializers: list = []
        self.constants = weights_as_constants

    def weight(self, name: str, shape: Tuple[int, ...], scale: float = 0.4, positive: bool = False) -> str:
        from onnx import numpy_helper, helper

        values = self.rng.random(shape, dtype=np.float32)
        values = (values + 0.5) if positive else (values - 0.5) * scale * 2
        tensor = numpy_helper.from_array(values.astype(np.float32), name)
        if self.constants:
            self.nodes.append(helper.make_node("Constant", [], [name], value=tensor, name=f"{name}_const"))
        else:
            self.initializers.append(tensor)
        return name

    def node(self, op: str, inputs: list, output: str, **attrs) -> str:
        from onnx import helper

        self.nodes.append(helper.make_node(op, inputs, [output], name=output, **attrs))
        return output


def build_onnx(name: str, *, batch: int | None = None, weights_as_constants: bool = False, seed: int = 0):
    """The ONNX ModelProto of model ``name`` (NCHW), with a free batch axis unless ``batch`` is given."""
    from onnx import TensorProto, checker, helper

    g = _Graph(seed, weights_as_constants)
    dim0 = batch if batch is not None else "batch"
    inputs = [helper.make_tensor_value_info(k, TensorProto.FLOAT, [dim0, *s]) for k, s in INPUTS[name].items()]
    if name == "residual":
        x = g.node("Conv", ["image", g.weight("conv1.w", (8, 3, 3, 3)), g.weight("conv1.b", (8,))], "conv1",
                   pads=[1] * 4)
        x = g.node("Relu", [x], "relu1")
        y = g.node("Conv", [x, g.weight("conv2.w", (8, 8, 3, 3)), g.weight("conv2.b", (8,))], "conv2", pads=[1] * 4)
        x = g.node("Relu", [g.node("Add", [x, y], "skip_add")], "relu2")
        x = g.node("Flatten", [g.node("GlobalAveragePool", [x], "gap")], "flatten")
        out = g.node("Gemm", [x, g.weight("fc.w", (5, 8)), g.weight("fc.b", (5,))], "logits", transB=1)
    elif name == "depthwise":
        x = g.node("Conv", ["image", g.weight("conv.w", (8, 3, 3, 3)), g.weight("conv.b", (8,))], "conv",
                   pads=[1] * 4, strides=[2, 2])
        x = g.node("Conv", [x, g.weight("dw.w", (8, 1, 3, 3)), g.weight("dw.b", (8,))], "dw_conv",
                   pads=[1] * 4, group=8)
        x = g.node("BatchNormalization", [x, g.weight("bn.gamma", (8,), positive=True), g.weight("bn.beta", (8,)),
                                          g.weight("bn.mean", (8,)), g.weight("bn.var", (8,), positive=True)], "dw_bn")
        x = _clip(g, x)
        x = g.node("Flatten", [g.node("GlobalAveragePool", [x], "gap")], "flatten")
        out = g.node("Gemm", [x, g.weight("fc.w", (5, 8)), g.weight("fc.b", (5,))], "logits", transB=1)
    elif name == "two_input":
        x = g.node("Conv", ["image", g.weight("conv.w", (4, 1, 3, 3)), g.weight("conv.b", (4,))], "conv", pads=[1] * 4)
        x = g.node("Flatten", [g.node("GlobalAveragePool", [g.node("Relu", [x], "relu")], "gap")], "flatten")
        m = g.node("Gemm", ["meta", g.weight("meta.w", (4, 4)), g.weight("meta.b", (4,))], "meta_fc", transB=1)
        x = g.node("Concat", [x, g.node("Relu", [m], "meta_relu")], "merge", axis=1)
        x = g.node("Gemm", [x, g.weight("fc.w", (3, 8)), g.weight("fc.b", (3,))], "fc", transB=1)
        out = g.node("Softmax", [x], "probs", axis=1)
    else:
        raise ValueError(f"unknown ONNX fixture model {name!r}; known: {sorted(INPUTS)}")
    output = helper.make_tensor_value_info(out, TensorProto.FLOAT, [dim0, OUTPUTS[name]])
    graph = helper.make_graph(g.nodes, name, inputs, [output], initializer=g.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="edgeopt-tests")
    model.ir_version = IR_VERSION
    checker.check_model(model)
    return model


def _clip(g: _Graph, x: str) -> str:
    from onnx import numpy_helper

    for name, value in (("clip.min", 0.0), ("clip.max", 6.0)):
        g.initializers.append(numpy_helper.from_array(np.array(value, dtype=np.float32), name))
    return g.node("Clip", [x, "clip.min", "clip.max"], "relu6")


def run_onnx(path, feed: Dict[str, np.ndarray]) -> list:
    """All outputs of an ONNX file on ONNX Runtime, fed whole (independent of edgeopt's sessions)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    if session.get_inputs()[0].shape[0] != 1:
        return session.run(None, {n: feed[n] for n in names})
    # Artifacts have a static batch of 1, as edge runtimes run them.
    count = len(feed[names[0]])
    parts = [session.run(None, {n: feed[n][i:i + 1] for n in names}) for i in range(count)]
    return [np.concatenate(outs) for outs in zip(*parts)]


def calib_subset(path, inputs, samples: int = 40):
    """edgeopt's calibration subset of an .npz for a loaded model's inputs (what exporters take)."""
    from edgeopt import calibration

    subset, _ = calibration.select(calibration.open_data(path, inputs), samples=samples, seed=0)
    return subset


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Mean per-sample cosine similarity."""
    a = a.reshape(len(a), -1).astype(np.float64)
    b = b.reshape(len(b), -1).astype(np.float64)
    return float(np.mean(np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))))


# --- A model with outlier channels ---------------------------------------------------------------
# Ten 3x3 convs on an 8x8 image. The third conv ("conv2") makes two of its eight channels 1000x
# larger than the rest, and the fourth ("conv3") reads those two with 1000x smaller weights, so the
# float model uses every channel at its own scale. One int8 scale for the whole conv2 output
# rounds the six ordinary channels to nothing: plain int8 loses most of the signal, while keeping
# conv2 and conv3 in float (2 of 10 convs) restores it.

OUTLIER_CONVS = 10
OUTLIER_CHANNELS = 8
OUTLIER_SIZE = 8
OUTLIER_OUT_CHANNELS = 4


def outlier_weights(seed: int = 0) -> list:
    """(weight OIHW, bias) per conv, float32."""
    rng = np.random.default_rng(seed)
    layers = []
    for i in range(OUTLIER_CONVS):
        cin = 3 if i == 0 else OUTLIER_CHANNELS
        cout = OUTLIER_OUT_CHANNELS if i == OUTLIER_CONVS - 1 else OUTLIER_CHANNELS
        limit = np.sqrt(6.0 / (9 * cin))
        w = rng.uniform(-limit, limit, (cout, cin, 3, 3)).astype(np.float32)
        b = rng.uniform(0.0, 0.1, cout).astype(np.float32)
        if i == 2:
            w[:2] *= 1000.0
            b[:2] *= 1000.0
        if i == 3:
            w[:, :2] /= 1000.0
        layers.append((w, b))
    return layers


def build_outlier_onnx(seed: int = 0, batch: int | None = None):
    """The outlier model as ONNX (NCHW); nodes conv0..conv9, a Relu after each but conv2 and conv9."""
    from onnx import TensorProto, checker, helper, numpy_helper

    dim0 = batch if batch is not None else "batch"
    nodes, inits, x = [], [], "image"
    for i, (w, b) in enumerate(outlier_weights(seed)):
        inits += [numpy_helper.from_array(w, f"conv{i}.w"), numpy_helper.from_array(b, f"conv{i}.b")]
        nodes.append(helper.make_node("Conv", [x, f"conv{i}.w", f"conv{i}.b"], [f"conv{i}"], name=f"conv{i}",
                                      pads=[1] * 4))
        x = f"conv{i}"
        if i not in (2, OUTLIER_CONVS - 1):
            nodes.append(helper.make_node("Relu", [x], [f"relu{i}"], name=f"relu{i}"))
            x = f"relu{i}"
    inputs = [helper.make_tensor_value_info("image", TensorProto.FLOAT, [dim0, 3, OUTLIER_SIZE, OUTLIER_SIZE])]
    outputs = [helper.make_tensor_value_info(x, TensorProto.FLOAT,
                                             [dim0, OUTLIER_OUT_CHANNELS, OUTLIER_SIZE, OUTLIER_SIZE])]
    graph = helper.make_graph(nodes, "outlier", inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="edgeopt-tests")
    model.ir_version = IR_VERSION
    checker.check_model(model)
    return model


def outlier_source(root):
    """The outlier ONNX model saved in ``root``, loaded, with 48 calibration samples: (path, the
    loaded model, its calibration Subset, the generator that made them, to draw more from)."""
    import onnx

    from edgeopt.frameworks import onnx as onnx_loader
    from edgeopt.model import Format

    path = root / "outlier.onnx"
    onnx.save(build_outlier_onnx(), str(path))
    source = onnx_loader.load(path, Format.ONNX)
    rng = np.random.default_rng(1)
    np.savez(root / "calib.npz", image=rng.random((48, 3, OUTLIER_SIZE, OUTLIER_SIZE), dtype=np.float32))
    return path, source, calib_subset(root / "calib.npz", source.handle.inputs), rng


def build_outlier_keras(seed: int = 0):
    """The same network as a Keras model (NHWC), layers conv0..conv9."""
    import keras

    inputs = keras.Input(shape=(OUTLIER_SIZE, OUTLIER_SIZE, 3), name="image")
    x = inputs
    convs = []
    for i, (w, b) in enumerate(outlier_weights(seed)):
        act = None if i in (2, OUTLIER_CONVS - 1) else "relu"
        layer = keras.layers.Conv2D(w.shape[0], 3, padding="same", activation=act, name=f"conv{i}")
        x = layer(x)
        convs.append((layer, w, b))
    model = keras.Model(inputs, x, name="outlier")
    for layer, w, b in convs:
        layer.set_weights([np.transpose(w, (2, 3, 1, 0)), b])  # OIHW -> HWIO
    return model
