"""Hostile model files, each made from a valid one in a few lines.

Every maker takes the workspace folder and the shared :class:`Assets` and returns
``(edgeopt arguments, expected exit code, phrases the message must contain)``. The suite runs each
through the CLI; the table in the modules' docstrings is built from the same entries.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from .harness import MARKER

Case = tuple[list, int, list[str]]


class Payload:
    """Unpickling this runs a shell command that creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch '{self.marker}'",)


def _torch():
    return pytest.importorskip("torch")


def _compress(path: Path, *more) -> list:
    return ["compress", path, *more]


# --- pickles in PyTorch files -------------------------------------------------------------------

def pickle_in_pt(ws: Path, a) -> Case:
    path = ws / "model.pt"
    _torch().save(Payload(ws / MARKER), path)
    return _compress(path, "--input-shape", "1,3,16,16"), 3, ["Refusing to load", "pickled Python object",
                                                              "--trust-model"]


def pickle_in_legacy_pt(ws: Path, a) -> Case:
    path = ws / "model.pt"
    _torch().save({"w": Payload(ws / MARKER)}, path, _use_new_zipfile_serialization=False)
    return _compress(path, "--input-shape", "1,3,16,16"), 3, ["Refusing to load", "pickled Python object"]


def raw_pickle_named_pt(ws: Path, a) -> Case:
    path = ws / "model.pt"
    path.write_bytes(pickle.dumps(Payload(ws / MARKER), protocol=2))
    _torch()
    return _compress(path, "--input-shape", "1,3,16,16"), 3, ["Refusing to load", "pickled Python object"]


def protocol0_pickle_named_pt(ws: Path, a) -> Case:
    path = ws / "model.pt"
    path.write_bytes(pickle.dumps(Payload(ws / MARKER), protocol=0))
    return _compress(path), 3, ["first bytes match no supported format"]


def pickle_as_weights(ws: Path, a) -> Case:
    spec, _, _ = a.torch()
    path = ws / "weights.pt"
    _torch().save({"conv1.weight": Payload(ws / MARKER)}, path)
    return (_compress(spec, "--weights", path, "--input-shape", "image=1,3,16,16", "--target", "onnx"), 3,
            ["Refusing", "weights.pt", "pickled Python objects beyond tensors"])


def whole_module_pickle(ws: Path, a) -> Case:
    _, _, module = a.torch()
    path = ws / "whole.pt"
    _torch().save(module, path)
    return _compress(path, "--input-shape", "1,3,16,16"), 3, ["pickled Python object (a whole module)"]


def torchscript(ws: Path, a) -> Case:
    return (_compress(a.torch_archive("torchscript"), "--input-shape", "1,3,16,16", "--target", "onnx"), 3,
            ["a TorchScript archive", "--trust-model"])


def torch_export_pt2(ws: Path, a) -> Case:
    return (_compress(a.torch_archive("pt2"), "--input-shape", "1,3,16,16", "--target", "onnx"), 3,
            ["a torch.export program", "--trust-model"])


# --- Keras configs and containers ----------------------------------------------------------------

def _rewrite_keras(a, ws: Path, name: str, change: Callable[[dict], None] | None = None,
                   config_text: str | None = None) -> Path:
    """conv.keras with its config.json changed by ``change`` (or replaced by ``config_text``)."""
    src = a.keras(".keras")
    path = ws / name
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(path, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename == "config.json":
                if config_text is None:
                    config = json.loads(data)
                    change(config)
                    config_text = json.dumps(config)
                data = config_text.encode()
            zout.writestr(info.filename, data)
    return path


def lambda_keras(ws: Path, a) -> Case:
    return _compress(a.keras(".keras", "lambda_layer")), 3, ["layer 'double_it' is a Lambda layer", "--trust-model"]


def lambda_h5(ws: Path, a) -> Case:
    return _compress(a.keras(".h5", "lambda_layer")), 3, ["layer 'double_it' is a Lambda layer", "--trust-model"]


def keras_class_outside_keras(ws: Path, a) -> Case:
    def change(config):
        config["config"]["layers"][1]["module"] = "kerasevil.layers"
    return (_compress(_rewrite_keras(a, ws, "m.keras", change)), 3,
            ["class Conv2D from module 'kerasevil.layers', outside Keras"])


def keras_function_get_file(ws: Path, a) -> Case:
    def change(config):  # keras.utils.get_file would download to a path of the file's choosing
        config["config"]["layers"][1]["config"]["activation"] = {
            "module": "keras.utils", "class_name": "function", "config": "get_file", "registered_name": "get_file"}
    return (_compress(_rewrite_keras(a, ws, "m.keras", change)), 3,
            ["calls the function 'get_file' from 'keras.utils'"])


def keras_vocabulary_file(ws: Path, a) -> Case:
    def change(config):
        config["config"]["layers"].append({"module": "keras.layers", "class_name": "StringLookup",
                                           "config": {"name": "lookup", "vocabulary": "/etc/passwd"},
                                           "registered_name": None})
    return (_compress(_rewrite_keras(a, ws, "m.keras", change)), 3,
            ["layer 'lookup' (StringLookup) reads its vocabulary from a file path"])


def keras_nesting_bomb(ws: Path, a) -> Case:
    text = '{"class_name": "Functional", "config": ' + "[" * 100_000 + "]" * 100_000 + "}"
    return _compress(_rewrite_keras(a, ws, "m.keras", config_text=text)), 3, ["nested too deeply"]


def h5_nesting_bomb(ws: Path, a) -> Case:
    h5py = pytest.importorskip("h5py")
    path = ws / "m.h5"
    shutil.copy(a.keras(".h5"), path)
    with h5py.File(path, "a") as fh:
        fh.attrs["model_config"] = '{"class_name": "Functional", "config": ' + "[" * 50_000 + "]" * 50_000 + "}"
    return _compress(path), 3, ["nested too deeply"]


def keras_zip_bomb(ws: Path, a) -> Case:
    path = ws / "bomb.keras"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("metadata.json", "{}")
        zf.writestr("config.json", '{"class_name": "Functional", "config": {}}')
        zf.writestr("model.weights.h5", b"\0" * (64 << 20))  # 64 MiB of zeros pack into ~64 KiB
    return _compress(path), 3, ["bomb.keras", "compression ratio of", "zip bomb"]


def keras_zip_many_entries(ws: Path, a) -> Case:
    path = ws / "many.keras"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("config.json", "{}")
        zf.writestr("metadata.json", "{}")
        for i in range(10_000):
            zf.writestr(f"assets/{i}", b"")
    return _compress(path), 3, ["10002 entries (limit 10000)", "zip bomb"]


def keras_zip_slip(ws: Path, a) -> Case:
    path = _rewrite_keras(a, ws, "m.keras", lambda config: None)
    with zipfile.ZipFile(path, "a") as zf:
        zf.writestr("assets/../../../outside.txt", "written outside the extraction folder")
    return _compress(path), 3, ["its entry 'assets/../../../outside.txt' would be extracted outside its folder"]


def _h5_with_kernel(ws: Path, a, **dataset) -> Path:
    """conv.h5 with the conv kernel replaced by a dataset made with ``dataset`` options."""
    h5py = pytest.importorskip("h5py")
    path = ws / "m.h5"
    shutil.copy(a.keras(".h5"), path)
    with h5py.File(path, "a") as fh:
        name = "model_weights/conv/conv/kernel"
        del fh[name]
        fh.create_dataset(name, dtype="float32", **dataset)
    return path


def h5_dataset_bomb(ws: Path, a) -> Case:
    path = _h5_with_kernel(ws, a, shape=(3, 3, 3, 8 << 26), chunks=(1, 1, 1, 1 << 20), compression="gzip")
    return _compress(path), 3, ["dataset 'model_weights/conv/conv/kernel' declares", "decompression bomb"]


def h5_external_storage(ws: Path, a) -> Case:
    secret = ws / "secret.txt"
    secret.write_bytes(b"s" * 864)  # the kernel's 3*3*3*8 floats, read from a file outside the model
    path = _h5_with_kernel(ws, a, shape=(3, 3, 3, 8), external=[(str(secret), 0, 864)])
    return _compress(path), 3, ["dataset 'model_weights/conv/conv/kernel' keeps its data in other files"]


def h5_external_link(ws: Path, a) -> Case:
    h5py = pytest.importorskip("h5py")
    other = ws / "other.h5"
    with h5py.File(other, "w") as fh:
        fh["kernel"] = np.zeros((3, 3, 3, 8), np.float32)
    path = ws / "m.h5"
    shutil.copy(a.keras(".h5"), path)
    with h5py.File(path, "a") as fh:
        del fh["model_weights/conv/conv/kernel"]
        fh["model_weights/conv/conv/kernel"] = h5py.ExternalLink(str(other), "/kernel")
    return _compress(path), 3, ["links to '/kernel' in the file", "other.h5"]


# --- ONNX ---------------------------------------------------------------------------------------

def _onnx():
    return pytest.importorskip("onnx")


def _external(ws: Path, a, location: str, **entries: str) -> Path:
    """The residual ONNX model with its weights in 'weights.bin', then pointed at ``location``."""
    onnx = _onnx()
    folder = ws / "model"
    folder.mkdir()
    path = folder / "model.onnx"
    onnx.save(onnx.load(str(a.onnx())), str(path), save_as_external_data=True, all_tensors_to_one_file=True,
              location="weights.bin", size_threshold=0)
    model = onnx.load(str(path), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
            elif entry.key in entries:
                entry.value = entries[entry.key]
    onnx.save(model, str(path))
    return path


def onnx_external_parent(ws: Path, a) -> Case:
    path = _external(ws, a, "../weights.bin")
    shutil.copy(path.parent / "weights.bin", ws / "weights.bin")
    return _compress(path, "--target", "onnx"), 3, ["tensor 'conv1.w'", "leaves the model's folder ('..')"]


def onnx_external_absolute(ws: Path, a) -> Case:
    path = _external(ws, a, "/etc/passwd")
    return _compress(path, "--target", "onnx"), 3, ["tensor 'conv1.w'", "points at the absolute path '/etc/passwd'"]


def onnx_external_symlink(ws: Path, a) -> Case:
    path = _external(ws, a, "weights.bin")
    os.replace(path.parent / "weights.bin", ws / "elsewhere.bin")
    os.symlink(ws / "elsewhere.bin", path.parent / "weights.bin")
    return _compress(path, "--target", "onnx"), 3, ["tensor 'conv1.w'", "through the symlink"]


def onnx_external_missing(ws: Path, a) -> Case:
    path = _external(ws, a, "weights.bin")
    (path.parent / "weights.bin").unlink()
    return _compress(path, "--target", "onnx"), 3, ["needs the external file 'weights.bin', which is missing"]


def onnx_external_past_end(ws: Path, a) -> Case:
    path = _external(ws, a, "weights.bin", length="999999999")
    return _compress(path, "--target", "onnx"), 3, ["which has only", "truncated"]


def onnx_external_bad_offset(ws: Path, a) -> Case:
    path = _external(ws, a, "weights.bin", offset="-1e9")
    return _compress(path, "--target", "onnx"), 3, ["non-numeric offset or length"]


def random_bytes_named_onnx(ws: Path, a) -> Case:
    path = ws / "model.onnx"
    path.write_bytes(b"\x08" + np.random.default_rng(3).bytes(4095))  # starts like a protobuf
    _onnx()
    return _compress(path, "--target", "onnx"), 3, ["Cannot parse", "model.onnx", "as an ONNX model"]


def random_bytes_no_magic(ws: Path, a) -> Case:
    path = ws / "model.onnx"
    path.write_bytes(b"\xff" + np.random.default_rng(4).bytes(4095))
    return _compress(path, "--target", "onnx"), 3, ["first bytes match no supported format"]


def _unknown_op(ws: Path, domain: str) -> Path:
    onnx = _onnx()
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    node = helper.make_node("FooBar", ["x"], ["y"], name="weird_node", domain=domain)
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    path = ws / "model.onnx"
    onnx.save(helper.make_model(helper.make_graph([node], "g", [x], [y]), opset_imports=opsets), str(path))
    return path


def unsupported_standard_op(ws: Path, a) -> Case:
    return (_compress(_unknown_op(ws, ""), "--target", "onnx"), 4,
            ["Unsupported op", "node 'weird_node' is a 'FooBar'", "opset 17"])


def unsupported_custom_op(ws: Path, a) -> Case:
    pytest.importorskip("onnxruntime")
    return (_compress(_unknown_op(ws, "com.example"), "--target", "onnx"), 4,
            ["no CPU kernel", "at node 'weird_node' (com.example:FooBar)"])


def openvino_xml_as_source(ws: Path, a) -> Case:
    path = ws / "model.xml"
    path.write_text('<?xml version="1.0"?>\n<net name="m" version="11"><layers/></net>\n')
    return _compress(path), 3, ["is a openvino artifact, not a source model"]


# --- TFLite: checked before LiteRT builds an interpreter ----------------------------------------

def _edit_tflite(ws: Path, a, change: Callable, precision: str = "fp32") -> Path:
    schema = pytest.importorskip("ai_edge_litert.schema_py_generated")
    import flatbuffers

    model = schema.ModelT.InitFromPackedBuf(bytearray(a.tflite(precision).read_bytes()), 0)
    change(model)
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    path = ws / "model.tflite"
    path.write_bytes(bytes(builder.Output()))
    return path


def _validate(path: Path, a) -> list:
    return ["validate", path, "--val", a.nhwc_data(), "--runs", 1, "--warmup", 0]


def _constant(model) -> tuple[object, int]:
    """The first tensor of subgraph 0 that has constant data, and its index."""
    for i, t in enumerate(model.subgraphs[0].tensors):
        if model.buffers[t.buffer].data is not None and len(model.buffers[t.buffer].data) > 8:
            return t, i
    raise AssertionError("no constant tensor")


def tflite_buffer_index(ws: Path, a) -> Case:
    def change(model):
        _constant(model)[0].buffer = 9999
    return _validate(_edit_tflite(ws, a, change), a), 3, ["Refusing the TFLite file", "uses buffer 9999",
                                                          "but the file has"]


def tflite_short_buffer(ws: Path, a) -> Case:
    def change(model):
        tensor, _ = _constant(model)
        model.buffers[tensor.buffer].data = model.buffers[tensor.buffer].data[:4]
    return _validate(_edit_tflite(ws, a, change), a), 3, ["Refusing the TFLite file", "holds only 4"]


def tflite_tensor_index(ws: Path, a) -> Case:
    def change(model):
        model.subgraphs[0].operators[0].inputs[0] = 5000
    return _validate(_edit_tflite(ws, a, change), a), 3, ["operator 0 of subgraph 0 uses tensor 5000"]


def tflite_opcode_index(ws: Path, a) -> Case:
    def change(model):
        model.subgraphs[0].operators[0].opcodeIndex = 77
    return _validate(_edit_tflite(ws, a, change), a), 3, ["uses operator code 77"]


def tflite_no_subgraph(ws: Path, a) -> Case:
    def change(model):  # LiteRT itself crashed (SIGSEGV) on such a file
        model.subgraphs = None
    return _validate(_edit_tflite(ws, a, change), a), 3, ["Refusing the TFLite file", "model has no subgraph"]


def tflite_nan_scale(ws: Path, a) -> Case:
    def change(model):
        tensor = next(t for t in model.subgraphs[0].tensors if t.quantization and t.quantization.scale is not None)
        tensor.quantization.scale[0] = float("nan")
    return _validate(_edit_tflite(ws, a, change, "int8"), a), 3, ["quantization scale nan",
                                                                  "must be finite and positive"]


def tflite_zero_point(ws: Path, a) -> Case:
    def change(model):
        tensor = next(t for t in model.subgraphs[0].tensors if t.type == 9 and t.quantization
                      and t.quantization.zeroPoint is not None)
        tensor.quantization.zeroPoint[0] = 1000
    return _validate(_edit_tflite(ws, a, change, "int8"), a), 3, ["zero point 1000, outside -128..127"]


def onnx_named_tflite(ws: Path, a) -> Case:
    path = ws / "model.tflite"
    shutil.copy(a.onnx(), path)
    return (_compress(path, "--target", "onnx", "--precision", "fp32", "--no-validate"), 0,
            ["'model.tflite' is named like a .tflite file but holds a onnx model; using onnx"])


LOADING: dict[str, Callable[[Path, object], Case]] = {
    f.__name__: f for f in [
        pickle_in_pt, pickle_in_legacy_pt, raw_pickle_named_pt, protocol0_pickle_named_pt, pickle_as_weights,
        whole_module_pickle, torchscript, torch_export_pt2,
        lambda_keras, lambda_h5, keras_class_outside_keras, keras_function_get_file, keras_vocabulary_file,
        keras_nesting_bomb, h5_nesting_bomb, keras_zip_bomb, keras_zip_many_entries, keras_zip_slip, h5_dataset_bomb,
        h5_external_storage, h5_external_link,
        onnx_external_parent, onnx_external_absolute, onnx_external_symlink, onnx_external_missing,
        onnx_external_past_end, onnx_external_bad_offset, random_bytes_named_onnx, random_bytes_no_magic,
        unsupported_standard_op, unsupported_custom_op, openvino_xml_as_source,
        tflite_buffer_index, tflite_short_buffer, tflite_tensor_index, tflite_opcode_index, tflite_no_subgraph,
        tflite_nan_scale, tflite_zero_point]}
