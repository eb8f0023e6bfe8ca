"""The prune step for Keras sources: structured channels or unstructured magnitude."""

from __future__ import annotations

from edgeopt.frameworks.keras import KerasModel
from edgeopt.passes.base import PassContext, PassResult
from edgeopt.passes.prune.keras_channels import ChannelPruneConfig, apply, plan
from edgeopt.passes.prune.keras_magnitude import MagnitudePruneConfig, MagnitudePruner, sparsity_by_layer


def run(model: KerasModel, config, ctx: PassContext) -> PassResult:
    """``config`` is a recipe.PruneConfig."""
    layers = tuple(config.layers.items())
    if config.method == "channels":
        cfg = ChannelPruneConfig(ratio=config.ratio, layers=layers, exclude=config.exclude,
                                 exclude_first=config.exclude_first_last, criterion=config.criterion)
        p = plan(model.native, cfg)
        if p.keep:
            # The pruned model is built anew from its config: its dropout and noise layers draw
            # their seeds when built, so seed them here, or fine-tuning differs from run to run.
            import keras

            keras.utils.set_random_seed(ctx.seed)
            pruned = apply(model.native, p)
        else:
            pruned = model.native
            why = "; ".join(f"{', '.join(row['layers'])}: {row['reason']}" for row in p.kept_whole[:6])
            ctx.notes.append("Channel pruning found no channel group it could shrink safely; the model is unchanged"
                             + (f" ({why})." if why else "."))
        before = sum(row["channels_before"] for row in p.groups)
        removed = before - sum(row["channels_after"] for row in p.groups)
        return PassResult(KerasModel(model.handle.path, model.handle.format, pruned),
                          {"method": "channels", "ratio": config.ratio, "layers": p.summary, "groups": p.groups,
                           "kept_whole": p.kept_whole,
                           "channels_removed": round(removed / before, 4) if before else 0.0})
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
