"""Fixing an ONNX model's free input sizes (``?``, ``batch``, ``p2o.DynamicDimension.0``) to the
sizes a user gives with ``--input-shape``, for every target alike.

Detectors and OCR models are exported with free height and width; an edge artifact is built for
one size. The sizes are written into the graph's inputs, the outputs' sizes are inferred again
from them, and every later step (conversion, calibration, the runtimes) sees the fixed model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgeopt.errors import UsageError

BARE = "input"  # the key the CLI gives a shape passed without a name
SHAPE_HINT = "Pass --input-shape NAME=1,3,320,320 (or NAME:1x3x320x320), one per input, batch first."


def resolve_names(shapes: dict[str, tuple[int, ...]], names: list[str], path: Path) -> dict[str, tuple[int, ...]]:
    """``shapes`` keyed by the model's own input names; a single bare shape (the CLI keys it
    "input") names the only input."""
    if list(shapes) == [BARE] and len(names) == 1:
        return {names[0]: next(iter(shapes.values()))}
    unknown = sorted(set(shapes) - set(names))
    if unknown:
        raise UsageError(f"--input-shape names {', '.join(repr(u) for u in unknown)}, which '{path}' has no input "
                         f"called; its inputs are {', '.join(repr(n) for n in names)}.", hint=SHAPE_HINT)
    return shapes


def pin_inputs(onnx: Any, model: Any, shapes: dict[str, tuple[int, ...]], path: Path) -> tuple[Any, list[str]]:
    """A copy of ``model`` with the given inputs' sizes fixed and its shapes inferred again."""
    initializers = {t.name for t in model.graph.initializer}
    inputs = [v for v in model.graph.input if v.name not in initializers]
    shapes = resolve_names(shapes, [v.name for v in inputs], path)
    pinned = type(model)()
    pinned.CopyFrom(model)
    notes = []
    for value in pinned.graph.input:
        if value.name not in shapes:
            continue
        wanted, dims = shapes[value.name], value.type.tensor_type.shape.dim
        if len(wanted) != len(dims):
            raise UsageError(f"--input-shape gives input '{value.name}' of '{path}' {len(wanted)} dimensions; it has "
                             f"{len(dims)} ({_show(dims)}).", hint=SHAPE_HINT)
        for axis, (size, dim) in enumerate(zip(wanted, dims)):
            if size < 1:
                raise UsageError(f"--input-shape gives input '{value.name}' a size of {size} at axis {axis}; sizes "
                                 "are whole numbers from 1.", hint=SHAPE_HINT)
            if dim.HasField("dim_value") and dim.dim_value > 0 and dim.dim_value != size:
                raise UsageError(f"--input-shape gives input '{value.name}' of '{path}' size {size} at axis {axis}, "
                                 f"which the model fixes at {dim.dim_value} ({_show(dims)}).", hint=SHAPE_HINT)
        before = _show(dims)
        for size, dim in zip(wanted, dims):
            dim.ClearField("dim_param")
            dim.dim_value = size
        if before != _show(dims):
            notes.append(f"Input '{value.name}' of '{path.name}' fixed from {before} to {_show(dims)} (--input-shape).")
    # The outputs' free sizes follow from the inputs; let inference fill them in again.
    for value in pinned.graph.output:
        for dim in value.type.tensor_type.shape.dim:
            if not dim.HasField("dim_value"):
                dim.Clear()
    del pinned.graph.value_info[:]
    try:
        pinned = onnx.shape_inference.infer_shapes(pinned, check_type=True, strict_mode=True, data_prop=True)
    except Exception as exc:
        raise UsageError(f"With the sizes from --input-shape, shape inference fails on '{path}': "
                         f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}.",
                         hint="The model does not accept inputs of those sizes; check what sizes it was built "
                              "for (e.g. multiples of 32 for detectors).") from exc
    return pinned, notes


def _show(dims: Any) -> str:
    return "[" + ",".join(str(d.dim_value) if d.HasField("dim_value") else (d.dim_param or "?") for d in dims) + "]"
