"""Bounds checks of a .tflite file before any interpreter reads it.

A .tflite file is a FlatBuffer: tables point at other tables, vectors and buffers by offsets that
the interpreter follows as they are. A hostile or corrupt file can aim them outside the file or
give a constant tensor a buffer smaller than its shape, and kernels then read memory they do not
own. This module follows every offset the interpreter will follow, checked, using only the
standard library, and reports the first problem naming the tensor, buffer or operator.
"""

from __future__ import annotations

import math
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path

from edgeopt.errors import InputRejected

HINT = "The file is truncated or corrupt (or not made by a TFLite converter); convert the model again."

# TensorType code -> (name, bytes per element); None for types whose size is not fixed.
TENSOR_TYPES: dict[int, tuple[str, int | None]] = {
    0: ("float32", 4), 1: ("float16", 2), 2: ("int32", 4), 3: ("uint8", 1), 4: ("int64", 8),
    5: ("string", None), 6: ("bool", 1), 7: ("int16", 2), 8: ("complex64", 8), 9: ("int8", 1),
    10: ("float64", 8), 11: ("complex128", 16), 12: ("uint64", 8), 13: ("resource", None),
    14: ("variant", None), 15: ("uint32", 4), 16: ("uint16", 2), 17: ("int4", None), 18: ("bfloat16", 2),
}
SMALLEST_SCALE = 1.1754943508222875e-38  # the smallest normal float32
# Integer tensor types and the zero points they can hold.
ZERO_POINT_RANGE = {3: (0, 255), 9: (-128, 127), 7: (-32768, 32767), 16: (0, 65535), 17: (-8, 7)}


class _Corrupt(Exception):
    pass


@dataclass(frozen=True)
class TensorInfo:
    """One tensor as the file declares it; ``scales``/``zero_points`` are empty when not quantized."""

    subgraph: int
    index: int
    name: str
    dtype: str
    shape: tuple[int, ...]
    buffer_bytes: int
    scales: tuple[float, ...]
    zero_points: tuple[int, ...]
    quantized_dimension: int


class _Buffer:
    def __init__(self, data: bytes | mmap.mmap) -> None:
        self.data = data

    def need(self, pos: int, size: int, what: str) -> None:
        if pos < 0 or size < 0 or pos + size > len(self.data):
            raise _Corrupt(f"{what} lies outside the file (bytes {pos}..{pos + size} of {len(self.data)})")

    def read(self, fmt: str, pos: int, what: str):
        self.need(pos, struct.calcsize(fmt), what)
        return struct.unpack_from(fmt, self.data, pos)[0]


class _Table:
    """A FlatBuffer table at ``pos``: a signed offset to its vtable, then its fields."""

    def __init__(self, buf: _Buffer, pos: int, what: str) -> None:
        self.buf, self.pos, self.what = buf, pos, what
        self.vtable = pos - buf.read("<i", pos, what)
        self.vt_size = buf.read("<H", self.vtable, f"{what} (vtable)")
        self.size = buf.read("<H", self.vtable + 2, f"{what} (vtable)")
        if self.vt_size < 4 or self.vt_size % 2:
            raise _Corrupt(f"{what} has a malformed vtable")
        buf.need(self.vtable, self.vt_size, f"{what} (vtable)")
        buf.need(pos, self.size, what)

    def field(self, slot: int, size: int) -> int | None:
        entry = 4 + 2 * slot
        if entry >= self.vt_size:
            return None
        offset = self.buf.read("<H", self.vtable + entry, self.what)
        if offset == 0:
            return None
        if offset + size > self.size:
            raise _Corrupt(f"a field of {self.what} lies outside the table")
        return self.pos + offset

    def scalar(self, slot: int, fmt: str, default: float = 0) -> float:
        at = self.field(slot, struct.calcsize(fmt))
        return default if at is None else self.buf.read(fmt, at, self.what)

    def target(self, slot: int, what: str) -> int | None:
        at = self.field(slot, 4)
        return None if at is None else at + self.buf.read("<I", at, what)

    def vector(self, slot: int, fmt: str, what: str) -> list:
        start = self.target(slot, what)
        if start is None:
            return []
        count = self.buf.read("<I", start, what)
        size = struct.calcsize(fmt)
        self.buf.need(start + 4, count * size, what)
        return list(struct.unpack_from(f"<{count}{fmt.lstrip('<')}", self.buf.data, start + 4))

    def vector_bytes(self, slot: int, what: str) -> int:
        start = self.target(slot, what)
        if start is None:
            return 0
        count = self.buf.read("<I", start, what)
        self.buf.need(start + 4, count, what)
        return count

    def string(self, slot: int, what: str) -> str:
        start = self.target(slot, what)
        if start is None:
            return ""
        count = self.buf.read("<I", start, what)
        self.buf.need(start + 4, count, what)
        return self.buf.data[start + 4:start + 4 + count].decode("utf-8", "replace")

    def tables(self, slot: int, what: str) -> list[_Table]:
        start = self.target(slot, what)
        if start is None:
            return []
        count = self.buf.read("<I", start, what)
        self.buf.need(start + 4, 4 * count, what)
        result = []
        for i in range(count):
            at = start + 4 + 4 * i
            result.append(_Table(self.buf, at + self.buf.read("<I", at, what), f"{what}[{i}]"))
        return result


def check_tflite(path: Path) -> list[TensorInfo]:
    """Every tensor of ``path`` after checking the offsets, buffers, indices and quantization
    parameters the interpreter will use; raise InputRejected naming the first problem."""
    path = Path(path)
    try:
        # Mapped, not read: a large model is paged in only where its offsets point.
        with path.open("rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return _check(_Buffer(data), path)
    except _Corrupt as exc:
        raise InputRejected(f"Refusing the TFLite file '{path}': its {exc}.", hint=HINT) from None
    except (struct.error, OverflowError, ValueError, OSError) as exc:
        raise InputRejected(f"Refusing the TFLite file '{path}': it is malformed ({exc}).", hint=HINT) from None


def _check(buf: _Buffer, path: Path) -> list[TensorInfo]:
    model = _Table(buf, buf.read("<I", 0, "root offset"), "model table")
    opcodes = len(model.tables(1, "operator_codes"))
    buffers = [_buffer_size(b, len(buf.data)) for b in model.tables(4, "buffers")]
    subgraphs = model.tables(2, "subgraphs")
    if not subgraphs:  # LiteRT dereferences the first subgraph unchecked
        raise _Corrupt("model has no subgraph")
    tensors: list[TensorInfo] = []
    for s, subgraph in enumerate(subgraphs):
        where = f"subgraph {s}"
        found = [_tensor(t, s, i, buffers, where) for i, t in enumerate(subgraph.tables(0, f"{where} tensors"))]
        count = len(found)
        for kind, slot in (("inputs", 1), ("outputs", 2)):
            for index in subgraph.vector(slot, "i", f"{where} {kind}"):
                if not 0 <= index < count:
                    raise _Corrupt(f"{where} lists tensor {index} among its {kind}, but it has {count} tensors")
        for o, op in enumerate(subgraph.tables(3, f"{where} operators")):
            code = op.scalar(0, "<I")
            if code >= opcodes:
                raise _Corrupt(f"operator {o} of {where} uses operator code {code}, but the file has {opcodes}")
            for slot in (1, 2):
                for index in op.vector(slot, "i", f"operator {o} of {where}"):
                    if not -1 <= index < count:
                        raise _Corrupt(f"operator {o} of {where} uses tensor {index}, but there are {count}")
        tensors.extend(found)
    return tensors


def _buffer_size(table: _Table, file_size: int) -> int:
    size = table.vector_bytes(0, table.what)
    offset, external = int(table.scalar(1, "<Q")), int(table.scalar(2, "<Q"))
    if offset > 1:  # models over 2 GB keep buffers after the FlatBuffer, by absolute offset
        if offset + external > file_size:
            raise _Corrupt(f"{table.what} points at bytes {offset}..{offset + external}, past the end "
                           f"({file_size} bytes)")
        size = external
    return size


def _tensor(table: _Table, subgraph: int, index: int, buffers: list[int], where: str) -> TensorInfo:
    name = table.string(3, f"tensor {index} of {where}") or f"#{index}"
    label = f"tensor '{name}' of {where}"
    shape = tuple(table.vector(0, "i", f"{label} shape"))
    code = int(table.scalar(1, "<b"))
    dtype, item = TENSOR_TYPES.get(code, (f"type {code}", None))
    buffer = int(table.scalar(2, "<I"))
    if buffer >= len(buffers):
        raise _Corrupt(f"{label} uses buffer {buffer}, but the file has {len(buffers)} buffers")
    stored = buffers[buffer]
    sparse = table.field(6, 4) is not None
    external = int(table.scalar(10, "<I")) != 0
    if stored and item is not None and not sparse and not external and all(d >= 0 for d in shape):
        needed = math.prod(shape) * item
        if stored < needed:
            raise _Corrupt(f"{label} ({dtype}{list(shape)}) needs {needed} bytes, but its buffer {buffer} "
                           f"holds only {stored}")
    scales: tuple[float, ...] = ()
    zeros: tuple[int, ...] = ()
    axis = 0
    quant_at = table.target(4, f"{label} quantization")
    if quant_at is not None:
        quant = _Table(table.buf, quant_at, f"{label} quantization")
        scales = tuple(quant.vector(2, "f", f"{label} scales"))
        zeros = tuple(quant.vector(3, "q", f"{label} zero points"))
        axis = int(quant.scalar(6, "<i"))
        _check_quantization(label, code, shape, scales, zeros, axis)
    return TensorInfo(subgraph, index, name, dtype, shape, stored, scales, zeros, axis)


def _check_quantization(label: str, code: int, shape: tuple[int, ...], scales: tuple[float, ...],
                        zeros: tuple[int, ...], axis: int) -> None:
    for scale in scales:
        # LiteRT crashed (SIGSEGV) on a zero or subnormal scale; converters never write one.
        if not math.isfinite(scale) or scale < SMALLEST_SCALE:
            raise _Corrupt(f"{label} has the quantization scale {scale}; scales must be finite and positive "
                           f"(at least {SMALLEST_SCALE:.3g})")
    if zeros and len(zeros) != len(scales):
        raise _Corrupt(f"{label} has {len(scales)} quantization scales but {len(zeros)} zero points")
    if len(scales) > 1 and (not 0 <= axis < len(shape) or shape[axis] != len(scales)):
        raise _Corrupt(f"{label} has {len(scales)} per-channel scales along axis {axis}, but its shape is "
                       f"{list(shape)}")
    low, high = ZERO_POINT_RANGE.get(code, (None, None))
    for zero in zeros:
        if low is not None and not low <= zero <= high:
            raise _Corrupt(f"{label} has the zero point {zero}, outside {low}..{high} for its type")
