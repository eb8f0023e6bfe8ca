"""What every exporter returns."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from edgeopt.errors import ConversionError


@dataclass
class ExportResult:
    path: Path
    precision: str  # fp32 | fp16 | int8 | int8-dynamic
    notes: list[str] = field(default_factory=list)
    float_fallback: bool = False  # some ops stayed in float in an int8 artifact
    # Files that belong with ``path`` and must travel with it (an OpenVINO .bin beside its .xml).
    extra_files: list[Path] = field(default_factory=list)


def conversion_failure(tool: str, model: Path, exc: Exception) -> ConversionError:
    """A converter's exception as a ConversionError naming the tool, the model and the first telling line."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))  # some converters colour their messages
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    # torch.onnx puts the cause under an "Exception summary" heading, after generic advice.
    summary_at = next((i for i, line in enumerate(lines) if "Exception summary" in line), None)
    if summary_at is not None and summary_at + 1 < len(lines):
        lines = lines[summary_at + 1:]
    detail = next((line for line in lines if "not supported" in line.lower() or "unsupported" in line.lower()), None)
    summary = detail or (lines[0] if lines else type(exc).__name__)
    return ConversionError(f"{tool} failed on '{model}': {summary[:500]}",
                           hint="Run with --debug for the converter's full log.")
