"""Knowledge distillation in Keras 3: the source model teaches a pruned student.

Loss = alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * CE(labels),
the cross-entropy term only when labels exist. Models that end in softmax give probabilities;
their logarithm is used as logits, which softens identically. Magnitude masks, when given, are
re-applied after every step so pruned weights stay zero through fine-tuning.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from edgeopt.deps import require
from edgeopt.passes.distill.common import (EPS, DistillResult, DistillSettings, EarlyStopping, EpochLog,
                                           end_epoch, epoch_reporter, outputs_are_probabilities, soft_targets)


def distill(teacher, student, train: dict[str, np.ndarray], held: dict[str, np.ndarray], *,
            labels: np.ndarray | None, settings: DistillSettings,
            step_hook: Callable[[int, int], None] | None = None,
            on_epoch: Callable[[EpochLog], None] | None = None) -> DistillResult:
    """Train ``student`` in place; keeps the weights of the epoch with the lowest held-out divergence.

    ``step_hook(step, total_steps)`` runs after every optimizer step (magnitude masks use it); a
    sparsity schedule then runs to its end and the final weights are kept.
    """
    tf = require("tensorflow", "Distillation of Keras models")
    keras = require("keras", "Distillation of Keras models")
    keras.utils.set_random_seed(settings.seed)
    # Reductions split across threads sum in whatever order the threads finish; with deterministic
    # ops the same seed gives the same student however loaded the machine is.
    tf.config.experimental.enable_op_determinism()
    names = [t.name for t in teacher.inputs]
    count = len(train[names[0]])
    teacher_train = _predict(teacher, train, names)
    teacher_held = _predict(teacher, held, names)
    probs = outputs_are_probabilities(teacher_train)
    targets = soft_targets(teacher_train, probs, settings.temperature)
    optimizer = keras.optimizers.Adam(settings.learning_rate)
    rng = np.random.default_rng(settings.seed)
    total = max(1, -(-count // settings.batch_size)) * settings.epochs
    temp = settings.temperature
    kl_weight, ce_weight = settings.loss_weights(labels is not None)

    @tf.function(reduce_retracing=True)
    def train_step(batch, soft, y):
        with tf.GradientTape() as tape:
            out = student(batch if len(batch) > 1 else batch[0], training=True)
            logits = tf.math.log(out + EPS) if probs else out
            kl = tf.reduce_mean(tf.reduce_sum(
                soft * (tf.math.log(soft + EPS) - tf.nn.log_softmax(logits / temp)), axis=-1)) * temp * temp
            ce = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits))
            loss = kl_weight * kl + ce_weight * ce
        grads = tape.gradient(loss, student.trainable_variables)
        optimizer.apply_gradients(zip(grads, student.trainable_variables))
        return loss

    result = DistillResult()
    stopper = EarlyStopping(settings.patience, student.get_weights, enabled=step_hook is None)
    y_all = labels.astype(np.int32) if labels is not None else np.zeros(count, np.int32)
    step = 0
    for epoch in range(1, settings.epochs + 1):
        order = rng.permutation(count)
        losses = []
        for start in range(0, count, settings.batch_size):
            idx = order[start:start + settings.batch_size]
            batch = [tf.constant(train[n][idx]) for n in names]
            losses.append(float(train_step(batch, tf.constant(targets[idx]), tf.constant(y_all[idx]))))
            step += 1
            if step_hook:
                step_hook(step, total)
        if end_epoch(epoch, losses, teacher_held, _predict(student, held, names), probs, result, stopper, on_epoch):
            break
    if step_hook is None:  # a sparsity schedule must end on its final masks, not an earlier epoch
        student.set_weights(stopper.best_state)
    return result


def _predict(model, data: dict[str, np.ndarray], names: list[str], batch: int = 256) -> np.ndarray:
    parts = []
    count = len(data[names[0]])
    for start in range(0, count, batch):
        args = [data[n][start:start + batch] for n in names]
        parts.append(np.asarray(model(args if len(args) > 1 else args[0], training=False)))
    return np.concatenate(parts)


def run(model, config, ctx):
    """The distill step: ``config`` is a recipe.DistillConfig; ``model`` is the student."""
    from edgeopt.frameworks.keras import KerasModel
    from edgeopt.passes.base import PassResult
    from edgeopt.passes.prune.keras_magnitude import MagnitudePruner, sparsity_by_layer

    settings = DistillSettings.from_config(config, ctx.seed)
    # Train a copy, so the previous stage (and the teacher) stay as they were for the report.
    student = model.native.__class__.from_config(model.native.get_config())
    student.set_weights(model.native.get_weights())
    magnitude = ctx.state.pop("magnitude_config", None)
    pruner = MagnitudePruner(student, magnitude) if magnitude is not None else None
    result = distill(ctx.original.native, student, ctx.train, ctx.held, labels=ctx.labels, settings=settings,
                     step_hook=pruner.step if pruner else None, on_epoch=epoch_reporter(ctx, settings.epochs))
    info = result.info(ctx.labels is not None)
    if pruner is not None:
        pruner.set_sparsity(pruner.cfg.sparsity)  # end exactly on the target sparsity
        info["sparsity"] = sparsity_by_layer(student)
    return PassResult(KerasModel(model.handle.path, model.handle.format, student), info)
