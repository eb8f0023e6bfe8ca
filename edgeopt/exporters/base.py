"""What every exporter returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class ExportResult:
    path: Path
    precision: str  # fp32 | fp16 | int8 | int8-dynamic
    notes: list[str] = field(default_factory=list)
    float_fallback: bool = False  # some ops stayed in float in an int8 artifact
    # Files that belong with ``path`` and must travel with it (an OpenVINO .bin beside its .xml).
    extra_files: list[Path] = field(default_factory=list)
