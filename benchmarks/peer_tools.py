"""The peers' own default int8 recipes, as their documentation gives them.

Each function takes the source (``Source``), the calibration samples edgeopt gets (one array per
input, batch first, in the source's layout) and an output path; it writes the int8 artifact and
returns the paths it wrote (an input given as a list holds whole-tensor samples; see ``_rows``).
Nothing here is tuned:
where a tool has a switch, its default is kept. The only settings given are the ones a user must
give: the calibration data and, for OpenVINO, a static input shape (edgeopt's artifacts are
static too).
"""

from __future__ import annotations

import contextlib
import io
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeopt.deps import no_telemetry, quiet_stderr
from edgeopt.outputs import working_dir


@dataclass(frozen=True)
class Source:
    """What a peer starts from: the Keras file or the PyTorch module with one example input, and
    the fp32 ONNX edgeopt writes (the onnxruntime quantizer works on an ONNX file)."""

    keras_path: Path | None
    module: Any
    example: tuple
    fp32_onnx: Path | None = None
    saved_model: Path | None = None  # a SavedModel folder, read by the TFLite and OpenVINO converters


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """The tools print progress bars, size tables and C++ logs; keep the benchmark's table readable."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), quiet_stderr(), \
            warnings.catch_warnings(), no_telemetry():
        warnings.simplefilter("ignore")
        yield


def _rows(calib: list[np.ndarray]) -> Iterator[list[np.ndarray]]:
    """One sample at a time, each input with a batch axis of 1; an input given as a list of arrays
    takes its samples as they are (whole tensors: a recurrent state, a 0-d sample rate)."""
    for i in range(len(calib[0])):
        yield [a[i] if isinstance(a, list) else a[i:i + 1] for a in calib]


def tflite_converter(source: Source, calib: list[np.ndarray], out: Path, *, int16_activations: bool = False
                     ) -> list[Path]:
    """TFLite converter, full-integer PTQ with float input/output (the guide's default recipe)."""
    import keras
    import tensorflow as tf

    with quiet():
        if source.saved_model is not None:
            converter = tf.lite.TFLiteConverter.from_saved_model(str(source.saved_model))
        else:
            converter = tf.lite.TFLiteConverter.from_keras_model(keras.models.load_model(source.keras_path,
                                                                                         compile=False))
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: _rows(calib)
        converter.target_spec.supported_ops = [
            tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8 if int16_activations
            else tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        out.write_bytes(converter.convert())
    return [out]


def litert_torch_pt2e(source: Source, calib: list[np.ndarray], out: Path) -> list[Path]:
    """litert-torch's PT2E quantizer: symmetric int8 config with its defaults (per-tensor weights)."""
    import litert_torch
    import torch
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    with quiet():
        quantizer = PT2EQuantizer().set_global(get_symmetric_quantization_config())
        graph = torch.export.export(source.module, source.example).module()
        prepared = prepare_pt2e(graph, quantizer)
        with torch.no_grad():
            for row in _rows(calib):
                prepared(*(torch.from_numpy(a) for a in row))
        quantized = convert_pt2e(prepared, fold_quantize=False)
        litert_torch.convert(quantized, source.example, quant_config=QuantConfig(pt2e_quantizer=quantizer)).export(str(out))
    return [out]


def ai_edge_quantizer(source: Source, calib: list[np.ndarray], out: Path) -> list[Path]:
    """litert-torch's float model, then AI Edge Quantizer's ``static_wi8_ai8`` recipe."""
    import litert_torch
    from ai_edge_quantizer import quantizer, recipe
    from ai_edge_litert.interpreter import Interpreter

    with quiet(), tempfile.TemporaryDirectory() as tmp:
        float_path = Path(tmp) / "float.tflite"
        litert_torch.convert(source.module, source.example).export(str(float_path))
        signature = Interpreter(model_path=str(float_path)).get_signature_list()
        key = next(iter(signature))
        names = sorted(signature[key]["inputs"])  # litert-torch names them args_0, args_1, ... in order
        rows = [dict(zip(names, row)) for row in _rows(calib)]
        qt = quantizer.Quantizer(str(float_path))
        qt.load_quantization_recipe(recipe.static_wi8_ai8())
        qt.quantize(qt.calibrate({key: rows})).export_model(str(out), overwrite=True)
    return [out]


def onnxruntime_quantize_static(source: Source, calib: list[np.ndarray], out: Path, **settings) -> list[Path]:
    """``quant_pre_process`` then ``quantize_static`` with every default (QDQ, S8S8, per-tensor, MinMax).

    Where the pre-processing's symbolic shape inference fails (Paddle exports: an assertion on
    Concat's axis), it runs again with ``skip_symbolic_shape=True``, as its own help suggests."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, quant_pre_process, quantize_static

    names = [i.name for i in onnx.load(str(source.fp32_onnx), load_external_data=False).graph.input]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._rows = _rows(calib)

        def get_next(self) -> dict | None:
            row = next(self._rows, None)
            return None if row is None else dict(zip(names, row))

    with quiet(), tempfile.TemporaryDirectory() as tmp, working_dir(Path(tmp)):
        # A failed symbolic shape inference saves its partial model into the current folder.
        pre = Path(tmp) / "pre.onnx"
        try:
            quant_pre_process(str(source.fp32_onnx), str(pre))
        except Exception:
            quant_pre_process(str(source.fp32_onnx), str(pre), skip_symbolic_shape=True)
        quantize_static(str(pre), str(out), Reader(), **settings)
    return [out]


def nncf_quantize(source: Source, calib: list[np.ndarray], out: Path, **settings) -> list[Path]:
    """OpenVINO's own converter, then ``nncf.quantize`` with its defaults (preset, subset of 300)."""
    import nncf
    import openvino as ov

    with quiet(), tempfile.TemporaryDirectory() as tmp:
        shapes = [tuple(x.shape) for x in source.example]
        if source.saved_model is not None:
            model = ov.convert_model(str(source.saved_model), input=shapes)
        elif source.keras_path is not None:  # OpenVINO reads Keras 3 models as a SavedModel
            import keras

            saved = Path(tmp) / "saved_model"
            keras.models.load_model(source.keras_path, compile=False).export(str(saved), verbose=False)
            model = ov.convert_model(str(saved), input=shapes)
        elif source.module is None:  # an ONNX source: OpenVINO reads the file itself
            model = ov.convert_model(str(source.fp32_onnx), input=shapes)
        else:
            model = ov.convert_model(source.module, example_input=source.example, input=shapes)
        dataset = nncf.Dataset(list(_rows(calib)), lambda row: row if len(row) > 1 else row[0])
        quantized = nncf.quantize(model, dataset, **settings)
        ov.save_model(quantized, str(out.with_suffix(".xml")))
    return [out.with_suffix(".xml"), out.with_suffix(".bin")]


# --- each peer's best documented settings ------------------------------------------------------

def tflite_converter_16x8(source: Source, calib: list[np.ndarray], out: Path) -> list[Path]:
    """TFLite converter's 16x8 mode: int16 activations, int8 weights (its documented accuracy option)."""
    return tflite_converter(source, calib, out, int16_activations=True)


def onnxruntime_percentile_per_channel(source: Source, calib: list[np.ndarray], out: Path) -> list[Path]:
    """``quantize_static`` with per-channel weights and the Percentile calibrator (99.999)."""
    from onnxruntime.quantization import CalibrationMethod

    return onnxruntime_quantize_static(source, calib, out, per_channel=True,
                                       calibrate_method=CalibrationMethod.Percentile)


def nncf_full_bias_correction(source: Source, calib: list[np.ndarray], out: Path) -> list[Path]:
    """``nncf.quantize(fast_bias_correction=False)``: NNCF's slower, more accurate bias correction."""
    return nncf_quantize(source, calib, out, fast_bias_correction=False)
