"""OpenVINO IR artifacts on the OpenVINO CPU plugin: one stream, a fixed thread count, pinned threads.

The plugin is told to compute in f32: on CPUs with bf16 support it would otherwise run float
layers in bf16 by default, and the measured fidelity would be the plugin's choice rather than
the artifact's.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from edgeopt.deps import require
from edgeopt.errors import ConversionError, InputRejected
from edgeopt.frameworks.base import guess_layout
from edgeopt.model import TensorSpec
from edgeopt.names import match_inputs
from edgeopt.targets.base import Session, default_threads, opener  # noqa: F401

# OpenVINO's short precision names, as numpy dtype names.
_PRECISIONS = {"f32": "float32", "f16": "float16", "bf16": "bfloat16", "f64": "float64", "i8": "int8", "u8": "uint8",
               "i16": "int16", "u16": "uint16", "i32": "int32", "i64": "int64", "u1": "bool", "boolean": "bool",
               "i4": "int4", "u4": "uint4"}
# Runtime layers that move or hold data rather than compute.
_NOT_COMPUTE = {"Input", "Output", "Const"}




class OpenVinoSession(Session):
    def __init__(self, path: Path, *, threads: int, input_names: list[str] | None = None,
                 device: str = "cpu") -> None:
        ov = require("openvino", "Running OpenVINO models")
        self.path = path
        self.threads = threads
        if not path.with_suffix(".bin").is_file():
            raise InputRejected(f"The OpenVINO IR '{path}' has no weights file '{path.with_suffix('.bin').name}' "
                                "beside it.", hint="Keep the .xml and .bin files of an IR together.")
        start = time.perf_counter()
        core = ov.Core()
        try:
            model = core.read_model(str(path))
        except Exception as exc:
            raise InputRejected(f"OpenVINO cannot read '{path}': {_first_line(exc)}") from exc
        plugin = "GPU" if device == "gpu" else "CPU"
        config = {"INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1, "ENABLE_CPU_PINNING": True,
                  "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"} if plugin == "CPU" else \
            {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}  # thread and pinning settings are CPU-only
        try:
            self._compiled = core.compile_model(model, plugin, config)
        except Exception as exc:
            raise ConversionError(f"The OpenVINO {plugin} plugin cannot compile '{path}': {_first_line(exc)}",
                                  hint="An op may be unsupported on CPU; run with --debug for the full log.") from exc
        self.load_seconds = time.perf_counter() - start
        self._request = self._compiled.create_infer_request()
        ports = list(self._compiled.inputs)
        self._names = match_inputs([p.get_any_name() if p.get_names() else "" for p in ports], input_names)
        self._dtypes = [np.dtype(p.get_element_type().to_dtype()) for p in ports]
        self.inputs = tuple(TensorSpec(n, _shape(p), d.name, guess_layout(_shape(p), "nchw"))
                            for n, p, d in zip(self._names, ports, self._dtypes))
        self.outputs = tuple(TensorSpec(p.get_any_name() if p.get_names() else f"output_{i}", _shape(p),
                                        np.dtype(p.get_element_type().to_dtype()).name)
                             for i, p in enumerate(self._compiled.outputs))
        self._ov = ov

    def _prepare(self, feed: dict[str, np.ndarray]) -> None:
        for index, (name, dtype) in enumerate(zip(self._names, self._dtypes)):
            array = np.ascontiguousarray(feed[name], dtype=dtype)
            self._request.set_input_tensor(index, self._ov.Tensor(array, shared_memory=False))

    def run_raw(self) -> None:
        self._request.infer()

    def _run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        self._prepare(feed)
        self._request.infer()
        outs = [self._request.get_output_tensor(i).data.copy() for i in range(len(self.outputs))]
        return [o.astype(np.float32) if o.dtype.kind == "f" and o.dtype != np.float32 else o for o in outs]

    def ops(self) -> list[dict]:
        """The layers the CPU plugin executes, with the precision each computes in.

        A layer that reads float and writes int8 is the quantization of its input, so it is named
        FakeQuantize whatever the plugin fused it into.
        """
        result = []
        for op in self._compiled.get_runtime_model().get_ops():
            info = op.get_rt_info()
            layer = info["layerType"].astype(str)
            if layer in _NOT_COMPUTE:
                continue
            runtime = _PRECISIONS.get(info["runtimePrecision"].astype(str), "float32")
            output = _PRECISIONS.get(info["outputPrecisions"].astype(str).split(",")[0], "float32")
            if runtime.startswith("float") and output in ("int8", "uint8") and layer not in ("Convolution",
                                                                                           "FullyConnected"):
                layer = "FakeQuantize"
            # An int8 layer may write float (a fused dequantization); its arithmetic is what counts.
            result.append({"op": layer, "inputs": [runtime], "outputs": [runtime]})
        return result


def _shape(port: Any) -> tuple[int | None, ...]:
    shape = port.get_partial_shape()
    if shape.rank.is_dynamic:
        return ()
    return tuple(d.get_length() if d.is_static else None for d in shape)


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


open_session = opener(OpenVinoSession)
