"""Structured and magnitude pruning of PyTorch modules, and distillation of the pruned student."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torch_pruning")

from edgeopt.errors import UsageError  # noqa: E402
from edgeopt.passes.base import PassContext  # noqa: E402
from edgeopt.recipe import DistillConfig, PruneConfig  # noqa: E402

nn = torch.nn


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.conv_a = nn.Conv2d(16, 16, 3, padding=1)
        self.conv_b = nn.Conv2d(16, 16, 3, padding=1)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.branch = nn.Conv2d(16, 8, 1)
        self.head = nn.Linear((16 + 8) * 4 * 4, 5)

    def forward(self, x):
        x = torch.relu(self.bn(self.stem(x)))
        y = torch.relu(self.conv_b(torch.relu(self.conv_a(x))) + x)  # residual add
        y = self.dw(y)  # depthwise
        z = torch.cat([y, self.branch(y)], dim=1)  # concatenation
        z = nn.functional.adaptive_avg_pool2d(z, 4).flatten(1)  # flatten -> linear
        return torch.softmax(self.head(z), dim=1)


class TwoInput(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.meta = nn.Linear(4, 16)
        self.head = nn.Linear(8 + 16, 3)

    def forward(self, image, meta):
        a = torch.relu(self.conv2(torch.relu(self.conv(image)))).mean(dim=(2, 3))
        return self.head(torch.cat([a, torch.relu(self.meta(meta))], dim=1))


def _wrap(module, shapes):
    from edgeopt.frameworks.torch import TorchModel
    from edgeopt.model import Format, TensorSpec

    torch.manual_seed(0)
    module.eval()
    inputs = tuple(TensorSpec(n, (None, *s), "float32", "nchw" if len(s) == 3 else None) for n, s in shapes.items())
    return TorchModel(torch, module, Format.TORCH_MODULE, inputs, files=[], stem="net", notes=[], origin="net.py:build")


def _ctx(model, **kw):
    return PassContext(original=model, train=kw.pop("train", None), held=kw.pop("held", None), **kw)


def _run_prune(model, **settings):
    from edgeopt.passes.prune.torch import run

    return run(model, PruneConfig(**settings), _ctx(model))


def test_channel_pruning_residual_concat_depthwise_flatten():
    torch.manual_seed(0)
    model = _wrap(Residual(), {"x": (3, 16, 16)})
    result = _run_prune(model, method="channels", ratio=0.5)
    pruned = result.model.native
    widths = {row["layer"]: row["channels_after"] for row in result.info["layers"]}
    assert pruned.conv_a.out_channels == 8 and widths["conv_a"] == 8
    assert pruned.dw.in_channels == pruned.dw.groups  # depthwise stays depthwise
    assert pruned.stem.out_channels == 16 and pruned.head.out_features == 5  # first conv and classifier kept
    x = torch.rand(2, 3, 16, 16)
    assert pruned(x).shape == model.native(x).shape
    assert result.model.handle.metadata["params"] < 0.75 * model.handle.metadata["params"]
    assert result.model.handle.metadata["macs"] < model.handle.metadata.get("macs", 1 << 62)
    assert model.native.conv_a.out_channels == 16  # the source is untouched


def test_two_input_model_prunes_both_branches():
    model = _wrap(TwoInput(), {"image": (1, 8, 8), "meta": (4,)})
    result = _run_prune(model, method="channels", ratio=0.5, exclude_first_last=False, layers={"meta": 0.25})
    pruned = result.model.native
    assert pruned.conv2.out_channels == 4 and pruned.meta.out_features == 12
    out = pruned(torch.rand(3, 1, 8, 8), torch.rand(3, 4))
    assert out.shape == (3, 3)


def test_magnitude_one_shot_reaches_global_sparsity():
    model = _wrap(Residual(), {"x": (3, 16, 16)})
    result = _run_prune(model, method="magnitude", ratio=0.6)
    rows = [r for r in result.info["sparsity"] if r["layer"] not in ("stem", "head")]
    zeros = sum(r["sparsity"] * r["params"] for r in rows) / sum(r["params"] for r in rows)
    assert abs(zeros - 0.6) < 0.01
    assert not any(name.endswith("_mask") for name, _ in result.model.native.named_buffers())


@pytest.mark.parametrize("settings, needle", [
    ({"method": "channels", "ratio": 0.5, "exclude": ("nope",)}, "nope"),
    ({"method": "magnitude", "ratio": 0.5, "layers": {"missing_conv": 0.2}}, "missing_conv"),
])
def test_unknown_layer_is_usage_error(settings, needle):
    model = _wrap(Residual(), {"x": (3, 16, 16)})
    with pytest.raises(UsageError, match=needle):
        _run_prune(model, **settings)


@pytest.mark.slow
def test_distillation_recovers_a_damaged_student_and_keeps_masks():
    from edgeopt.passes.distill.torch import run as distill

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(700, 20)).astype(np.float32)
    y = (x @ rng.normal(size=(20, 4))).argmax(1)
    teacher = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4))
    opt = torch.optim.Adam(teacher.parameters(), 1e-2)
    for _ in range(300):
        loss = nn.functional.cross_entropy(teacher(torch.from_numpy(x)), torch.from_numpy(y))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model = _wrap(teacher, {"x": (20,)})
    ctx = _ctx(model, train={"x": x[:500]}, held={"x": x[500:600]}, fine_tune_follows=True)
    from edgeopt.passes.prune.torch import run as prune

    damaged = prune(model, PruneConfig(method="magnitude", ratio=0.9, exclude_first_last=False), ctx)
    test = torch.from_numpy(x[600:])

    def agree(m):
        with torch.no_grad():
            return float((m(test).argmax(1) == teacher(test).argmax(1)).float().mean())

    before = agree(damaged.model.native)
    healed = distill(damaged.model, DistillConfig(epochs=25, learning_rate=3e-3), ctx)
    after = agree(healed.model.native)
    assert after >= before + 0.05 and after >= 0.85, (before, after)
    middle = [r for r in healed.info["sparsity"] if r["layer"] == "2"][0]
    assert middle["sparsity"] >= 0.85  # the masks held through every step of fine-tuning
    assert len(healed.info["history"]) == 25


@pytest.mark.slow
def test_torch_prune_distill_int8_onnx_through_compress(torch_model, tmp_path):
    """prune -> distill -> int8 ONNX in one call, with each stage's effect in the report."""
    pytest.importorskip("onnxruntime")
    import edgeopt
    import tiny_models

    spec, weights, _module = torch_model("residual")
    feed = tiny_models.random_feed("residual", 160, seed=3)
    np.savez(tmp_path / "calib.npz", **feed)
    result = edgeopt.compress(spec, weights=weights, target="onnx", calib=tmp_path / "calib.npz",
                              prune={"method": "channels", "ratio": 0.5, "exclude_first_last": False},
                              distill={"epochs": 8}, runs=5, warmup=1, output=tmp_path / "out")
    stages = {s["stage"]: s for s in result.report["stages"]}
    original, pruned = stages["original"], stages["pruned (channels 0.5)"]
    assert pruned["params"] < original["params"] and pruned["macs"] < original["macs"]
    assert stages["distilled"]["details"]["epochs_run"] >= 1
    art = result.artifacts[0]
    assert art["target"] == "onnx" and art["precision"] == "int8"
    assert art["fidelity"]["cosine"] > 0.9
    assert (tmp_path / "out/report.html").exists()
