"""The convert stage's types: the float artifact a converter makes once per target and run, the
artifacts made from it, and the layers they name."""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from edgeopt.errors import ConversionError
from edgeopt.frameworks.base import LoadedModel


@dataclass(frozen=True)
class Layer:
    """One quantizable layer of an artifact, named as the backend's exclusion mechanism names it."""

    name: str  # what goes into QuantConfig.keep_float (edgeopt.passes.quantize.config)
    op: str  # op type in the backend (Conv, CONV_2D, Convolution, ...)
    label: str = ""  # the source layers it came from, for people; ``name`` when empty

    @property
    def title(self) -> str:
        return self.label or self.name


def source_layer_names(source) -> list[str]:
    """The source's own layer names where its framework keeps them (Keras), in model order."""
    layers = getattr(getattr(source, "native", None), "layers", None) or []
    return [getattr(layer, "name", "") for layer in layers if getattr(layer, "name", "")]


def layer_label(texts: list[str], names: list[str]) -> str:
    """The source layers a converted op came from ("stem_conv+stem_bn+stem_relu"), read from the
    op's own, its tensors' or its producers' names: converters keep the layer's scope in them as
    ``<layer>`` or ``<layer>_<n>`` path segments, joining fused ops' names with ';'."""
    segments = {seg for text in texts for part in text.split(";") for seg in re.split(r"[/:]", part)}
    found = {name for name in names if any(re.fullmatch(rf"{re.escape(name)}(_\d+)?", seg) for seg in segments)}
    return "+".join(name for name in names if name in found)


@dataclass
class ExportResult:
    path: Path
    precision: str  # fp32 | fp16 | int8 | int8-dynamic
    notes: list[str] = field(default_factory=list)
    float_fallback: bool = False  # some ops stayed in float in an int8 artifact
    # Files that belong with ``path`` and must travel with it (an OpenVINO .bin beside its .xml).
    extra_files: list[Path] = field(default_factory=list)


@dataclass
class FloatArtifact:
    """One target's float model, converted once per run: the fp32 artifact on disk, and what the
    path's quantize pass reads from it.

    Every artifact of a run at every precision (the plain int8 one, each try of the budget search,
    the listing of ``--list-layers``) is quantized from this one conversion, so layer names are
    fixed here: a name taken from one int8 artifact resolves to the same node in the next.
    """

    key: str  # "<source framework>-><target>", the registry's ExportPath
    model: LoadedModel  # what was converted: the source, or the model after pruning/distillation
    path: Path  # the fp32 artifact
    extra_files: list[Path] = field(default_factory=list)  # an OpenVINO .bin beside its .xml
    notes: list[str] = field(default_factory=list)
    # "source-quantized": the source was int8 already, and every precision is this file as it is.
    precision: str = "fp32"
    # What the quantize pass needs besides the file (the un-renamed float flatbuffer, moved inputs).
    native: Any = None
    # What a quantize pass computed once for this artifact and reuses: activation ranges per
    # calibration set, the graph prepared for quantization.
    memo: dict[Any, Any] = field(default_factory=dict, repr=False)

    @property
    def files(self) -> list[Path]:
        return [self.path, *self.extra_files]

    def result(self) -> ExportResult:
        """The fp32 artifact where it lies."""
        return ExportResult(self.path, self.precision, list(self.notes), extra_files=list(self.extra_files))

    def copy_to(self, out: Path) -> ExportResult:
        """The fp32 artifact as a file of its own at ``out`` (same suffixes)."""
        return relocated(self.result(), out, shutil.copyfile)

    def remove(self) -> None:
        for file in self.files:
            file.unlink(missing_ok=True)


def relocated(exported: ExportResult, to: Path, transfer: Callable[[Path, Path], object] = shutil.move
              ) -> ExportResult:
    """An artifact and the files that travel with it, moved (or copied: ``transfer``) to ``to``
    with their own suffixes; notes that named the file name it there."""
    target = to.with_suffix(exported.path.suffix)
    transfer(exported.path, target)
    extras = []
    for extra in exported.extra_files:
        extras.append(target.with_suffix(extra.suffix))
        transfer(extra, extras[-1])
    notes = [note.replace(exported.path.name, target.name) for note in exported.notes]
    return replace(exported, path=target, extra_files=extras, notes=notes)


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
    # OpenVINO's frontend ends with the ops it could not convert ("-- Conversion is failed for:
    # Conv-15, ReduceMean-15"): the names the user can act on.
    failed = next((line.lstrip("- ") for line in lines if line.lstrip("- ").startswith("Conversion is failed for")), None)
    if failed and failed not in summary:
        summary = f"{summary} ({failed})"
    return ConversionError(f"{tool} failed on '{model}': {summary[:500]}",
                           hint="Run with --debug for the converter's full log.")
