"""Knowledge distillation in PyTorch: the same loss as the Keras pass, in the model's framework."""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np

from edgeopt.deps import require
from edgeopt.passes.distill.common import (EPS, DistillResult, DistillSettings, EarlyStopping, EpochLog,
                                           end_epoch, epoch_reporter, outputs_are_probabilities, soft_targets)


def distill(teacher, student, names: list[str], train: dict[str, np.ndarray], held: dict[str, np.ndarray], *,
            labels: np.ndarray | None, settings: DistillSettings,
            step_hook: Callable[[int, int], None] | None = None,
            on_epoch: Callable[[EpochLog], None] | None = None) -> DistillResult:
    """Train ``student`` in place (first output only); keeps the best held-out epoch unless a
    sparsity schedule (``step_hook``) must run to its end."""
    torch = require("torch", "Distillation of PyTorch models")
    torch.manual_seed(settings.seed)
    count = len(train[names[0]])
    teacher_train, teacher_held = _predict(torch, teacher, train, names), _predict(torch, teacher, held, names)
    probs = outputs_are_probabilities(teacher_train)
    targets = torch.from_numpy(soft_targets(teacher_train, probs, settings.temperature))
    y_all = torch.from_numpy((labels if labels is not None else np.zeros(count)).astype(np.int64))
    kl_weight, ce_weight = settings.loss_weights(labels is not None)
    temp = settings.temperature
    optimizer = torch.optim.Adam(student.parameters(), lr=settings.learning_rate)
    rng = np.random.default_rng(settings.seed)
    total = max(1, -(-count // settings.batch_size)) * settings.epochs
    tensors = {n: torch.from_numpy(np.ascontiguousarray(train[n])) for n in names}
    result = DistillResult()
    stopper = EarlyStopping(settings.patience, lambda: copy.deepcopy(student.state_dict()), enabled=step_hook is None)
    step = 0
    for epoch in range(1, settings.epochs + 1):
        student.train()
        losses = []
        order = rng.permutation(count)
        for start in range(0, count, settings.batch_size):
            batch_idx = torch.from_numpy(order[start:start + settings.batch_size])
            out = _first(student(*(tensors[n][batch_idx] for n in names)))
            logits = torch.log(out + EPS) if probs else out
            soft = targets[batch_idx]
            kl = (soft * (torch.log(soft + EPS) - torch.log_softmax(logits / temp, dim=-1))).sum(-1).mean() * temp ** 2
            loss = kl_weight * kl
            if ce_weight:
                loss = loss + ce_weight * torch.nn.functional.cross_entropy(logits, y_all[batch_idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
            step += 1
            if step_hook:
                step_hook(step, total)
        if end_epoch(epoch, losses, teacher_held, _predict(torch, student, held, names), probs, result, stopper, on_epoch):
            break
    if step_hook is None:
        student.load_state_dict(stopper.best_state)
    student.eval()
    return result


def _first(out):
    return out[0] if isinstance(out, (list, tuple)) else out


def _predict(torch, module, data: dict[str, np.ndarray], names: list[str], batch: int = 256) -> np.ndarray:
    module.eval()
    parts = []
    with torch.no_grad():
        for start in range(0, len(data[names[0]]), batch):
            args = [torch.from_numpy(np.ascontiguousarray(data[n][start:start + batch])) for n in names]
            parts.append(_first(module(*args)).numpy())
    return np.concatenate(parts)


def run(model, config, ctx):
    """The distill step for PyTorch sources: ``model`` is the student, ``ctx.original`` the teacher."""
    from edgeopt.passes.base import PassResult
    from edgeopt.passes.prune.torch import TorchMagnitudePruner, _excluded, sparsity_by_layer, wrap

    torch = require("torch", "Distillation of PyTorch models")
    settings = DistillSettings.from_config(config, ctx.seed)
    student = copy.deepcopy(model.native)  # the previous stage stays as it was for the report
    magnitude = ctx.state.pop("magnitude_config", None)
    pruner = None
    if magnitude is not None:
        pruner = TorchMagnitudePruner(torch, student, magnitude,
                                      _excluded(torch, student, magnitude, model.example_inputs()))
    result = distill(ctx.original.native, student, model.handle.input_names, ctx.train, ctx.held,
                     labels=ctx.labels, settings=settings, step_hook=pruner.step if pruner else None,
                     on_epoch=epoch_reporter(ctx, settings.epochs))
    info = result.info(ctx.labels is not None)
    if pruner is not None:
        pruner.set_sparsity(magnitude.ratio)  # end exactly on the target sparsity
        pruner.finalize()
        info["sparsity"] = sparsity_by_layer(torch, student)
    return PassResult(wrap(model, student), info)
