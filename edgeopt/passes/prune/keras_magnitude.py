"""Unstructured magnitude pruning for Keras: the smallest weights become exact zeros.

Masks are computed globally (one threshold over all pruned kernels) or per layer, raised along
the schedule in ``schedule.py`` during fine-tuning and re-applied after every optimizer step, so pruned weights stay zero; the final weights carry
the zeros themselves, so no mask survives into the exported model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from edgeopt.errors import UsageError
from edgeopt.passes.prune.schedule import needs_update, sparsity_at

KERNEL_LAYERS = {"Conv1D", "Conv2D", "Conv3D", "Dense", "DepthwiseConv2D", "SeparableConv2D", "Conv2DTranspose"}


@dataclass(frozen=True)
class MagnitudePruneConfig:
    sparsity: float
    scope: str = "global"  # or "layer"
    layers: tuple[tuple[str, float], ...] = ()  # regex -> per-layer sparsity (scope "layer")
    exclude: tuple[str, ...] = ()
    exclude_first_last: bool = True

    def __post_init__(self) -> None:
        for name, s in (("sparsity", self.sparsity), *((f"layers['{p}']", v) for p, v in self.layers)):
            if not 0.0 < s < 1.0:
                raise UsageError(f"Pruning {name} must be strictly between 0 and 1; got {s}.",
                                 hint="For example --prune magnitude:0.8 zeroes 80% of the weights.")
        if self.scope not in ("global", "layer"):
            raise UsageError(f"Magnitude pruning scope must be 'global' or 'layer'; got '{self.scope}'.")


class MagnitudePruner:
    """Holds the masks of one model; ``step`` follows the schedule during fine-tuning."""

    def __init__(self, model, cfg: MagnitudePruneConfig) -> None:
        self.cfg = cfg
        self.layers = _prunable(model, cfg)
        if not self.layers:
            raise UsageError("Magnitude pruning found no Conv/Dense kernel to prune in the model.",
                             hint="Check the exclude settings.")
        self.masks = [np.ones(layer.kernel.shape, dtype=np.float32) for layer in self.layers]
        self._last_target = -1.0

    def target_at(self, step: int, total: int) -> float:
        return sparsity_at(step, total, self.cfg.sparsity)

    def set_sparsity(self, fraction: float) -> None:
        weights = [np.abs(layer.kernel.numpy()) for layer in self.layers]
        if self.cfg.scope == "global":
            everything = np.concatenate([w.ravel() for w in weights])
            k = int(fraction * everything.size)
            threshold = np.partition(everything, k)[k] if k > 0 else -1.0
            self.masks = [(w >= threshold).astype(np.float32) if k > 0 else np.ones_like(w) for w in weights]
        else:
            self.masks = []
            for layer, w in zip(self.layers, weights):
                target = fraction * self._layer_ratio(layer.name) / self.cfg.sparsity
                k = int(target * w.size)
                threshold = np.partition(w.ravel(), k)[k] if k > 0 else -1.0
                self.masks.append((w >= threshold).astype(np.float32) if k > 0 else np.ones_like(w))
        self.apply()

    def _layer_ratio(self, name: str) -> float:
        ratio = self.cfg.sparsity
        for pattern, r in self.cfg.layers:
            if re.fullmatch(pattern, name):
                ratio = r
        return ratio

    def apply(self) -> None:
        for layer, mask in zip(self.layers, self.masks):
            layer.kernel.assign(layer.kernel.numpy() * mask)

    def step(self, step: int, total: int) -> None:
        """Raise the sparsity along the schedule (masks recomputed when it moves), then re-mask."""
        target = self.target_at(step, total)
        if needs_update(step, total, target, self._last_target):
            self.set_sparsity(target)
            self._last_target = target
        else:
            self.apply()


def _prunable(model, cfg: MagnitudePruneConfig) -> list:
    names = [layer.name for layer in model.layers]
    for pattern in [*cfg.exclude, *(p for p, _ in cfg.layers)]:
        if not any(re.fullmatch(pattern, n) for n in names):
            raise UsageError(f"Pruning setting '{pattern}' matches no layer of the model.",
                             hint="Layer names: " + ", ".join(names[:30]))
    chosen = [layer for layer in model.layers
              if layer.__class__.__name__ in KERNEL_LAYERS and getattr(layer, "kernel", None) is not None
              and not any(re.fullmatch(p, layer.name) for p in cfg.exclude)]
    if cfg.exclude_first_last and len(chosen) > 2:
        chosen = chosen[1:-1]  # the first conv and the classifier are the most sensitive
    return chosen


def sparsity_by_layer(model) -> list[dict]:
    """The real fraction of exact zeros in each Conv/Dense kernel."""
    rows = []
    for layer in model.layers:
        kernel = getattr(layer, "kernel", None)
        if layer.__class__.__name__ in KERNEL_LAYERS and kernel is not None:
            w = kernel.numpy()
            rows.append({"layer": layer.name, "params": int(w.size), "sparsity": round(float(np.mean(w == 0)), 4)})
    return rows
