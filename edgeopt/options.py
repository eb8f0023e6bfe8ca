"""The options of a compress run, declared once: each names its recipe key path, its CLI flag and
its help. Its type, bounds and default are those of the :class:`~edgeopt.recipe.CompressConfig`
field at that key. From these declarations come the ``edgeopt compress`` flags (edgeopt.cli) and
the keyword arguments of :func:`edgeopt.compress` (edgeopt.api), and both turn the values given
into the recipe's nested mapping with :func:`to_recipe`.

A bool field whose default is true gets a flag that turns it off (``--no-validate`` sets
``validation.enabled``, ``--per-tensor`` ``calibration.per_channel``); the API keyword is the
field's own sense (``validate=False``, ``per_channel=False``).
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from edgeopt.errors import UsageError
from edgeopt.recipe import CompressConfig


def floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"expected comma-separated numbers, got '{text}'") from None


def image_size(text: str) -> tuple[int, int]:
    parts = text.lower().replace("x", ",").split(",")
    try:
        dims = tuple(int(p) for p in parts)
    except ValueError:
        dims = ()
    if len(dims) == 1:
        dims = dims * 2
    if len(dims) != 2 or min(dims) < 1:
        raise ValueError(f"expected HEIGHT,WIDTH (or one number for square images), got '{text}'")
    return dims


def prune_spec(text: str) -> dict[str, Any]:
    method, _, ratio = text.partition(":")
    try:
        return {"method": method, "ratio": float(ratio)}
    except ValueError:
        raise ValueError(f"expected METHOD:RATIO such as channels:0.5, got '{text}'") from None


def input_shapes(texts: tuple[str, ...]) -> dict[str, tuple[int, ...]]:
    """NAME=1,3,224,224, NAME:1,3,224,224 or NAME:1x3x224x224 per input; a bare shape names the only input."""
    shapes: dict[str, tuple[int, ...]] = {}
    for value in texts:
        # The shape is what follows the last '=' (or, without one, the last ':'): names may hold ':'.
        sep = "=" if "=" in value else ":" if ":" in value else None
        name, _, dims = value.rpartition(sep) if sep else ("", "", value)
        try:
            shape = tuple(int(d) for d in dims.lower().replace("x", ",").split(","))
        except ValueError:
            raise ValueError(f"expected NAME=D0,D1,... such as image=1,3,224,224 (or image:1x3x224x224), "
                             f"got '{value}'") from None
        if name in shapes or (not name and texts[1:]):
            raise ValueError(f"'{value}': give each input once, as NAME=shape, when there are several")
        shapes[name or "input"] = shape
    return shapes


def keep_float(patterns: tuple[str, ...]) -> dict[str, str]:
    return {pattern: "float" for pattern in patterns}


@dataclass(frozen=True)
class Option:
    key: str  # where the value goes in a recipe, dotted: "calibration.samples"
    flag: str | None  # the CLI's spelling; None: a keyword of the Python API only
    help: str = ""
    name: str = ""  # the API keyword (and click's parameter name) [default: the flag without dashes]
    short: str | None = None  # a one-letter CLI alias: "-o"
    metavar: str | None = None
    # Text (a tuple of texts when ``multiple``) -> the value; without it the field's type reads it.
    # The API applies it to text too, so image_size="224,224" works as --image-size 224,224 does.
    parse: Callable[[Any], Any] | None = None
    multiple: bool = False  # the flag may be repeated
    # A flag that turns an optional section on with its defaults; the API takes True or the mapping.
    switch: bool = False

    def __post_init__(self) -> None:
        if not self.name:
            if not self.flag:
                raise ValueError(f"option for '{self.key}' needs a flag or a name")
            object.__setattr__(self, "name", self.flag.lstrip("-").replace("-", "_"))

    @cached_property
    def field(self) -> FieldInfo:
        return field(self.key)

    @cached_property
    def kind(self) -> Any:
        """The field's type without None: bool, int, Path, Literal[...], a config section..."""
        return _without_none(self.field.annotation)

    @property
    def is_bool(self) -> bool:
        return self.kind is bool and self.parse is None

    @property
    def default(self) -> Any:
        """The config's default (None for a section, which is its settings' defaults)."""
        value = self.field.default
        return None if value is PydanticUndefined or isinstance(value, BaseModel) else value

    @property
    def is_off_flag(self) -> bool:
        """A flag that turns off a setting that is on by default (--no-validate, --per-tensor)."""
        return self.is_bool and self.default is True

    def value(self, value: Any) -> Any:
        """A value given to the CLI or the API as the recipe has it; ValueError when text does not read."""
        if self.switch:
            return {} if value is True else value or None
        if self.parse is not None:
            if self.multiple and isinstance(value, str):
                value = (value,)
            texts = isinstance(value, str) or (self.multiple and isinstance(value, (list, tuple))
                                               and all(isinstance(v, str) for v in value))
            if texts:
                return self.parse(tuple(value) if self.multiple else value)
        return value


OPTIONS: tuple[Option, ...] = (
    Option("targets", "--target", "Artifact format(s), comma-separated.", short="-t"),
    Option("calibration.data", "--calib", "Calibration data: .npz, folder of .npy, or images."),
    Option("validation.data", "--val",
           "Validation data (labels from an array named 'labels'). Default: held-out calibration samples."),
    Option("precision", "--precision"),
    Option("int8_io", "--int8-io", "int8 model inputs and outputs instead of float."),
    Option("keep_layout", "--keep-layout",
           "Keep NCHW inputs in TFLite artifacts of PyTorch and ONNX models [default: NHWC, TFLite's own]."),
    Option("calibration.samples", "--calib-samples"),
    Option("calibration.seed", "--seed", "Seed for choosing samples."),
    Option("calibration.image_size", "--image-size", "HEIGHT,WIDTH for image folders (default: the model's).",
           parse=image_size),
    Option("calibration.mean", "--mean", "Per-channel mean after scaling pixels to [0,1], e.g. 0.485,0.456,0.406.",
           parse=floats),
    Option("calibration.std", "--std", "Per-channel std after scaling pixels to [0,1].", parse=floats),
    Option("calibration.layout", "--layout", "Image folder tensor layout (default: the model's)."),
    Option("calibration.color", "--color", "Image folder colour mode (default: from channels)."),
    Option("output", "--output", "Output folder [default: edgeopt_out/<model-stem>/].", short="-o"),
    Option("trust_model", "--trust-model", "Allow models that carry code (Lambda layers, SavedModel graphs)."),
    Option("weights", "--weights",
           "PyTorch state_dict for a model given as net.py:build_model or package.module:Class."),
    Option("input_shapes", "--input-shape",
           "Input sizes, batch first, e.g. image=1,3,224,224 or image:1x3x224x224 (repeat per input): a PyTorch "
           "model's input shapes, or the free sizes of an ONNX model's inputs fixed for every target "
           "[default: from --calib].", name="input_shapes", metavar="NAME=SHAPE", parse=input_shapes,
           multiple=True),
    Option("prune", "--prune", "channels:0.5 removes half the channels; magnitude:0.8 zeroes 80% of the weights.",
           metavar="METHOD:RATIO", parse=prune_spec),
    Option("distill", "--distill", "Fine-tune the pruned model with the source model as teacher.", switch=True),
    Option("distill.data", "--distill-data", "Data to distill on (labels optional) [default: the calibration data]."),
    Option("distill.epochs", "--distill-epochs"),
    Option("calibration.method", "--calib-method",
           "How activation ranges are chosen; each target uses its backend's own calibrator and refuses a "
           "method it lacks. auto: the backend's own default (min/max for TFLite and onnxruntime, NNCF's mean "
           "of per-sample min/max)."),
    Option("calibration.percentile", "--percentile", "Percentile for --calib-method percentile [default: 99.999]."),
    Option("calibration.equalization", "--equalization",
           "ONNX: also try the float graph after cross-layer equalization as a candidate of the int8 model."),
    Option("calibration.smoothing", "--no-smoothing", name="smoothing",
           help="ONNX: no SmoothQuant-style migration of MatMul/Gemm activation outliers as an int8 candidate."),
    Option("calibration.optimize", "--optimize",
           "adaround: learn whether each int8 weight rounds up or down, layer by layer, so that the layers' "
           "outputs change least (ONNX targets; needs torch)."),
    Option("calibration.optimize_seconds", "--optimize-seconds", "Time limit of --optimize [default: 120]."),
    Option("calibration.per_channel", "--per-tensor", "One scale per weight tensor instead of one per output channel.",
           name="per_channel"),
    Option("overrides", None, "Layer/node-name regex -> 'float' or 'int8'; the last match wins.", name="overrides"),
    Option("overrides", "--keep-float",
           "Keep layers/nodes whose name matches in float (repeat; a recipe's overrides come first).",
           metavar="REGEX", parse=keep_float, multiple=True),
    Option("budgets", None, "Limits as the recipe's budgets mapping; the keywords below lay over it.",
           name="budgets"),
    Option("budgets.max_accuracy_drop", "--max-accuracy-drop",
           "Largest allowed accuracy drop against the source (needs labels); keeps the most sensitive layers in "
           "float until it holds.", metavar="POINTS"),
    Option("budgets.max_fidelity_drop", "--max-fidelity-drop",
           "Largest allowed 100 x (1 - top-1 agreement), or 100 x (1 - cosine) for non-classifiers.",
           metavar="POINTS"),
    Option("budgets.min_speedup", "--min-speedup",
           "Smallest allowed fp32 p50 / artifact p50 (checked, exit 1 when missed).", metavar="X"),
    # Text: the config reads "512KiB" and "2MB" as well as bytes.
    Option("budgets.max_size", "--max-size", "Largest allowed artifact size, e.g. 250000 or 512KiB (checked).",
           metavar="BYTES", parse=str),
    Option("guard", "--no-guard",
           "Turn off the fidelity guard, which searches for the layers to keep out of int8 when the artifact "
           "drops more than 1 point against the source (budgets given replace it).", name="guard"),
    Option("fallback_cost", "--fallback-cost",
           "What layers kept out of int8 save: p50 keeps them in float (the fastest on CPU); size takes the "
           "smallest precision that holds: int16 activations with int8 weights (ONNX), fp16 weights (OpenVINO)."),
    Option("validation.metric", "--metric", "Accuracy measure: top1, top5, or FILE.py:FUNCTION(outputs, labels)."),
    Option("validation.enabled", "--no-validate", "Skip fidelity, accuracy and latency measurement.",
           name="validate"),
    Option("validation.runs", "--runs", "Timed latency runs."),
    Option("validation.warmup", "--warmup", "Untimed warm-up runs."),
    Option("validation.threads", "--threads", "Runtime threads [default: all cores]."),
)

# Settings with no option of their own, and why. Every other CompressConfig setting has one:
# tests/test_options.py holds the two lists to the config, so a new setting needs a decision.
NOT_DECLARED: dict[str, str] = {
    "version": "the recipe format's version",
    "model": "the MODEL argument of the CLI and the first argument of compress()",
    "prune.method": "--prune METHOD:RATIO / prune=",
    "prune.ratio": "--prune METHOD:RATIO / prune=",
    **{f"prune.{k}": "a recipe's prune section, or the prune= mapping"
       for k in ("layers", "exclude", "exclude_first_last", "scope", "criterion")},
    **{f"distill.{k}": "a recipe's distill section, or the distill= mapping"
       for k in ("temperature", "alpha", "learning_rate", "batch_size", "patience")},
}


def field(key: str) -> FieldInfo:
    """The CompressConfig field at a dotted key path; KeyError names a key that is not one."""
    model: type[BaseModel] = CompressConfig
    parts = key.split(".")
    for i, part in enumerate(parts):
        if part not in model.model_fields:
            raise KeyError(f"'{key}' is not a CompressConfig setting")
        info = model.model_fields[part]
        if i == len(parts) - 1:
            return info
        model = _without_none(info.annotation)
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            raise KeyError(f"'{key}': '{'.'.join(parts[:i + 1])}' is not a section")
    raise KeyError(key)


def settings(model: type[BaseModel] = CompressConfig, prefix: str = "") -> list[str]:
    """Every setting's dotted key path, sections walked into."""
    keys = []
    for name, info in model.model_fields.items():
        kind = _without_none(info.annotation)
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            keys += settings(kind, f"{prefix}{name}.")
        else:
            keys.append(prefix + name)
    return keys


def to_recipe(given: dict[str, Any], base: dict[str, Any] | None = None,
              declared: Iterable[Option] = OPTIONS) -> dict[str, Any]:
    """The options ``given`` (name -> value; None is not given), nested as in a recipe so that they
    can override one (``base``). Raises ValueError naming the option whose text does not read."""
    values: dict[str, Any] = {}
    for opt in declared:  # in order: a section's mapping before the settings within it
        if given.get(opt.name) is None:
            continue
        try:
            value = opt.value(given[opt.name])
        except ValueError as exc:
            raise ValueError(f"{opt.name}: {exc}") from None
        if value is not None:
            _put(values, opt.key.split("."), value)
    # Distillation is on with --distill, --distill-data or a recipe's distill section; other
    # distill settings (--distill-epochs) change it, and alone are refused rather than dropped.
    distill = values.get("distill")
    if distill is not None and not (given.get("distill") or "data" in distill
                                    or isinstance((base or {}).get("distill"), dict)):
        raise UsageError(f"{', '.join(sorted(distill))} of distillation given, and distillation is off.",
                         hint="Add --distill (distill=True) or --distill-data PATH, or leave the setting out.")
    return values


def sources(loc: tuple, given: Iterable[Option]) -> list[Option]:
    """Of the options given, the one whose key holds the error location ``loc`` (the most specific),
    else those within it: a section's own check (percentile without its method) names them all."""
    parts = tuple(str(p) for p in loc)
    holders, within = [], []
    for opt in given:
        key = tuple(opt.key.split("."))
        if parts[:len(key)] == key:
            holders.append(opt)
        elif key[:len(parts)] == parts:
            within.append(opt)
    if holders:
        return [max(holders, key=lambda opt: len(opt.key.split(".")))]
    return within


def _put(values: dict[str, Any], path: list[str], value: Any) -> None:
    node = values
    for key in path[:-1]:
        node = node.setdefault(key, {})
    last = path[-1]
    if isinstance(value, dict):  # a copy: the caller's mapping is not changed by the settings laid on it
        node[last] = {**node[last], **value} if isinstance(node.get(last), dict) else dict(value)
    else:
        node[last] = value


def _without_none(annotation: Any) -> Any:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def is_literal(kind: Any) -> bool:
    return typing.get_origin(kind) is Literal
