"""`edgeopt validate`: measure artifacts side by side against a reference on one device.

Every artifact (and the reference, when it can run) is loaded in its own runtime, fed the same
samples in its own layout, compared with the reference output, and timed interleaved with the
others under one protocol. The samples are in the reference's layout (the first artifact's
without one); each session transposes them into its own and its 4-D outputs back. The report has
the same schema as compress's.
"""

from __future__ import annotations

import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgeopt import calibration as cal
from edgeopt import registry
from edgeopt.errors import EnvironmentProblem, InputRejected, UsageError
from edgeopt.formats import SOURCE_FORMATS, detect_format
from edgeopt.model import Format, TensorSpec
from edgeopt.report_types import ArtifactEntry
from edgeopt.targets.base import Session, precision_of
from edgeopt.validate.devices import parse_device, require_gpu
from edgeopt.validate.evaluate import Metric, Reference
from edgeopt.validate.latency import measure_interleaved

RUNTIME_OF = {Format.TFLITE: "tflite", Format.ONNX: "onnx", Format.OPENVINO: "openvino"}


@dataclass(frozen=True)
class ValidateConfig:
    artifacts: tuple[Path, ...]
    val: Path
    reference: Path | None = None
    device: str = "cpu"
    threads: int | None = None
    runs: int = 200
    warmup: int = 10
    time_budget_s: float | None = None
    metric: str | None = None
    trust_model: bool = False
    remote_python: str = "python3"
    ssh_identity: Path | None = None
    ssh_known_hosts: Path | None = None
    seed: int = 0
    max_samples: int = 2000


class SourceSession(Session):
    """A source model (Keras, PyTorch, ONNX) in its own framework, timed like any artifact."""

    def __init__(self, model, load_seconds: float) -> None:
        self.model = model
        self.inputs = model.handle.inputs
        self.outputs = model.handle.outputs
        self.threads = 0  # the framework's own threading
        self.load_seconds = load_seconds
        self._feed: dict[str, np.ndarray] = {}

    def _prepare(self, feed: dict[str, np.ndarray]) -> None:
        self._feed = feed

    def run_raw(self) -> None:
        self.model.predict(self._feed)

    def _run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.model.predict(feed)


def rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1 << 20) if sys.platform == "darwin" else peak / 1024


def open_any(path: Path, *, threads: int | None, input_names: list[str] | None, device: str,
             trust: bool, source: Session | None = None) -> tuple[Session, str, Any]:
    """A session for an artifact or a source model, fed in ``source``'s layout when given;
    returns (session, kind, loaded source or None)."""
    fmt = detect_format(path)
    ins, outs = (source.inputs, source.outputs) if source is not None else (None, None)
    if fmt in RUNTIME_OF:
        if device == "gpu":
            require_gpu(RUNTIME_OF[fmt])
        opener = registry.resolve("runtime", RUNTIME_OF[fmt])
        session = opener(path, threads=threads, input_names=input_names, source_inputs=ins, source_outputs=outs,
                         device=device)
        return session, RUNTIME_OF[fmt], None
    if fmt in SOURCE_FORMATS:
        from edgeopt.pipeline import load_source

        if device == "gpu":
            # Source models are timed in their own framework on the CPU; GPU timing is for artifacts.
            raise EnvironmentProblem(f"--device gpu measures ONNX and OpenVINO artifacts; '{path}' is a "
                                     f"{fmt.value} source model.",
                                     hint="Export it with edgeopt compress --target onnx, then validate that.")
        start = time.perf_counter()
        model, _notes = load_source(path, trust=trust)
        loaded = SourceSession(model, time.perf_counter() - start)
        loaded.set_source(ins, outs)
        return loaded, model.handle.framework, model
    raise InputRejected(f"'{path}' is a {fmt.value} file, which edgeopt cannot run.")


def validate(config: ValidateConfig, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    say = progress or (lambda _m: None)
    device = parse_device(config.device)
    if not config.artifacts:
        raise UsageError("Give at least one artifact to validate.")
    ref_session = None
    if config.reference is not None:
        say(f"Loading the reference {config.reference}")
        ref_session, _kind, _model = open_any(config.reference, threads=config.threads, input_names=None,
                                              device="cpu", trust=config.trust_model)
    # The data's layout and names: the reference's, else the first artifact's.
    data: Session | None = ref_session
    sessions: dict[str, Session] = {}
    kinds: dict[str, str] = {}
    memory: dict[str, float] = {}
    for path in config.artifacts:
        say(f"Loading {path}")
        names = [t.name for t in data.inputs] if data is not None else None
        session, kind, _ = open_any(path, threads=config.threads, input_names=names,
                                    device="cpu" if device.kind == "ssh" else device.kind, trust=config.trust_model,
                                    source=data)
        data = data or session
        if device.kind == "ssh" and kind not in RUNTIME_OF.values():
            raise UsageError(f"'{path}' is a {kind} source model; a remote device runs TFLite, ONNX or OpenVINO "
                             "artifacts.", hint="Pass it as --reference instead.")
        label = path.name if path.name not in sessions else str(path)
        sessions[label], kinds[label] = session, kind
        memory[label] = rss_mb()
    inputs: tuple[TensorSpec, ...] = data.inputs
    say("Checking the validation data")
    source = cal.open_data(config.val, inputs, role="validation")
    val, _ = cal.select(source, samples=min(source.count, config.max_samples), seed=config.seed)
    val.check_finite()
    if device.kind == "ssh":
        say(f"Running {len(sessions)} artifact(s) on {device.public()}")
        outputs, stats, loads = _on_remote(config, device, sessions, kinds, val)
    else:
        say(f"Running {len(sessions)} artifact(s) on {len(val)} samples")
        outputs = {label: s.run_many(val) for label, s in sessions.items()}
        say(f"Measuring latency ({config.runs} interleaved runs after {config.warmup} warm-up)")
        stats = measure_interleaved(sessions, next(iter(val)), runs=config.runs, warmup=config.warmup,
                                    time_budget_s=config.time_budget_s)
        loads = {label: s.load_seconds for label, s in sessions.items()}
    ref_out = ref_session.run_many(val) if ref_session is not None else None
    ref_label = "reference" if ref_out is not None else next(iter(sessions))
    reference = Reference(outputs[ref_label] if ref_out is None else ref_out, val, Metric("top1"))
    custom = Metric(config.metric) if config.metric else None
    artifacts = []
    for label, session in sessions.items():
        path = next(p for p in config.artifacts if label in (p.name, str(p)))
        quality = reference.judge(outputs[label])
        entry = ArtifactEntry(
            target=kinds[label], device=device.public(), path=str(path), precision=_precision(session),
            size_bytes=_size(path), latency_ms=stats[label].to_dict(), load_seconds=round(loads[label], 4),
            fidelity=quality.fidelity, accuracy=quality.accuracy,
            input_layout={t.name: t.layout for t in session.inputs})
        if device.kind != "ssh":
            entry.peak_rss_mb = round(memory[label], 1)  # this process's; a device's is not measured
        if custom is not None:
            entry.metrics = custom(outputs[label], reference.labels) or {}
        if kinds[label] in RUNTIME_OF.values():
            entry.cpu_fallback_ops = session.fallback_ops()
        artifacts.append(entry)
    ref_entry = {"path": str(config.reference or config.artifacts[0]), "compared_against": ref_label}
    if reference.accuracy is not None:
        ref_entry["accuracy"] = reference.accuracy
    labels = reference.labels
    notes = [f"{label}: latency spread is wide (p90 > 1.5 x p50); re-run on a quiet machine before trusting it."
             for label, st in stats.items() if st.unstable]
    return {"artifacts": [a.to_dict() for a in artifacts], "reference": ref_entry, "labels": labels is not None,
            "notes": notes,
            "inputs": [t.describe() for t in inputs],
            "outputs": [t.describe() for t in data.outputs],
            "validation": {"path": str(config.val), "samples": len(val), "seed": config.seed,
                           "sha256": val.sha256(), "labels": labels is not None}}


def _on_remote(config: ValidateConfig, device, sessions: dict[str, Session], kinds: dict[str, str],
               val: cal.Subset):
    """Outputs, latency and load times measured on the remote device, by the same protocol."""
    from edgeopt.validate.latency import LatencyStats
    from edgeopt.validate.remote import SshOptions, measure

    options = SshOptions(python=config.remote_python, identity=config.ssh_identity,
                         known_hosts=config.ssh_known_hosts)
    labels = list(sessions)
    paths = [next(p for p in config.artifacts if label in (p.name, str(p))) for label in labels]
    inputs = val.stacked()
    artifacts = [(path, kinds[label]) for path, label in zip(paths, labels)]
    orders = [[t.name for t in sessions[label].inputs] for label in labels]
    # The device transposes as the local session would; its outputs come back to the data's layout here.
    axes = [[sessions[label].input_axes(name) for name in order] for label, order in zip(labels, orders)]
    timings, outs = measure(device, options, artifacts, inputs, threads=config.threads, runs=config.runs,
                            warmup=config.warmup, time_budget_s=config.time_budget_s, orders=orders, axes=axes)
    stats = {label: LatencyStats(**t["latency_ms"]) for label, t in zip(labels, timings)}
    loads = {label: t["load_seconds"] for label, t in zip(labels, timings)}
    back = {label: sessions[label].to_source_layout(list(out)) for label, out in zip(labels, outs)}
    return back, stats, loads


def _precision(session: Session) -> str:
    """The artifact's precision as its runtime runs it, read from its ops."""
    return precision_of(session.ops())


def _size(path: Path) -> int:
    if path.suffix == ".xml" and path.with_suffix(".bin").exists():
        return path.stat().st_size + path.with_suffix(".bin").stat().st_size
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def run(config: ValidateConfig, out_dir: Path, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Validate, then write report.json, report.md and report.html to ``out_dir`` atomically."""
    from edgeopt.outputs import OutputStage, check_output_dir
    from edgeopt.outputs import sha256_of
    from edgeopt.report import envelope, render_markdown, write_json
    from edgeopt.report_html import render_html

    check_output_dir(out_dir)
    started = time.perf_counter()
    result = validate(config, progress)
    origin = config.reference or config.artifacts[0]
    fmt = detect_format(origin)
    body = {"source": {"path": str(origin), "format": fmt.value, "sha256": sha256_of(origin), "inputs": result["inputs"],
                       "outputs": result["outputs"]},
            "reference": result["reference"], "artifacts": result["artifacts"], "validation": result["validation"]}
    settings = {k: (str(v) if isinstance(v, Path) else [str(p) for p in v] if isinstance(v, tuple) else v)
                for k, v in vars(config).items()}
    settings["device"] = parse_device(config.device).public()  # no user names in reports
    report = envelope("validate", body, settings=settings, notes=result["notes"],
                      wall_seconds=time.perf_counter() - started)
    with OutputStage(out_dir) as stage:
        write_json(stage.path("report.json"), report)
        stage.path("report.md").write_text(render_markdown(report), encoding="utf-8")
        stage.path("report.html").write_text(render_html(report), encoding="utf-8")
        stage.commit()
    return report
