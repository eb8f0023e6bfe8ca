"""What distillation shares across frameworks: settings, logs, early stopping and the numpy
metrics that judge each epoch on held-out data."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

EPS = 1e-7


@dataclass(frozen=True)
class DistillSettings:
    epochs: int = 30
    temperature: float = 4.0
    alpha: float = 0.7
    learning_rate: float = 1e-3
    batch_size: int = 32
    patience: int = 5
    seed: int = 0

    @classmethod
    def from_config(cls, config, seed: int) -> DistillSettings:
        return cls(epochs=config.epochs, temperature=config.temperature, alpha=config.alpha,
                   learning_rate=config.learning_rate, batch_size=config.batch_size,
                   patience=config.patience, seed=seed)

    def loss_weights(self, has_labels: bool) -> tuple[float, float]:
        """(KL weight, cross-entropy weight): without labels the soft targets are the whole signal."""
        return (self.alpha, 1.0 - self.alpha) if has_labels else (1.0, 0.0)


@dataclass
class EpochLog:
    epoch: int
    loss: float
    fidelity: float  # top-1 agreement with the teacher on held-out data (cosine for non-classifiers)
    held_loss: float  # KL(teacher || student) on held-out data: finer than agreement, which saturates


@dataclass
class DistillResult:
    history: list[EpochLog] = field(default_factory=list)
    best_epoch: int = 0
    stopped_early: bool = False

    def info(self, has_labels: bool) -> dict[str, Any]:
        return {"epochs_run": len(self.history), "best_epoch": self.best_epoch,
                "stopped_early": self.stopped_early, "labels": has_labels,
                "history": [{"epoch": h.epoch, "loss": round(h.loss, 5), "held_out_kl": round(h.held_loss, 6),
                             "held_out_agreement": round(h.fidelity, 4)} for h in self.history]}


class EarlyStopping:
    """Tracks the best epoch by held-out divergence; keeps that epoch's weights via callbacks."""

    def __init__(self, patience: int, snapshot: Callable[[], Any], enabled: bool = True) -> None:
        self.patience, self.snapshot, self.enabled = patience, snapshot, enabled
        self.best = np.inf
        self.best_state = snapshot()
        self.waited = 0

    def update(self, log: EpochLog, result: DistillResult) -> bool:
        """Record ``log``; True when training should stop."""
        result.history.append(log)
        if log.held_loss < self.best - 1e-9:
            self.best, self.best_state, self.waited, result.best_epoch = log.held_loss, self.snapshot(), 0, log.epoch
            return False
        self.waited += 1
        if self.enabled and self.waited >= self.patience:
            result.stopped_early = True
            return True
        return False


def end_epoch(epoch: int, losses: list[float], teacher_held: np.ndarray, student_held: np.ndarray, probs: bool,
              result: DistillResult, stopper: EarlyStopping, on_epoch: Callable[[EpochLog], None] | None) -> bool:
    """Judge the epoch on held-out data, report it, and say whether to stop."""
    log = EpochLog(epoch, float(np.mean(losses)), agreement(teacher_held, student_held),
                   divergence(teacher_held, student_held, probs))
    if on_epoch:
        on_epoch(log)
    return stopper.update(log, result)


def outputs_are_probabilities(values: np.ndarray) -> bool:
    return values.ndim == 2 and values.min() >= 0 and np.allclose(values.sum(1), 1.0, atol=1e-3)


def soft_targets(teacher_out: np.ndarray, probs: bool, temperature: float) -> np.ndarray:
    """Teacher distribution at temperature T; log-probabilities soften exactly like logits."""
    logits = np.log(teacher_out + EPS) if probs else teacher_out
    z = logits / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def divergence(teacher_out: np.ndarray, student_out: np.ndarray, probs: bool) -> float:
    """Mean KL(teacher || student) for classifiers; mean squared error otherwise."""
    if not probs:
        return float(np.mean((teacher_out - student_out) ** 2))
    t, s = teacher_out + EPS, student_out + EPS
    return float(np.mean(np.sum(t * (np.log(t) - np.log(s)), axis=1)))


def agreement(teacher_out: np.ndarray, student_out: np.ndarray) -> float:
    if teacher_out.ndim == 2 and teacher_out.shape[1] > 1:
        return float(np.mean(teacher_out.argmax(1) == student_out.argmax(1)))
    a, b = teacher_out.reshape(len(teacher_out), -1), student_out.reshape(len(student_out), -1)
    return float(np.mean(np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + EPS)))


def epoch_reporter(ctx, epochs: int) -> Callable[[EpochLog], None]:
    def show(log: EpochLog) -> None:
        ctx.progress(f"Distilling: epoch {log.epoch}/{epochs}, loss {log.loss:.4f}, "
                     f"held-out KL {log.held_loss:.4f}, agreement {log.fidelity:.3f}")
    return show
