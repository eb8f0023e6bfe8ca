"""ONNX artifacts on ONNX Runtime's CPU execution provider, with a fixed, pinned thread pool."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgeopt.deps import require
from edgeopt.frameworks.base import guess_layout
from edgeopt.model import TensorSpec
from edgeopt.names import match_inputs
from edgeopt.targets.base import Session, default_threads, opener  # noqa: F401




def _affinities(threads: int) -> str | None:
    """ONNX Runtime's pinning for its worker threads (the caller's thread is the first of the pool).

    Logical processor ids are 1-based there; only processors this process may use are named.
    """
    if not hasattr(os, "sched_getaffinity") or threads < 2:
        return None
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < threads:
        return None
    return ";".join(str(cpu + 1) for cpu in cpus[1:threads])



def gpu_providers() -> list[str]:
    """onnxruntime's GPU execution providers installed here (none with the CPU build)."""
    try:
        import onnxruntime
    except ImportError:
        return []
    return [p for p in onnxruntime.get_available_providers() if p in ("CUDAExecutionProvider", "TensorrtExecutionProvider")]

class OrtSession(Session):
    def __init__(self, path: Path, *, threads: int, input_names: list[str] | None = None,
                 device: str = "cpu") -> None:
        from edgeopt.frameworks.onnx import ort_error

        ort = require("onnxruntime", "Running ONNX models")
        self._ort = ort
        self.path = path
        self.threads = threads
        self.device = device
        # On the GPU, nodes without a CUDA kernel run on the CPU provider: counted by fallback_ops().
        self._providers = [*gpu_providers(), "CPUExecutionProvider"] if device == "gpu" else ["CPUExecutionProvider"]
        options = self._options(ort, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
        start = time.perf_counter()
        try:
            self._session = ort.InferenceSession(str(path), options, providers=self._providers)
        except Exception as exc:
            raise ort_error(path, exc) from exc
        self.load_seconds = time.perf_counter() - start
        inputs = self._session.get_inputs()
        self._artifact_names = [i.name for i in inputs]
        self._names = match_inputs(self._artifact_names, input_names)
        self._dtypes = [_numpy_dtype(i.type) for i in inputs]
        self.inputs = tuple(TensorSpec(n, _shape(i.shape), d.name, guess_layout(_shape(i.shape), "nchw"))
                            for n, i, d in zip(self._names, inputs, self._dtypes))
        self.outputs = tuple(TensorSpec(o.name, _shape(o.shape), _numpy_dtype(o.type).name)
                             for o in self._session.get_outputs())
        self._feed: dict[str, np.ndarray] = {}

    def _options(self, ort: Any, level: Any) -> Any:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.graph_optimization_level = level
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        pinning = _affinities(self.threads)
        if pinning:
            options.add_session_config_entry("session.intra_op_thread_affinities", pinning)
        return options

    def _prepare(self, feed: dict[str, np.ndarray]) -> None:
        self._feed = {artifact: np.ascontiguousarray(feed[name], dtype=dtype)
                      for artifact, name, dtype in zip(self._artifact_names, self._names, self._dtypes)}

    def run_raw(self) -> None:
        self._session.run(None, self._feed)

    def _run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        self._prepare(feed)
        outs = self._session.run(None, self._feed)
        return [o.astype(np.float32) if o.dtype.kind == "f" and o.dtype != np.float32 else o for o in outs]

    def fallback_ops(self) -> dict[str, int]:
        """Node types that ran on the CPU provider although a GPU provider was asked for, with counts.

        Read from ONNX Runtime's own profile of one inference, which names each node's provider.
        """
        if self.device != "gpu":
            return {}
        with tempfile.TemporaryDirectory(prefix=".edgeopt-ort-") as tmp:
            options = self._options(self._ort, self._ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
            options.enable_profiling = True
            options.profile_file_prefix = str(Path(tmp) / "profile")
            session = self._ort.InferenceSession(str(self.path), options, providers=self._providers)
            session.run(None, self._feed or self._zeros())
            return cpu_nodes(Path(session.end_profiling()))

    def _zeros(self) -> dict[str, np.ndarray]:
        return {i.name: np.zeros([d if isinstance(d, int) and d > 0 else 1 for d in i.shape], dtype=dt)
                for i, dt in zip(self._session.get_inputs(), self._dtypes)}

    def ops(self) -> list[dict]:
        """The nodes ONNX Runtime executes after its graph fusions, with the dtype each computes in.

        Read from the optimized graph, not the file: a Conv between Q/DQ pairs runs in int8 only
        if the runtime fused it into QLinearConv. The extended level shows those fusions without
        the hardware-specific layout rewrites of the full level.
        """
        onnx = require("onnx", "Reading ONNX models")
        with tempfile.TemporaryDirectory(prefix=".edgeopt-ort-") as tmp:
            options = self._options(self._ort, self._ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED)
            options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
            self._ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
            model = onnx.load(options.optimized_model_filepath)
        return node_dtypes(onnx, model)


def cpu_nodes(profile: Path) -> dict[str, int]:
    """Op types of the nodes an ONNX Runtime profile shows on the CPU provider, with counts."""
    import json

    counts: dict[str, int] = {}
    for event in json.loads(profile.read_text()):
        args = event.get("args") or {}
        if event.get("cat") == "Node" and args.get("provider") == "CPUExecutionProvider" \
                and event.get("name", "").endswith("_kernel_time"):
            counts[args.get("op_name", "?")] = counts.get(args.get("op_name", "?"), 0) + 1
    return dict(sorted(counts.items()))


def node_dtypes(onnx: Any, model: Any) -> list[dict]:
    """Each node with the dtype of its first input and first output, propagated through the graph."""
    from edgeopt.frameworks.onnx import is_quantized_op

    known: dict[str, str] = {}
    for value in [*model.graph.input, *model.graph.value_info, *model.graph.output]:
        if value.type.HasField("tensor_type") and value.type.tensor_type.elem_type:
            known[value.name] = _onnx_dtype(onnx, value.type.tensor_type.elem_type)
    for tensor in model.graph.initializer:
        known[tensor.name] = _onnx_dtype(onnx, tensor.data_type)
    result = []
    for node in model.graph.node:
        first = known.get(node.input[0], "float32") if node.input and node.input[0] else "float32"
        if node.op_type in ("QuantizeLinear", "DynamicQuantizeLinear"):
            zero_point = node.input[2] if len(node.input) > 2 else ""
            out = known.get(zero_point, "uint8")
        elif node.op_type == "DequantizeLinear":
            out = "float32"
        elif node.op_type == "Cast":
            to = next((a.i for a in node.attribute if a.name == "to"), 1)
            out = _onnx_dtype(onnx, to)
        elif node.op_type in ("Shape", "Size", "NonZero", "ArgMax", "ArgMin"):
            out = "int64"
        elif is_quantized_op(node.op_type):
            # Integer kernels list scales first in some ops (QLinearConcat); the 8-bit operand is the data.
            first = next((known[i] for i in node.input if known.get(i) in ("int8", "uint8")), first)
            out = first
        else:
            out = first
        for name in node.output:
            known.setdefault(name, out)
        result.append({"op": node.op_type, "inputs": [first], "outputs": [out]})
    return result


_ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
              "tensor(int8)": "int8", "tensor(uint8)": "uint8", "tensor(int16)": "int16", "tensor(int32)": "int32",
              "tensor(int64)": "int64", "tensor(bool)": "bool"}


def _numpy_dtype(ort_type: str) -> np.dtype:
    return np.dtype(_ORT_TYPES.get(ort_type, "float32"))


def _onnx_dtype(onnx: Any, elem_type: int) -> str:
    try:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type)).name
    except (KeyError, TypeError, ValueError):
        return "float32"


def _shape(dims: list[Any]) -> tuple[int | None, ...]:
    return tuple(d if isinstance(d, int) and d > 0 else None for d in dims)


open_session = opener(OrtSession)
