"""Model formats are told by content, never by name, and zip containers are bounded first."""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest

from edgeopt import formats
from edgeopt.errors import InputRejected
from edgeopt.formats import detect_format, suffix_mismatch
from edgeopt.model import Format

TFLITE_HEAD = b"\x1c\x00\x00\x00TFL3\x14\x00\x20\x00"
# A minimal well-formed TFLite file: root offset, identifier, the model's vtable (one field:
# subgraphs), the model table, a vector of one subgraph, and that subgraph (no fields).
MINIMAL_TFLITE = (struct.pack("<I", 20) + b"TFL3" + struct.pack("<5H2x", 10, 8, 0, 0, 4) + struct.pack("<iI", 12, 4)
                  + struct.pack("<II", 1, 8) + struct.pack("<HHi", 4, 4, 4))


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _keras_zip(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("metadata.json", '{"keras_version": "3.0.0"}')
        zf.writestr("config.json", '{"class_name": "Functional", "config": {}}')
        zf.writestr("model.weights.h5", formats.HDF5_MAGIC + b"\x00" * 64)
    return path


def test_hdf5_by_magic(tmp_path):
    path = _write(tmp_path / "model.bin", formats.HDF5_MAGIC + b"\x00" * 100)
    assert detect_format(path) is Format.KERAS_H5


def test_real_h5_file(tmp_path):
    h5py = pytest.importorskip("h5py")
    path = tmp_path / "weights.h5"
    with h5py.File(path, "w") as fh:
        fh["x"] = np.arange(3)
    assert detect_format(path) is Format.KERAS_H5


def test_keras_v3_zip(tmp_path):
    assert detect_format(_keras_zip(tmp_path / "model.keras")) is Format.KERAS_V3


def test_tflite_by_file_identifier(tmp_path):
    assert detect_format(_write(tmp_path / "m.tflite", MINIMAL_TFLITE)) is Format.TFLITE


def test_tflite_with_offsets_outside_the_file_is_rejected(tmp_path):
    with pytest.raises(InputRejected, match="Refusing the TFLite file .*m.tflite"):
        detect_format(_write(tmp_path / "m.tflite", TFLITE_HEAD + b"\x00" * 50))


def test_onnx_like_protobuf(tmp_path):
    # ir_version = 8, producer_name = "pytorch": how ONNX files start.
    head = b"\x08\x08\x12\x07pytorch\x1a\x052.5.0"
    assert detect_format(_write(tmp_path / "model.onnx", head + b"\x00" * 40)) is Format.ONNX


def test_openvino_xml_and_torch_pickle(tmp_path):
    xml = _write(tmp_path / "m.xml", b'<?xml version="1.0"?>\n<net name="m" version="11">')
    assert detect_format(xml) is Format.OPENVINO
    pickle = _write(tmp_path / "m.pt", b"\x80\x02}q\x00.")
    assert detect_format(pickle) is Format.TORCH_PICKLE


def test_saved_model_folder(tmp_path):
    folder = tmp_path / "exported"
    folder.mkdir()
    (folder / "saved_model.pb").write_bytes(b"\x08\x01")
    assert detect_format(folder) is Format.SAVED_MODEL


def test_folder_without_saved_model_is_rejected(tmp_path):
    with pytest.raises(InputRejected, match="not a TensorFlow SavedModel"):
        detect_format(tmp_path)


def test_random_bytes_are_rejected(tmp_path):
    data = np.random.default_rng(7).bytes(4096)
    # The first byte decides the protobuf probe; make sure this sample does not look like one.
    assert data[:1] not in (b"\x08", b"\x12", b"\x1a", b"\x22", b"\x2a", b"\x32", b"\x3a", b"\x42", b"\x80", b"<")
    with pytest.raises(InputRejected, match="first bytes match no supported format") as info:
        detect_format(_write(tmp_path / "model.h5", data))
    assert "model.h5" in info.value.message
    assert "truncated" in info.value.hint


def test_empty_file_is_rejected(tmp_path):
    with pytest.raises(InputRejected, match=r"is empty \(0 bytes\)"):
        detect_format(_write(tmp_path / "model.h5", b""))


def test_missing_file_is_rejected(tmp_path):
    with pytest.raises(InputRejected, match="does not exist"):
        detect_format(tmp_path / "model.h5")


def test_zip_that_is_no_model_is_rejected(tmp_path):
    path = tmp_path / "model.keras"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("readme.txt", "hello")
    with pytest.raises(InputRejected, match="zip archive but not a Keras"):
        detect_format(path)


def test_truncated_zip_is_rejected(tmp_path):
    whole = _keras_zip(tmp_path / "whole.keras").read_bytes()
    path = _write(tmp_path / "model.keras", whole[: len(whole) // 2])
    with pytest.raises(InputRejected, match="cannot be read"):
        detect_format(path)


def test_zip_bomb_is_refused_before_extraction(tmp_path):
    path = tmp_path / "bomb.keras"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("config.json", "{}")
        zf.writestr("model.weights.h5", b"\x00" * (16 << 20))
    assert path.stat().st_size < 100_000  # 16 MiB of zeros packs to a few KiB
    with pytest.raises(InputRejected, match=r"compression ratio of \d+:1 \(limit 200:1\)") as info:
        detect_format(path)
    assert "zip bomb" in info.value.message


def test_zip_with_too_many_entries_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(formats, "MAX_ZIP_ENTRIES", 5)
    path = tmp_path / "many.keras"
    with zipfile.ZipFile(path, "w") as zf:
        for i in range(6):
            zf.writestr(f"f{i}.txt", "x")
    with pytest.raises(InputRejected, match=r"6 entries \(limit 5\)"):
        formats.check_zip(path)


def test_ordinary_compressed_zip_passes_the_bounds(tmp_path):
    path = tmp_path / "ok.keras"
    rng = np.random.default_rng(0)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("config.json", '{"class_name": "Functional"}')
        zf.writestr("model.weights.h5", rng.bytes(2 << 20))
        zf.writestr("metadata.json", "{}")
    with formats.check_zip(path) as zf:
        assert len(zf.namelist()) == 3
    assert detect_format(path) is Format.KERAS_V3


def test_suffix_mismatch_note():
    note = suffix_mismatch(Path("dir/model.h5"), Format.TFLITE)
    assert note == "'model.h5' is named like a .h5 file but holds a tflite model; using tflite."
    assert suffix_mismatch(Path("model.tflite"), Format.TFLITE) is None
    assert suffix_mismatch(Path("model.KERAS"), Format.KERAS_V3) is None
    assert suffix_mismatch(Path("model"), Format.ONNX) is None
    # A legacy HDF5 model saved under a .keras name is still a Keras model.
    assert suffix_mismatch(Path("model.keras"), Format.KERAS_H5) is None
    assert "holds a keras model" in suffix_mismatch(Path("model.onnx"), Format.KERAS_V3)


def test_every_format_maps_to_a_framework():
    for fmt in Format:
        assert fmt.framework in {"keras", "torch", "onnx", "tflite", "openvino"}
    assert Format.KERAS_H5.framework == Format.SAVED_MODEL.framework == "keras"
