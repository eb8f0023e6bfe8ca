"""The ONNX ops :class:`edgeopt.frameworks.onnx_torch.OnnxModule` runs: one table from op type to
a small function taking a :class:`Call` (the node, its attributes, its input values) and returning
the node's output value, or a tuple of them.

Semantics follow the ONNX operator specification at the model's opset, checked against ONNX
Runtime by the tests. An op type missing here is refused before any conversion starts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from edgeopt.frameworks.onnx_ops import elementwise, layers, shapes
from edgeopt.frameworks.onnx_ops.call import F, Call, Value, shape_of, to_tensor, torch

__all__ = ["OPS", "Call", "Value", "to_tensor", "torch"]

OPS: dict[str, Callable[[Call], Any]] = {
    "Add": elementwise.binary(np.add, torch.add),
    "Sub": elementwise.binary(np.subtract, torch.sub),
    "Mul": elementwise.binary(np.multiply, torch.mul),
    "Div": elementwise.binary(elementwise.trunc_div, elementwise.torch_div),
    "Pow": elementwise.power,
    "Equal": elementwise.binary(np.equal, torch.eq),
    "Greater": elementwise.binary(np.greater, torch.gt),
    "Less": elementwise.binary(np.less, torch.lt),
    "GreaterOrEqual": elementwise.binary(np.greater_equal, torch.ge),
    "LessOrEqual": elementwise.binary(np.less_equal, torch.le),
    "And": elementwise.binary(np.logical_and, torch.logical_and),
    "Or": elementwise.binary(np.logical_or, torch.logical_or),
    "Xor": elementwise.binary(np.logical_xor, torch.logical_xor),
    "Not": elementwise.unary(np.logical_not, torch.logical_not),
    "Min": elementwise.variadic(np.minimum, torch.minimum),
    "Max": elementwise.variadic(np.maximum, torch.maximum),
    "Sum": elementwise.variadic(np.add, torch.add),
    "Mean": elementwise.mean,
    "Relu": elementwise.unary(lambda x: np.maximum(x, 0), F.relu),
    "Sigmoid": elementwise.unary(elementwise.np_sigmoid, torch.sigmoid),
    "Tanh": elementwise.unary(np.tanh, torch.tanh),
    "Sqrt": elementwise.unary(np.sqrt, torch.sqrt),
    "Exp": elementwise.unary(np.exp, torch.exp),
    "Log": elementwise.unary(np.log, torch.log),
    "Neg": elementwise.unary(np.negative, torch.neg),
    "Abs": elementwise.unary(np.abs, torch.abs),
    "Floor": elementwise.unary(np.floor, torch.floor),
    "Ceil": elementwise.unary(np.ceil, torch.ceil),
    "Round": elementwise.unary(np.round, torch.round),  # both round half to even, as ONNX does
    "Sign": elementwise.unary(np.sign, torch.sign),
    "Reciprocal": elementwise.unary(np.reciprocal, torch.reciprocal),
    "Sin": elementwise.unary(np.sin, torch.sin),
    "Cos": elementwise.unary(np.cos, torch.cos),
    "Erf": elementwise.act(lambda x, c: torch.erf(x)),
    "LeakyRelu": elementwise.act(lambda x, c: elementwise.leaky_relu(x, float(c.attr("alpha", 0.01)))),
    "Elu": elementwise.act(lambda x, c: F.elu(x, float(c.attr("alpha", 1.0)))),
    "Selu": elementwise.act(lambda x, c: float(c.attr("gamma", 1.0507009873554805)) *
                 F.elu(x, float(c.attr("alpha", 1.6732632423543772)))),
    "Celu": elementwise.act(lambda x, c: F.celu(x, float(c.attr("alpha", 1.0)))),
    "Softplus": elementwise.act(lambda x, c: F.softplus(x)),
    "Softsign": elementwise.act(lambda x, c: F.softsign(x)),
    "Mish": elementwise.act(lambda x, c: F.mish(x)),
    "Gelu": elementwise.act(lambda x, c: F.gelu(x, approximate=c.attr("approximate", "none"))),
    "HardSwish": elementwise.act(lambda x, c: F.hardswish(x)),
    "HardSigmoid": elementwise.hard_sigmoid,
    "PRelu": elementwise.prelu,
    "Clip": elementwise.clip,
    "Softmax": elementwise.softmax(log=False),
    "LogSoftmax": elementwise.softmax(log=True),
    "Conv": layers.conv,
    "ConvTranspose": layers.conv_transpose,
    "Gemm": layers.gemm,
    "MatMul": layers.matmul,
    "Einsum": elementwise.einsum,
    "BatchNormalization": layers.batch_norm,
    "InstanceNormalization": layers.instance_norm,
    "LayerNormalization": layers.layer_norm,
    "MaxPool": layers.pool("max"),
    "AveragePool": layers.pool("avg"),
    "GlobalAveragePool": layers.global_pool("avg"),
    "GlobalMaxPool": layers.global_pool("max"),
    "Flatten": shapes.flatten,
    "Reshape": shapes.reshape,
    "Transpose": shapes.transpose,
    "Concat": shapes.concat,
    "Split": shapes.split,
    "Slice": shapes.slice_op,
    "Gather": shapes.gather,
    "GatherElements": shapes.gather_elements,
    "Squeeze": shapes.squeeze,
    "Unsqueeze": shapes.unsqueeze,
    "Shape": shapes.shape_op,
    "Size": lambda c: np.array(int(np.prod(shape_of(c.value(0)))), dtype=np.int64),
    "Constant": shapes.constant,
    "ConstantOfShape": shapes.constant_of_shape,
    "Identity": elementwise.identity,
    "Dropout": elementwise.dropout,
    "Cast": elementwise.cast,
    "CastLike": elementwise.cast_like,
    "Expand": shapes.expand,
    "Where": elementwise.where,
    "Tile": shapes.tile,
    "Range": shapes.range_op,
    "Pad": layers.pad,
    "Resize": layers.resize,
    "Upsample": layers.resize,
    "DepthToSpace": layers.depth_space(to_space=True),
    "SpaceToDepth": layers.depth_space(to_space=False),
    "ReduceMean": elementwise.reduce("mean"),
    "ReduceMax": elementwise.reduce("max"),
    "ReduceMin": elementwise.reduce("min"),
    "ReduceSum": elementwise.reduce("sum"),
    "ReduceProd": elementwise.reduce("prod"),
    "ReduceL2": elementwise.reduce("l2"),
    "ReduceSumSquare": elementwise.reduce("sumsquare"),
    "ArgMax": elementwise.arg("max"),
    "ArgMin": elementwise.arg("min"),
    "TopK": elementwise.topk,
}
