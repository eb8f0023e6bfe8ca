"""One evaluator for every artifact: the reference outputs on the validation data are computed
once per run, and each artifact, budget-search try and ``edgeopt validate`` entry is judged
against them by the same code, into the same ``Quality``."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeopt import fidelity as fid
from edgeopt.calibration import Subset, stack
from edgeopt.errors import InputRejected, UsageError

MetricFn = Callable[[list[np.ndarray], np.ndarray | None], dict[str, float]]
CHUNK = 32  # samples per call: batches for a source model, streamed rows for a session


def load_metric(spec: str) -> MetricFn:
    """``path/to/metric.py:fn`` -> fn(outputs, labels) returning named floats."""
    file, _, name = spec.rpartition(":")
    path = Path(file)
    if not file or not name or path.suffix != ".py":
        raise UsageError(f"--metric must be FILE.py:FUNCTION; got '{spec}'.")
    if not path.is_file():
        raise InputRejected(f"The metric file '{path}' does not exist.")
    module_spec = importlib.util.spec_from_file_location(f"edgeopt_metric_{abs(hash(path.resolve()))}", path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:  # the user's file may raise anything on import
        raise InputRejected(f"Importing the metric file '{path}' raised {type(exc).__name__}: {exc}") from exc
    fn = getattr(module, name, None)
    if not callable(fn):
        raise InputRejected(f"'{path}' defines no function '{name}'.")
    return fn


def call_metric(fn: MetricFn, spec: str, outputs: list[np.ndarray], labels: np.ndarray | None) -> dict[str, float]:
    try:
        values = fn(outputs, labels)
    except Exception as exc:
        raise InputRejected(f"The metric '{spec}' raised {type(exc).__name__}: {exc}") from exc
    if not isinstance(values, dict) or not all(isinstance(v, (int, float)) for v in values.values()):
        raise InputRejected(f"The metric '{spec}' must return a dict of names to numbers; got {type(values).__name__}.")
    return {str(k): float(v) for k, v in values.items()}


class Metric:
    """The accuracy measure of ``validation.metric``: top1, top5, or FILE.py:FUNCTION."""

    def __init__(self, spec: str) -> None:
        self.spec = spec
        self._fn = None if spec in ("top1", "top5") else load_metric(spec)

    def __call__(self, outputs: list[np.ndarray], labels: np.ndarray | None) -> dict[str, float] | None:
        """All values (the first is the one budgets compare), or None where it cannot be computed."""
        if self._fn is not None:
            return call_metric(self._fn, self.spec, outputs, labels) or None
        if labels is None or not fid.is_classifier(outputs[0]):
            return None
        values = fid.accuracy(outputs[0], labels)
        if self.spec in values:
            values = {self.spec: values[self.spec], **values}
        return values


def fidelity_drop(fidelity: dict[str, float]) -> float:
    """Points: 100 x (1 - top-1 agreement) for classifiers, else 100 x (1 - cosine)."""
    if "top1_agreement" in fidelity:
        return 100.0 * (1.0 - fidelity["top1_agreement"])
    return 100.0 * (1.0 - fidelity["cosine"])


@dataclass
class Quality:
    """One artifact against the reference on the validation data."""

    fidelity: dict[str, float]
    accuracy: dict[str, float] | None
    fidelity_drop: float  # points, as ``fidelity_drop``
    accuracy_drop: float | None  # points of the metric's first value, reference minus artifact

    def to_dict(self) -> dict[str, Any]:
        return {"fidelity_drop": round(self.fidelity_drop, 4),
                "accuracy_drop": None if self.accuracy_drop is None else round(self.accuracy_drop, 4),
                "sqnr_db": self.fidelity.get("sqnr_db"), "fidelity": self.fidelity, "accuracy": self.accuracy}


class Reference:
    """The reference outputs on the validation samples ``val``, and what they score on ``metric``."""

    def __init__(self, outputs: list[np.ndarray], val: Subset, metric: Metric) -> None:
        self.outputs = outputs
        self.val = val
        self.metric = metric
        self.labels = val.labels()
        self.accuracy = metric(outputs, self.labels)
        # Artifact files' digest -> their quality: the guard's search judges the plain int8 model
        # and the artifact, and the validation after it need not run them again.
        self._known: dict[str, Quality] = {}
        self._prepared: fid.Outputs | None = None
        self._firsts: dict[int, Reference] = {}

    @property
    def _compared(self) -> fid.Outputs:
        if self._prepared is None:
            self._prepared = fid.Outputs(self.outputs)
        return self._prepared

    @classmethod
    def of_model(cls, model: Any, val: Subset, metric: Metric) -> Reference:
        """The outputs of a source model (``predict`` on batches), computed now."""
        parts = [model.predict(stack(rows)) for rows in val.chunks(CHUNK)]
        return cls([np.concatenate(p) for p in zip(*parts)], val, metric)

    @property
    def samples(self) -> int:
        return len(self.val)

    def rows(self, samples: int) -> list[dict[str, np.ndarray]]:
        """The first ``samples`` validation rows."""
        return [row for row, _ in zip(self.val, range(samples))]

    def first(self, samples: int) -> Reference:
        """The reference of the first ``samples`` samples, from the outputs already computed."""
        if len(self.val) <= samples:
            return self
        if samples not in self._firsts:
            # Outputs are the samples' outputs one after another, the same number of rows each.
            outputs = [o[:len(o) // len(self.val) * samples] for o in self.outputs]
            self._firsts[samples] = Reference(outputs, Subset(self.val.source, self.val.indices[:samples]),
                                              self.metric)
        return self._firsts[samples]

    def outputs_of(self, session: Any) -> list[np.ndarray]:
        """``session``'s outputs on the validation samples, streamed in chunks."""
        parts = [session.run_many(rows) for rows in self.val.chunks(CHUNK)]
        return [np.concatenate(p) for p in zip(*parts)]

    def judge(self, outputs: list[np.ndarray]) -> Quality:
        fidelity = self._compared.compare(outputs)
        accuracy = self.metric(outputs, self.labels)
        drop = None
        if accuracy and self.accuracy:
            drop = 100.0 * (next(iter(self.accuracy.values())) - next(iter(accuracy.values())))
        return Quality(fidelity, accuracy, fidelity_drop(fidelity), drop)

    def measure(self, session: Any, files: tuple[Path, ...] = ()) -> Quality:
        """``session``'s quality; with the ``files`` it runs, measured once per content."""
        key = artifact_digest(files) if files else None
        if key is None or key not in self._known:
            quality = self.judge(self.outputs_of(session))
            if key is None:
                return quality
            self._known[key] = quality
        return self._known[key]

    def measure_unless(self, session: Any, files: tuple[Path, ...], head: int,
                       hopeless: Callable[[Quality], bool]) -> tuple[Quality, bool]:
        """``session``'s quality, judged first on the ``head`` first samples: where ``hopeless``
        says that judgement settles it, the rest are not run, and it comes back with False (a
        judgement on part of the samples, never kept as the artifact's); else it runs the rest
        and judges them all, as ``measure``."""
        key = artifact_digest(files)
        if key in self._known or len(self.val) <= head:
            return self.measure(session, files), True
        front = self.first(head)
        outputs = front.outputs_of(session)
        early = front.judge(outputs)
        if hopeless(early):
            return early, False
        rest = Subset(self.val.source, self.val.indices[head:])
        parts = [outputs, *([session.run_many(rows) for rows in rest.chunks(CHUNK)])]
        self._known[key] = self.judge([np.concatenate(p) for p in zip(*parts)])
        return self._known[key], True

    def known(self, files: tuple[Path, ...]) -> Quality | None:
        return self._known.get(artifact_digest(files))


def artifact_digest(files: tuple[Path, ...]) -> str:
    from edgeopt.outputs import sha256_of

    return ":".join(sha256_of(f) for f in files)
