"""Bad calibration and validation data: exit 3 naming the array, the sample and what was expected,
before any conversion starts; nothing written.

| case | exit | message contains |
|---|---|---|
| calibration all NaN | 3 | Sample 0 of '...calib.npz[image]' contains NaN |
| calibration partly NaN / Inf | 3 | Sample 7 of ... NaN / Inf |
| validation partly NaN | 3 | Sample 3 of '...val.npz[image]' contains NaN |
| NCHW data for an NHWC model (and NHWC for NCHW) | 3 | per-sample shape ... looks like the other layout (NHWC vs NCHW) |
| uint8 / int32 data for a float32 input | 3 | has dtype uint8 ... expects float32 |
| object array (a pickle) in the .npz, as data or labels | 3 | has dtype object ... never unpickles |
| array header declaring more samples than stored | 3 | declares ... but holds |
| image decompression bomb in an image folder | 3 | Cannot read the image |
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest

from .files import Payload
from .harness import MARKER, assert_outcome, cli, snapshot


def _images(n: int = 12, shape: tuple[int, ...] = (16, 16, 3), seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).random((n, *shape), dtype=np.float32)


def _npz(ws: Path, name: str, **arrays) -> Path:
    path = ws / f"{name}.npz"
    np.savez(path, **arrays)
    return path


def all_nan(ws: Path, a) -> tuple[list, list[str]]:
    calib = _npz(ws, "calib", image=np.full((12, 16, 16, 3), np.nan, np.float32))
    return [a.keras(), "--calib", calib], ["Sample 0 of", "calib.npz[image]' contains NaN values"]


def part_nan(ws: Path, a) -> tuple[list, list[str]]:
    data = _images()
    data[7, 3, 4, 1] = np.nan
    return [a.keras(), "--calib", _npz(ws, "calib", image=data)], ["Sample 7 of", "calib.npz[image]", "NaN"]


def part_inf(ws: Path, a) -> tuple[list, list[str]]:
    data = _images()
    data[5, 0, 0, 0] = np.inf
    return [a.keras(), "--calib", _npz(ws, "calib", image=data)], ["Sample 5 of", "contains Inf values"]


def val_nan(ws: Path, a) -> tuple[list, list[str]]:
    data = _images(seed=2)
    data[3] = np.nan
    val = _npz(ws, "val", image=data, labels=np.zeros(12, np.int64))
    return [a.keras(), "--calib", a.nhwc_data(), "--val", val], ["Sample 3 of", "val.npz[image]", "NaN"]


def nchw_for_nhwc(ws: Path, a) -> tuple[list, list[str]]:
    calib = _npz(ws, "calib", image=_images(shape=(3, 16, 16)))
    return [a.keras(), "--calib", calib], ["per-sample shape (3, 16, 16)", "expects (16,16,3)",
                                           "looks like the other layout (NHWC vs NCHW)"]


def nhwc_for_nchw(ws: Path, a) -> tuple[list, list[str]]:
    calib = _npz(ws, "calib", image=_images(shape=(16, 16, 3)))
    return [a.onnx(), "--target", "onnx", "--calib", calib], ["per-sample shape (16, 16, 3)", "expects (3,16,16)",
                                                              "the other layout (NHWC vs NCHW)"]


def uint8_data(ws: Path, a) -> tuple[list, list[str]]:
    calib = _npz(ws, "calib", image=(_images() * 255).astype(np.uint8))
    return [a.keras(), "--calib", calib], ["has dtype uint8", "expects float32", "(x / 255).astype('float32')"]


def int32_data(ws: Path, a) -> tuple[list, list[str]]:
    calib = _npz(ws, "calib", image=np.zeros((12, 16, 16, 3), np.int32))
    return [a.keras(), "--calib", calib], ["has dtype int32", "expects float32"]


def pickled_objects(ws: Path, a) -> tuple[list, list[str]]:
    # np.savez pickles object arrays; edgeopt reads array headers and raw rows, never pickles.
    payload = np.empty((12, 16, 16, 3), dtype=object)
    payload.fill(Payload(ws / MARKER))
    calib = _npz(ws, "calib", image=payload)
    return [a.keras(), "--calib", calib], ["calib.npz[image.npy] has dtype object", "never unpickles"]


def pickled_labels(ws: Path, a) -> tuple[list, list[str]]:
    labels = np.empty(12, dtype=object)
    labels[:] = [Payload(ws / MARKER)] * 12
    val = _npz(ws, "val", image=_images(), labels=labels)
    return [a.keras(), "--calib", a.nhwc_data(), "--val", val], ["val.npz[labels.npy] has dtype object",
                                                                 "never unpickles"]


def lying_header(ws: Path, a) -> tuple[list, list[str]]:
    # The header promises 10^9 samples; the member holds 12.
    buffer = io.BytesIO()
    np.save(buffer, _images())
    raw = buffer.getvalue().replace(b"(12, 16, 16, 3)", b"(1000000000, 16, 16, 3)", 1)
    calib = ws / "calib.npz"
    with zipfile.ZipFile(calib, "w") as zf:
        zf.writestr("image.npy", raw)
    return [a.keras(), "--calib", calib], ["calib.npz[image.npy] declares", "but holds"]


def image_bomb(ws: Path, a) -> tuple[list, list[str]]:
    image = pytest.importorskip("PIL.Image")
    folder = ws / "images"
    folder.mkdir()
    # 20000 x 20000 pixels (more than twice Pillow's limit) in a few kilobytes.
    image.new("1", (20000, 20000)).save(folder / "bomb.png", optimize=True)
    return [a.keras(), "--calib", folder], ["Cannot read the image", "bomb.png"]


CASES = {f.__name__: f for f in [all_nan, part_nan, part_inf, val_nan, nchw_for_nhwc, nhwc_for_nchw, uint8_data,
                                 int32_data, pickled_objects, pickled_labels, lying_header, image_bomb]}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_data_is_refused(case, workspace, assets):
    args, phrases = CASES[case](workspace, assets)
    before = snapshot(workspace)
    outcome = cli("compress", *args, "-o", workspace / "out", "-q")
    assert_outcome(outcome, 3, *phrases)
    assert snapshot(workspace) == before
    assert not (workspace / MARKER).exists()
