"""Knowledge distillation in Keras 3: the source model teaches a pruned student.

Loss = alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * CE(labels),
the cross-entropy term only when labels exist. Models that end in softmax give probabilities;
their logarithm is used as logits, which softens identically. Magnitude masks, when given, are
re-applied after every step so pruned weights stay zero through fine-tuning.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from edgeopt.deps import require

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


def outputs_are_probabilities(values: np.ndarray) -> bool:
    return values.ndim == 2 and values.min() >= 0 and np.allclose(values.sum(1), 1.0, atol=1e-3)


def distill(teacher, student, train: dict[str, np.ndarray], held: dict[str, np.ndarray], *,
            labels: np.ndarray | None, settings: DistillSettings,
            step_hook: Callable[[int, int], None] | None = None,
            on_epoch: Callable[[EpochLog], None] | None = None) -> DistillResult:
    """Train ``student`` in place; keeps the weights of the epoch with the best held-out fidelity.

    ``step_hook(step, total_steps)`` runs after every optimizer step (magnitude masks use it).
    """
    tf = require("tensorflow", "Distillation of Keras models")
    keras = require("keras", "Distillation of Keras models")
    keras.utils.set_random_seed(settings.seed)
    names = [t.name for t in teacher.inputs]
    count = len(train[names[0]])
    teacher_train = _predict(teacher, train, names)
    teacher_held = _predict(teacher, held, names)
    probs = outputs_are_probabilities(teacher_train)
    t_logits = np.log(teacher_train + EPS) if probs else teacher_train
    temp = settings.temperature
    soft_targets = tf.nn.softmax(t_logits / temp).numpy().astype(np.float32)
    optimizer = keras.optimizers.Adam(settings.learning_rate)
    rng = np.random.default_rng(settings.seed)
    steps_per_epoch = max(1, -(-count // settings.batch_size))
    total = steps_per_epoch * settings.epochs

    def student_logits(batch):
        out = student(batch if len(batch) > 1 else batch[0], training=True)
        return tf.math.log(out + EPS) if probs else out

    # Without labels the soft targets are the whole signal.
    kl_weight, ce_weight = (settings.alpha, 1.0 - settings.alpha) if labels is not None else (1.0, 0.0)

    @tf.function(reduce_retracing=True)
    def train_step(batch, soft, y):
        with tf.GradientTape() as tape:
            logits = student_logits(batch)
            kl = tf.reduce_mean(tf.reduce_sum(
                soft * (tf.math.log(soft + EPS) - tf.nn.log_softmax(logits / temp)), axis=-1)) * temp * temp
            ce = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits))
            loss = kl_weight * kl + ce_weight * ce
        grads = tape.gradient(loss, student.trainable_variables)
        optimizer.apply_gradients(zip(grads, student.trainable_variables))
        return loss

    result = DistillResult()
    best, best_weights, waited, step = -np.inf, student.get_weights(), 0, 0
    y_all = labels.astype(np.int32) if labels is not None else np.zeros(count, np.int32)
    for epoch in range(1, settings.epochs + 1):
        order = rng.permutation(count)
        losses = []
        for start in range(0, count, settings.batch_size):
            idx = order[start:start + settings.batch_size]
            batch = [tf.constant(train[n][idx]) for n in names]
            loss = train_step(batch, tf.constant(soft_targets[idx]), tf.constant(y_all[idx]))
            losses.append(float(loss))
            step += 1
            if step_hook:
                step_hook(step, total)
        student_held = _predict(student, held, names)
        held_loss = _divergence(teacher_held, student_held, probs)
        log = EpochLog(epoch, float(np.mean(losses)), _agreement(teacher_held, student_held), held_loss)
        result.history.append(log)
        if on_epoch:
            on_epoch(log)
        score = -held_loss
        if score > best + 1e-6:
            best, best_weights, waited, result.best_epoch = score, student.get_weights(), 0, epoch
        else:
            waited += 1
            if waited >= settings.patience and step_hook is None:
                result.stopped_early = True
                break
    if step_hook is None:  # a sparsity schedule must end on its final masks, not an earlier epoch
        student.set_weights(best_weights)
    return result


def _predict(model, data: dict[str, np.ndarray], names: list[str], batch: int = 256) -> np.ndarray:
    parts = []
    count = len(data[names[0]])
    for start in range(0, count, batch):
        args = [data[n][start:start + batch] for n in names]
        parts.append(np.asarray(model(args if len(args) > 1 else args[0], training=False)))
    return np.concatenate(parts)


def _divergence(teacher_out: np.ndarray, student_out: np.ndarray, probs: bool) -> float:
    """Mean KL(teacher || student) for classifiers; mean squared error otherwise."""
    if not probs:
        return float(np.mean((teacher_out - student_out) ** 2))
    t, s = teacher_out + EPS, student_out + EPS
    return float(np.mean(np.sum(t * (np.log(t) - np.log(s)), axis=1)))


def _agreement(teacher_out: np.ndarray, student_out: np.ndarray) -> float:
    if teacher_out.ndim == 2 and teacher_out.shape[1] > 1:
        return float(np.mean(teacher_out.argmax(1) == student_out.argmax(1)))
    a, b = teacher_out.reshape(len(teacher_out), -1), student_out.reshape(len(student_out), -1)
    return float(np.mean(np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + EPS)))


def run(model, config, ctx) -> "PassResult":
    """The distill step: ``config`` is a recipe.DistillConfig; ``model`` is the student."""
    from edgeopt.frameworks.keras import KerasModel
    from edgeopt.passes.base import PassResult
    from edgeopt.passes.prune.keras_magnitude import MagnitudePruner, sparsity_by_layer

    settings = DistillSettings(epochs=config.epochs, temperature=config.temperature, alpha=config.alpha,
                               learning_rate=config.learning_rate, batch_size=config.batch_size,
                               patience=config.patience, seed=ctx.seed)
    # Train a copy, so the previous stage (and the teacher) stay as they were for the report.
    student = model.native.__class__.from_config(model.native.get_config())
    student.set_weights(model.native.get_weights())
    magnitude = ctx.state.pop("magnitude_config", None)
    pruner = MagnitudePruner(student, magnitude) if magnitude is not None else None

    def show(log: EpochLog) -> None:
        ctx.progress(f"Distilling: epoch {log.epoch}/{settings.epochs}, loss {log.loss:.4f}, "
                     f"held-out KL {log.held_loss:.4f}, agreement {log.fidelity:.3f}")

    result = distill(ctx.original.native, student, ctx.train, ctx.held, labels=ctx.labels, settings=settings,
                     step_hook=pruner.step if pruner else None, on_epoch=show)
    if pruner is not None:
        pruner.set_sparsity(pruner.cfg.sparsity)  # end exactly on the target sparsity
    info = {"epochs_run": len(result.history), "best_epoch": result.best_epoch,
            "stopped_early": result.stopped_early, "labels": ctx.labels is not None,
            "history": [{"epoch": h.epoch, "loss": round(h.loss, 5), "held_out_kl": round(h.held_loss, 6),
                         "held_out_agreement": round(h.fidelity, 4)}
                        for h in result.history]}
    if pruner is not None:
        info["sparsity"] = sparsity_by_layer(student)
    return PassResult(KerasModel(model.handle.path, model.handle.format, student), info)
