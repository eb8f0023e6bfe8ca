"""Truncated and bit-flipped files of each format: exit 3, a message naming the file, no traceback,
nothing written. Bits are flipped where every file of the format keeps its structure (headers,
checksummed or length-prefixed data), so each flip is detectable by design; a flip inside raw
tensor data is not detectable in .h5, .onnx, .tflite, OpenVINO .bin or PyTorch files (none carries
a checksum that their readers verify) and is left to the fuzz tests, which require only that no
run crashes.

| format | damage | exit | message contains |
|---|---|---|---|
| Keras .h5 | truncated / superblock bit | 3 | Cannot read ... as HDF5 |
| Keras .keras | truncated / config.json bit | 3 | cannot be read / Bad CRC-32 |
| ONNX | truncated / ir_version bit | 3 | Cannot parse ... as an ONNX model / fails the ONNX checker |
| PyTorch weights (zip) | truncated / data.pkl bit | 3 | cannot be read / Cannot read the weights file |
| TorchScript, .pt2 | truncated | 3 | cannot be read |
| TFLite | truncated / root-offset bit | 3 | Refusing the TFLite file |
| OpenVINO | truncated .xml / truncated .bin / markup bit | 3 | OpenVINO cannot read |
"""

from __future__ import annotations

import shutil
import struct
import zipfile
from pathlib import Path

import pytest

from .harness import assert_outcome, cli, snapshot


def _flip(data: bytes, at: int, mask: int = 0x10) -> bytes:
    damaged = bytearray(data)
    damaged[at] ^= mask
    return bytes(damaged)


def _member_data_offset(path: Path, suffix: str) -> int:
    """Where the stored bytes of the zip member ending in ``suffix`` start."""
    with zipfile.ZipFile(path) as zf:
        info = next(i for i in zf.infolist() if i.filename.endswith(suffix))
    raw = path.read_bytes()
    name_len, extra_len = struct.unpack_from("<HH", raw, info.header_offset + 26)
    return info.header_offset + 30 + name_len + extra_len


def _truncate(data: bytes) -> bytes:
    return data[: len(data) // 2]


def _keras_args(path: Path, a) -> list:
    return ["compress", path, "--precision", "fp32", "--no-validate"]


def _onnx_args(path: Path, a) -> list:
    return ["compress", path, "--target", "onnx", "--precision", "fp32", "--no-validate"]


def _weights_args(path: Path, a) -> list:
    spec = a.torch()[0]
    return ["compress", spec, "--weights", path, "--input-shape", "1,3,16,16", "--target", "onnx",
            "--precision", "fp32", "--no-validate"]


def _torch_file_args(path: Path, a) -> list:
    return ["compress", path, "--input-shape", "1,3,16,16", "--target", "onnx"]


def _tflite_args(path: Path, a) -> list:
    return ["validate", path, "--val", a.nhwc_data(), "--runs", 1, "--warmup", 0]


def _openvino_args(path: Path, a) -> list:
    return ["validate", path, "--val", a.nchw_data(), "--runs", 1, "--warmup", 0]


# case -> (source file, damage, CLI arguments, message phrases)
CASES = {
    "h5-truncated": (lambda a: a.keras(".h5"), lambda p: _truncate(p.read_bytes()), _keras_args,
                     ["Cannot read", "as HDF5"]),
    "h5-bitflip": (lambda a: a.keras(".h5"), lambda p: _flip(p.read_bytes(), 9), _keras_args,
                   ["Cannot read", "as HDF5"]),
    "keras-truncated": (lambda a: a.keras(".keras"), lambda p: _truncate(p.read_bytes()), _keras_args,
                        ["looks like a zip container but cannot be read"]),
    "keras-bitflip": (lambda a: a.keras(".keras"),
                      lambda p: _flip(p.read_bytes(), _member_data_offset(p, "config.json") + 5), _keras_args,
                      ["has no readable config.json", "Bad CRC-32"]),
    "onnx-truncated": (lambda a: a.onnx(), lambda p: _truncate(p.read_bytes()), _onnx_args,
                       ["Cannot parse", "as an ONNX model"]),
    "onnx-bitflip": (lambda a: a.onnx(), lambda p: _flip(p.read_bytes(), 1), _onnx_args,
                     ["fails the ONNX checker", "ir_version"]),
    "pt-weights-truncated": (lambda a: a.torch()[1], lambda p: _truncate(p.read_bytes()), _weights_args,
                             ["looks like a zip container but cannot be read"]),
    "pt-weights-bitflip": (lambda a: a.torch()[1],
                           lambda p: _flip(p.read_bytes(), _member_data_offset(p, "data.pkl"), 0x80),
                           _weights_args, ["Cannot read the weights file", "Unsupported operand"]),
    "torchscript-truncated": (lambda a: a.torch_archive("torchscript"), lambda p: _truncate(p.read_bytes()),
                              _torch_file_args, ["looks like a zip container but cannot be read"]),
    "pt2-truncated": (lambda a: a.torch_archive("pt2"), lambda p: _truncate(p.read_bytes()), _torch_file_args,
                      ["looks like a zip container but cannot be read"]),
    "tflite-truncated": (lambda a: a.tflite(), lambda p: _truncate(p.read_bytes()), _tflite_args,
                         ["Refusing the TFLite file", "lies outside the file"]),
    "tflite-bitflip": (lambda a: a.tflite(), lambda p: _flip(p.read_bytes(), 1), _tflite_args,
                       ["Refusing the TFLite file", "model table lies outside the file"]),
    "openvino-xml-truncated": (lambda a: a.openvino(), lambda p: _truncate(p.read_bytes()), _openvino_args,
                               ["OpenVINO cannot read"]),
    "openvino-xml-bitflip": (lambda a: a.openvino(), lambda p: _flip(p.read_bytes(), p.read_bytes().find(b"<net")),
                             _openvino_args, ["OpenVINO cannot read"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_damaged_file_is_refused(case, workspace, assets):
    source, damage, args, phrases = CASES[case]
    original = source(assets)
    folder = workspace / "damaged"
    folder.mkdir()
    path = folder / original.name
    path.write_bytes(damage(original))
    if original.suffix == ".xml":
        shutil.copy(original.with_suffix(".bin"), path.with_suffix(".bin"))
    before = snapshot(workspace)
    outcome = cli(*args(path, assets), "-o", workspace / "out", "-q")
    assert_outcome(outcome, 3, str(path), *phrases)
    assert snapshot(workspace) == before


def test_truncated_openvino_weights_are_refused(workspace, assets):
    xml = assets.openvino()
    folder = workspace / "damaged"
    folder.mkdir()
    shutil.copy(xml, folder / xml.name)
    (folder / xml.with_suffix(".bin").name).write_bytes(_truncate(xml.with_suffix(".bin").read_bytes()))
    before = snapshot(workspace)
    outcome = cli(*_openvino_args(folder / xml.name, assets), "-o", workspace / "out", "-q")
    assert_outcome(outcome, 3, "OpenVINO cannot read", xml.name)
    assert snapshot(workspace) == before
