"""ONNX -> TFLite: the ONNX graph becomes a PyTorch module, which the PyTorch exporter converts.

``frameworks.onnx_torch`` runs the graph with torch ops; that module is checked against ONNX
Runtime on zeros, seeded noise and a few calibration rows before litert-torch sees it, so a wrong
op fails here, naming its node, rather than as a quietly worse artifact. Everything after that
(NHWC inputs unless ``keep_layout``, fp16, dynamic and full-integer int8, int8 I/O) is
``tflite_torch.export_torch`` unchanged.
"""

from __future__ import annotations

import weakref
from pathlib import Path
from typing import Any

from edgeopt.calibration import Subset
from edgeopt.errors import ConversionError
from edgeopt.exporters.base import DEFAULT_QUANT, ExportResult, QuantSettings
from edgeopt.frameworks.base import LoadedModel

# The pipeline exports the same source more than once (fp32 baseline, then the artifact); the
# module is built once per source.
_MODULES: weakref.WeakKeyDictionary[LoadedModel, Any] = weakref.WeakKeyDictionary()


def export_onnx(source: LoadedModel, out: Path, *, precision: str, calib: Subset | None = None,
                int8_io: bool = False, keep_layout: bool = False, quant: QuantSettings = DEFAULT_QUANT) -> ExportResult:
    from edgeopt.exporters.tflite_torch import export_torch
    from edgeopt.frameworks import onnx_torch

    if getattr(source, "quantized", False):
        raise ConversionError(f"'{source.handle.path}' is already quantized (QuantizeLinear/QLinear* nodes); "
                              "TFLite conversion needs its float model.",
                              hint="Pass the float ONNX model; edgeopt quantizes it for TFLite itself.")
    model = _MODULES.get(source)
    if model is None:
        model = onnx_torch.to_torch_model(source)
        _MODULES[source] = model
    feeds = onnx_torch.check_feeds(source, calib)
    error = onnx_torch.compare_with_onnxruntime(source, model, feeds)
    result = export_torch(model, out, precision=precision, calib=calib, int8_io=int8_io, keep_layout=keep_layout,
                          quant=quant)
    note = (f"ONNX -> TFLite: '{source.handle.path.name}' ({model.handle.metadata['nodes']} nodes) was run as a "
            f"PyTorch module and converted with litert-torch; before conversion it matched ONNX Runtime within "
            f"{error:.1e} (max abs) on {len(feeds)} inputs.")
    result.notes.insert(0, note)
    return result
