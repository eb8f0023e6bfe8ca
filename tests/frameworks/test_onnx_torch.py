"""ONNX graphs run as PyTorch modules: each op family against ONNX Runtime on tiny graphs, static
shape arithmetic, unsupported ops named at once, and divergences traced to their node."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import tiny_models  # noqa: E402
from edgeopt.errors import ConversionError  # noqa: E402
from edgeopt.frameworks import onnx_torch  # noqa: E402
from edgeopt.frameworks.onnx_torch import OnnxModule  # noqa: E402

ATOL = 1e-5
RNG = np.random.default_rng(0)


def _x(*shape: int, positive: bool = False) -> np.ndarray:
    values = RNG.standard_normal(shape).astype(np.float32)
    return np.abs(values) + 0.1 if positive else values


def _i64(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64)


def _f32(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float32)


def _node(op: str, inputs: list[str], outputs: list[str] | str = "y", **attrs: Any) -> Any:
    outputs = [outputs] if isinstance(outputs, str) else outputs
    return helper.make_node(op, inputs, outputs, name=f"{op.lower()}_{outputs[0]}", **attrs)


def _model(nodes: list, inputs: dict[str, np.ndarray], consts: dict[str, np.ndarray] | None = None,
           outputs: dict[str, int] | None = None, opset: int = 17) -> Any:
    outputs = outputs or {"y": TensorProto.FLOAT}
    value_info = helper.make_tensor_value_info
    graph = helper.make_graph(
        nodes, "g", [value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape) for k, v in inputs.items()],
        [value_info(k, t, None) for k, t in outputs.items()],
        initializer=[numpy_helper.from_array(v, k) for k, v in (consts or {}).items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = tiny_models.IR_VERSION
    return onnx.shape_inference.infer_shapes(model)


def _check(nodes: list, inputs: dict[str, np.ndarray], consts: dict[str, np.ndarray] | None = None,
           outputs: dict[str, int] | None = None, opset: int = 17) -> list[np.ndarray]:
    """OnnxModule's outputs equal ONNX Runtime's within ATOL, with the same shapes and dtypes."""
    model = _model(nodes, inputs, consts, outputs, opset)
    expected = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, inputs)
    module = OnnxModule(model).eval()
    with torch.no_grad():
        got = module(*[torch.from_numpy(v) for v in inputs.values()])
    got = list(got) if isinstance(got, tuple) else [got]
    assert len(got) == len(expected)
    for ref, out in zip(expected, got):
        out = out.numpy()
        assert out.shape == ref.shape and out.dtype == ref.dtype, (out.shape, out.dtype, ref.shape, ref.dtype)
        assert np.abs(out.astype(np.float64) - ref.astype(np.float64)).max(initial=0) <= ATOL
    return got


X = {"x": _x(1, 4, 9, 9)}


@pytest.mark.parametrize("attrs, weight", [
    ({"pads": [1, 1, 1, 1]}, (6, 4, 3, 3)),
    ({"pads": [0, 1, 2, 1], "strides": [2, 2]}, (6, 4, 3, 3)),  # asymmetric
    ({"dilations": [2, 2], "pads": [2, 2, 2, 2]}, (6, 4, 3, 3)),
    ({"group": 4, "pads": [1, 1, 1, 1]}, (4, 1, 3, 3)),  # depthwise
    ({"group": 2}, (6, 2, 1, 1)),
    ({"auto_pad": "SAME_UPPER", "strides": [2, 2]}, (6, 4, 4, 4)),
    ({"auto_pad": "SAME_LOWER", "strides": [2, 2]}, (6, 4, 4, 4)),
    ({"auto_pad": "VALID", "strides": [2, 1]}, (6, 4, 3, 3)),
])
def test_conv(attrs, weight):
    _check([_node("Conv", ["x", "w", "b"], **attrs)], X, {"w": _x(*weight), "b": _x(weight[0])})


def test_conv1d_without_bias():
    _check([_node("Conv", ["x", "w"], pads=[1, 0])], {"x": _x(1, 3, 10)}, {"w": _x(5, 3, 3)})


@pytest.mark.parametrize("attrs, weight", [
    ({"strides": [2, 2], "pads": [1, 1, 1, 1], "output_padding": [1, 1]}, (4, 3, 3, 3)),
    ({"strides": [2, 2], "pads": [0, 1, 1, 0]}, (4, 3, 3, 3)),  # asymmetric
    ({"strides": [2, 2], "output_shape": [18, 18]}, (4, 3, 4, 4)),
    ({"strides": [2, 2], "group": 2, "pads": [1, 1, 1, 1]}, (4, 2, 4, 4)),
    ({"strides": [2, 1], "dilations": [2, 2], "pads": [1, 2, 1, 2]}, (4, 3, 3, 3)),
])
def test_conv_transpose(attrs, weight):
    _check([_node("ConvTranspose", ["x", "w", "b"], **attrs)], X,
           {"w": _x(*weight), "b": _x(weight[1] * attrs.get("group", 1))})


@pytest.mark.parametrize("attrs, a, b, c", [
    ({"transB": 1}, (2, 6), (5, 6), (5,)),
    ({}, (2, 6), (6, 5), (5,)),
    ({"transA": 1, "alpha": 0.5, "beta": 2.0}, (6, 2), (6, 5), (2, 5)),
    ({"transB": 1}, (2, 6), (5, 6), None),
    ({"transB": 1}, (2, 6), (5, 6), (1,)),
])
def test_gemm(attrs, a, b, c):
    consts = {"b": _x(*b), **({"c": _x(*c)} if c else {})}
    _check([_node("Gemm", ["a", "b"] + (["c"] if c else []), **attrs)], {"a": _x(*a)}, consts)


def test_matmul_with_weights_and_between_inputs():
    _check([_node("MatMul", ["a", "w"], "t"), _node("MatMul", ["t", "b"])], {"a": _x(2, 3, 4), "b": _x(2, 5, 6)},
           {"w": _x(4, 5)})


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div"])
def test_broadcasting_arithmetic(op):
    nodes = [_node(op, ["x", "c"], "t1"), _node(op, ["k", "t1"], "t2"), _node(op, ["t2", "s"], "t3"),
             _node(op, ["t3", "v"])]
    _check(nodes, {**X, "v": _x(1, 1, 9, 1, positive=True)},
           {"c": _x(4, 1, 1, positive=True), "k": _f32(1.5), "s": np.array(2.0, np.float32)})


def test_pow_and_unary_math():
    nodes = [_node("Abs", ["x"], "a"), _node("Pow", ["a", "two"], "p"), _node("Pow", ["a", "half"], "q"),
             _node("Sqrt", ["p"], "s"), _node("Exp", ["q"], "e"), _node("Log", ["e"], "l"),
             _node("Neg", ["l"], "n"), _node("Floor", ["x"], "f"), _node("Ceil", ["x"], "c"),
             _node("Reciprocal", ["e"], "r"), _node("Sum", ["s", "n", "f", "c", "r"], "t"),
             _node("Min", ["t", "x"], "mn"), _node("Max", ["mn", "a", "e"], "y")]
    _check(nodes, X, {"two": _f32(2.0), "half": np.array(0.5, np.float32)})


@pytest.mark.parametrize("op, attrs, consts", [
    ("Relu", {}, {}), ("Sigmoid", {}, {}), ("Tanh", {}, {}), ("Erf", {}, {}), ("HardSwish", {}, {}),
    ("LeakyRelu", {"alpha": 0.1}, {}), ("HardSigmoid", {}, {}), ("HardSigmoid", {"alpha": 1 / 6}, {}),
    ("Elu", {}, {}), ("Softplus", {}, {}), ("Selu", {}, {}),
    ("PRelu", {}, {"slope": _x(4, 1, 1)}), ("PRelu", {}, {"slope": _f32(0.2)}), ("PRelu", {}, {"slope": _x(9)}),
    ("Clip", {}, {"lo": np.array(0.0, np.float32), "hi": np.array(6.0, np.float32)}),
    ("Clip", {}, {"lo": np.array(-0.5, np.float32)}),
])
def test_activations(op, attrs, consts):
    _check([_node(op, ["x", *consts], **attrs)], X, consts)


def test_clip_before_opset_11_takes_attributes():
    _check([_node("Clip", ["x"], min=-0.2, max=0.3)], X, opset=10)


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
@pytest.mark.parametrize("opset, axis", [(13, 1), (13, -1), (11, 1), (11, 3)])
def test_softmax_axis_semantics(op, opset, axis):
    # Before opset 13 the input is flattened to 2-D at ``axis``; from 13 it is one axis.
    _check([_node(op, ["x"], axis=axis)], X, opset=opset)


def test_normalizations():
    nodes = [_node("BatchNormalization", ["x", "g", "b", "m", "v"], "bn", epsilon=1e-3),
             _node("InstanceNormalization", ["bn", "g", "b"], "inn"),
             _node("LayerNormalization", ["inn", "lg", "lb"], "y", axis=-2)]
    _check(nodes, X, {"g": _x(4), "b": _x(4), "m": _x(4), "v": _x(4, positive=True), "lg": _x(9, 9), "lb": _x(9, 9)})


@pytest.mark.parametrize("op", ["MaxPool", "AveragePool"])
@pytest.mark.parametrize("attrs", [
    {"kernel_shape": [2, 2], "strides": [2, 2]},
    {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]},
    {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "count_include_pad": 1},
    {"kernel_shape": [2, 2], "strides": [2, 2], "ceil_mode": 1},
    {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "ceil_mode": 1},
    {"kernel_shape": [3, 2], "pads": [0, 1, 2, 0]},  # asymmetric
    {"kernel_shape": [3, 3], "auto_pad": "SAME_UPPER", "strides": [2, 2]},
])
def test_pooling(op, attrs):
    if op == "MaxPool":
        attrs = {k: v for k, v in attrs.items() if k != "count_include_pad"}
    _check([_node(op, ["x"], **attrs)], X)


def test_global_pools_flatten_and_reshape_semantics():
    nodes = [_node("GlobalAveragePool", ["x"], "a"), _node("GlobalMaxPool", ["x"], "m"),
             _node("Concat", ["a", "m"], "c", axis=1), _node("Flatten", ["c"], "f", axis=2),
             _node("Reshape", ["x", "shape"], "r"), _node("Flatten", ["r"], "y", axis=2)]
    _check(nodes, X, {"shape": _i64(0, -1, 9)}, outputs={"f": TensorProto.FLOAT, "y": TensorProto.FLOAT})


def test_static_shape_arithmetic_stays_numpy():
    # Shape -> Gather -> Mul/Div -> Unsqueeze -> Concat -> Reshape, as torch and tf2onnx export it.
    nodes = [_node("Shape", ["x"], "s"), _node("Gather", ["s", "zero"], "n", axis=0),
             _node("Gather", ["s", "rest"], "hw"), _node("ReduceProd", ["hw"], "p", keepdims=1),
             _node("Cast", ["p"], "pf", to=TensorProto.FLOAT), _node("Div", ["pf", "two"], "half"),
             _node("Cast", ["half"], "hi", to=TensorProto.INT64), _node("Unsqueeze", ["n", "ax0"], "n1"),
             _node("Concat", ["n1", "minus1", "hi"], "shape", axis=0), _node("Reshape", ["x", "shape"], "r"),
             _node("Shape", ["r"], "rs", start=1), _node("ConstantOfShape", ["rs"], "ones",
                                                           value=numpy_helper.from_array(_f32(1.0))),
             _node("Add", ["r", "ones"], "y")]
    model = _model(nodes, {"x": _x(1, 4, 6, 6)}, {"zero": np.array(0, np.int64), "rest": _i64(2, 3),
                                                  "two": _f32(2.0), "ax0": _i64(0), "minus1": _i64(-1)})
    module = OnnxModule(model).eval()
    env = module.execute(torch.zeros(1, 4, 6, 6))
    assert isinstance(env["shape"], np.ndarray) and env["shape"].tolist() == [1, -1, 18]
    assert isinstance(env["ones"], np.ndarray) and torch.is_tensor(env["y"])
    _check(nodes, {"x": _x(1, 4, 6, 6)}, {"zero": np.array(0, np.int64), "rest": _i64(2, 3),
                                          "two": _f32(2.0), "ax0": _i64(0), "minus1": _i64(-1)})
    exported = torch.export.export(module, (torch.zeros(1, 4, 6, 6),))
    targets = {str(n.target) for n in exported.graph.nodes if n.op == "call_function"}
    assert not any("sym_size" in t or "_shape" in t for t in targets), targets


def test_range_size_and_cast_like_from_shapes():
    nodes = [_node("Shape", ["x"], "s"), _node("Gather", ["s", "three"], "w"), _node("Size", ["x"], "n"),
             _node("Div", ["n", "n"], "one"), _node("Range", ["zero", "w", "one"], "r"),
             _node("CastLike", ["r", "x"], "rf"), _node("Add", ["x", "rf"], "y")]
    _check(nodes, X, {"three": np.array(3, np.int64), "zero": np.array(0, np.int64)})


def test_transpose_split_slice_and_concat():
    nodes = [_node("Transpose", ["x"], "t", perm=[0, 2, 3, 1]),
             _node("Split", ["t", "sizes"], ["a", "b"], axis=3),
             _node("Slice", ["a", "st", "en", "ax", "sp"], "s1"),
             _node("Slice", ["b", "st2", "en2", "ax2", "sp2"], "s2"),  # negative step
             _node("Concat", ["s1", "s2"], "y", axis=3)]
    _check(nodes, X, {"sizes": _i64(1, 3), "st": _i64(1, 0), "en": _i64(9, 100), "ax": _i64(1, 2),
                      "sp": _i64(2, 3), "st2": _i64(-1, 7), "en2": _i64(-7, 0), "ax2": _i64(2, 1),
                      "sp2": _i64(-2, -2)})


@pytest.mark.parametrize("opset", [11, 13, 18])
def test_split_and_squeeze_forms_across_opsets(opset):
    if opset == 11:
        nodes = [_node("Split", ["x"], ["a", "b"], axis=1, split=[1, 3]),
                 _node("Squeeze", ["a"], "s", axes=[1]), _node("Unsqueeze", ["s"], "y", axes=[-1])]
        consts = {}
    elif opset == 13:
        nodes = [_node("Split", ["x", "sizes"], ["a", "b"], axis=1),
                 _node("Squeeze", ["a", "ax"], "s"), _node("Unsqueeze", ["s", "ax2"], "y")]
        consts = {"sizes": _i64(1, 3), "ax": _i64(1), "ax2": _i64(-1, 0)}
    else:  # num_outputs: equal parts, the last one smaller
        nodes = [_node("Split", ["x"], ["a", "b", "c"], axis=2, num_outputs=3),
                 _node("Squeeze", ["a"], "s"), _node("Unsqueeze", ["s", "ax2"], "y")]
        consts = {"ax2": _i64(0)}
    _check(nodes, {"x": _x(1, 4, 8, 1)}, consts, opset=opset)


def test_gather_static_and_dynamic_indices():
    nodes = [_node("Gather", ["x", "i0"], "g0", axis=1), _node("Gather", ["g0", "iv"], "g1", axis=-1),
             _node("Gather", ["table", "ids"], "emb"), _node("ReduceSum", ["emb", "axes"], "es", keepdims=0),
             _node("GatherElements", ["g1", "gi"], "ge", axis=0), _node("Add", ["ge", "es"], "y")]
    _check(nodes, {"x": _x(2, 4, 9, 9), "ids": np.array([[1, -1]], dtype=np.int64)},
           {"i0": np.array(2, np.int64), "iv": np.array([[0, 8], [-1, 3]], dtype=np.int64),
            "table": _x(5, 2), "axes": _i64(0, 1, 2), "gi": np.zeros((1, 9, 2, 2), dtype=np.int64)})


def test_logic_cast_expand_tile_and_where():
    nodes = [_node("Greater", ["x", "zero"], "gt"), _node("Less", ["x", "lo"], "lt"),
             _node("Equal", ["xi", "xi"], "eq"), _node("Cast", ["eq", ], "eqf", to=TensorProto.FLOAT),
             _node("Where", ["gt", "x", "eqf"], "w1"), _node("Where", ["lt", "lo", "w1"], "w2"),
             _node("Expand", ["v", "shape"], "ex"), _node("Tile", ["w2", "reps"], "ti"),
             _node("Identity", ["ti"], "id"), _node("Dropout", ["id"], "dr"), _node("Add", ["dr", "ex"], "y")]
    _check(nodes, {"x": _x(1, 4, 3, 3), "xi": np.arange(36, dtype=np.int64).reshape(1, 4, 3, 3)},
           {"zero": _f32(0.0), "lo": np.array(-0.5, np.float32), "v": _x(4, 1, 1), "shape": _i64(2, 1, 3, 1),
            "reps": _i64(2, 1, 1, 1)})


@pytest.mark.parametrize("mode, attrs, opset", [
    ("constant", {}, 11), ("reflect", {}, 11), ("edge", {}, 11), ("constant", {"pads": [0, 0, 1, 2, 0, 0, 2, 1]}, 2),
])
def test_pad(mode, attrs, opset):
    if opset < 11:
        _check([_node("Pad", ["x"], mode=mode, value=0.5, **attrs)], X, opset=opset)
    else:
        _check([_node("Pad", ["x", "p", "v"], mode=mode)], X,
               {"p": _i64(0, 0, 1, 2, 0, 0, 2, 1), "v": np.array(0.5 if mode == "constant" else 0, np.float32)})


@pytest.mark.parametrize("mode", ["reflect", "edge", "wrap"])
@pytest.mark.parametrize("shape, pads", [
    ((1, 20, 1), (0, 3, 0, 0, 2, 0)),  # tf2onnx's MirrorPad of a (batch, time, 1) signal: axis 1
    ((2, 5, 6, 3), (0, 1, 2, 0, 0, 2, 1, 0)),  # channels-last image: the channel axis untouched, H and W
    ((1, 4, 9, 9), (0, 1, 0, 0, 0, 2, 0, 0)),  # the channel axis itself
])
def test_non_constant_pad_on_any_axis(mode, shape, pads):
    _check([_node("Pad", ["x", "p"], mode=mode)], {"x": _x(*shape)}, {"p": _i64(*pads)}, opset=19)


@pytest.mark.parametrize("attrs, scales, sizes", [
    ({"mode": "nearest", "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"},
     _f32(1, 1, 2, 2), None),
    ({"mode": "nearest"}, _f32(1, 1, 2, 3), None),  # half_pixel, round_prefer_floor
    ({"mode": "nearest"}, _f32(1, 1, 0.5, 0.5), None),  # ties, where torch's nearest-exact would differ
    ({"mode": "nearest", "coordinate_transformation_mode": "align_corners"}, None, _i64(1, 4, 13, 5)),
    ({"mode": "linear"}, _f32(1, 1, 2, 2), None),
    ({"mode": "linear", "coordinate_transformation_mode": "align_corners"}, _f32(1, 1, 2, 2), None),
    ({"mode": "linear", "coordinate_transformation_mode": "asymmetric"}, _f32(1, 1, 1.5, 2), None),
    ({"mode": "linear", "coordinate_transformation_mode": "pytorch_half_pixel"}, None, _i64(1, 4, 5, 14)),
])
def test_resize(attrs, scales, sizes):
    consts = {"roi": np.zeros(0, np.float32), "scales": scales if scales is not None else np.zeros(0, np.float32)}
    if sizes is not None:
        consts["sizes"] = sizes
    _check([_node("Resize", ["x", "roi", "scales", *(["sizes"] if sizes is not None else [])], **attrs)], X, consts)


@pytest.mark.parametrize("mode", ["nearest", "linear"])
def test_upsample_and_opset10_resize(mode):
    _check([_node("Upsample", ["x", "s"], mode=mode)], X, {"s": _f32(1, 1, 2, 3)}, opset=9)
    _check([_node("Resize", ["x", "s"], mode=mode)], X, {"s": _f32(1, 1, 2, 0.5)}, opset=10)


@pytest.mark.parametrize("opset", [13, 18])
def test_reductions_with_axes_as_attribute_or_input(opset):
    if opset < 18:
        nodes = [_node("ReduceMean", ["x"], "m", axes=[2, 3]), _node("ReduceMax", ["x"], "x1", axes=[-1], keepdims=0)]
    else:
        nodes = [_node("ReduceMean", ["x", "a23"], "m"), _node("ReduceMax", ["x", "am1"], "x1", keepdims=0)]
    nodes += [_node("ReduceSum", ["x1", "a1"], "s"), _node("ReduceSum", ["m"], "all", keepdims=0),
              _node("Add", ["s", "all"], "y")]
    _check(nodes, X, {"a23": _i64(2, 3), "am1": _i64(-1), "a1": _i64(1)}, opset=opset)


def test_argmax_and_topk():
    nodes = [_node("ArgMax", ["x"], "am", axis=1, keepdims=0), _node("TopK", ["x", "k"], ["v", "i"], axis=-1)]
    _check(nodes, X, {"k": _i64(3)},
           outputs={"am": TensorProto.INT64, "v": TensorProto.FLOAT, "i": TensorProto.INT64})


def test_weights_are_buffers_and_constant_nodes_are_folded(tmp_path):
    model = tiny_models.build_onnx("depthwise", weights_as_constants=True)
    module = OnnxModule(model)
    buffers = dict(module.named_buffers())
    assert any(tuple(b.shape) == (8, 3, 3, 3) for b in buffers.values())
    assert not [n for n, _ in module._steps if n.op_type == "Constant"]
    feed = tiny_models.random_feed("depthwise", 3)
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    expected = tiny_models.run_onnx(path, feed)[0]
    with torch.no_grad():
        got = module(torch.from_numpy(feed["image"])).numpy()
    assert np.abs(got - expected).max() < ATOL


def test_every_unsupported_op_is_named_at_once():
    nodes = [_node("Relu", ["x"], "r"), helper.make_node("FusedThing", ["r"], ["f"], name="custom_1", domain="acme"),
             _node("NonZero", ["r"], "nz"), helper.make_node("NonZero", ["f"], ["nz2"], name="second_nz")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("nz2", TensorProto.INT64, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("acme", 1)])
    with pytest.raises(ConversionError) as info:
        OnnxModule(model, origin="m.onnx")
    message = str(info.value)
    assert info.value.exit_code == 4
    assert "acme:FusedThing (node 'custom_1')" in message
    assert "NonZero (nodes 'nonzero_nz', 'second_nz')" in message and "Relu" not in message


def test_an_op_that_diverges_is_traced_to_its_node(onnx_model, monkeypatch):
    from edgeopt.frameworks import onnx as onnx_loader
    from edgeopt.frameworks import onnx_ops

    source = onnx_loader.load(onnx_model("residual"))
    ops = dict(onnx_ops.OPS)
    ops["Add"] = lambda c: c.tensor(0) - c.tensor(1)  # a wrong op, as a bug would be
    monkeypatch.setattr(onnx_torch, "OPS", ops)
    model = onnx_torch.to_torch_model(source)
    with pytest.raises(ConversionError, match=r"first diverging node is 'skip_add' \(Add"):
        onnx_torch.compare_with_onnxruntime(source, model, onnx_torch.check_feeds(source))


def test_torch_model_keeps_the_onnx_inputs(onnx_model):
    from edgeopt.frameworks import onnx as onnx_loader

    source = onnx_loader.load(onnx_model("two_input"))
    model = onnx_torch.to_torch_model(source)
    assert model.handle.inputs == source.handle.inputs
    assert model.handle.path == source.handle.path and model.handle.metadata["executed_by"] == "torch"
    feed = tiny_models.random_feed("two_input", 4, seed=3)
    assert np.abs(model.predict(feed)[0] - source.predict(feed)[0]).max() < ATOL


def test_free_spatial_sizes_are_refused(tmp_path):
    from edgeopt.frameworks import onnx as onnx_loader

    graph = helper.make_graph([_node("Relu", ["x"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, "h", "w"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3, "h", "w"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = tiny_models.IR_VERSION
    onnx.save(model, str(tmp_path / "free.onnx"))
    with pytest.raises(ConversionError, match="free size.*axis 2, 3"):
        onnx_torch.to_torch_model(onnx_loader.load(tmp_path / "free.onnx"))


def test_nodes_out_of_order_still_run():
    nodes = [_node("Relu", ["t"], "y"), _node("Neg", ["x"], "t")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])])
    module = OnnxModule(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    x = torch.tensor([[-1.0, 2.0, -3.0]])
    assert module(x).tolist() == [[1.0, 0.0, 3.0]]


@pytest.mark.parametrize("mode", ["DCR", "CRD"])
def test_depth_and_space_rearrangements(mode):
    nodes = [_node("DepthToSpace", ["x"], "d", blocksize=2, mode=mode), _node("SpaceToDepth", ["d"], "s", blocksize=3),
             _node("Einsum", ["s", "w"], "y", equation="nchw,ck->nkhw")]
    _check(nodes, {"x": _x(1, 8, 3, 6)}, {"w": _x(18, 5)})


def test_less_common_elementwise_ops_and_reductions():
    nodes = [_node("Constant", [], "k", value_floats=[0.5, -1.0, 2.0]), _node("Mul", ["x", "k"], "xk"),
             _node("Sign", ["xk"], "sg"), _node("Round", ["xk"], "rd"), _node("Mish", ["xk"], "mi"),
             _node("Softsign", ["xk"], "ss"), _node("Celu", ["xk"], "ce", alpha=0.7), _node("Sin", ["xk"], "si"),
             _node("Mean", ["sg", "rd", "mi", "ss", "ce", "si"], "mean"),
             _node("ReduceL2", ["mean", "a1"], "l2"), _node("ReduceMin", ["mean", "a1"], "mn"),
             _node("ReduceProd", ["mean", "a1"], "pr"), _node("ArgMin", ["mean"], "am", axis=1),
             _node("Cast", ["am"], "amf", to=TensorProto.FLOAT), _node("Sum", ["l2", "mn", "pr", "amf"], "y")]
    _check(nodes, {"x": _x(2, 3)}, {"a1": _i64(1)}, opset=18)


def test_gelu_opset_20_and_its_erf_form():
    _check([_node("Gelu", ["x"], approximate="tanh")], X, opset=20)
    nodes = [_node("Div", ["x", "sqrt2"], "d"), _node("Erf", ["d"], "e"), _node("Add", ["e", "one"], "a"),
             _node("Mul", ["x", "a"], "m"), _node("Mul", ["m", "half"], "y")]
    _check(nodes, X, {"sqrt2": _f32(np.sqrt(2)), "one": _f32(1.0), "half": _f32(0.5)})
