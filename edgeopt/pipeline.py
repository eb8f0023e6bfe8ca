"""The compress job: import -> convert/quantize -> validate -> report, in one direction."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeopt import calibration as cal
from edgeopt import recipe, registry
from edgeopt.errors import InputRejected, UsageError
from edgeopt.formats import SOURCE_FORMATS, detect_format, suffix_mismatch
from edgeopt.frameworks.base import LoadedModel
from edgeopt.model import Format, TensorSpec
from edgeopt.outputs import OutputStage, check_output_dir
from edgeopt.passes.base import PassContext
from edgeopt.report import build_report, render_markdown, write_json
from edgeopt.report_html import render_html
from edgeopt.validate import fidelity as fid
from edgeopt.validate.latency import measure_interleaved

Progress = Callable[[str], None]


@dataclass
class Result:
    """What a compress run produced: the report (as in report.json) and where files went."""

    report: dict[str, Any]
    output_dir: Path
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def artifacts(self) -> list[dict[str, Any]]:
        return self.report["artifacts"]


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        with f.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


# File suffixes of artifacts whose target name is not their extension.
ARTIFACT_SUFFIX = {"openvino": "xml"}


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
    else:
        source = loader(path, fmt, trust=trust)
    return source, notes + list(source.handle.metadata.get("notes", []))


def compress(config: recipe.CompressConfig, progress: Progress | None = None) -> Result:
    say = progress or (lambda _msg: None)
    started = time.perf_counter()
    out_dir = config.output_dir()
    check_output_dir(out_dir)

    say("Loading the model")
    source, notes = load_source(config.model, trust=config.trust_model, weights=config.weights,
                                input_shapes=config.input_shapes, calib=config.calibration.data)
    inputs = source.handle.inputs

    say("Checking calibration and validation data")
    images = cal.ImageOptions(size=config.calibration.image_size, mean=config.calibration.mean,
                              std=config.calibration.std, layout=config.calibration.layout,
                              color=config.calibration.color)
    calib = holdout = val = None
    if config.calibration.data is not None:
        calib_source = cal.open_data(config.calibration.data, inputs, images, role="calibration")
        keep_back = cal.holdout_size(calib_source.count) if config.validation.data is None else 0
        calib, holdout = cal.select(calib_source, samples=config.calibration.samples,
                                    seed=config.calibration.seed, holdout=keep_back)
        calib.check_finite()
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
    if config.precision == "int8" and calib is None:
        notes.append("No calibration data: the int8 model uses dynamic-range quantization "
                     "(int8 weights, float activations). Pass --calib for full-integer int8.")

    model, stage_info = run_passes(config, source, calib, images, notes, say)

    with OutputStage(out_dir) as stage:
        artifacts = []
        stem = source.handle.metadata.get("stem") or \
            (config.model.stem if config.model.is_file() else config.model.name)
        for target in config.targets:
            say(f"Converting to {target}")
            exporter = registry.resolve("exporter", f"{source.handle.framework}->{target}")
            # The baseline is the untouched source in fp32: speed-ups count every step. It takes the
            # artifact's layout, so that a layout change is not counted as a speed-up.
            keep = config.keep_layout
            variants = {"fp32": exporter(source, stage.dir / f".{stem}_baseline_fp32.{target}", precision="fp32",
                                         keep_layout=keep)}
            for i, (stage_name, stage_model, _info) in enumerate(stage_info[1:], start=1):
                variants[stage_name] = exporter(stage_model, stage.dir / f".{stem}_stage{i}_fp32.{target}",
                                                precision="fp32", keep_layout=keep)
            name = f"{stem}_{config.precision}.{ARTIFACT_SUFFIX.get(target, target)}"
            say(f"Quantizing to {config.precision}" if config.precision != "fp32" else "Writing fp32 artifact")
            result = exporter(model, stage.path(name), precision=config.precision, calib=calib,
                              int8_io=config.int8_io, keep_layout=keep)
            for extra in result.extra_files:
                stage.path(extra.name)
            notes.extend(result.notes)
            variants["artifact"] = result
            artifacts.append(_measure(target, source, variants, val, config, say))
            for key, exported in variants.items():
                if key != "artifact":
                    for file in (exported.path, *exported.extra_files):
                        file.unlink(missing_ok=True)

        report = build_report(
            command="compress", config=config, source=source, source_sha256=_source_sha256(config.model, source),
            calibration=_data_entry(config.calibration.data, calib, config.calibration.seed),
            validation=_data_entry(config.validation.data or config.calibration.data, val, config.calibration.seed,
                                   held_out=config.validation.data is None and val is holdout),
            artifacts=artifacts, notes=notes, wall_seconds=time.perf_counter() - started)
        if len(stage_info) > 1:
            report["stages"] = _stage_table(stage_info, artifacts[0])
        say("Writing outputs")
        for a in report["artifacts"]:
            a["path"] = str(out_dir / Path(a["path"]).name)
        write_json(stage.path("report.json"), report)
        stage.path("report.md").write_text(render_markdown(report), encoding="utf-8")
        stage.path("report.html").write_text(render_html(report), encoding="utf-8")
        stage.path("recipe.yaml").write_text(recipe.to_yaml(config), encoding="utf-8")
        files = stage.commit()
    return Result(report=report, output_dir=out_dir, files=files)


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


def _measure(target, source: LoadedModel, variants: dict, val: cal.Subset | None,
             config: recipe.CompressConfig, say: Progress) -> dict[str, Any]:
    """Measure every variant (fp32 baseline, intermediate stages, the artifact) side by side."""
    open_session = registry.resolve("runtime", target)
    names = source.handle.input_names
    threads = config.validation.threads
    # Data stays in the source's layout; each session turns it into its own.
    sessions = {k: open_session(v.path, threads=threads, input_names=names, source_inputs=source.handle.inputs,
                                source_outputs=source.handle.outputs) for k, v in variants.items()}
    result, baseline = variants["artifact"], variants["fp32"]
    entry: dict[str, Any] = {
        "target": target, "path": str(result.path), "precision": result.precision,
        "size_bytes": _size(result), "gzip_size_bytes": gzip_size(result.path, *result.extra_files),
        "baseline_size_bytes": _size(baseline),
        "io_dtypes": {t.name: t.dtype for t in sessions["artifact"].inputs},
        "input_layout": {t.name: t.layout for t in sessions["artifact"].inputs},
        "ops": op_summary(sessions["artifact"]), "float_fallback": result.float_fallback,
    }
    extra = [k for k in variants if k not in ("fp32", "artifact")]
    measured: dict[str, dict[str, Any]] = {k: {"fp32_size_bytes": _size(variants[k])}
                                           for k in ("fp32", *extra)}
    if not config.validation.enabled:
        return entry
    if val is not None:
        say(f"Validating on {len(val)} samples")
        ref_out, outs, labels = evaluate(source, sessions, val)
        fidelities = {k: fid.fidelity(ref_out, o) for k, o in outs.items()}
        entry["baseline_fidelity"], entry["fidelity"] = fidelities["fp32"], fidelities["artifact"]
        for k in measured:
            measured[k]["fidelity"] = fidelities[k]
        if labels is not None and fid.is_classifier(ref_out[0]):
            entry["reference_accuracy"] = fid.accuracy(ref_out[0], labels)
            entry["accuracy"] = fid.accuracy(outs["artifact"][0], labels)
            for k in measured:
                measured[k]["accuracy"] = fid.accuracy(outs[k][0], labels)
        feed = next(iter(val))
    else:
        own = {t.name: t for t in sessions["artifact"].inputs}
        feed = {t.name: np.random.default_rng(0).random((1, *_dims(t, own.get(t.name))), dtype=np.float32)
                for t in source.handle.inputs}
        entry["notes"] = ["No validation data: fidelity and accuracy not measured; latency on random inputs."]
    say(f"Measuring latency ({', '.join(sessions)}, interleaved)")
    stats = measure_interleaved(sessions, feed, runs=config.validation.runs, warmup=config.validation.warmup)
    entry["baseline_latency_ms"] = stats["fp32"].to_dict()
    entry["latency_ms"] = stats["artifact"].to_dict()
    entry["speedup"] = round(stats["fp32"].p50 / stats["artifact"].p50, 3)
    for k in measured:
        measured[k]["latency_ms"] = stats[k].to_dict()
    if extra:
        entry["variants"] = measured
    return entry


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


def evaluate(source: LoadedModel, sessions: dict, subset: cal.Subset, chunk: int = 32):
    """Run the source (in batches) and every session (sample by sample) over ``subset``, streamed."""
    ref_parts: list[list[np.ndarray]] = []
    art_parts: dict[str, list[list[np.ndarray]]] = {k: [] for k in sessions}
    rows: list[dict[str, np.ndarray]] = []

    def flush() -> None:
        batch = {n: np.concatenate([r[n] for r in rows]) for n in rows[0]}
        ref_parts.append(source.predict(batch))
        for key, session in sessions.items():
            art_parts[key].append(session.run_many(rows))
        rows.clear()

    for row in subset:
        rows.append(row)
        if len(rows) == chunk:
            flush()
    if rows:
        flush()
    join = lambda parts: [np.concatenate(p) for p in zip(*parts)]  # noqa: E731
    return join(ref_parts), {k: join(v) for k, v in art_parts.items()}, subset.labels()


# Ops that only convert between float and int8 at the edges of integer regions, per runtime.
QUANTIZE_OPS = {"QUANTIZE", "DEQUANTIZE", "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear",
                "FakeQuantize"}


def op_summary(session) -> dict[str, Any]:
    """Op counts, and which compute ops run in float: the evidence for 'full integer'."""
    if not hasattr(session, "ops"):
        return {}
    counts: dict[str, int] = {}
    float_ops: list[str] = []
    for op in session.ops():
        counts[op["op"]] = counts.get(op["op"], 0) + 1
        if op["op"] in QUANTIZE_OPS:
            continue
        if any(d.startswith("float") for d in op["inputs"][:1] + op["outputs"]):
            float_ops.append(op["op"])
    return {"counts": dict(sorted(counts.items())), "float_ops": sorted(set(float_ops)),
            "full_integer": not float_ops}
