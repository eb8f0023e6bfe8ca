"""ONNX float artifacts from Keras (tf2onnx), PyTorch (torch.onnx, dynamo) or ONNX (cleaned).

Each source becomes a float ModelProto once per run, with stable node names; every precision is
made from that one file by ``edgeopt.passes.quantize.onnx``. The source's layout is kept whatever
``keep_layout`` says: ONNX runtimes take NCHW and NHWC alike.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import tempfile
from pathlib import Path
from typing import Any

from edgeopt.calibration import Subset
from edgeopt.deps import quiet_stderr, require
from edgeopt.errors import ConversionError
from edgeopt.exporters.base import FloatArtifact, conversion_failure
from edgeopt.frameworks.base import LoadedModel
from edgeopt.model import Format

OPSET = 17


def convert_keras(source: LoadedModel, out: Path, *, keep_layout: bool = False,
                  calib: Subset | None = None) -> FloatArtifact:
    return _written(keras_to_onnx(source), source, out, "keras->onnx")


def convert_torch(source: LoadedModel, out: Path, *, keep_layout: bool = False,
                  calib: Subset | None = None) -> FloatArtifact:
    return _written(torch_to_onnx(source), source, out, "torch->onnx")


def convert_onnx(source: LoadedModel, out: Path, *, keep_layout: bool = False,
                 calib: Subset | None = None) -> FloatArtifact:
    if getattr(source, "quantized", False):
        # Quantizing a quantized graph again stacks errors; every precision is the model as it
        # is, with any external weights folded in so the artifact is one file.
        written = _written(source.native, source, out, "onnx->onnx")
        written.precision = "source-quantized"
        written.notes.append(f"'{source.handle.path.name}' is already quantized: copied unchanged, not quantized "
                             "again.")
        return written
    return _written(_cleaned(source), source, out, "onnx->onnx")


def _written(proto: Any, source: LoadedModel, out: Path, key: str) -> FloatArtifact:
    save(require("onnx", "Writing ONNX models"), proto, out, source)
    return FloatArtifact(key, source, out)


def keras_to_onnx(source: LoadedModel) -> Any:
    """The float ONNX graph of a Keras model or SavedModel, traced at batch 1 with its input names."""
    tf = require("tensorflow", "Converting Keras models to ONNX")
    tf2onnx = require("tf2onnx", "Converting Keras models to ONNX")
    specs = [tf.TensorSpec((1, *t.shape[1:]), tf.as_dtype(t.dtype), name=t.name) for t in source.handle.inputs]
    names = source.handle.input_names
    if source.handle.format is Format.SAVED_MODEL:
        signature = source.native.signatures["serving_default"]
        keys = sorted(signature.structured_outputs)

        def call(*args: Any) -> Any:
            result = signature(**dict(zip(names, args)))
            return [result[k] for k in keys]
    else:
        model = source.native

        def call(*args: Any) -> Any:
            return model(list(args) if len(args) > 1 else args[0], training=False)

    # tf2onnx.convert.from_keras fails on Keras 3 models; a tf.function around the call works.
    function = tf.function(call, input_signature=specs)
    try:
        with contextlib.redirect_stdout(io.StringIO()), quiet_stderr():
            proto, _ = tf2onnx.convert.from_function(function, input_signature=specs, opset=OPSET)
    except Exception as exc:
        raise conversion_failure("tf2onnx", source.handle.path, exc) from exc
    return canonical_names(_captures_as_weights(proto, function.get_concrete_function()))


def _captures_as_weights(proto: Any, concrete: Any) -> Any:
    """The graph with the traced function's captured constants as initializers.

    tf2onnx freezes captured variables but turns a captured constant tensor into a graph input:
    a loaded SavedModel's signature captures its non-trainable tensors that way (basic-pitch's CQT
    kernels became inputs '5576:0', '5578:0', ...), and the model then cannot run on its own input.
    """
    onnx = require("onnx", "Converting Keras models to ONNX")
    values = {}
    for placeholder, value in zip(concrete.graph.internal_captures, concrete.captured_inputs):
        if value.dtype.name != "resource":
            values[placeholder.name] = value.numpy()
    frozen = [v for v in proto.graph.input if v.name in values]
    if not frozen:
        return proto
    kept = [v for v in proto.graph.input if v.name not in values]
    del proto.graph.input[:]
    proto.graph.input.extend(kept)
    proto.graph.initializer.extend(onnx.numpy_helper.from_array(values[v.name], v.name) for v in frozen)
    return proto


# tf2onnx numbers the nodes and tensors it creates from a process-wide counter ('Conv__24',
# 'const_fold_opt__35'), and its optimizer walks sets: the numbers change with every conversion in a
# process and with PYTHONHASHSEED, while the graph does not.
_GENERATED = re.compile(r"^(?P<stem>.*?)__\d+(?P<port>:\d+)?$")


def canonical_names(proto: Any) -> Any:
    """The same graph with generated node and tensor names renumbered by position, and initializers
    in order of first use, so one model converts to the same bytes every time. Names taken from
    the source (layer scopes) are kept: overrides and reports use them."""
    graph = proto.graph
    # "converted from b'__inference_call_325'": the traced function's number, counted the same way.
    graph.doc_string = re.sub(r"(__inference_\w+?)_\d+'", r"\1'", graph.doc_string)
    fixed = {v.name for v in (*graph.input, *graph.output)}
    nodes: dict[str, str] = {}
    for i, node in enumerate(graph.node):
        match = _GENERATED.match(node.name)
        if match and not match["port"]:
            nodes[node.name] = f"{match['stem']}__{i}"
            node.name = nodes[node.name]
    order: dict[str, int] = {}
    for node in graph.node:
        for name in (*node.input, *node.output):
            order.setdefault(name, len(order))
    renamed: dict[str, str] = {}
    for name in sorted(order, key=order.get):
        match = _GENERATED.match(name)
        if not match or name in fixed:
            continue
        owner = name[:-len(match["port"])] if match["port"] else None
        renamed[name] = f"{nodes[owner]}{match['port']}" if owner in nodes else \
            f"{match['stem']}__t{order[name]}{match['port'] or ''}"
    for node in graph.node:
        node.input[:] = [renamed.get(n, n) for n in node.input]
        node.output[:] = [renamed.get(n, n) for n in node.output]
    for tensor in (*graph.initializer, *graph.value_info):
        tensor.name = renamed.get(tensor.name, tensor.name)
    back = {new: old for old, new in renamed.items()}
    ordered = sorted(graph.initializer, key=lambda t: (order.get(back.get(t.name, t.name), len(order)), t.name))
    copies = [type(t)() for t in ordered]
    for copy, tensor in zip(copies, ordered):
        copy.CopyFrom(tensor)
    del graph.initializer[:]
    graph.initializer.extend(copies)
    return proto


def torch_to_onnx(source: LoadedModel) -> Any:
    """The float ONNX graph of a PyTorch source, traced at batch 1 with the source's input names."""
    torch = require("torch", "Converting PyTorch models to ONNX")
    require("onnxscript", "Converting PyTorch models to ONNX")
    module = source.native
    # torch.export cannot trace TorchScript; the older TorchScript-based exporter can.
    dynamo = not isinstance(module, torch.jit.ScriptModule)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    buffer = None if dynamo else io.BytesIO()
    try:
        with contextlib.redirect_stdout(io.StringIO()), quiet_stderr():
            program = torch.onnx.export(module, source.example_inputs(), buffer, dynamo=dynamo, verbose=False,
                                        input_names=source.handle.input_names,
                                        output_names=[t.name for t in source.handle.outputs], opset_version=18)
    except Exception as exc:
        raise conversion_failure("torch.onnx.export", source.handle.path, exc) from exc
    if buffer is not None:
        return require("onnx", "Converting PyTorch models to ONNX").load_from_string(buffer.getvalue())
    return program.model_proto


def _cleaned(source: LoadedModel) -> Any:
    """The source with constants folded and no-op nodes removed, in standard ONNX ops only."""
    ort = require("onnxruntime", "Optimizing ONNX models")
    onnx = require("onnx", "Optimizing ONNX models")
    with tempfile.TemporaryDirectory(prefix=".edgeopt-onnx-") as tmp:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        # The basic level keeps to standard ops, so any ONNX runtime can still run the result.
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = str(Path(tmp) / "clean.onnx")
        try:
            ort.InferenceSession(str(getattr(source, "graph_file", source.handle.path)), options,
                                 providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise conversion_failure("ONNX Runtime", source.handle.path, exc) from exc
        model = onnx.load(str(Path(tmp) / "clean.onnx"))
    initializers = {t.name for t in model.graph.initializer}
    # Old exporters listed weights as graph inputs; runtimes then treat them as overridable.
    kept = [v for v in model.graph.input if v.name not in initializers]
    del model.graph.input[:]
    model.graph.input.extend(kept)
    return model


def save(onnx: Any, proto: Any, path: Path, source: LoadedModel) -> None:
    try:
        onnx.save(proto, str(path))
    except ValueError as exc:  # protobuf's 2 GB limit
        raise ConversionError(f"The ONNX model of '{source.handle.path}' is over 2 GB, which a single .onnx file "
                              "cannot hold; edgeopt does not write external-data ONNX yet.") from exc


