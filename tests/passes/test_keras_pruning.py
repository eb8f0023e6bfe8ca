"""Structured and magnitude pruning of Keras models, and distillation of the pruned student."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import MODEL_BUILDERS, random_inputs
from edgeopt.errors import UsageError

keras = pytest.importorskip("keras")
kc = pytest.importorskip("edgeopt.passes.prune.keras_channels")
km = pytest.importorskip("edgeopt.passes.prune.keras_magnitude")


def _call(model, feed):
    args = [feed[t.name] for t in model.inputs]
    return np.asarray(model(args if len(args) > 1 else args[0], training=False))


def _conv_widths(model) -> dict[str, int]:
    return {layer.name: int(layer.kernel.shape[-1]) for layer in model.layers
            if layer.__class__.__name__ in ("Conv2D", "Dense")}


@pytest.mark.parametrize("name, expected", [
    # (builder, {producer: channels after 50% pruning}); first conv kept only when excluded
    ("residual", {"conv1": 4, "conv2": 4}),  # tied by the Add: pruned alike
    ("concat", {"branch_a": 2, "branch_b": 3}),  # each concatenated part pruned on its own
    ("depthwise", {"conv": 4}),  # the depthwise conv and batch-norm follow their input
    ("batchnorm", {"conv": 2}),  # flatten -> dense rows follow the channels
    ("two_input", {"conv": 2, "meta_dense": 2}),
])
def test_channel_pruning_shrinks_and_keeps_shapes(name, expected):
    model = MODEL_BUILDERS[name]()
    before = _conv_widths(model)
    pruned, summary = kc.prune_channels(model, kc.ChannelPruneConfig(0.5, exclude_first=False))
    after = _conv_widths(pruned)
    for layer, channels in expected.items():
        assert after[layer] == channels < before[layer]
    assert {s["layer"] for s in summary} == set(expected)
    assert pruned.count_params() < model.count_params()
    feed = random_inputs(model, 3)
    assert _call(pruned, feed).shape == _call(model, feed).shape  # outputs never pruned
    classifier = model.layers[-1].name
    assert after[classifier] == before[classifier]


def test_kept_channels_compute_exactly_what_they_did():
    """Pruning removes channels and nothing else: the kept ones' values are unchanged."""
    model = MODEL_BUILDERS["residual"]()
    plan = kc.plan(model, kc.ChannelPruneConfig(0.5, exclude_first=False))
    pruned = kc.apply(model, plan)
    keep = next(iter(plan.keep.values()))
    feed = random_inputs(model, 2)
    probe_old = keras.Model(model.inputs, model.get_layer("conv1").output)
    probe_new = keras.Model(pruned.inputs, pruned.get_layer("conv1").output)
    np.testing.assert_allclose(_call(probe_new, feed), _call(probe_old, feed)[..., keep], atol=1e-5)


def test_first_conv_excluded_by_default():
    model = MODEL_BUILDERS["pooling"]()
    pruned, summary = kc.prune_channels(model, kc.ChannelPruneConfig(0.5))
    assert summary == [] and pruned is model


@pytest.mark.parametrize("ratio", [0.0, 1.0, -0.2, 1.5])
def test_ratio_outside_open_interval_is_usage_error(ratio):
    with pytest.raises(UsageError, match="ratio"):
        kc.ChannelPruneConfig(ratio)
    with pytest.raises(UsageError, match="sparsity"):
        km.MagnitudePruneConfig(ratio)


def test_unknown_layer_named_in_error():
    model = MODEL_BUILDERS["residual"]()
    with pytest.raises(UsageError, match="no_such_layer"):
        kc.prune_channels(model, kc.ChannelPruneConfig(0.5, layers=(("no_such_layer", 0.3),)))
    with pytest.raises(UsageError, match="no_such_layer"):
        km.MagnitudePruner(model, km.MagnitudePruneConfig(0.5, exclude=("no_such_layer",)))


def test_magnitude_reaches_target_sparsity_globally():
    model = MODEL_BUILDERS["batchnorm"]()
    pruner = km.MagnitudePruner(model, km.MagnitudePruneConfig(0.6, exclude_first_last=False))
    pruner.set_sparsity(0.6)
    zeros = sum(int(np.sum(layer.kernel.numpy() == 0)) for layer in pruner.layers)
    total = sum(int(np.prod(layer.kernel.shape)) for layer in pruner.layers)
    assert abs(zeros / total - 0.6) < 0.01


def test_schedule_is_cubic_and_ends_on_target():
    model = MODEL_BUILDERS["dense"]()
    pruner = km.MagnitudePruner(model, km.MagnitudePruneConfig(0.8, exclude_first_last=False))
    assert pruner.target_at(0, 100) == 0.0
    assert pruner.target_at(35, 100) == pytest.approx(0.8 * (1 - 0.5 ** 3))
    assert pruner.target_at(70, 100) == pytest.approx(0.8)
    assert pruner.target_at(100, 100) == pytest.approx(0.8)


@pytest.mark.slow
def test_masks_survive_fine_tuning_and_distillation_recovers_fidelity():
    """A damaged student (half its channels cut, then 70% of weights zeroed) learns back from
    its teacher; the zeros stay zero through every optimizer step."""
    from edgeopt.passes.distill.keras import DistillSettings, distill

    keras.utils.set_random_seed(1)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(600, 20)).astype(np.float32)
    w = rng.normal(size=(20, 3))
    y = (x @ w).argmax(1)
    inp = keras.Input((20,), name="features")
    h = keras.layers.Dense(64, activation="relu", name="hidden")(inp)
    out = keras.layers.Dense(3, activation="softmax", name="probs")(h)
    teacher = keras.Model(inp, out)
    teacher.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy")
    teacher.fit(x, y, epochs=30, batch_size=64, verbose=0)

    student, _ = kc.prune_channels(teacher, kc.ChannelPruneConfig(0.5, exclude_first=False))
    cfg = km.MagnitudePruneConfig(0.7, exclude_first_last=False)
    pruner = km.MagnitudePruner(student, cfg)
    pruner.set_sparsity(0.7)
    before = float(np.mean(_call(student, {"features": x[500:]}).argmax(1) ==
                           _call(teacher, {"features": x[500:]}).argmax(1)))
    pruner = km.MagnitudePruner(student, cfg)
    zeros_each_step = []

    def hook(step, total):
        pruner.step(step, total)
        zeros = sum(int(np.sum(layer.kernel.numpy() == 0)) for layer in pruner.layers)
        zeros_each_step.append(zeros / sum(int(np.prod(layer.kernel.shape)) for layer in pruner.layers))

    result = distill(teacher, student, {"features": x[:400]}, {"features": x[400:500]}, labels=None,
                     settings=DistillSettings(epochs=15, learning_rate=3e-3), step_hook=hook)
    after = float(np.mean(_call(student, {"features": x[500:]}).argmax(1) ==
                          _call(teacher, {"features": x[500:]}).argmax(1)))
    assert after > before + 0.05 and after >= 0.9, (before, after)
    assert zeros_each_step[-1] >= 0.69  # final masks hold the target sparsity after the last step
    assert len(result.history) == 15  # a sparsity schedule runs to its end
    # once the ramp is over (70% of steps) the sparsity never drops again
    ramp_end = int(0.7 * len(zeros_each_step))
    assert min(zeros_each_step[ramp_end + 1:]) >= 0.69
