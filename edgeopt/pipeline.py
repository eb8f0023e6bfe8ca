"""The compress job: import -> convert/quantize -> validate -> report, in one direction."""

from __future__ import annotations

import hashlib
import importlib.util
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeopt import budget
from edgeopt import calibration as cal
from edgeopt import guard, recipe, registry
from edgeopt.errors import BudgetMissed, EdgeoptError, InputRejected, UsageError
from edgeopt.doctor import missing_distributions
from edgeopt.exporters.base import FloatArtifact, Layer
from edgeopt.passes.quantize import convert, quantize
from edgeopt.passes.quantize.config import DEFAULT_PERCENTILE, QuantConfig, check_quant
from edgeopt.formats import SOURCE_FORMATS, detect_format, suffix_mismatch
from edgeopt.frameworks.base import LoadedModel
from edgeopt.model import Format, TensorSpec
from edgeopt.outputs import OutputStage, check_output_dir, sha256_of
from edgeopt.passes.base import PassContext
from edgeopt.targets.base import op_summary, open_own_artifact
from edgeopt.report import build_report, render_markdown, write_json
from edgeopt.report_types import GUARD_CHECK, ArtifactEntry, QuantizationInfo
from edgeopt.report_html import render_html
from edgeopt.validate.evaluate import Metric, Quality, Reference
from edgeopt.validate.latency import measure_interleaved
from edgeopt.validate.collapse import collapse_warning
from edgeopt.validate.slow_int8 import slow_int8_warning

Progress = Callable[[str], None]


@dataclass
class Result:
    """What a compress run produced: the report (as in report.json) and where files went."""

    report: dict[str, Any]
    output_dir: Path
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def failed_budgets(self) -> list[str]:
        shown = lambda v: "not measured" if v is None else f"{v:,}" if isinstance(v, int) else f"{v:.4g}"  # noqa: E731
        return [f"{a['target']}: {c['budget']} {shown(c['value'])} (limit {c['limit']:g})"
                for a in self.artifacts for c in a.get("budgets", []) if not c["passed"]]

    @property
    def failed_guard(self) -> list[str]:
        """The artifacts the fidelity guard failed, each with its drop and the limit."""
        return [f"the {a['target']} artifact drops {g['fidelity_drop']:.3g} points of {g['measure']} "
                f"(limit {g['limit']:g})" if g.get("fidelity_drop") is not None
                else f"the {a['target']} artifact was not measured"
                for a in self.artifacts for g in [a.get("guard") or {}] if g and not g.get("held")]

    @property
    def artifacts(self) -> list[dict[str, Any]]:
        return self.report["artifacts"]


# File suffixes of artifacts whose target name is not their extension.
ARTIFACT_SUFFIX = {"openvino": "xml"}
PLAIN_INT8 = "int8 (no layer in float)"  # the variant that shows what keeping layers in float cost


def quant_settings(config: recipe.CompressConfig) -> QuantConfig:
    c = config.calibration
    return QuantConfig(method=c.method, percentile=c.percentile or DEFAULT_PERCENTILE, per_channel=c.per_channel,
                       equalization=c.equalization, smoothing=c.smoothing,
                       adaround_seconds=c.optimize_seconds if c.optimize == "adaround" else None)


def source_framework(model: Path) -> str | None:
    """The source's framework from its bytes (or a code spec), without loading it; None when the
    file cannot be read, which loading then reports properly."""
    from edgeopt.frameworks.torch import parse_spec

    if parse_spec(str(model)) is not None:
        return "torch"
    try:
        return detect_format(model).framework
    except EdgeoptError:
        return None


def check_plan(config: recipe.CompressConfig) -> None:
    """Refuse, before any work, what no target can do as asked: a calibration method its backend
    lacks, layers in float where the backend cannot keep them, budgets without data to check them."""
    c, b = config.calibration, config.budgets
    int8 = config.precision == "int8"
    if config.overrides and not int8:
        raise UsageError(f"Per-layer overrides choose float or int8 inside an int8 model; precision is "
                         f"{config.precision}.", hint="Set precision to int8 or remove the overrides.")
    if b.any() and not config.validation.enabled:
        raise UsageError("Budgets are checked on validation data, and validation is turned off (--no-validate).",
                         hint="Drop --no-validate (or validation.enabled: false), or the budgets.")
    if b.any() and config.validation.data is None and c.data is None:
        raise UsageError("Budgets are checked on validation data, and there is none.",
                         hint="Pass --val PATH (or --calib PATH, from which some samples are held out).")
    if int8 and c.data is None and (config.overrides or b.drives_search()):
        # Dynamic-range int8 quantizes weights only, at run time: no layer can be kept in float.
        what = "Per-layer overrides (--keep-float)" if config.overrides else "The accuracy-budget search"
        raise UsageError(f"{what} choose which layers of a full-integer int8 model stay in float, and there is "
                         "no calibration data: without it int8 is dynamic range.", hint="Pass --calib PATH.")
    if c.optimize and (not int8 or c.data is None):
        raise UsageError(f"--optimize {c.optimize} learns the rounding of int8 weights on calibration data; "
                         + ("there is no calibration data." if int8 else f"precision is {config.precision}."),
                         hint="Pass --calib PATH with --precision int8, or drop --optimize.")
    if c.optimize and importlib.util.find_spec("torch") is None:
        from edgeopt.deps import OPTIONAL
        from edgeopt.errors import MissingDependency

        raise MissingDependency("torch", OPTIONAL["torch"][1], f"Learned rounding (--optimize {c.optimize})")
    if not int8 or c.data is None:
        if int8 and (c.method not in ("auto", "minmax") or not c.per_channel or c.percentile is not None):
            raise UsageError(f"Calibration method '{c.method}' and per-tensor weights need calibration data, and "
                             "none was given: without it int8 is dynamic range.", hint="Pass --calib PATH.")
        return
    framework = source_framework(config.model)
    if framework is None:
        return
    needs_float = bool(config.overrides) or b.drives_search()
    for target in config.targets:
        check_quant(f"{framework}->{target}", quant_settings(config), keep_float=needs_float)


def _source_sha256(model: Path, source: LoadedModel) -> str:
    """The model file's digest; for a model built from code, that of its code and weights together."""
    if model.exists():
        return sha256_of(model)
    digest = hashlib.sha256()
    for file in source.handle.metadata.get("files", []):
        digest.update(sha256_of(Path(file)).encode())
    return digest.hexdigest()


def load_source(path: Path, *, trust: bool, weights: Path | None = None,
                input_shapes: dict[str, tuple[int, ...]] | None = None,
                calib: Path | None = None) -> tuple[LoadedModel, list[str]]:
    from edgeopt.frameworks.torch import parse_spec

    # Before sniffing: "net.py:build_model" names code, not a file on disk.
    if parse_spec(str(path)) is not None:
        loader = registry.resolve("loader", Format.TORCH_MODULE.value)
        source = loader(path, Format.TORCH_MODULE, trust=trust, weights=weights, input_shapes=input_shapes,
                        calib=calib)
        return source, list(source.handle.metadata.get("notes", []))
    fmt = detect_format(path)
    notes = [n for n in [suffix_mismatch(path, fmt)] if n]
    if fmt not in SOURCE_FORMATS:
        raise InputRejected(
            f"'{path}' is a {fmt.value} artifact, not a source model edgeopt can compress.",
            hint="Pass the original model the artifact was made from, e.g. its Keras .h5/.keras file.")
    loader = registry.resolve("loader", fmt.value)
    if fmt.framework == "torch":
        source = loader(path, fmt, trust=trust, weights=weights, input_shapes=input_shapes, calib=calib)
    elif weights is not None:
        raise UsageError(f"--weights goes with a PyTorch model built from code, not with the {fmt.value} "
                         f"model '{path}'.", hint="Drop --weights; the weights are inside the model file.")
    elif fmt is Format.ONNX:
        source = loader(path, fmt, trust=trust, input_shapes=input_shapes)
    else:
        source = loader(path, fmt, trust=trust)
    return source, notes + list(source.handle.metadata.get("notes", []))


def image_options(config: recipe.CompressConfig) -> cal.ImageOptions:
    c = config.calibration
    return cal.ImageOptions(size=c.image_size, mean=c.mean, std=c.std, layout=c.layout, color=c.color)


def open_calibration(config: recipe.CompressConfig, inputs: list[TensorSpec],
                     images: cal.ImageOptions) -> tuple[cal.Subset | None, cal.Subset | None]:
    """The calibration samples, and those held back from them for validation; (None, None) without data."""
    if config.calibration.data is None:
        return None, None
    calib_source = cal.open_data(config.calibration.data, inputs, images, role="calibration")
    # Samples are held back only for a validation that will run on them.
    held_back = config.validation.enabled and config.validation.data is None
    keep_back = cal.holdout_size(calib_source.count) if held_back else 0
    calib, holdout = cal.select(calib_source, samples=config.calibration.samples,
                                seed=config.calibration.seed, holdout=keep_back)
    calib.check_finite()
    return calib, holdout


def _stem(config: recipe.CompressConfig, source: LoadedModel) -> str:
    return source.handle.metadata.get("stem") or (config.model.stem if config.model.is_file() else config.model.name)


def _quantizing(config: recipe.CompressConfig, floating: FloatArtifact, calib: cal.Subset | None) -> budget.Export:
    """The quantize pass of ``floating`` with everything but the path and the quantization settings
    fixed by ``config``."""
    def export(path: Path, settings: QuantConfig) -> Any:
        return quantize(floating, path, precision=config.precision, calib=calib, int8_io=config.int8_io,
                        quant=settings)
    return export


def _fix_sizes_for_tflite(config: recipe.CompressConfig, source: LoadedModel, data: cal.Subset | None,
                          notes: list[str], targets: tuple[str, ...] | None = None) -> LoadedModel:
    """An ONNX source with free sizes past the batch axis, bound for TFLite (which has fixed sizes
    only), takes the sizes of its data unless --input-shape chose them."""
    if source.handle.format is not Format.ONNX or "tflite" not in (targets or config.targets) or data is None:
        return source
    free = [t for t in source.handle.inputs if any(d is None for d in t.shape[1:])]
    if not free:
        return source
    row = next(iter(data))
    shapes = {t.name: tuple(np.shape(row[t.name])) for t in source.handle.inputs}  # rows hold the full input shape
    from edgeopt.frameworks.onnx import with_input_shapes

    fixed = with_input_shapes(source, shapes)
    sizes = ", ".join(f"'{t.name}' to {'x'.join(map(str, shapes[t.name]))}" for t in free)
    notes.append(f"TFLite models have fixed sizes: the free sizes of {sizes} were taken from the data; "
                 "--input-shape NAME=... chooses others.")
    return fixed


class StepClock:
    """Passes progress messages on and keeps how long each step took, for the report: a user
    (and ``benchmarks/accuracy.py``) can tell the model's loading from edgeopt's own work."""

    def __init__(self, progress: Progress | None) -> None:
        self._progress = progress or (lambda _msg: None)
        self._current: tuple[str, float] | None = None
        self.steps: list[dict[str, Any]] = []

    def __call__(self, message: str) -> None:
        self._close()
        self._current = (message, time.perf_counter())
        self._progress(message)

    def _close(self) -> None:
        if self._current is not None:
            message, began = self._current
            self.steps.append({"step": message, "seconds": round(time.perf_counter() - began, 3)})
            self._current = None

    def so_far(self) -> list[dict[str, Any]]:
        """The finished steps and the one running now, up to now."""
        running = [] if self._current is None else [
            {"step": self._current[0], "seconds": round(time.perf_counter() - self._current[1], 3)}]
        return [*self.steps, *running]


def compress(config: recipe.CompressConfig, progress: Progress | None = None) -> Result:
    say = StepClock(progress)
    started = time.perf_counter()
    out_dir = config.output_dir()
    check_output_dir(out_dir)
    check_plan(config)
    metric = Metric(config.validation.metric)

    say("Loading the model")
    source, notes = load_source(config.model, trust=config.trust_model, weights=config.weights,
                                input_shapes=config.input_shapes, calib=config.calibration.data)
    inputs = source.handle.inputs

    say("Checking calibration and validation data")
    images = image_options(config)
    calib, holdout = open_calibration(config, inputs, images)
    val = None
    if config.validation.enabled:
        if config.validation.data is not None:
            val_source = cal.open_data(config.validation.data, inputs, images, role="validation")
            val, _ = cal.select(val_source, samples=min(val_source.count, 2000), seed=config.calibration.seed)
            val.check_finite()
        else:
            val = holdout
            if calib is not None and val is None:
                val = calib
                notes.append("Too few calibration samples to hold some back: validated on the calibration samples.")
    source = _fix_sizes_for_tflite(config, source, calib or val, notes)
    if config.precision == "int8" and calib is None:
        notes.append("No calibration data: the int8 model uses dynamic-range quantization "
                     "(int8 weights, float activations). Pass --calib for full-integer int8.")
    budget.require_labels(config.budgets, val,
                          f"the validation data '{config.validation.data or config.calibration.data}'")

    model, stage_info = run_passes(config, source, calib, images, notes, say)
    quant = quant_settings(config)
    warnings: list[str] = []
    # The source's outputs on the validation data, once: every target and try is judged against them.
    reference = None
    if val is not None:
        say(f"Running the source model on {len(val)} validation samples")
        reference = Reference.of_model(source, val, metric)
    # The guard judges what quantization did: against the model quantized, which after pruning or
    # distillation is not the source (budgets and the report compare with the source).
    guarded = reference
    if reference is not None and model is not source and config.guard and not config.budgets.drives_search():
        say(f"Running the {stage_info[-1][0]} model on {len(val)} validation samples")
        guarded = Reference.of_model(model, val, metric)
    guarding = guard.for_run(config, guarded)
    budgets = guarding.budgets(config.budgets) if guarding else config.budgets

    with OutputStage(out_dir) as stage:
        artifacts = []
        stem = _stem(config, source)
        for target in config.targets:
            say(f"Converting to {target}")
            key = f"{source.handle.framework}->{target}"
            # Each model is converted once per target. The baseline is the untouched source in
            # fp32: speed-ups count every step. It takes the artifact's layout, so that a layout
            # change is not counted as a speed-up. Without validation nothing is compared, and only
            # the model quantized is converted.
            if config.validation.enabled:
                models = [("fp32", source, "baseline_fp32"),
                          *((name, m, f"stage{i}_fp32") for i, (name, m, _) in enumerate(stage_info[1:], start=1))]
            else:
                models = [("float", model, "float")]
            floats: dict[str, FloatArtifact] = {
                variant: convert(key, converted, stage.dir / f".{stem}_{tag}.{target}", keep_layout=config.keep_layout,
                                 calib=calib)
                for variant, converted, tag in models}
            floating = floats[models[-1][0]]  # the last model converted is the one quantized
            variants = {k: f.result() for k, f in floats.items() if k != "float"}
            name = f"{stem}_{config.precision}.{ARTIFACT_SUFFIX.get(target, target)}"
            say(f"Quantizing to {config.precision}" if config.precision != "fp32" else "Writing fp32 artifact")
            export = _quantizing(config, floating, calib)
            outcome = None
            if config.precision == "int8" and calib is not None:
                judge = budget.Judge(target, source, guarded if guarding else reference, config.validation.threads) \
                    if reference is not None and budgets.drives_search() else None
                request = budget.Request(target=target, key=key, export=export, floating=floating, calib=calib,
                                         quant=quant, overrides=config.overrides, budgets=budgets, judge=judge,
                                         fallback_cost=config.fallback_cost)
                outcome = budget.run(request, stage.path(name), lambda tag, t=target: stage.dir / f".{stem}_{tag}.{t}",
                                     say)
                result = outcome.result
                warnings.extend(outcome.warnings)
                if outcome.plain is not None:
                    variants[PLAIN_INT8] = outcome.plain
            else:
                result = export(stage.path(name), quant)
            for extra in result.extra_files:
                stage.path(extra.name)
            notes.extend(result.notes)
            variants["artifact"] = result
            entry, quality = _measure(target, source, variants, reference, config, say)
            if outcome is not None:
                entry.quantization = _with_latency_cost(outcome.info, entry)
            guard_quality = quality if guarded is reference or quality is None else guarded.measure(
                open_own_artifact(target, result.path, source, threads=config.validation.threads))
            entry.budgets = _budget_checks(budgets, entry, guard_quality if guarding else quality, guarding)
            if guarding is not None:
                searched = bool(outcome and outcome.info.search and outcome.info.search.needed)
                entry.guard = guarding.judge(guard_quality, searched=searched)
                if guarded is not reference:
                    entry.guard["against"] = f"the {stage_info[-1][0]} float model"
            facts = entry.to_dict()
            slow = slow_int8_warning(facts, io_tensors=len(source.handle.inputs) + len(source.handle.outputs))
            collapsed = collapse_warning(facts)
            warnings.extend(w for w in (collapsed, slow) if w)
            artifacts.append(entry)
            for variant, exported in variants.items():
                if variant != "artifact":
                    for file in (exported.path, *exported.extra_files):
                        file.unlink(missing_ok=True)
            for floated in floats.values():
                floated.remove()

        report = build_report(
            command="compress", config=config, source=source, source_sha256=_source_sha256(config.model, source),
            calibration=_data_entry(config.calibration.data, calib, config.calibration.seed),
            validation=_data_entry(config.validation.data or config.calibration.data, val, config.calibration.seed,
                                   held_out=config.validation.data is None and val is holdout),
            artifacts=artifacts, notes=notes, wall_seconds=time.perf_counter() - started)
        if len(stage_info) > 1:
            report["stages"] = _stage_table(stage_info, artifacts[0].to_dict())
        report["step_seconds"] = say.so_far()
        report["warnings"] = warnings
        if guarding is not None:
            report["guard"] = {"limit": round(guarding.limit, 4), "measure": guarding.measure,
                               "samples": guarding.samples,
                               "held": all((a.guard or {}).get("held", False) for a in artifacts)}
        if config.budgets.any():
            report["budgets"] = {"limits": {k: v for k, v in config.budgets.model_dump().items() if v is not None},
                                 "passed": all(c["passed"] for a in artifacts for c in a.budgets
                                               if c["budget"] != GUARD_CHECK)}
        say("Writing outputs")
        for a in report["artifacts"]:
            a["path"] = str(out_dir / Path(a["path"]).name)
        write_json(stage.path("report.json"), report)
        stage.path("report.md").write_text(render_markdown(report), encoding="utf-8")
        stage.path("report.html").write_text(render_html(report), encoding="utf-8")
        stage.path("recipe.yaml").write_text(recipe.to_yaml(config), encoding="utf-8")
        files = stage.commit()
    result = Result(report=report, output_dir=out_dir, files=files)
    if result.failed_budgets:
        # After the commit: the best artifact and its report are there to inspect.
        raise BudgetMissed(result)
    return result


def _with_latency_cost(info: QuantizationInfo, entry: ArtifactEntry) -> QuantizationInfo:
    """What keeping layers in float cost: the artifact's p50 against the all-int8 one, measured interleaved."""
    variant = (entry.variants or {}).get(PLAIN_INT8, {})
    plain = variant.get("latency_ms")
    if plain and entry.latency_ms:
        p50, base = entry.latency_ms["p50"], plain["p50"]
        info.latency_cost = {"int8_p50_ms": base, "p50_ms": p50, "percent": round(100.0 * (p50 / base - 1.0), 1)}
    size = variant.get("fp32_size_bytes")  # the variant's size on disk (named as the baseline's is)
    if size:
        info.size_cost = {"int8_bytes": size, "bytes": entry.size_bytes,
                          "percent": round(100.0 * (entry.size_bytes / size - 1.0), 1)}
    return info


def _budget_checks(budgets: recipe.BudgetsConfig, entry: ArtifactEntry, quality: Quality | None,
                   guarding: guard.Guard | None) -> list[dict[str, Any]]:
    found = budget.checks(budgets, fidelity_drop=quality.fidelity_drop if quality else None,
                          accuracy_drop=quality.accuracy_drop if quality else None, speedup=entry.speedup,
                          size=entry.size_bytes)
    rows = [c.to_dict() for c in found]
    if guarding is not None:  # the guard's drop is its own check, named as the guard
        for row in rows:
            if row["budget"] == "max_fidelity_drop":
                row["budget"] = GUARD_CHECK
    return rows


@dataclass
class Listing:
    """What `compress --list-layers` found: each target's layers, and notes on the model and targets."""

    layers: dict[str, list[Layer]]
    notes: list[str]


def check_listing(config: recipe.CompressConfig, targets: tuple[str, ...] | None) -> None:
    """Refuse, before any work, a layer listing that cannot be made. The layers are those of the
    full-integer int8 model that --keep-float and budgets work on, which needs calibration data:
    without it compress makes dynamic-range int8, where it keeps no layer in float."""
    if config.precision != "int8":
        raise UsageError(f"Layers are kept in float inside an int8 model; precision is {config.precision}.",
                         hint="Drop --precision (int8 is the default) to list the layers.")
    if config.calibration.data is None:
        raise UsageError("Listing layers needs calibration data, and none was given: without it int8 is dynamic "
                         "range, which keeps no layer in float.",
                         hint="Pass --calib PATH: the data compress will calibrate on.")
    framework = source_framework(config.model)
    if framework is None:
        return
    for target in targets or ():
        check_quant(f"{framework}->{target}", quant_settings(config), keep_float=True)


def listable_targets(framework: str, quant: QuantConfig, notes: list[str]) -> list[str]:
    """The targets that keep layers of ``framework`` in float, calibrate with ``quant.method`` and are
    installed; all that keep layers in float when none of them is, so that the first says what it lacks."""
    keys = [p.key for p in registry.EXPORTS if p.layers and p.key.startswith(f"{framework}->")]
    usable = []
    for key in keys:
        target = key.split("->")[1]
        lacking = missing_distributions("converter", key) + missing_distributions("runtime", target)
        if quant.method not in registry.export_path(key).calibration:
            notes.append(f"{target}: not listed; its quantizer has no calibration method '{quant.method}'.")
        elif lacking:
            notes.append(f"{target}: not listed; it needs {', '.join(lacking)}, which is not installed.")
        else:
            usable.append(target)
    return usable or [key.split("->")[1] for key in keys]


def list_layers(config: recipe.CompressConfig, targets: tuple[str, ...] | None = None,
                progress: Progress | None = None) -> Listing:
    """Per target (``targets``, else every listable one), the layers that --keep-float, recipe
    overrides and budgets choose from: those of the plain int8 artifact compress makes first, made
    from the same model, samples and settings in a temporary folder, and read as the search reads them."""
    say = progress or (lambda _msg: None)
    check_listing(config, targets)
    say("Loading the model")
    source, notes = load_source(config.model, trust=config.trust_model, weights=config.weights,
                                input_shapes=config.input_shapes, calib=config.calibration.data)
    say("Checking calibration data")
    images = image_options(config)
    calib, _held_back = open_calibration(config, source.handle.inputs, images)
    framework = source.handle.framework
    chosen = targets or tuple(listable_targets(framework, quant_settings(config), notes))
    source = _fix_sizes_for_tflite(config, source, calib, notes, chosen)
    model, _stages = run_passes(config, source, calib, images, notes, say)
    found: dict[str, list[Layer]] = {}
    with tempfile.TemporaryDirectory(prefix="edgeopt-layers-") as scratch:
        for target in chosen:
            artifact = Path(scratch) / f"{_stem(config, source)}_int8.{ARTIFACT_SUFFIX.get(target, target)}"
            found[target] = _target_layers(config, f"{framework}->{target}", model, calib, artifact, say)
    return Listing(found, notes)


def _target_layers(config: recipe.CompressConfig, key: str, model: LoadedModel, calib: cal.Subset,
                   artifact: Path, say: Progress) -> list[Layer]:
    quant = quant_settings(config)
    check_quant(key, quant, keep_float=True)
    target = key.split("->")[1]
    say(f"Converting to {target}")
    floating = convert(key, model, artifact.with_name(f"float_{artifact.name}"), keep_layout=config.keep_layout,
                       calib=calib)
    say(f"Quantizing to int8 ({target})")
    exported = _quantizing(config, floating, calib)(artifact, quant)
    say(f"Listing the layers of the {target} artifact")
    return budget.quant_layers(floating, calib, quant, exported.path)


def run_passes(config: recipe.CompressConfig, source: LoadedModel, calib: cal.Subset | None,
               images: cal.ImageOptions, notes: list[str], say: Progress) -> tuple[LoadedModel, list[tuple]]:
    """Prune, then distill, in the model's own framework. Returns the final model and, per stage,
    (name, model, info) starting with the original."""
    stages: list[tuple[str, LoadedModel, dict]] = [("original", source, {})]
    if config.prune is None and config.distill is None:
        return source, stages
    framework = source.handle.framework
    train = held = labels = None
    if config.distill is not None:
        data_path = config.distill.data or config.calibration.data
        if data_path is None:
            raise UsageError("Distillation needs data to learn from, and none was given.",
                             hint="Pass --distill-data PATH (labels optional) or --calib PATH.")
        data = cal.open_data(data_path, source.handle.inputs, images, role="distillation")
        fit, early = cal.select(data, samples=data.count, seed=config.calibration.seed,
                                holdout=max(1, data.count // 8))
        fit.check_finite()
        train, held, labels = fit.stacked(), early.stacked(), fit.labels()
    ctx = PassContext(original=source, train=train, held=held, labels=labels, seed=config.calibration.seed,
                      fine_tune_follows=config.distill is not None, progress=say, notes=notes)
    model = source
    if config.prune is not None:
        say(f"Pruning ({config.prune.method}, ratio {config.prune.ratio})")
        step = registry.resolve("pass", f"prune:{framework}")(model, config.prune, ctx)
        model = step.model
        stages.append((f"pruned ({config.prune.method} {config.prune.ratio:g})", model, step.info))
    if config.distill is not None:
        say("Distilling")
        step = registry.resolve("pass", f"distill:{framework}")(model, config.distill, ctx)
        model = step.model
        stages.append(("distilled", model, step.info))
    return model, stages


def _stage_table(stage_info: list[tuple], first_artifact: dict) -> list[dict]:
    """Each stage's effect: params, MACs, fp32 size and latency, fidelity and accuracy."""
    variants = first_artifact.get("variants", {})
    rows = []
    for i, (name, model, info) in enumerate(stage_info):
        key = "fp32" if i == 0 else name
        measured = variants.get(key, {})
        rows.append({"stage": name, "params": model.handle.metadata.get("params"),
                     "macs": model.handle.metadata.get("macs"), **measured, "details": info})
    final = {k: first_artifact.get(k) for k in ("size_bytes", "latency_ms", "fidelity", "accuracy")}
    rows.append({"stage": f"quantized ({first_artifact['precision']})", **final})
    return rows


def _data_entry(path, subset: cal.Subset | None, seed: int, held_out: bool = False) -> dict | None:
    if subset is None:
        return None
    entry = {"path": str(path), "samples": len(subset), "seed": seed, "sha256": subset.sha256(),
             "labels": subset.source.labels is not None}
    if held_out:
        entry["held_out_from_calibration"] = True
    return entry


def _measure(target, source: LoadedModel, variants: dict, reference: Reference | None,
             config: recipe.CompressConfig, say: Progress) -> tuple[ArtifactEntry, Quality | None]:
    """Measure every variant (fp32 baseline, intermediate stages, the artifact) side by side; returns
    the artifact's report entry and its quality (None without validation data)."""
    threads = config.validation.threads
    # Data stays in the source's layout; each session turns it into its own.
    sessions = {k: open_own_artifact(target, v.path, source, threads=threads) for k, v in variants.items()}
    result = variants["artifact"]
    entry = ArtifactEntry(
        target=target, path=str(result.path), precision=result.precision, size_bytes=_size(result),
        gzip_size_bytes=gzip_size(result.path, *result.extra_files),
        io_dtypes={t.name: t.dtype for t in sessions["artifact"].inputs},
        input_layout={t.name: t.layout for t in sessions["artifact"].inputs},
        ops=op_summary(sessions["artifact"].ops()), float_fallback=result.float_fallback)
    if not config.validation.enabled:
        return entry, None
    entry.baseline_size_bytes = _size(variants["fp32"])
    extra = [k for k in variants if k not in ("fp32", "artifact")]
    measured: dict[str, dict[str, Any]] = {k: {"fp32_size_bytes": _size(variants[k])}
                                           for k in ("fp32", *extra)}
    for k in extra:
        measured[k]["precision"] = variants[k].precision
    quality = None
    if reference is not None:
        say(f"Validating on {reference.samples} samples")
        qualities = {k: reference.measure(session, (variants[k].path, *variants[k].extra_files))
                     for k, session in sessions.items()}
        quality = qualities["artifact"]
        entry.baseline_fidelity, entry.fidelity = qualities["fp32"].fidelity, quality.fidelity
        for k in measured:
            measured[k]["fidelity"] = qualities[k].fidelity
        if reference.accuracy is not None:
            entry.reference_accuracy, entry.accuracy = reference.accuracy, quality.accuracy
            for k in measured:
                measured[k]["accuracy"] = qualities[k].accuracy
        feed = next(iter(reference.val))
    else:
        own = {t.name: t for t in sessions["artifact"].inputs}
        feed = {t.name: np.random.default_rng(0).random((1, *_dims(t, own.get(t.name))), dtype=np.float32)
                for t in source.handle.inputs}
        entry.notes = ["No validation data: fidelity and accuracy not measured; latency on random inputs."]
    say(f"Measuring latency ({', '.join(sessions)}, interleaved)")
    stats = measure_interleaved(sessions, feed, runs=config.validation.runs, warmup=config.validation.warmup)
    entry.baseline_latency_ms = stats["fp32"].to_dict()
    entry.latency_ms = stats["artifact"].to_dict()
    entry.speedup = round(stats["fp32"].p50 / stats["artifact"].p50, 3)
    for k in measured:
        measured[k]["latency_ms"] = stats[k].to_dict()
    if extra:
        entry.variants = measured
    return entry, quality


def _dims(source: TensorSpec, own: TensorSpec | None) -> tuple[int, ...]:
    """One sample's dimensions in the source's layout; sizes the source leaves free come from the
    artifact, which fixes them, when the two share a layout."""
    dims = list(source.shape[1:])
    if own is not None and own.layout == source.layout and len(own.shape) == len(source.shape):
        dims = [d if d is not None else o for d, o in zip(dims, own.shape[1:])]
    return tuple(d or 1 for d in dims)


def gzip_size(path: Path, *more: Path) -> int:
    """Compressed size: what sparsity buys on the wire, since dense formats store zeros as-is."""
    import gzip

    return len(gzip.compress(b"".join(p.read_bytes() for p in (path, *more)), compresslevel=9, mtime=0))


def _size(exported) -> int:
    """Bytes of an artifact with the files that travel with it (an OpenVINO .bin)."""
    return sum(p.stat().st_size for p in (exported.path, *exported.extra_files))
