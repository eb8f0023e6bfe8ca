"""The prune step for PyTorch sources.

Channels: Torch-Pruning's dependency graph finds every layer coupled to a pruned channel
(residual adds, concatenations, depthwise convs, batch-norm, flatten -> linear) and shrinks them
together, so the module really gets smaller. Magnitude: ``torch.nn.utils.prune`` masks, which
stay in force through fine-tuning and are folded into the weights before export.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

from edgeopt.deps import require
from edgeopt.errors import ConversionError, UsageError
from edgeopt.passes.base import PassContext, PassResult
from edgeopt.passes.prune.schedule import needs_update, sparsity_at


def wrap(model, module: Any):
    """A TorchModel like ``model`` around another module (a pruned or fine-tuned copy)."""
    from edgeopt.frameworks.torch import TorchModel

    meta = model.handle.metadata
    return TorchModel(model._torch, module, model.handle.format, model.handle.inputs,
                      files=[Path(f) for f in meta.get("files", [])], stem=meta.get("stem", "model"),
                      notes=list(meta.get("notes", [])), origin=model.origin)


def _check_patterns(module: Any, patterns: list[str]) -> None:
    names = [n for n, _ in module.named_modules() if n]
    for pattern in patterns:
        if not any(re.fullmatch(pattern, n) for n in names):
            raise UsageError(f"Pruning setting '{pattern}' matches no layer of the model.",
                             hint="Layer names: " + ", ".join(names[:30]) + ("…" if len(names) > 30 else ""))


def _output_layers(torch, module: Any, example_inputs: tuple) -> list[Any]:
    """The layers that shape the model's outputs: those whose result is an output as is, and the
    last Conv/Linear to run (the classifier, even when a softmax follows it as a function)."""
    produced: dict[int, Any] = {}
    executed: list[Any] = []
    weighted = (torch.nn.Linear, torch.nn.modules.conv._ConvNd)

    def record(m, _inputs, out):
        produced[id(out)] = m
        if isinstance(m, weighted):
            executed.append(m)

    handles = [m.register_forward_hook(record) for m in module.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            out = module(*example_inputs)
    finally:
        for h in handles:
            h.remove()
    outs = out if isinstance(out, (list, tuple)) else [out]
    layers = [produced[id(o)] for o in outs if id(o) in produced]
    return layers + executed[-1:]


def _weighted(torch, module: Any) -> list[tuple[str, Any]]:
    return [(n, m) for n, m in module.named_modules()
            if isinstance(m, (torch.nn.Linear, torch.nn.modules.conv._ConvNd))]


def _excluded(torch, module: Any, config, examples: tuple) -> list[Any]:
    layers = _weighted(torch, module)
    ignored = [m for n, m in layers if any(re.fullmatch(p, n) for p in config.exclude)]
    if config.method == "channels":
        ignored.extend(_output_layers(torch, module, examples))  # output shapes never change
    if config.exclude_first_last and layers:
        ignored.append(layers[0][1])  # the first conv sees raw inputs: the most sensitive layer
        if config.method != "channels":
            ignored.extend(_output_layers(torch, module, examples))
    return ignored


def run(model, config, ctx: PassContext) -> PassResult:
    torch = require("torch", "Pruning PyTorch models")
    module = copy.deepcopy(model.native)  # the original stays the teacher and the reference
    examples = model.example_inputs()
    _check_patterns(module, [*config.exclude, *config.layers])
    if config.method == "channels":
        return _channels(torch, model, module, examples, config, ctx)
    pruner = TorchMagnitudePruner(torch, module, config, _excluded(torch, module, config, examples))
    pruner.set_sparsity(config.ratio)
    if ctx.fine_tune_follows:
        ctx.state["magnitude_config"] = config  # fine-tuning re-prunes along the gradual schedule
        pruner.finalize()
    else:
        pruner.finalize()
        ctx.notes.append("Magnitude pruning without fine-tuning (one shot); add --distill to recover accuracy.")
    return PassResult(wrap(model, module), {"method": "magnitude", "ratio": config.ratio, "scope": config.scope,
                                            "sparsity": sparsity_by_layer(torch, module)})


def _channels(torch, model, module, examples, config, ctx: PassContext) -> PassResult:
    tp = require("torch_pruning", "Structured pruning of PyTorch models")
    before = {n: _width(m) for n, m in _weighted(torch, module)}
    by_name = dict(module.named_modules())
    ratios = {}
    for pattern, ratio in config.layers.items():  # last match wins, as for every override
        for name in by_name:
            if name and re.fullmatch(pattern, name):
                ratios[by_name[name]] = ratio
    importance = tp.importance.MagnitudeImportance(p=2 if config.criterion == "l2" else 1)
    pruner = tp.pruner.MetaPruner(module, examples if len(examples) > 1 else examples[0], importance=importance,
                                  pruning_ratio=config.ratio, pruning_ratio_dict=ratios or None,
                                  ignored_layers=_excluded(torch, module, config, examples))
    pruner.step()
    module.eval()
    _check_outputs_unchanged(torch, model, module, examples)
    summary = [{"layer": n, "channels_before": before[n], "channels_after": _width(m)}
               for n, m in _weighted(torch, module) if _width(m) != before.get(n)]
    if not summary:
        ctx.notes.append("Channel pruning found no channel group it could shrink safely; the model is unchanged.")
    return PassResult(wrap(model, module), {"method": "channels", "ratio": config.ratio, "layers": summary})


def _check_outputs_unchanged(torch, model, module, examples) -> None:
    with torch.no_grad():
        got = [tuple(o.shape) for o in _as_list(module(*examples))]
        want = [tuple(o.shape) for o in _as_list(model.native(*examples))]
    if got != want:
        raise ConversionError(f"Channel pruning changed the model's output shapes from {want} to {got}.",
                              hint="Exclude the layers that produce the outputs with prune.exclude.")


def _as_list(out: Any) -> list[Any]:
    return list(out) if isinstance(out, (list, tuple)) else [out]


def _width(layer: Any) -> int:
    return int(getattr(layer, "out_channels", None) or getattr(layer, "out_features", 0))


class TorchMagnitudePruner:
    """Masks on Conv/Linear weights via ``torch.nn.utils.prune``; ``step`` follows the schedule."""

    def __init__(self, torch, module: Any, config, ignored: list[Any]) -> None:
        self.torch, self.config = torch, config
        self.prune = require("torch.nn.utils.prune", "Magnitude pruning of PyTorch models")
        self.targets = [(m, "weight") for _n, m in _weighted(torch, module) if m not in ignored]
        self.names = {id(m): n for n, m in _weighted(torch, module)}
        if not self.targets:
            raise UsageError("Magnitude pruning found no Conv/Linear weight to prune in the model.")
        self._last = -1.0

    def set_sparsity(self, fraction: float) -> None:
        """New masks from the current weights; earlier zeros are the smallest, so they stay pruned."""
        self.finalize()
        if fraction <= 0:
            return
        if self.config.scope == "global":
            self.prune.global_unstructured(self.targets, pruning_method=self.prune.L1Unstructured, amount=fraction)
            return
        for m, name in self.targets:
            ratio = fraction * self._layer_ratio(self.names[id(m)]) / self.config.ratio
            self.prune.l1_unstructured(m, name, amount=min(ratio, 0.999))

    def _layer_ratio(self, name: str) -> float:
        ratio = self.config.ratio
        for pattern, r in self.config.layers.items():
            if re.fullmatch(pattern, name):
                ratio = r
        return ratio

    def step(self, step: int, total: int) -> None:
        target = sparsity_at(step, total, self.config.ratio)
        if needs_update(step, total, target, self._last):
            self.set_sparsity(target)
            self._last = target

    def finalize(self) -> None:
        """Fold the masks into the weights: the zeros stay, the re-parametrisation goes."""
        for m, name in self.targets:
            if self.prune.is_pruned(m) and hasattr(m, f"{name}_mask"):
                self.prune.remove(m, name)


def sparsity_by_layer(torch, module: Any) -> list[dict]:
    rows = []
    for name, m in _weighted(torch, module):
        w = m.weight.detach()
        rows.append({"layer": name, "params": int(w.numel()), "sparsity": round(float((w == 0).float().mean()), 4)})
    return rows
