"""Structured channel pruning for Keras 3 models: whole filters and units are removed.

``keras_channel_graph`` finds the channel groups that must be pruned alike (a residual Add ties
its branches' producers into one); here each group's channels are ranked by a joint importance
and the least important ones chosen for removal; ``keras_channel_surgery`` rebuilds the model
with fewer filters/units and the kept weight slices.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgeopt.errors import UsageError
from edgeopt.passes.prune.keras_channel_graph import SEPARABLE, Trace, operations, trace
from edgeopt.passes.prune.keras_channel_surgery import rebuild


@dataclass(frozen=True)
class ChannelPruneConfig:
    """``ratio`` of channels removed per group; ``layers`` maps a layer-name regex to its own
    ratio (last match wins); ``exclude`` lists regexes of layers whose outputs stay whole."""

    ratio: float
    layers: tuple[tuple[str, float], ...] = ()
    exclude: tuple[str, ...] = ()
    exclude_first: bool = True
    criterion: str = "l2"

    def __post_init__(self) -> None:
        for name, r in (("ratio", self.ratio), *((f"layers['{p}']", v) for p, v in self.layers)):
            if not 0.0 < r < 1.0:
                raise UsageError(f"Pruning {name} must be strictly between 0 and 1; got {r}.",
                                 hint="For example --prune channels:0.5 removes half the channels.")
        if self.criterion not in ("l1", "l2"):
            raise UsageError(f"Pruning criterion must be 'l1' or 'l2'; got '{self.criterion}'.")


@dataclass
class PrunePlan:
    keep: dict[int, np.ndarray]  # root space -> kept channel indices
    trace: Trace
    summary: list[dict]  # per producer: channels before/after
    groups: list[dict]  # per pruned group: its producers, channels before/after
    kept_whole: list[dict]  # per group left whole: its producers and why


def plan(model: Any, cfg: ChannelPruneConfig) -> PrunePlan:
    _check_patterns(model, cfg)
    t = trace(model)
    g = t.graph
    names = [layer.name for layer in model.layers]
    keep: dict[int, np.ndarray] = {}
    groups, kept_whole = [], []
    for root, members in g.groups().items():
        producers = sorted((p for s in members for p in g.producers.get(s, [])), key=names.index)
        if not producers:
            continue  # model inputs and what opaque layers make: nothing here to shrink
        channels = g.size[root]
        reasons = [r for s in members for r in g.pins.get(s, [])]
        if not reasons and any(re.fullmatch(p, n) for p in cfg.exclude for n in producers):
            reasons = ["excluded by the prune settings"]
        if not reasons and cfg.exclude_first and t.first_producers.intersection(producers):
            reasons = ["reads the model input directly; the first layer is kept by default"]
        ratio = cfg.ratio
        for pattern, r in cfg.layers:
            if any(re.fullmatch(pattern, n) for n in producers):
                ratio = r
        kept = max(1, int(round(channels * (1.0 - ratio))))
        if not reasons and kept >= channels:
            reasons = [f"{channels} channels are too few to remove any at ratio {ratio:g}"]
        if reasons:
            kept_whole.append({"layers": producers, "channels": channels, "reason": "; ".join(dict.fromkeys(reasons))})
            continue
        score = importance(model, t, producers, cfg.criterion)
        keep[root] = np.sort(np.argsort(-score, kind="stable")[:kept])
        groups.append({"layers": producers, "channels_before": channels, "channels_after": kept})
    groups.sort(key=lambda row: names.index(row["layers"][0]))
    kept_whole.sort(key=lambda row: names.index(row["layers"][0]))
    summary = sorted(({"layer": p, "channels_before": row["channels_before"], "channels_after": row["channels_after"]}
                      for row in groups for p in row["layers"]), key=lambda s: names.index(s["layer"]))
    return PrunePlan(keep, t, summary, groups, kept_whole)


def _check_patterns(model: Any, cfg: ChannelPruneConfig) -> None:
    all_names = [layer.name for layer in model.layers]
    hint = "Layer names: " + ", ".join(all_names[:30]) + ("…" if len(all_names) > 30 else "")
    for pattern, _ in cfg.layers:
        if not any(re.fullmatch(pattern, n) for n in all_names):
            raise UsageError(f"Pruning setting layers['{pattern}'] matches no layer of the model.", hint=hint)
    for pattern in cfg.exclude:
        if not any(re.fullmatch(pattern, n) for n in all_names):
            raise UsageError(f"Pruning setting exclude '{pattern}' matches no layer of the model.", hint=hint)


def importance(model: Any, t: Trace, producers: list[str], criterion: str) -> np.ndarray:
    """One score per channel of a group: each producer's filter norms, scaled by the batch-norm
    right after it, normalized to its largest so that every producer of a tied group counts alike."""
    total = 0.0
    for name in producers:
        layer = model.get_layer(name)
        weights = layer.get_weights()
        # A separable conv's pointwise kernel is what mixes into each output channel.
        kernel = weights[1] if layer.__class__.__name__ in SEPARABLE else weights[0]
        flat = np.abs(kernel.reshape(-1, kernel.shape[-1]).astype(np.float64))
        norm = flat.sum(0) if criterion == "l1" else np.sqrt((flat ** 2).sum(0))
        norm = norm * _bn_scale(model, t, name, norm.shape[0])
        total = total + norm / (norm.max() or 1.0)
    return np.asarray(total)


def _bn_scale(model: Any, t: Trace, name: str, channels: int) -> np.ndarray:
    """|gamma| / sqrt(var + eps) of the batch-norm that alone reads this layer's output, else 1:
    a filter the batch-norm scales to nothing matters nothing, however large its weights."""
    readers = t.consumers.get(name, [])
    if len(readers) != 1:
        return np.ones(channels)
    bn = operations(model)[readers[0]]
    if bn.__class__.__name__ != "BatchNormalization":
        return np.ones(channels)
    gamma = np.abs(bn.gamma.numpy()) if bn.gamma is not None else np.ones(channels)
    return gamma / np.sqrt(bn.moving_variance.numpy().astype(np.float64) + bn.epsilon)


def apply(model: Any, plan_: PrunePlan) -> Any:
    """A new model with the planned channels removed and the remaining weights copied."""
    return rebuild(model, plan_.trace, plan_.keep)


def prune_channels(model: Any, cfg: ChannelPruneConfig) -> tuple[Any, list[dict]]:
    """Return the pruned model and, per pruned layer, its channel counts before and after."""
    p = plan(model, cfg)
    if not p.keep:
        return model, []
    return apply(model, p), p.summary
