"""PyTorch -> TFLite float artifacts: litert-torch writes the float model.

litert-torch keeps the module's own layout, so NCHW image inputs (and 4-D image outputs) are moved
channels-last first with ``litert_torch.to_channel_last_io``: TFLite kernels and delegates are
built for NHWC, and a model that takes NCHW runs transposes inside. ``keep_layout`` keeps NCHW.

ai-edge-quantizer then makes every precision from the float flatbuffer
(``edgeopt.passes.quantize.tflite_aeq``).

ONNX sources and TorchScript come here too (``tflite_onnx``): an ONNX graph is first run as a
PyTorch module.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeopt.calibration import Subset
from edgeopt.deps import quiet_stderr, require
from edgeopt.exporters.base import FloatArtifact, conversion_failure
from edgeopt.frameworks.base import LoadedModel, guess_layout
from edgeopt.model import NCHW_TO_NHWC, Axes


def convert_module(source: LoadedModel, out: Path, *, keep_layout: bool = False,
                   calib: Subset | None = None) -> FloatArtifact:
    """The float flatbuffer of a PyTorch module (not TorchScript: ``tflite_onnx.convert_torch``)."""
    litert_torch = require("litert_torch", "Converting PyTorch models to TFLite")
    moved_inputs, moved_outputs = ([], []) if keep_layout else _channels_first(source)
    with tempfile.TemporaryDirectory(prefix=".edgeopt-tflite-", dir=out.parent) as tmp:
        raw = Path(tmp) / "float.tflite"
        try:
            with quiet():
                module, example = source.native, source.example_inputs()
                if moved_inputs or moved_outputs:
                    # The wrapper is a new module, in training mode unless told otherwise.
                    module = litert_torch.to_channel_last_io(module, args=moved_inputs, outputs=moved_outputs).eval()
                    example = tuple(x.permute(*NCHW_TO_NHWC).contiguous() if i in moved_inputs else x
                                    for i, x in enumerate(example))
                edge = litert_torch.convert(module, example)
                edge.export(str(raw))
        except Exception as exc:
            raise conversion_failure("litert_torch.convert", source.handle.path, exc) from exc
        flat_biases(raw)
        compact_tensor_names(raw)
        flatbuffer = raw.read_bytes()
    out.write_bytes(flatbuffer)
    moved = {source.handle.inputs[i].name: NCHW_TO_NHWC for i in moved_inputs}
    return FloatArtifact("torch->tflite", source, out, native=LiteRTFloat(flatbuffer, moved))


@dataclass(frozen=True)
class LiteRTFloat:
    """What ai-edge-quantizer reads from a litert-torch float artifact."""

    # As litert-torch wrote it, tensor names compacted: every int8 artifact keeps these names, which
    # are the layer names --keep-float and the budget search give ai-edge-quantizer's recipe.
    flatbuffer: bytes
    moved: dict[str, Axes]  # source inputs moved channels-last, with their permutation


def compact_tensor_names(path: Path) -> None:
    """Shorten the tensor names litert-torch writes, in place.

    It names each tensor by the full scope of every op fused into it: qualified class names, the
    layout wrapper, the import name of the user's file, joined with ';'. On a MobileNetV2 that is
    up to 1.4 KB per tensor and 4% of the int8 file. Each name becomes its first scope with bare
    class names ("MobileNetV2_wrapped/Sequential_features/InvertedResidual_17/.../ReLU6_2"), which
    still says where the tensor comes from. Names stay unique ("..._2" where two would meet), since
    ai-edge-quantizer keys ranges by tensor name and its recipe picks ops by them. Input and output
    names, which callers use, stay.
    """
    flatbuffers = require("ai_edge_litert.tools.flatbuffer_utils", "Writing TFLite models")
    model = flatbuffers.read_model(str(path))
    for graph in model.subgraphs:
        ends = {*graph.inputs, *graph.outputs}
        taken = {graph.tensors[i].name.decode("utf-8", "replace") for i in ends}
        for index, tensor in enumerate(graph.tensors):
            if index not in ends and tensor.name:
                name = base = _compact_name(tensor.name.decode("utf-8", "replace"))
                count = 1
                while name in taken:
                    count += 1
                    name = f"{base}_{count}"
                taken.add(name)
                tensor.name = name.encode()
    flatbuffers.write_model(model, str(path))


# (op, index of its bias input) for the ops whose bias is one value per output channel.
_BIASED = {"CONV_2D": 2, "DEPTHWISE_CONV_2D": 2, "FULLY_CONNECTED": 2, "TRANSPOSE_CONV": 3}


def flat_biases(path: Path) -> None:
    """Give every bias the 1-D shape [C] the TFLite kernels define, in place.

    litert-torch writes a transposed convolution's bias as [1, 1, 1, C] (a broadcast add folded
    into the op); ai-edge-quantizer then gives it one scale per channel along axis 0, of size 1,
    and LiteRT refuses the int8 model ("num_scales must be 1 ... got C"). The values are the same.
    """
    flatbuffers = require("ai_edge_litert.tools.flatbuffer_utils", "Writing TFLite models")
    schema = flatbuffers.schema_fb
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    model = flatbuffers.read_model(str(path))
    changed = False
    for graph in model.subgraphs:
        for op in graph.operators:
            code = model.operatorCodes[op.opcodeIndex]
            slot = _BIASED.get(names.get(max(code.builtinCode, code.deprecatedBuiltinCode)))
            if slot is None or len(op.inputs) <= slot or op.inputs[slot] < 0:
                continue
            tensor = graph.tensors[op.inputs[slot]]
            shape = list(tensor.shape)
            if len(shape) > 1 and all(d == 1 for d in shape[:-1]):
                tensor.shape = np.array(shape[-1:], dtype=np.int32)
                changed = True
    if changed:
        flatbuffers.write_model(model, str(path))


def _compact_name(name: str) -> str:
    scope = next((part for part in name.split(";") if part), name)
    segments = [segment.rsplit(".", 1)[-1] for segment in scope.split("/")
                if not segment.endswith("ChannelLastIOWrapper")]
    return "/".join(segments) or scope


def _channels_first(source: LoadedModel) -> tuple[list[int], list[int]]:
    """Positions of the NCHW image inputs and of the 4-D NCHW outputs, which become NHWC.

    Other inputs (vectors, token ids) and inputs already channels-last stay as they are. Outputs
    move only when forward() returns a tensor or a flat tuple of them, the structure
    ``to_channel_last_io`` indexes.
    """
    inputs = [i for i, t in enumerate(source.handle.inputs) if t.layout == "nchw"]
    outputs = [i for i, t in enumerate(source.handle.outputs) if guess_layout(t.shape, "nchw") == "nchw"]
    if outputs and not _flat_outputs(source):
        outputs = []
    return inputs, outputs


def _flat_outputs(source: LoadedModel) -> bool:
    torch = require("torch", "Converting PyTorch models to TFLite")
    with torch.no_grad():
        raw = source.native(*source.example_inputs())
    return torch.is_tensor(raw) or (isinstance(raw, (list, tuple)) and all(torch.is_tensor(t) for t in raw))


@contextlib.contextmanager
def quiet():
    # Both tools print progress and size tables on stdout, C++ logs on stderr, and the quantizer
    # warns about its own calibration settings.
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), quiet_stderr(), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
