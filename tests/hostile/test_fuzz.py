"""Fuzzing the loaders (Keras .h5/.keras, ONNX, PyTorch files and weights, TFLite up to LiteRT,
calibration .npz): valid files with bytes flipped, overwritten, inserted, deleted or cut off
must load, or be refused with one of edgeopt's errors (exit 3/4/5), never crash with another
exception. A few seconds per loader in CI (seeded); EDGEOPT_FUZZ_EXAMPLES=2000 and
HYPOTHESIS_PROFILE=explore search longer and wider. Every crash found becomes an @example here.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from edgeopt.errors import EdgeoptError  # noqa: E402

Mutation = tuple[str, int, int]


def _examples(default: int) -> int:
    return int(os.environ.get("EDGEOPT_FUZZ_EXAMPLES", default))


mutations = st.lists(
    st.tuples(st.sampled_from(["flip", "set", "insert", "delete", "cut"]), st.integers(0, 1 << 30),
              st.integers(0, 255)),
    min_size=1, max_size=4)


def mutate(data: bytes, ops: list[Mutation]) -> bytes:
    """Apply ``ops`` in order; positions wrap around the current length."""
    out = bytearray(data)
    for kind, position, value in ops:
        if not out:
            break
        at = position % len(out)
        if kind == "flip":
            out[at] ^= 1 << (value % 8)
        elif kind == "set":
            out[at] = value
        elif kind == "insert":
            out[at:at] = bytes([value]) * (1 + value % 16)
        elif kind == "delete":
            del out[at:at + 1 + value % 16]
        else:
            del out[at:]
    return bytes(out)


class Target:
    """One loader fed mutated copies of one valid file."""

    def __init__(self, tmp: Path, seed: Path) -> None:
        self.data = seed.read_bytes()
        self.path = tmp / seed.name

    def feed(self, ops: list[Mutation], load) -> None:
        self.path.write_bytes(mutate(self.data, ops))
        try:
            load(self.path)
        except EdgeoptError as exc:
            assert exc.exit_code in (3, 4, 5), exc
            assert str(self.path) in exc.message or self.path.name in exc.message, exc.message


def _load_source(path: Path, **kwargs) -> None:
    from edgeopt.pipeline import load_source

    load_source(path, trust=False, **kwargs)


@pytest.fixture
def target(tmp_path, monkeypatch):
    from edgeopt.frameworks import h5probe

    # A file that makes libhdf5 loop forever is refused when the reading child times out; a
    # minute is right for real files, a few seconds enough for these small ones.
    monkeypatch.setattr(h5probe, "BASE_SECONDS", 10.0)

    def make(seed: Path) -> Target:
        return Target(tmp_path, seed)
    return make


# Found by this fuzzer: an HDF5 dataspace damaged so that h5py raised KeyError (was exit 4), and
# bytes inserted into the symbol table so that reading the attributes never returned (a hang).
@example(ops=[("flip", 8836, 4)])
@example(ops=[("insert", 4512, 32)])
@settings(max_examples=_examples(15))
@given(ops=mutations)
def test_keras_h5_loader(ops, target, assets):
    target(assets.keras(".h5")).feed(ops, _load_source)


# Found by this fuzzer: a damaged config.json failing its CRC raised BadZipFile (was exit 4).
@example(ops=[("flip", 1128, 2)])
@settings(max_examples=_examples(15))
@given(ops=mutations)
def test_keras_v3_loader(ops, target, assets):
    target(assets.keras(".keras")).feed(ops, _load_source)


# Found by this fuzzer: an opset version too large for onnx.defs raised TypeError (was exit 4).
@example(ops=[("flip", 219, 7)])
@settings(max_examples=_examples(150))
@given(ops=mutations)
def test_onnx_loader(ops, target, assets):
    pytest.importorskip("onnxruntime")
    target(assets.onnx()).feed(ops, _load_source)


# Found by this fuzzer: an entry name flagged UTF-8 but not decodable, and a zip version from the
# future, made zipfile raise UnicodeDecodeError and NotImplementedError (was exit 4).
@example(ops=[("flip", 89893, 7)])
@example(ops=[("delete", 4, 0), ("delete", 4, 0), ("flip", 6395, 6)])
@settings(max_examples=_examples(150))
@given(ops=mutations)
def test_torch_weights_loader(ops, target, assets):
    spec, weights, _ = assets.torch()
    target(weights).feed(ops, lambda p: _load_source(spec, weights=p, input_shapes={"image": (1, 3, 16, 16)}))


@settings(max_examples=_examples(150))
@given(ops=mutations)
def test_torch_file_loader(ops, target, assets):
    target(assets.torch()[1]).feed(ops, lambda p: _load_source(p, input_shapes={"image": (1, 3, 16, 16)}))


def _open_tflite(path: Path) -> None:
    from edgeopt import registry
    from edgeopt.formats import detect_format

    if detect_format(path).value == "tflite":  # only a file that passed the checks reaches LiteRT
        registry.resolve("runtime", "tflite")(path, threads=1)


# Found by this fuzzer: LiteRT crashed (SIGSEGV) on a model with no subgraph and on a subnormal
# quantization scale; both are refused before the interpreter is built.
@example(ops=[("set", 20, 0)])
@example(ops=[("flip", 138495584, 21)])
@settings(max_examples=_examples(300))
@given(ops=mutations)
def test_tflite_check_then_litert(ops, target, assets):
    pytest.importorskip("ai_edge_litert")
    target(assets.tflite("int8")).feed(ops, _open_tflite)


def _open_calibration(path: Path) -> None:
    from edgeopt import calibration as cal
    from edgeopt.model import TensorSpec

    spec = TensorSpec("image", (None, 16, 16, 3), "float32", "nhwc")
    source = cal.open_data(path, [spec])
    subset, _ = cal.select(source, samples=8, seed=0)
    subset.check_finite()
    subset.labels()


@settings(max_examples=_examples(150))
@given(ops=mutations)
def test_calibration_npz_loader(ops, target, assets):
    target(assets.nhwc_data()).feed(ops, _open_calibration)
