"""Tell a model file's format from its bytes, never from its name, before any framework reads it."""

from __future__ import annotations

import os
import stat
import zipfile
import zlib
from pathlib import Path

from edgeopt.errors import InputRejected
from edgeopt.model import Format

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
ZIP_MAGIC = b"PK\x03\x04"

# What zipfile raises for a damaged archive: besides BadZipFile, an entry name that is not valid
# UTF-8 (ValueError), an unknown zip version or compression (NotImplementedError), a failed CRC
# (BadZipFile) or deflate stream (zlib.error) on read, and EOF/OS errors for a cut-off file.
ZIP_ERRORS = (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError, zlib.error)

# Zip containers (.keras, .pt) are opened before extraction; these bound what they may hold.
MAX_ZIP_ENTRIES = 10_000
MAX_ZIP_TOTAL_BYTES = 8 << 30
MAX_ZIP_RATIO = 200

SOURCE_FORMATS = {Format.KERAS_H5, Format.KERAS_V3, Format.SAVED_MODEL, Format.ONNX,
                  Format.TORCHSCRIPT, Format.TORCH_EXPORT, Format.TORCH_PICKLE}

_EXPECTED_SUFFIX = {
    Format.KERAS_H5: {".h5", ".hdf5", ".keras"},
    Format.KERAS_V3: {".keras"},
    Format.ONNX: {".onnx"},
    Format.TFLITE: {".tflite"},
    Format.OPENVINO: {".xml"},
    Format.TORCHSCRIPT: {".pt", ".pth", ".ts"},
    Format.TORCH_EXPORT: {".pt2"},
    Format.TORCH_PICKLE: {".pt", ".pth", ".bin"},
}


def detect_format(path: Path | str) -> Format:
    """Return the format of ``path`` judged by content; raise InputRejected if unknown or broken."""
    path = Path(path)
    if not path.exists():
        raise InputRejected(f"The model '{path}' does not exist.",
                            hint="Check the path; edgeopt takes .h5/.keras/SavedModel, .onnx, and PyTorch files.")
    if path.is_dir():
        if (path / "saved_model.pb").is_file() or (path / "saved_model.pbtxt").is_file():
            return Format.SAVED_MODEL
        raise InputRejected(f"The folder '{path}' is not a TensorFlow SavedModel (no saved_model.pb inside).",
                            hint="Pass a model file, or a SavedModel folder written by model.export().")
    with path.open("rb") as fh:
        head = fh.read(64)
    if not head:
        raise InputRejected(f"The model '{path}' is empty (0 bytes).")
    if head.startswith(HDF5_MAGIC):
        return Format.KERAS_H5
    if head[4:8] == b"TFL3":
        from edgeopt.tflite_file import check_tflite

        check_tflite(path)  # offsets and buffers checked before LiteRT follows them
        return Format.TFLITE
    if head.startswith(ZIP_MAGIC):
        return _zip_format(path)
    if head.lstrip().startswith(b"<?xml") or head.lstrip().startswith(b"<net"):
        return Format.OPENVINO
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return Format.TORCH_PICKLE
    if _looks_like_onnx(head):
        return Format.ONNX
    raise InputRejected(
        f"Cannot tell what kind of model '{path}' is: its first bytes match no supported format.",
        hint="Supported: Keras .h5/.keras, SavedModel folders, ONNX, PyTorch (.pt/.pt2), TFLite, OpenVINO .xml. "
             "The file may be truncated or not a model at all.",
    )


def suffix_mismatch(path: Path, fmt: Format) -> str | None:
    """A note when the extension promises another format than the content holds."""
    expected = _EXPECTED_SUFFIX.get(fmt)
    suffix = path.suffix.lower()
    if expected and suffix and suffix not in expected:
        return f"'{path.name}' is named like a {suffix} file but holds a {fmt.value} model; using {fmt.value}."
    return None


def check_zip(path: Path) -> zipfile.ZipFile:
    """Open a zip container after bounding its entry count, total size and compression ratio."""
    try:
        zf = zipfile.ZipFile(path)
    except ZIP_ERRORS as exc:
        raise InputRejected(f"'{path}' looks like a zip container but cannot be read: {exc}.",
                            hint="The file is probably truncated or corrupt; export it again.") from exc
    infos = zf.infolist()
    total = sum(i.file_size for i in infos)
    packed = sum(i.compress_size for i in infos) or 1
    problem = None
    if len(infos) > MAX_ZIP_ENTRIES:
        problem = f"{len(infos)} entries (limit {MAX_ZIP_ENTRIES})"
    elif total > MAX_ZIP_TOTAL_BYTES:
        problem = f"{total} bytes uncompressed (limit {MAX_ZIP_TOTAL_BYTES})"
    elif total > (1 << 20) and total / packed > MAX_ZIP_RATIO:
        problem = f"a compression ratio of {total / packed:.0f}:1 (limit {MAX_ZIP_RATIO}:1)"
    if problem:
        zf.close()
        raise InputRejected(f"Refusing '{path}': the archive declares {problem}, as a zip bomb would.",
                            hint="Re-save the model normally; edgeopt does not extract such archives.")
    # Frameworks extract some entries (Keras assets) to folders of their own; a name that climbs
    # out of the folder, or starts at the root, is never one a framework wrote.
    escaping = next((i.filename for i in infos if i.filename.startswith(("/", "\\")) or
                     ".." in i.filename.replace("\\", "/").split("/")), None)
    if escaping is not None:
        zf.close()
        raise InputRejected(f"Refusing '{path}': its entry '{escaping}' would be extracted outside its folder.",
                            hint="Re-save the model normally; edgeopt does not extract such archives.")
    return zf


def _zip_format(path: Path) -> Format:
    with check_zip(path) as zf:
        names = zf.namelist()
    base = {n.split("/", 1)[-1] for n in names}
    if "config.json" in names and ("model.weights.h5" in names or "metadata.json" in names):
        return Format.KERAS_V3
    if any(n.endswith("serialized_exported_program.json") or "/models/" in n for n in names) or \
            "archive_format" in base and any(n.endswith(".json") for n in names):
        return Format.TORCH_EXPORT
    if "constants.pkl" in base or any("/code/" in n for n in names):
        return Format.TORCHSCRIPT
    if "data.pkl" in base:
        return Format.TORCH_PICKLE
    raise InputRejected(f"'{path}' is a zip archive but not a Keras (.keras) or PyTorch model.",
                        hint="A .keras file holds config.json and model.weights.h5.")


def _looks_like_onnx(head: bytes) -> bool:
    # ModelProto's first field is usually ir_version (field 1, varint: tag 0x08), and every
    # ONNX file is a protobuf whose first tag is one of ModelProto's known fields.
    return head[:1] in (b"\x08", b"\x12", b"\x1a", b"\x22", b"\x2a", b"\x32", b"\x3a", b"\x42")


_NOT_REGULAR = ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a socket"),
                (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a folder"))


def require_regular_file(path: Path, role: str) -> Path:
    """``path``, once known to be a regular file (links followed), found without opening it.

    Opening a named pipe waits for a writer forever, and a device or socket yields endless or no
    bytes, so every data file passes through here before numpy, zipfile or Pillow touches it."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:  # a dangling link, or no permission to look
        raise InputRejected(f"The {role} data file '{path}' cannot be read: {exc.strerror}.",
                            hint="Point at an existing regular file, or remove the broken entry.") from None
    if stat.S_ISREG(mode):
        return path
    kind = next((name for test, name in _NOT_REGULAR if test(mode)), "not a regular file")
    via = f" (a link to '{os.path.realpath(path)}')" if path.is_symlink() else ""
    raise InputRejected(
        f"The {role} data file '{path}'{via} is {kind}; edgeopt reads only regular files.",
        hint="Copy the data into a regular file (an .npz, an .npy or an image), or move this entry out of "
             "the data folder.",
    )
