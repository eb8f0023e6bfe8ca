"""Typed run configuration. A recipe file is this configuration as YAML, versioned, and the
exact one used is saved beside every output so the run can be repeated with ``edgeopt run``.

Errors name the key path and, for a file, its line: the document is composed once more with
its node marks, and pydantic's error locations are walked down that node tree.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from edgeopt.errors import InputRejected, UsageError

RECIPE_VERSION = 1
TARGETS = ("tflite", "onnx", "openvino")
PRECISIONS = ("int8", "fp16", "fp32")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CalibrationConfig(_Strict):
    data: Path | None = None
    samples: int = Field(300, ge=1)
    seed: int = 0
    image_size: tuple[int, int] | None = None
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    layout: Literal["nhwc", "nchw"] | None = None
    color: Literal["rgb", "gray"] | None = None
    # How activation ranges are chosen; each target does it with its own backend or refuses.
    method: Literal["auto", "minmax", "percentile", "entropy", "mse"] = "auto"
    percentile: float | None = Field(None, gt=50.0, le=100.0)  # method percentile; default 99.999
    per_channel: bool = True  # weights: one scale per output channel, or one per tensor
    # ONNX: the plain int8 model may be chosen from the graph after cross-layer equalization too
    # (opt-in until the conformance suite has measured it)
    equalization: bool = False
    # ONNX: the plain int8 model may be chosen from the graph after SmoothQuant-style migration of
    # MatMul/Gemm activation outliers; a graph without such activations has no such candidate
    smoothing: bool = True
    # Learned rounding of the int8 weights (ONNX), within optimize_seconds
    optimize: Literal["adaround"] | None = None
    optimize_seconds: float = Field(120.0, gt=0)

    @model_validator(mode="after")
    def _percentile_goes_with_its_method(self) -> CalibrationConfig:
        if self.percentile is not None and self.method != "percentile":
            raise ValueError(f"'percentile' applies to method 'percentile', not '{self.method}'; "
                             "remove it or set method: percentile")
        return self

    @field_validator("std")
    @classmethod
    def _std_nonzero(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if any(s == 0 for s in v):
            raise ValueError("std values must be non-zero")
        return v


class ValidationConfig(_Strict):
    enabled: bool = True
    data: Path | None = None
    runs: int = Field(100, ge=1)
    warmup: int = Field(10, ge=0)
    threads: int | None = Field(None, ge=1)
    # What accuracy means for the report and max_accuracy_drop: top1, top5, or FILE.py:FUNCTION
    # returning {name: value}, whose first value is compared (higher is better, 0..1).
    metric: str = "top1"

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, v: str) -> str:
        if v not in ("top1", "top5") and not re.fullmatch(r".+\.py:[A-Za-z_]\w*", v):
            raise ValueError(f"expected top1, top5 or FILE.py:FUNCTION, got '{v}'")
        return v


_SIZE_UNITS = {"": 1, "b": 1, "kb": 1000, "kib": 1024, "mb": 1000 ** 2, "mib": 1024 ** 2, "gb": 1000 ** 3,
               "gib": 1024 ** 3}


class BudgetsConfig(_Strict):
    """Limits the artifact must meet. The accuracy and fidelity drops drive the search for layers
    to keep in float; the speed-up and size are checked only. A missed budget exits 1."""

    max_accuracy_drop: float | None = Field(None, ge=0.0)  # points, source minus artifact
    max_fidelity_drop: float | None = Field(None, ge=0.0)  # points: 100 x (1 - top-1 agreement or cosine)
    min_speedup: float | None = Field(None, gt=0.0)  # fp32 p50 / artifact p50 on the same runtime
    max_size: int | None = Field(None, ge=1)  # bytes; "512KiB", "2MB" accepted

    @field_validator("max_size", mode="before")
    @classmethod
    def _bytes(cls, v: Any) -> Any:
        if isinstance(v, str):
            match = re.fullmatch(r"\s*([\d.]+)\s*([a-zA-Z]*)\s*", v)
            unit = match.group(2).lower() if match else None
            if not match or unit not in _SIZE_UNITS:
                raise ValueError(f"expected bytes such as 250000, 512KiB or 2MB, got '{v}'")
            return int(float(match.group(1)) * _SIZE_UNITS[unit])
        return v

    def drives_search(self) -> bool:
        return self.max_accuracy_drop is not None or self.max_fidelity_drop is not None

    def any(self) -> bool:
        return any(v is not None for v in self.model_dump().values())


class PruneConfig(_Strict):
    """Channel pruning removes whole filters/units; magnitude pruning zeroes single weights."""

    method: Literal["channels", "magnitude"]
    ratio: float = Field(gt=0.0, lt=1.0)
    layers: dict[str, float] = {}  # layer-name regex -> its own ratio; last match wins
    exclude: tuple[str, ...] = ()  # layer-name regexes left whole
    exclude_first_last: bool = True  # the first conv and the classifier are the most sensitive
    scope: Literal["global", "layer"] = "global"  # magnitude: one threshold, or one per layer
    criterion: Literal["l1", "l2"] = "l2"  # channels: filter importance

    @field_validator("layers")
    @classmethod
    def _ratios_in_range(cls, v: dict[str, float]) -> dict[str, float]:
        for pattern, ratio in v.items():
            if not 0.0 < ratio < 1.0:
                raise ValueError(f"ratio for '{pattern}' must be strictly between 0 and 1, got {ratio}")
        return v


class DistillConfig(_Strict):
    """The source model teaches the pruned one. Data: ``data``, else the calibration data."""

    data: Path | None = None
    epochs: int = Field(30, ge=1)
    temperature: float = Field(4.0, gt=0.0)
    alpha: float = Field(0.7, ge=0.0, le=1.0)
    learning_rate: float = Field(1e-3, gt=0.0)
    batch_size: int = Field(32, ge=1)
    patience: int = Field(5, ge=1)


class CompressConfig(_Strict):
    version: int = RECIPE_VERSION
    model: Path
    targets: tuple[str, ...] = ("tflite",)
    precision: Literal["int8", "fp16", "fp32"] = "int8"
    int8_io: bool = False
    # NCHW PyTorch and ONNX models become channels-last TFLite models unless the source's layout is kept.
    keep_layout: bool = False
    trust_model: bool = False
    calibration: CalibrationConfig = CalibrationConfig()
    validation: ValidationConfig = ValidationConfig()
    prune: PruneConfig | None = None
    distill: DistillConfig | None = None
    budgets: BudgetsConfig = BudgetsConfig()
    # The fidelity guard (edgeopt.guard): int8 that drops more than a point against the source is
    # searched for the layers to keep out of int8. Budgets set here replace it.
    guard: bool = True
    # What the layers the guard or a budget keeps out of int8 save: "p50" keeps them in float, the
    # fastest on the CPU runtimes; "size" takes the smallest rung of the mixed-precision ladder that
    # holds (edgeopt.budget.LADDER: 16-bit activations with int8 weights, then fp16 weights).
    fallback_cost: Literal["p50", "size"] = "p50"
    # Layer/node-name regex (searched, as re.search) -> float or int8; the last match wins. A
    # pattern that matches no layer of an artifact is a warning in the output and the report.
    overrides: dict[str, Literal["float", "int8"]] = {}
    output: Path | None = None
    # PyTorch models built from code (net.py:build_model): their state_dict, and input shapes
    # with the batch axis first (PyTorch modules do not record them).
    weights: Path | None = None
    input_shapes: dict[str, tuple[int, ...]] | None = None

    @field_validator("input_shapes")
    @classmethod
    def _positive_dims(cls, v: dict[str, tuple[int, ...]] | None) -> dict[str, tuple[int, ...]] | None:
        for name, dims in (v or {}).items():
            if not dims or any(d < 1 for d in dims):
                raise ValueError(f"shape of '{name}' must be positive sizes, batch first, e.g. 1,3,224,224; "
                                 f"got {list(dims)}")
        return v

    @field_validator("overrides")
    @classmethod
    def _patterns_compile(cls, v: dict[str, str]) -> dict[str, str]:
        for pattern in v:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"'{pattern}' is not a valid regular expression: {exc}") from None
        return v

    @field_validator("targets", mode="before")
    @classmethod
    def _split_targets(cls, v):
        if isinstance(v, str):
            v = [t.strip() for t in v.split(",") if t.strip()]
        unknown = [t for t in v if t not in TARGETS]
        if unknown:
            raise ValueError(f"unknown target(s) {unknown}; choose from {list(TARGETS)}")
        if not v:
            raise ValueError("at least one target is needed")
        return tuple(dict.fromkeys(v))

    @field_validator("version")
    @classmethod
    def _known_version(cls, v: int) -> int:
        if v != RECIPE_VERSION:
            raise ValueError(f"recipe version {v} is not supported; this edgeopt reads version {RECIPE_VERSION}")
        return v

    def output_dir(self) -> Path:
        return self.output or Path("edgeopt_out") / self.model.stem


Lines = Callable[[tuple], "int | None"]
Names = Callable[[tuple], "str | None"]


def build(origin: str, **values: Any) -> CompressConfig:
    """Validate values into a config; errors name each offending key and where it came from."""
    return validate(origin, values)


def validate(origin: str, values: dict[str, Any], lines: Lines | None = None,
             names: Names | None = None) -> CompressConfig:
    """``values`` as a config; ``lines`` maps an error location to a line of the file they came from,
    ``names`` to the flag or keyword that gave it (``--runs``, ``runs=``)."""
    try:
        return CompressConfig(**values)
    except ValidationError as exc:
        problems = "; ".join(_describe(e, lines, names) for e in exc.errors())
        raise UsageError(f"Invalid settings in {origin}: {problems}",
                         hint="Fix or remove the named keys (run `edgeopt compress --help` for the options, "
                              "`edgeopt recipe check FILE` to check a recipe).") from None


def _describe(error: dict, lines: Lines | None = None, names: Names | None = None) -> str:
    where = ".".join(str(p) for p in error["loc"]) or "(top level)"
    line = lines(tuple(error["loc"])) if lines else None
    at = f"line {line}: " if line else ""
    name = names(tuple(error["loc"])) if names else None
    given = f" (from {name})" if name else ""
    if error["type"] == "extra_forbidden":
        return f"{at}unknown key '{where}'{given}"
    return f"{at}'{where}'{given}: {error['msg']}"


def to_yaml(config: CompressConfig) -> str:
    import yaml

    data = config.model_dump(mode="json", exclude_none=False)
    header = "# edgeopt recipe: re-run with `edgeopt run recipe.yaml`\n"
    return header + yaml.safe_dump(data, sort_keys=False)


def load(path: Path | str, overrides: dict[str, Any] | None = None) -> CompressConfig:
    """The recipe at ``path``; ``overrides`` (nested like the recipe, e.g. from command-line flags)
    replace its values before validation."""
    path = Path(path)
    data, lines = read_yaml(path)
    return combine(f"recipe '{path}'", data, lines, overrides or {})


def combine(origin: str, data: dict[str, Any], lines: Lines, overrides: dict[str, Any],
            names: Names | None = None) -> CompressConfig:
    """A recipe's ``data`` with ``overrides`` laid on it, validated; errors in keys that came from
    the overrides carry no line of the file (``names`` may name the flag instead)."""
    if not overrides:
        return validate(origin, data, lines)

    def where(loc: tuple) -> int | None:
        return None if _given(overrides, loc) else lines(loc)

    return validate(origin + " with the command line's flags", merge(data, overrides), where, names)


def read_yaml(path: Path) -> tuple[dict[str, Any], Lines]:
    """The mapping in ``path`` and a function from a key path to its 1-based line."""
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputRejected(f"The recipe '{path}' does not exist.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputRejected(f"The recipe '{path}' cannot be read: {exc}") from None
    try:
        data = yaml.safe_load(text)
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        raise UsageError(f"The recipe '{path}' is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise UsageError(f"The recipe '{path}' must be a mapping of settings; got {type(data).__name__}.",
                         hint="Start from recipes/int8_tflite.yaml.")
    _no_duplicate_keys(root, path)
    return data, lambda loc: _line(root, loc)


def _line(node: Any, loc: tuple) -> int | None:
    """The line of the deepest node on ``loc`` that the document has (a key's own line for a key)."""
    import yaml

    line = None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            pair = next(((k, v) for k, v in node.value if k.value == str(part)), None)
            if pair is None:
                break
            line, node = pair[0].start_mark.line + 1, pair[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line


def _no_duplicate_keys(node: Any, path: Path, where: str = "") -> None:
    """YAML keeps the last of two equal keys without a word; a recipe with both is a mistake."""
    import yaml

    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key, value in node.value:
            name = f"{where}.{key.value}" if where else str(key.value)
            if key.value in seen:
                raise UsageError(f"Invalid settings in recipe '{path}': line {key.start_mark.line + 1}: key '{name}' "
                                 f"is given twice (first on line {seen[key.value]}).", hint="Keep one of them.")
            seen[key.value] = key.start_mark.line + 1
            _no_duplicate_keys(value, path, name)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _no_duplicate_keys(item, path, f"{where}.{i}")


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` laid on ``base``: mappings merge key by key (new keys last), other values replace."""
    result = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = merge(result[key], value)
        else:
            result[key] = value
    return result


def _given(over: dict[str, Any], loc: tuple) -> bool:
    node: Any = over
    for part in loc:
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def summary(config: CompressConfig) -> list[tuple[str, str]]:
    """What a recipe will do, one (setting, value) row per line, for `edgeopt recipe check`."""
    c, v, b = config.calibration, config.validation, config.budgets
    method = f"percentile {c.percentile or 99.999:g}" if c.method == "percentile" else c.method
    steps = [f"prune {config.prune.method} {config.prune.ratio:g}"] if config.prune else []
    steps += [f"distill {config.distill.epochs} epochs"] if config.distill else []
    steps += [f"quantize {config.precision}" + (" (int8 I/O)" if config.int8_io else ""),
              f"convert to {', '.join(config.targets)}"]
    rows = [("version", str(config.version)), ("model", str(config.model)), ("steps", " -> ".join(steps)),
            ("calibration", f"{c.data or 'none (int8 = dynamic range)'}, {c.samples} samples, seed {c.seed}, "
                            f"{method}, {'per-channel' if c.per_channel else 'per-tensor'} weights"),
            ("validation", "off" if not v.enabled else
             f"{v.data or 'held out from calibration'}, metric {v.metric}, {v.runs} runs after {v.warmup} warm-up")]
    limits = [f"{k} {val}" for k, val in b.model_dump().items() if val is not None]
    rows.append(("budgets", ", ".join(limits) or "none"))
    rows.append(("overrides", ", ".join(f"/{k}/ -> {val}" for k, val in config.overrides.items()) or "none"))
    rows.append(("output", str(config.output_dir())))
    return rows
