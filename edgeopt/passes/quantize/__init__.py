"""The quantize stage: an artifact at a precision, made from a target's float artifact.

Each export path has a quantize pass (its registry record's ``quantize``) taking the float
artifact its converter made once, calibration data and a ``QuantConfig``; fp32 is the float
artifact itself. A budget-search try is one more call here, never a conversion.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from edgeopt.calibration import Subset
from edgeopt.exporters.base import ExportResult, FloatArtifact
from edgeopt.frameworks.base import LoadedModel
from edgeopt.passes.quantize.config import DEFAULT_QUANT, QuantConfig


def quantize(artifact: FloatArtifact, out: Path, *, precision: str, calib: Subset | None = None,
             int8_io: bool = False, quant: QuantConfig = DEFAULT_QUANT) -> ExportResult:
    """``artifact`` at ``precision``, written to ``out``. Without calibration data int8 is the
    backend's dynamic-range (weights-only) form."""
    from edgeopt import registry

    if precision == "fp32" or artifact.precision != "fp32":
        return artifact.copy_to(out)
    record = registry.export_path(artifact.key)
    result = registry.load(record.quantize)(artifact, out, precision=precision, calib=calib, int8_io=int8_io,
                                            quant=quant)
    result.notes[:0] = artifact.notes  # what the conversion said holds for every artifact made from it
    return result


def convert(key: str, model: LoadedModel, out: Path, *, keep_layout: bool = False,
            calib: Subset | None = None) -> FloatArtifact:
    """The float artifact of ``model`` on path ``key`` ("keras->onnx"), written to ``out``; ``calib``
    rows, where given, are what a converter checks its conversion on."""
    from edgeopt import registry

    return registry.resolve("converter", key)(model, out, keep_layout=keep_layout, calib=calib)


def export(key: str, model: LoadedModel, out: Path, *, precision: str, calib: Subset | None = None,
           int8_io: bool = False, keep_layout: bool = False, quant: QuantConfig = DEFAULT_QUANT) -> ExportResult:
    """Convert, then quantize, for a caller with one artifact to make: the float artifact goes to a
    temporary folder beside ``out`` and is gone afterwards."""
    with tempfile.TemporaryDirectory(prefix=".edgeopt-float-", dir=out.parent) as tmp:
        floating = convert(key, model, Path(tmp) / f"float{out.suffix}", keep_layout=keep_layout, calib=calib)
        return quantize(floating, out, precision=precision, calib=calib, int8_io=int8_io, quant=quant)
