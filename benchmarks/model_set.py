"""The fixed set of models the peer benchmark runs, each with its calibration and evaluation data.

Two trained models from the bundled digits data (accuracy against labels), and MobileNetV2- and
ResNet-50-shaped networks in Keras and PyTorch with random weights and batch-norm statistics
estimated on random images (fidelity to the float model; their size and speed are what count).
Random-weight nets get random images in [-1, 1].
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "examples/digits"
DATA = ROOT / "calibration_data/digits"
NETS = Path(__file__).resolve().parent / "torch_nets.py"


@dataclass(frozen=True)
class Bench:
    name: str
    framework: str  # keras | torch
    model: str  # what edgeopt compress takes
    calib: Path  # npz; every tool gets all of its samples
    val: Path  # npz, labelled when the model is trained
    weights: Path | None = None
    input_shape: tuple[int, ...] | None = None  # PyTorch, batch first


def _random_images(path: Path, shape: tuple[int, ...], count: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    np.savez(path, x=rng.uniform(-1, 1, (count, *shape)).astype(np.float32))
    return path


def _settle_keras(model, keras) -> None:
    """Batch-norm moving statistics from one random batch, as torch_nets does for its networks: with
    the initial ones (mean 0, variance 1) activations drift layer after layer, unlike a trained net's."""
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in norms:
        layer.momentum = 0.0  # the moving statistics become this batch's
    rng = np.random.default_rng(2)
    model(rng.uniform(-1, 1, (8, *model.input_shape[1:])).astype(np.float32), training=True)
    for layer in norms:
        layer.momentum = 0.99


def build(work: Path, *, calib_samples: int, eval_samples: int, only: list[str] | None = None) -> list[Bench]:
    """Write the random-weight models and their data into ``work``; the digits models ship in the repo."""
    from edgeopt.deps import require

    benches = [
        Bench("digits CNN (Keras)", "keras", str(DIGITS / "digits_cnn.h5"), DATA / "calib.npz", DATA / "val.npz"),
        Bench("digits net (PyTorch)", "torch", f"{DIGITS / 'digits_net.py'}:build", DATA / "calib_nchw.npz",
              DATA / "val_nchw.npz", weights=DIGITS / "digits_torch.pt"),
    ]
    nhwc, nchw = (224, 224, 3), (3, 224, 224)
    for short, name in (("mnv2", "MobileNetV2"), ("rn50", "ResNet-50")):
        keras_name, torch_name = f"{name} (Keras)", f"{name} (PyTorch)"
        if only and keras_name not in only and torch_name not in only:
            continue
        keras_calib = _random_images(work / f"{short}_calib_nhwc.npz", nhwc, calib_samples, seed=0)
        keras_val = _random_images(work / f"{short}_val_nhwc.npz", nhwc, eval_samples, seed=1)
        torch_calib = _random_images(work / f"{short}_calib_nchw.npz", nchw, calib_samples, seed=0)
        torch_val = _random_images(work / f"{short}_val_nchw.npz", nchw, eval_samples, seed=1)
        if not only or keras_name in only:
            keras = require("keras", "The peer benchmark")  # imported quietly, as edgeopt does
            keras.utils.set_random_seed(0)
            app = keras.applications.MobileNetV2 if short == "mnv2" else keras.applications.ResNet50
            # Logits, not softmax: a random net's softmax is flat, below one int8 step, for every tool.
            net = app(weights=None, input_shape=nhwc, classifier_activation=None)
            _settle_keras(net, keras)
            net.save(work / f"{short}.keras")
            benches.append(Bench(keras_name, "keras", str(work / f"{short}.keras"), keras_calib, keras_val))
        if not only or torch_name in only:
            function = "mobilenet_v2" if short == "mnv2" else "resnet50"
            benches.append(Bench(torch_name, "torch", f"{NETS}:{function}", torch_calib, torch_val,
                                 input_shape=(1, *nchw)))
    return [b for b in benches if not only or b.name in only]
