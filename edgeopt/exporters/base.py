"""What every exporter takes beyond the model (``QuantSettings``) and what it returns."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from edgeopt.errors import ConversionError, UsageError

CALIBRATION_METHODS = ("auto", "minmax", "percentile", "entropy", "mse")  # auto: each backend's own default
DEFAULT_PERCENTILE = 99.999  # onnxruntime's own default for its Percentile calibrator


@dataclass(frozen=True)
class QuantSettings:
    """How an int8 artifact is calibrated, and which layers stay in float.

    Every exporter takes this one object (``quant=``); the pipeline refuses a method a backend
    cannot do before any work starts, so an exporter never substitutes another one.
    ``keep_float`` holds layer/node names exactly as the backend's own exclusion mechanism names
    them (ONNX node names, TFLite op output tensor names, OpenVINO friendly names).
    """

    method: str = "auto"
    percentile: float = DEFAULT_PERCENTILE
    per_channel: bool = True
    keep_float: tuple[str, ...] = ()

    def describe(self) -> str:
        method = {"percentile": f"percentile {self.percentile:g}", "auto": "the backend's default"}.get(self.method,
                                                                                                    self.method)
        return f"{method}, {'per-channel' if self.per_channel else 'per-tensor'} weights"


DEFAULT_QUANT = QuantSettings()


def check_quant(exporter_key: str, quant: QuantSettings, *, keep_float: bool = False) -> str:
    """The mechanism that does ``quant.method`` on this path, or a UsageError naming target and
    method; with ``keep_float``, also the refusal of a path that cannot keep layers in float."""
    from edgeopt.registry import export_path

    target = exporter_key.split("->")[-1]
    path = export_path(exporter_key)
    methods = path.calibration if path else {}
    if quant.method not in methods:
        raise UsageError(
            f"The {target} target ({exporter_key}) cannot calibrate with method '{quant.method}'; "
            f"its quantizer offers: {', '.join(methods) or 'none'}.",
            hint=f"Pick one of those for --calib-method (or calibration.method in the recipe), or drop "
                 f"'{target}' from the targets. edgeopt never swaps in another method silently.")
    if keep_float and (path is None or path.keep_float is None):
        raise UsageError(
            f"The {target} target ({exporter_key}) cannot keep chosen layers in float, which per-layer "
            "overrides and --max-accuracy-drop/--max-fidelity-drop need.",
            hint="Drop the overrides and accuracy/fidelity budgets for this target, or export to onnx/openvino "
                 "(or tflite from a Keras model).")
    return methods[quant.method]


@dataclass(frozen=True)
class Layer:
    """One quantizable layer of an artifact, named as the backend's exclusion mechanism names it."""

    name: str  # what goes into QuantSettings.keep_float
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
