"""What 50% channel pruning buys on the device: MACs and int8 latency, pruned against unpruned.

Models (random weights: this measures cost, not accuracy):
- keras.applications.MobileNetV2(weights=None) at 224x224 -> int8 TFLite on LiteRT
- a ResNet-18-shaped PyTorch net built here -> int8 ONNX on onnxruntime

Both int8 artifacts of a model run in one process, interleaved, on the same runtime.
Prints a table and writes benchmarks/results/prune_cost.md.

    .venv/bin/python benchmarks/prune_cost.py [--runs 100] [--threads 2]
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from _results import show_and_save  # noqa: E402
from edgeopt import registry  # noqa: E402
from edgeopt.calibration import open_data, select  # noqa: E402
from edgeopt.passes.base import PassContext  # noqa: E402
from edgeopt.passes.quantize import export  # noqa: E402
from edgeopt.recipe import PruneConfig  # noqa: E402
from edgeopt.validate.latency import measure_interleaved  # noqa: E402

RESNET18 = '''
import torch
from torch import nn


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return torch.relu(y + (x if self.down is None else self.down(x)))


class ResNet18(nn.Module):
    def __init__(self, classes=1000):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
                                  nn.MaxPool2d(3, 2, 1))
        layers, cin = [], 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers += [Block(cin, cout, stride), Block(cout, cout, 1)]
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(512, classes)

    def forward(self, x):
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(self.layers(self.stem(x)), 1), 1))


def build():
    torch.manual_seed(0)
    return ResNet18().eval()
'''


def _calib(work: Path, shape: tuple[int, ...], name: str) -> Path:
    rng = np.random.default_rng(0)
    path = work / f"{name}_calib.npz"
    np.savez(path, x=rng.uniform(-1, 1, (40, *shape)).astype(np.float32))
    return path


def measure(name: str, source, target: str, calib_path: Path, work: Path, runs: int, threads: int) -> list[str]:
    data = open_data(calib_path, source.handle.inputs)
    calib, _ = select(data, samples=32, seed=0)
    ctx = PassContext(original=source, train=None, held=None)
    start = time.perf_counter()
    pruned = registry.resolve("pass", f"prune:{source.handle.framework}")(
        source, PruneConfig(method="channels", ratio=0.5), ctx).model
    prune_s = time.perf_counter() - start
    exporter = functools.partial(export, f"{source.handle.framework}->{target}")
    paths = {}
    for label, model in (("unpruned int8", source), ("pruned 50% int8", pruned)):
        result = exporter(model, work / f"{name}_{label.split()[0]}.{target}", precision="int8", calib=calib)
        paths[label] = result.path
    open_session = registry.resolve("runtime", target)
    sessions = {k: open_session(p, threads=threads, input_names=source.handle.input_names,
                                source_inputs=source.handle.inputs, source_outputs=source.handle.outputs)
                for k, p in paths.items()}
    stats = measure_interleaved(sessions, next(iter(calib)), runs=runs, warmup=10)
    base, cut = stats["unpruned int8"], stats["pruned 50% int8"]
    macs0, macs1 = source.handle.metadata["macs"], pruned.handle.metadata["macs"]
    params0, params1 = source.handle.metadata["params"], pruned.handle.metadata["params"]
    return [name, target, f"{params0 / 1e6:.2f} -> {params1 / 1e6:.2f} M", f"{macs0 / 1e6:.0f} -> {macs1 / 1e6:.0f} M",
            f"{100 * (1 - macs1 / macs0):.1f}%", f"{paths['unpruned int8'].stat().st_size / 1e6:.2f} -> "
            f"{paths['pruned 50% int8'].stat().st_size / 1e6:.2f} MB",
            f"{base.p50:.3f} -> {cut.p50:.3f}", f"{100 * (1 - cut.p50 / base.p50):.1f}%", f"{prune_s:.1f}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        from edgeopt.deps import require
        from edgeopt.frameworks.keras import load as load_keras
        from edgeopt.frameworks.torch import load as load_torch
        from edgeopt.model import Format

        keras = require("keras", "The pruning benchmark")  # imported quietly, as edgeopt does
        keras.utils.set_random_seed(0)
        keras.applications.MobileNetV2(weights=None, input_shape=(224, 224, 3)).save(work / "mobilenetv2.keras")
        mnv2 = load_keras(work / "mobilenetv2.keras", Format.KERAS_V3)
        rows.append(measure("MobileNetV2 (Keras)", mnv2, "tflite", _calib(work, (224, 224, 3), "mnv2"), work,
                            args.runs, args.threads))
        (work / "resnet18.py").write_text(RESNET18)
        resnet = load_torch(f"{work / 'resnet18.py'}:build", Format.TORCH_MODULE,
                            input_shapes={"x": (1, 3, 224, 224)})
        rows.append(measure("ResNet-18 (PyTorch)", resnet, "onnx", _calib(work, (3, 224, 224), "r18"), work,
                            args.runs, args.threads))
    header = ["model", "runtime", "params", "MACs", "MACs saved", "int8 size", "int8 p50 ms", "p50 saved",
              "prune s"]
    show_and_save("prune_cost", f"50% channel pruning, int8, {args.threads} threads, {args.runs} interleaved runs",
                  header, rows)


if __name__ == "__main__":
    main()
