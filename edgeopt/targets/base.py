"""What every runtime session offers: run one batch, and describe its tensors.

Validation and calibration data are always in the source model's layout, while an artifact may
take another (a PyTorch model becomes an NHWC TFLite model). A session told the source's tensors
(:meth:`Session.set_source`) transposes each feed into its own layout and each 4-D output back,
here, once for every runtime.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from edgeopt.model import NCHW_TO_NHWC, NHWC_TO_NCHW, Axes, TensorSpec

_AXES = {("nchw", "nhwc"): NCHW_TO_NHWC, ("nhwc", "nchw"): NHWC_TO_NCHW}
_LAYOUT_AFTER = {NCHW_TO_NHWC: "nhwc", NHWC_TO_NCHW: "nchw"}


def inverse(axes: Axes) -> Axes:
    return tuple(int(i) for i in np.argsort(axes))


def _fits(shape: Sequence[int | None], wanted: Sequence[int | None]) -> bool:
    # None is a free dimension (the batch, or a dynamic size) and fits anything.
    return len(shape) == len(wanted) and all(a is None or b is None or a == b for a, b in zip(shape, wanted))


def layout_axes(data: Sequence[int | None], own: Sequence[int | None], prefer: Axes | None) -> Axes | None:
    """The transpose that turns a 4-D tensor shaped ``data`` into one shaped ``own``; None for none.

    Shapes decide; only when they cannot (H == W == C, or free sizes) does ``prefer`` pick, and
    keeping the tensor as it is wins over a transpose nobody asked for.
    """
    if len(data) != 4 or len(own) != 4:
        return None
    keep = _fits(own, data)
    moves = [axes for axes in _AXES.values() if _fits(own, [data[i] for i in axes])]
    if prefer in moves and (keep or len(moves) > 1):
        return prefer
    if keep:
        return None
    return moves[0] if len(moves) == 1 else None


class Session(ABC):
    """An artifact loaded in its runtime. Feeds and results are float unless the model says otherwise."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    threads: int
    load_seconds: float
    # Transposes from the source's layout into this session's, per input name, and from this
    # session's outputs back to the source's, per output position. Empty: feeds pass unchanged.
    _in_axes: dict[str, Axes] = {}
    _out_axes: dict[int, Axes] = {}
    _out_order: list[int] | None = None

    def set_source(self, inputs: Sequence[TensorSpec] | None,
                   outputs: Sequence[TensorSpec] | None = None) -> None:
        """Take feeds in the layout of the source's ``inputs`` and return ``outputs``' layout.

        The session's own input specs then state the layout it really takes, which the report shows.
        """
        # Outputs pair by name where both sides name them alike, else by position. A SavedModel's
        # outputs are its signature's keys in sorted order, and the TFLite converter writes them in
        # another: basic-pitch's 'note' and 'onset' maps, both (172, 88), were compared crosswise.
        own_names = [t.name for t in self.outputs]
        wanted = [t.name for t in outputs or ()]
        self._out_order = None
        if wanted and sorted(own_names) == sorted(wanted) and own_names != wanted and len(set(wanted)) == len(wanted):
            self._out_order = [own_names.index(name) for name in wanted]
            self.outputs = tuple(self.outputs[i] for i in self._out_order)
        if not inputs:
            return
        source = {t.name: t for t in inputs}
        in_axes: dict[str, Axes] = {}
        specs = []
        for own in self.inputs:
            data = source.get(own.name)
            axes = None if data is None else layout_axes(data.shape, own.shape, _AXES.get((data.layout, own.layout)))
            if axes is not None:
                in_axes[own.name] = axes
                own = TensorSpec(own.name, own.shape, own.dtype, _LAYOUT_AFTER[axes])
            elif data is not None and data.layout and _fits(own.shape, data.shape):
                own = TensorSpec(own.name, own.shape, own.dtype, data.layout)  # as the source: same layout
            specs.append(own)
        self.inputs = tuple(specs)
        self._in_axes = in_axes
        # An exporter that moved the image inputs moved the image outputs alike, which settles
        # outputs whose shape cannot tell.
        moved = inverse(next(iter(in_axes.values()))) if in_axes else None
        self._out_axes = {}
        for i, (own, data) in enumerate(zip(self.outputs, outputs or ())):
            axes = layout_axes(own.shape, data.shape, moved)
            if axes is not None:
                self._out_axes[i] = axes

    def to_own_layout(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``feed`` (source layout, keyed by the source's input names) in this session's layout."""
        if not self._in_axes:
            return feed
        return {k: np.ascontiguousarray(np.transpose(v, self._in_axes[k])) if k in self._in_axes else v
                for k, v in feed.items()}

    def to_source_layout(self, outputs: list[np.ndarray]) -> list[np.ndarray]:
        """This session's outputs in the source's order and layout, so they compare element by element."""
        if self._out_order is not None:
            outputs = [outputs[i] for i in self._out_order]
        if not self._out_axes:
            return outputs
        return [np.transpose(o, self._out_axes[i]) if i in self._out_axes else o for i, o in enumerate(outputs)]

    def input_axes(self, name: str) -> Axes | None:
        """The transpose applied to input ``name`` (for a runner that feeds the session elsewhere)."""
        return self._in_axes.get(name)

    def run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Outputs, dequantized to float and in the source's layout, for one sample keyed by the
        source model's input names."""
        return self.to_source_layout(self._run(self.to_own_layout(feed)))

    def prepare(self, feed: dict[str, np.ndarray]) -> None:
        """Load ``feed`` (source layout) into the session so :meth:`run_raw` times inference alone."""
        self._prepare(self.to_own_layout(feed))

    @abstractmethod
    def _run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        """The runtime's outputs, dequantized to float, for a feed already in this session's layout."""

    @abstractmethod
    def _prepare(self, feed: dict[str, np.ndarray]) -> None:
        """Load a feed already in this session's layout."""

    @abstractmethod
    def run_raw(self) -> None:
        """One inference on the inputs last set by :meth:`prepare`; what latency timing calls."""

    def ops(self) -> list[dict]:
        """Each op the runtime executes, ``{"op", "inputs": [dtype], "outputs": [dtype]}``; none
        where the runtime does not say (a source model in its own framework)."""
        return []

    def fallback_ops(self) -> dict[str, int]:
        """Op types that ran on the CPU although a GPU was asked for, with counts."""
        return {}

    def run_many(self, rows) -> list[np.ndarray]:
        """Run sample by sample (edge runtimes are built for batch 1) and stack the outputs."""
        per_output: list[list[np.ndarray]] = []
        for row in rows:
            outs = self.run(row)
            if not per_output:
                per_output = [[] for _ in outs]
            for bucket, out in zip(per_output, outs):
                bucket.append(out)
        return [np.concatenate(b) for b in per_output]


def default_threads() -> int:
    """Every core this process may use: what a deployed runtime would get on a dedicated device."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def opener(cls: type[Session]) -> Callable[..., Session]:
    """The registry's ``open_session`` for a runtime: one signature, one place that wires the source."""

    def open_session(path: Path, *, threads: int | None = None, input_names: list[str] | None = None,
                     source_inputs: tuple[TensorSpec, ...] | None = None,
                     source_outputs: tuple[TensorSpec, ...] | None = None, device: str = "cpu") -> Session:
        session = cls(Path(path), threads=threads or default_threads(), input_names=input_names, device=device)
        session.set_source(source_inputs, source_outputs)
        return session

    open_session.__doc__ = f"Open an artifact in a {cls.__name__}, fed in the source model's layout."
    open_session.__module__ = cls.__module__  # it belongs to the runtime's module, where the registry names it
    return open_session


def open_own_artifact(target: str, path: Path, source, *, threads: int | None = None) -> Session:
    """Open an artifact edgeopt itself just wrote, fed in ``source``'s layout.

    A runtime that refuses it is edgeopt's failure, not the user's file's: the error is a
    ConversionError (exit 4) that says so, never "input rejected ... export the model again".
    """
    from edgeopt import registry
    from edgeopt.errors import ConversionError, InputRejected

    handle = source.handle
    try:
        return registry.resolve("runtime", target)(path, threads=threads, input_names=handle.input_names,
                                                   source_inputs=handle.inputs, source_outputs=handle.outputs)
    except InputRejected as exc:
        raise ConversionError(
            f"The {target} artifact edgeopt wrote for '{handle.path}' does not load in its runtime: {exc.message}",
            hint="This is a fault in edgeopt's conversion, not in the model you gave. Run again with --debug "
                 "and report the output; another --target or --precision may work meanwhile.") from exc


# Ops that only convert between float and int8 at the edges of integer regions, per runtime.
QUANTIZE_OPS = {"QUANTIZE", "DEQUANTIZE", "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear",
                "FakeQuantize"}
_INTEGER = ("int8", "uint8", "int16")


def op_summary(ops: list[dict]) -> dict:
    """Op counts, and which compute ops run in float: the evidence for 'full integer'."""
    if not ops:
        return {}
    counts: dict[str, int] = {}
    float_ops: list[str] = []
    for op in ops:
        counts[op["op"]] = counts.get(op["op"], 0) + 1
        if op["op"] in QUANTIZE_OPS:
            continue
        if any(d.startswith("float") for d in op["inputs"][:1] + op["outputs"]):
            float_ops.append(op["op"])
    return {"counts": dict(sorted(counts.items())), "float_ops": sorted(set(float_ops)),
            "full_integer": not float_ops}


def precision_of(ops: list[dict]) -> str:
    """An artifact's precision read from its ops, as compress labels it: int8 where activations are
    quantized, int8-dynamic where only weights are (activations quantized at run time), fp16
    where float16 tensors remain, else fp32; "unknown" without ops to read."""
    if not ops:
        return "unknown"
    names = {op["op"] for op in ops}
    if "DynamicQuantizeLinear" in names:
        return "int8-dynamic"
    compute = [op for op in ops if op["op"] not in QUANTIZE_OPS]
    # A (de)quantize op of float16 weights (TFLite fp16) is no int8; one that writes or reads int8 is.
    edges = {d for op in ops if op["op"] in QUANTIZE_OPS for d in op["inputs"] + op["outputs"]}
    activations = {d for op in compute for d in op["inputs"][:1] + op["outputs"]}
    if (edges | activations) & set(_INTEGER):
        return "int8"
    if any(d in _INTEGER for op in compute for d in op["inputs"][1:]):
        return "int8-dynamic"
    if any(d == "float16" for op in ops for d in op["inputs"] + op["outputs"]):
        return "fp16"
    return "fp32"
