"""The prune step for Keras sources: structured channels or unstructured magnitude."""

from __future__ import annotations

from edgeopt.frameworks.keras import KerasModel
from edgeopt.passes.base import PassContext, PassResult
from edgeopt.passes.prune.keras_channels import ChannelPruneConfig, prune_channels
from edgeopt.passes.prune.keras_magnitude import MagnitudePruneConfig, MagnitudePruner, sparsity_by_layer


def run(model: KerasModel, config, ctx: PassContext) -> PassResult:
    """``config`` is a recipe.PruneConfig."""
    layers = tuple(config.layers.items())
    if config.method == "channels":
        cfg = ChannelPruneConfig(ratio=config.ratio, layers=layers, exclude=config.exclude,
                                 exclude_first=config.exclude_first_last, criterion=config.criterion)
        pruned, summary = prune_channels(model.native, cfg)
        if not summary:
            ctx.notes.append("Channel pruning found no channel group it could shrink safely; the model is unchanged.")
        return PassResult(KerasModel(model.handle.path, model.handle.format, pruned),
                          {"method": "channels", "ratio": config.ratio, "layers": summary})
    cfg = MagnitudePruneConfig(sparsity=config.ratio, scope=config.scope, layers=layers,
                               exclude=config.exclude, exclude_first_last=config.exclude_first_last)
    # Prune a copy: the original stays the teacher and the reference.
    clone = model.native.__class__.from_config(model.native.get_config())
    clone.set_weights(model.native.get_weights())
    MagnitudePruner(clone, cfg).set_sparsity(config.ratio)  # one shot: the stage shows its raw effect
    if ctx.fine_tune_follows:
        ctx.state["magnitude_config"] = cfg  # fine-tuning re-prunes along the gradual schedule
    else:
        ctx.notes.append("Magnitude pruning without fine-tuning (one shot); add --distill to recover accuracy.")
    result = KerasModel(model.handle.path, model.handle.format, clone)
    return PassResult(result, {"method": "magnitude", "ratio": config.ratio, "scope": config.scope,
                               "sparsity": sparsity_by_layer(clone)})
