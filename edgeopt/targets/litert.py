"""TFLite artifacts on LiteRT (``ai-edge-litert``), with XNNPACK as the CPU backend."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from edgeopt.deps import quiet_stderr, require
from edgeopt.errors import EnvironmentProblem, InputRejected
from edgeopt.frameworks.base import guess_layout
from edgeopt.model import TensorSpec
from edgeopt.targets.base import Session, default_threads, opener  # noqa: F401
from edgeopt.targets.remote_runner import dequantize, quantize




def _signature_name(raw: str) -> str:
    # The converter names inputs "serving_default_<name>:0"; the source model calls it <name>.
    name = raw.split(":")[0]
    return name[len("serving_default_"):] if name.startswith("serving_default_") else name


def _output_keys(interp) -> dict[int, str]:
    """Output tensor index -> its key in the model's one signature: the converter names the
    tensors themselves 'StatefulPartitionedCall:0', while the keys are the source's output names."""
    signatures = interp._get_full_signature_list() or {}
    if len(signatures) != 1:
        return {}
    outputs = next(iter(signatures.values())).get("outputs", {})
    return {index: key for key, index in outputs.items()}


class LiteRTSession(Session):
    def __init__(self, path: Path, *, threads: int, input_names: list[str] | None = None,
                 device: str = "cpu") -> None:
        if device != "cpu":
            raise EnvironmentProblem(f"LiteRT runs '{path.name}' on the CPU here; its GPU delegate is for mobile GPUs.",
                                     hint="Validate TFLite on the device itself with --device ssh://user@host.")
        litert = require("ai_edge_litert.interpreter", "Running TFLite models")
        start = time.perf_counter()
        self._litert = litert
        try:
            with quiet_stderr():  # the XNNPACK delegate announces itself on stderr
                self._interp = litert.Interpreter(model_path=str(path), num_threads=threads)
                self._interp.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise InputRejected(f"LiteRT cannot load '{path}': {exc}") from exc
        self.load_seconds = time.perf_counter() - start
        self.threads = threads
        self.path = path
        self._in = self._interp.get_input_details()
        self._out = self._interp.get_output_details()
        names = [_signature_name(d["name"]) for d in self._in]
        # Fall back to position when the artifact's names do not match the source's.
        if input_names and sorted(names) != sorted(input_names) and len(input_names) == len(names):
            names = list(input_names)
        self._names = names
        self.inputs = tuple(TensorSpec(n, tuple(int(x) for x in d["shape"]), np.dtype(d["dtype"]).name,
                                       guess_layout(tuple(d["shape"]), "nhwc")) for n, d in zip(names, self._in))
        keys = _output_keys(self._interp)
        self.outputs = tuple(TensorSpec(keys.get(d["index"], _signature_name(d["name"])), tuple(int(x) for x in d["shape"]),
                                        np.dtype(d["dtype"]).name) for d in self._out)

    def _prepare(self, feed: dict[str, np.ndarray]) -> None:
        for name, detail in zip(self._names, self._in):
            value = _quantize(feed[name], detail)
            if tuple(value.shape) != tuple(detail["shape"]):
                self._interp.resize_tensor_input(detail["index"], value.shape)
                self._interp.allocate_tensors()
            self._interp.set_tensor(detail["index"], value)

    def run_raw(self) -> None:
        self._interp.invoke()

    def _run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        self._prepare(feed)
        self._interp.invoke()
        return [_dequantize(self._interp.get_tensor(d["index"]), d) for d in self._out]

    def ops(self) -> list[dict]:
        """Each op with its name and the dtypes of its input and output tensors.

        Read from an interpreter without delegates: XNNPACK would hide the ops it took over.
        """
        plain = self._litert.Interpreter(
            model_path=str(self.path),
            experimental_op_resolver_type=self._litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
        tensors = {t["index"]: t for t in plain.get_tensor_details()}
        result = []
        for op in plain._get_ops_details():
            dtypes_in = [np.dtype(tensors[i]["dtype"]).name for i in op["inputs"] if i >= 0 and i in tensors]
            dtypes_out = [np.dtype(tensors[i]["dtype"]).name for i in op["outputs"] if i in tensors]
            result.append({"op": op["op_name"], "inputs": dtypes_in, "outputs": dtypes_out})
        return result


def _quantize(value: np.ndarray, detail: dict) -> np.ndarray:
    return quantize(value, detail["dtype"], *detail["quantization"])


def _dequantize(value: np.ndarray, detail: dict) -> np.ndarray:
    return dequantize(value, *detail["quantization"])


open_session = opener(LiteRTSession)
