"""ONNX and TorchScript -> TFLite: the ONNX graph becomes a PyTorch module, which the PyTorch
exporter converts; TorchScript becomes ONNX first.

``frameworks.onnx_torch`` runs the graph with torch ops; that module is checked against ONNX
Runtime on zeros, seeded noise and a few calibration rows before litert-torch sees it, so a wrong
op fails here, naming its node, rather than as a quietly worse artifact. Everything after that
(NHWC inputs unless ``keep_layout``; every precision by ``passes.quantize.tflite_aeq``) is the
PyTorch path unchanged.
"""

from __future__ import annotations

import sys
from pathlib import Path

from edgeopt.calibration import Subset
from edgeopt.errors import ConversionError
from edgeopt.exporters.base import FloatArtifact
from edgeopt.exporters.tflite_torch import convert_module
from edgeopt.frameworks.base import LoadedModel


def convert_torch(source: LoadedModel, out: Path, *, keep_layout: bool = False,
                  calib: Subset | None = None) -> FloatArtifact:
    """A PyTorch module goes to litert-torch as it is; TorchScript goes through ONNX."""
    if _is_torchscript(source):
        return _torchscript_via_onnx(source, out, keep_layout=keep_layout, calib=calib)
    return convert_module(source, out, keep_layout=keep_layout, calib=calib)


def convert_onnx(source: LoadedModel, out: Path, *, keep_layout: bool = False,
                 calib: Subset | None = None) -> FloatArtifact:
    from edgeopt.frameworks import onnx_torch

    if getattr(source, "quantized", False):
        raise ConversionError(f"'{source.handle.path}' is already quantized (QuantizeLinear/QLinear* nodes); "
                              "TFLite conversion needs its float model.",
                              hint="Pass the float ONNX model; edgeopt quantizes it for TFLite itself.")
    model = onnx_torch.to_torch_model(source)
    feeds = onnx_torch.check_feeds(source, calib)
    error = onnx_torch.compare_with_onnxruntime(source, model, feeds)
    converted = convert_module(model, out, keep_layout=keep_layout)
    converted.key = "onnx->tflite"
    converted.notes.insert(0, f"ONNX -> TFLite: '{source.handle.path.name}' ({model.handle.metadata['nodes']} nodes) "
                              f"was run as a PyTorch module and converted with litert-torch; before conversion it "
                              f"matched ONNX Runtime within {error:.1e} (max abs) on {len(feeds)} inputs.")
    return converted


def _is_torchscript(source: LoadedModel) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(source.native, torch.jit.ScriptModule)


def _torchscript_via_onnx(source: LoadedModel, out: Path, *, keep_layout: bool,
                          calib: Subset | None) -> FloatArtifact:
    """litert-torch traces with torch.export, which cannot read a ScriptModule; torch.onnx's
    TorchScript exporter can. The ONNX graph then takes the ONNX -> TFLite route, checked against
    ONNX Runtime before conversion as every ONNX source is."""
    from edgeopt.exporters.onnx import torch_to_onnx
    from edgeopt.frameworks.onnx import OnnxModel

    onnx_form = OnnxModel(source.handle.path, torch_to_onnx(source), [], quantized=False, pinned=True)
    result = convert_onnx(onnx_form, out, keep_layout=keep_layout, calib=calib)
    result.key = "torch->tflite"
    result.notes.insert(0, f"TorchScript -> TFLite: '{source.handle.path.name}' went through ONNX (torch.onnx's "
                           "TorchScript exporter), since litert-torch cannot export a ScriptModule.")
    return result
