"""Typed run configuration. A recipe file is this configuration as YAML, versioned, and the
exact one used is saved beside every output so the run can be repeated with ``edgeopt run``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

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
    # NCHW PyTorch models become channels-last TFLite models unless the source's layout is kept.
    keep_layout: bool = False
    trust_model: bool = False
    calibration: CalibrationConfig = CalibrationConfig()
    validation: ValidationConfig = ValidationConfig()
    prune: PruneConfig | None = None
    distill: DistillConfig | None = None
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


def build(origin: str, **values) -> CompressConfig:
    """Validate values into a config; errors name each offending key and where it came from."""
    try:
        return CompressConfig(**values)
    except ValidationError as exc:
        raise UsageError(f"Invalid settings in {origin}: " + "; ".join(_describe(e) for e in exc.errors()),
                         hint="Fix or remove the named keys (run `edgeopt compress --help` for the options).") from None


def _describe(error: dict) -> str:
    where = ".".join(str(p) for p in error["loc"]) or "(top level)"
    if error["type"] == "extra_forbidden":
        return f"unknown key '{where}'"
    return f"'{where}': {error['msg']}"


def to_yaml(config: CompressConfig) -> str:
    import yaml

    data = config.model_dump(mode="json", exclude_none=False)
    header = "# edgeopt recipe: re-run with `edgeopt run recipe.yaml`\n"
    return header + yaml.safe_dump(data, sort_keys=False)


def load(path: Path | str) -> CompressConfig:
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputRejected(f"The recipe '{path}' does not exist.") from None
    except yaml.YAMLError as exc:
        raise UsageError(f"The recipe '{path}' is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise UsageError(f"The recipe '{path}' must be a mapping of settings; got {type(data).__name__}.")
    return build(f"recipe '{path}'", **data)
