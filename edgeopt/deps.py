"""Lazy imports of heavy frameworks, failing once and clearly when one is missing."""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import importlib.metadata
import sys
from collections.abc import Iterator
from types import ModuleType

from edgeopt.errors import MissingDependency

# module name -> (distribution to report the version of, extra that installs it)
OPTIONAL = {
    "tensorflow": ("tensorflow-cpu", "tf"),
    "keras": ("keras", "tf"),
    "ai_edge_litert": ("ai-edge-litert", "tf"),
    "tf2onnx": ("tf2onnx", "tf"),
    "h5py": ("h5py", "tf"),
    "torch": ("torch", "torch"),
    "torch_pruning": ("torch-pruning", "torch"),
    "onnx": ("onnx", "onnx"),
    "onnxruntime": ("onnxruntime", "onnx"),
    "onnxscript": ("onnxscript", "torch"),
    "openvino": ("openvino", "openvino"),
    "nncf": ("nncf", "openvino"),
    "litert_torch": ("litert-torch", "torch-tflite"),
    "ai_edge_quantizer": ("ai-edge-quantizer", "torch-tflite"),
}


# TensorFlow prints C++ start-up logs unless told before its first import.
_QUIET_ENV = {"TF_CPP_MIN_LOG_LEVEL": "3", "KERAS_BACKEND": "tensorflow", "GRPC_VERBOSITY": "ERROR"}


# TensorFlow 2.21's oneDNN custom ops corrupt the heap ("malloc(): unaligned tcache chunk
# detected", SIGABRT) when a GradientTape trains a SeparableConv2D + BatchNorm + residual model on
# Intel CPUs with AMX, as distillation does; with them off the same training is clean. TensorFlow
# reads the switch once, while it is first imported, so it is set before any import of it (and of
# Keras, tf2onnx or LiteRT's converters, which import it). A user who sets it keeps their value.
_SAFE_ENV = {"TF_ENABLE_ONEDNN_OPTS": "0"}


# Frameworks whose C++ side writes to stderr on import, past Python's control.
_NOISY = {"tensorflow", "keras", "tf2onnx", "ai_edge_litert", "litert_torch", "ai_edge_quantizer"}


# OpenVINO's converter and NNCF send usage telemetry over the network, from a forked process,
# and write an id under ~/intel, unless they believe they run in CI. They decide on import and
# on every convert_model call; a local tool must not phone home.
_NO_TELEMETRY_ENV = {"CI": "true", "NNCF_CI": "1"}
_NO_TELEMETRY = {"openvino", "nncf"}


@contextlib.contextmanager
def no_telemetry() -> Iterator[None]:
    """Run OpenVINO/NNCF calls with their telemetry declined; the environment is restored after."""
    saved = {key: os.environ.get(key) for key in _NO_TELEMETRY_ENV}
    os.environ.update(_NO_TELEMETRY_ENV)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """Silence file descriptor 2 (C++ logs) unless --debug asked for everything."""
    if os.environ.get("EDGEOPT_DEBUG"):
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


# Where framework warnings are raised from. A warning raised with stacklevel > 1 is attributed to
# its caller, which is edgeopt's own code (edgeopt itself never warns through ``warnings``: its
# warnings go into the report), or importlib for warnings raised while a framework is imported.
_WARNING_SOURCES = (*OPTIONAL, "edgeopt", "absl", "google", "jax", "ml_dtypes", "numpy", "scipy", "sklearn",
                    "torchvision", "onnxconverter_common", "flatbuffers", "importlib")
# Categories that speak to the authors of the code, never to a user of the command.
_DEVELOPER_WARNINGS = (DeprecationWarning, PendingDeprecationWarning, FutureWarning, ImportWarning,
                       ResourceWarning)


def quiet_warnings() -> None:
    """Keep frameworks' Python warnings (Keras' "The structure of `inputs` doesn't match", converter
    deprecations) out of the terminal of a command run without --debug. Process-wide, so for
    the command line only: the Python API leaves the caller's warning filters alone."""
    import re
    import warnings

    sources = "|".join(re.escape(name) for name in _WARNING_SOURCES)
    warnings.filterwarnings("ignore", module=rf"({sources})(\.|$)")
    for category in _DEVELOPER_WARNINGS:
        warnings.filterwarnings("ignore", category=category)


def require(module: str, purpose: str) -> ModuleType:
    """Import ``module`` or raise MissingDependency naming the extra to install."""
    for key, value in {**_QUIET_ENV, **_SAFE_ENV}.items():
        os.environ.setdefault(key, value)
    try:
        top = module.split(".")[0]
        if top in _NO_TELEMETRY and top not in sys.modules:
            with no_telemetry():
                importlib.import_module(top)
        if top not in _NOISY:
            return importlib.import_module(module)
        if module not in sys.modules:
            with quiet_stderr():
                importlib.import_module(module)
        # absl's Python logger repeats converter deprecation chatter on every call; set on every
        # require, since the caller may have imported TensorFlow (and reset absl) before edgeopt.
        # TensorFlow's own logger warns once per optimizer value a SavedModel load skips, at garbage
        # collection, long after the load returned.
        level = logging.DEBUG if os.environ.get("EDGEOPT_DEBUG") else logging.ERROR
        for name in ("absl", "tensorflow"):
            logging.getLogger(name).setLevel(level)
        return sys.modules[module]
    except ImportError as exc:
        top = module.split(".")[0]
        extra = OPTIONAL.get(top, (top, "all"))[1]
        raise MissingDependency(top, extra, purpose) from exc


def version_of(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def installed_versions() -> dict[str, str]:
    """Versions of the optional frameworks present, without importing them."""
    found: dict[str, str] = {}
    for dist, _extra in OPTIONAL.values():
        v = version_of(dist)
        if v is not None:
            found[dist] = v
    return found
