"""Calibration and validation data: read lazily, checked against the model, seeded.

Three sources are understood: an ``.npz`` archive (arrays named after the model inputs, or one
array for a one-input model, plus an optional ``labels`` array), a folder of ``.npy`` files
(one per input, or one per sample), and a folder of images. Samples are streamed: only the
selected rows are read, one at a time.
"""

from __future__ import annotations

import hashlib
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal

import numpy as np

from edgeopt.errors import InputRejected, UsageError
from edgeopt.formats import ZIP_ERRORS, require_regular_file
from edgeopt.model import TensorSpec

LABELS = "labels"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".ppm", ".pgm"}

@dataclass(frozen=True)
class ImageOptions:
    """How a folder of images becomes tensors: pixels scaled to [0, 1], then (x - mean) / std."""

    size: tuple[int, int] | None = None  # (height, width); from the model input when None
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    layout: Literal["nhwc", "nchw"] | None = None  # from the model input when None
    color: Literal["rgb", "gray"] | None = None  # from the channel count when None


class _Column:
    """One array whose first axis is samples, read row by row without loading it whole."""

    def __init__(self, origin: str, shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.origin = origin
        self.shape = shape
        self.dtype = dtype

    @property
    def count(self) -> int:
        return self.shape[0]

    def rows(self, indices: Sequence[int]) -> Iterator[np.ndarray]:
        raise NotImplementedError


class _NpyColumn(_Column):
    def __init__(self, path: Path) -> None:
        try:
            self._array = np.load(path, mmap_mode="r", allow_pickle=False)
        except Exception as exc:  # numpy raises ValueError/OSError/EOFError for broken files
            raise InputRejected(
                f"Cannot read '{path}' as a .npy array: {exc}",
                hint="Save the data with numpy.save (object arrays are not accepted).",
            ) from exc
        if self._array.ndim == 0:
            raise InputRejected(f"'{path}' holds a scalar; expected samples along the first axis.")
        super().__init__(str(path), tuple(self._array.shape), self._array.dtype)

    def rows(self, indices: Sequence[int]) -> Iterator[np.ndarray]:
        for i in indices:
            yield np.asarray(self._array[i])


class _NpzMember(_Column):
    """A ``.npy`` inside an ``.npz``: the header is parsed, then rows are read in order."""

    def __init__(self, archive: Path, member: str) -> None:
        self._archive = archive
        self._member = member
        try:
            with zipfile.ZipFile(archive) as zf, zf.open(member) as fh:
                shape, fortran, dtype = _read_npy_header(fh, f"{archive}[{member}]")
                stored = zf.getinfo(member).file_size - fh.tell()
        except ZIP_ERRORS as exc:
            raise InputRejected(f"Cannot read {archive}[{member}]: {exc}",
                                hint="The archive is damaged; save it again with numpy.savez.") from exc
        if dtype.hasobject:
            raise InputRejected(f"{archive}[{member}] has dtype {dtype}: it holds pickled Python objects, which "
                                "edgeopt never unpickles.", hint="Save numeric arrays (float32 inputs, int64 labels).")
        # The header is only a claim: a few bytes can declare 10^9 samples, which sampling would
        # then index. The member's size, which zipfile enforces on read, must match it.
        declared = int(np.prod(shape, dtype=object)) * dtype.itemsize
        if declared != stored:
            raise InputRejected(
                f"{archive}[{member}] declares shape {shape} of {dtype} ({declared} bytes) but holds {stored} bytes.",
                hint="The archive is truncated or was not written by numpy.savez; save it again.",
            )
        if fortran and len(shape) > 1:
            raise InputRejected(
                f"{archive}[{member}] is stored in Fortran order, which cannot be streamed.",
                hint="Save it with numpy.savez(path, name=numpy.ascontiguousarray(array)).",
            )
        if not shape:
            raise InputRejected(f"{archive}[{member}] is a scalar; expected samples along axis 0.")
        super().__init__(f"{archive}[{member[:-4]}]", shape, dtype)

    def rows(self, indices: Sequence[int]) -> Iterator[np.ndarray]:
        row_shape = self.shape[1:]
        row_bytes = int(np.prod(row_shape, dtype=np.int64)) * self.dtype.itemsize
        with zipfile.ZipFile(self._archive) as zf, zf.open(self._member) as fh:
            _read_npy_header(fh, self.origin)
            position = 0
            for i in indices:
                if i < position:
                    raise ValueError("rows must be requested in increasing order")
                try:
                    _skip(fh, (i - position) * row_bytes)
                    raw = fh.read(row_bytes)
                except ZIP_ERRORS as exc:  # a CRC or deflate failure shows only when read
                    raise InputRejected(f"{self.origin} cannot be read at sample {i}: {exc}",
                                        hint="The archive is damaged; save it again with numpy.savez.") from exc
                if len(raw) != row_bytes:
                    raise InputRejected(f"{self.origin} is truncated at sample {i}.")
                position = i + 1
                yield np.frombuffer(raw, dtype=self.dtype).reshape(row_shape)


def _read_npy_header(fh: IO[bytes], origin: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    try:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            return np.lib.format.read_array_header_1_0(fh)
        return np.lib.format.read_array_header_2_0(fh)
    except Exception as exc:
        raise InputRejected(f"{origin} is not a valid .npy array: {exc}") from exc


def _skip(fh: IO[bytes], n: int) -> None:
    while n > 0:
        chunk = fh.read(min(n, 1 << 20))
        if not chunk:
            return
        n -= len(chunk)


class _SampleFiles(_Column):
    """A folder where each file is one sample (.npy or an image)."""

    def __init__(self, origin: str, files: list[Path], loader, shape: tuple[int, ...], dtype) -> None:
        super().__init__(origin, (len(files), *shape), np.dtype(dtype))
        self._files = files
        self._loader = loader

    def rows(self, indices: Sequence[int]) -> Iterator[np.ndarray]:
        for i in indices:
            row = self._loader(self._files[i])
            if row.shape != self.shape[1:]:
                raise InputRejected(
                    f"'{self._files[i]}' has shape {row.shape}; the other samples in "
                    f"{self.origin} have {self.shape[1:]}.",
                )
            yield row


class DataSource:
    """Columns named after model inputs, plus optional labels, all with the same sample count."""

    def __init__(self, path: Path, columns: dict[str, _Column], labels: _Column | None) -> None:
        self.path = path
        self.columns = columns
        self.labels = labels
        counts = {name: col.count for name, col in columns.items()}
        if labels is not None:
            counts[LABELS] = labels.count
        if len(set(counts.values())) > 1:
            raise InputRejected(
                f"Arrays in '{path}' disagree on the number of samples: {counts}.",
                hint="Every array needs the same length along its first axis.",
            )
        self.count = next(iter(counts.values()))
        self.dtypes: dict[str, np.dtype] = {}  # what each input is cast to; set once checked
        self.whole: set[str] = set()  # inputs whose samples are the whole tensor (WHOLE), set once checked
        if self.count == 0:
            raise InputRejected(f"'{path}' holds no samples.")

    def samples(self, indices: Sequence[int]) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        """Yield ``(index, {input name: row with a batch axis of 1, or the whole tensor})`` for sorted ``indices``."""
        ordered = sorted(indices)
        iters = {name: col.rows(ordered) for name, col in self.columns.items()}
        for i in ordered:
            row = {}
            for name, it in iters.items():
                value = next(it)
                if not np.all(np.isfinite(value)):
                    bad = "NaN" if np.isnan(value).any() else "Inf"
                    raise InputRejected(
                        f"Sample {i} of '{self.columns[name].origin}' contains {bad} values.",
                        hint="Remove or repair that sample; calibration needs finite numbers.",
                    )
                dtype = self.dtypes.get(name, value.dtype)
                row[name] = (value if name in self.whole else value[np.newaxis, ...]).astype(dtype, copy=False)
            yield i, row

    def label_values(self, indices: Sequence[int]) -> np.ndarray | None:
        if self.labels is None:
            return None
        values = np.stack(list(self.labels.rows(sorted(indices))))
        if values.ndim > 1:  # one-hot labels
            values = values.reshape(len(values), -1).argmax(axis=1)
        return values.astype(np.int64)


def stack(rows: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Rows of single samples as one batch per input (one row as it is: it may hold whole tensors)."""
    if len(rows) == 1:
        return dict(rows[0])
    return {name: np.concatenate([r[name] for r in rows]) for name in rows[0]}


@dataclass(frozen=True)
class Subset:
    """A seeded choice of sample indices from a source."""

    source: DataSource
    indices: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        for _i, row in self.source.samples(self.indices):
            yield row

    def labels(self) -> np.ndarray | None:
        return self.source.label_values(self.indices)

    @property
    def batchable(self) -> bool:
        """Whether samples can be joined along a batch axis: not when an input takes whole tensors."""
        return not self.source.whole

    def stacked(self) -> dict[str, np.ndarray]:
        """All selected samples as one batch per input (for reference runs on small sets)."""
        if not self.batchable:
            raise InputRejected(
                f"The inputs {', '.join(sorted(self.source.whole))} of '{self.source.path}' take whole tensors, not "
                "batches of samples; this step needs batches.",
                hint="Give those inputs a batch axis first, or leave out the step that needs it.")
        return stack(list(self))

    def chunks(self, size: int) -> Iterator[list[dict[str, np.ndarray]]]:
        """The samples, streamed in lists of at most ``size`` rows: one when they cannot be batched,
        so a caller's ``stack`` of a chunk is always a valid model input."""
        size = size if self.batchable else 1
        pending: list[dict[str, np.ndarray]] = []
        for row in self:
            pending.append(row)
            if len(pending) == size:
                yield pending
                pending = []
        if pending:
            yield pending

    def sha256(self) -> str:
        """A digest of exactly the selected samples, in order, so reports can name the data."""
        digest = hashlib.sha256()
        for row in self:
            for name in sorted(row):
                digest.update(name.encode())
                digest.update(np.ascontiguousarray(row[name]).tobytes())
        return digest.hexdigest()

    def check_finite(self) -> None:
        for _ in self:  # samples() raises on the first NaN/Inf
            pass


def open_data(path: Path | str, inputs: Sequence[TensorSpec], images: ImageOptions | None = None,
              *, role: str = "calibration") -> DataSource:
    """Open ``path`` and check it against the model's inputs before any work starts."""
    path = Path(path)
    if not path.exists():
        raise InputRejected(f"The {role} data '{path}' does not exist.",
                            hint="Pass an .npz file, a folder of .npy files, or a folder of images.")
    if path.is_dir():
        source = _open_folder(path, inputs, images or ImageOptions(), role)
    elif zipfile.is_zipfile(require_regular_file(path, role)):  # is_zipfile opens the path
        source = _open_npz(path, inputs)
    elif path.suffix == ".npy":
        source = DataSource(path, {_single_input(inputs, path).name: _NpyColumn(path)}, None)
    else:
        raise InputRejected(
            f"The {role} data '{path}' is neither an .npz archive, a .npy file nor a folder.",
            hint="Save arrays with numpy.savez(path, <input name>=array, labels=labels).",
        )
    for spec in inputs:
        if _check_column(source.columns[spec.name], spec, role) == WHOLE:
            source.whole.add(spec.name)
        source.dtypes[spec.name] = np.dtype(spec.dtype)
    if source.labels is not None and source.labels.dtype.kind not in "biuf":
        raise InputRejected(f"The {role} labels {source.labels.origin} have dtype {source.labels.dtype}; "
                            "expected class indices (integers) or one-hot numbers.",
                            hint="Save labels as numpy.int64, e.g. numpy.savez(path, ..., labels=y.astype('int64')).")
    return source


def _single_input(inputs: Sequence[TensorSpec], path: Path) -> TensorSpec:
    if len(inputs) != 1:
        names = ", ".join(t.name for t in inputs)
        raise InputRejected(
            f"'{path}' holds one unnamed array, but the model has {len(inputs)} inputs ({names}).",
            hint="Store one array per input, named after it, e.g. numpy.savez(path, **arrays).",
        )
    return inputs[0]


def _match_columns(path: Path, found: dict[str, _Column], inputs: Sequence[TensorSpec]) -> dict[str, _Column]:
    if all(t.name in found for t in inputs):
        return {t.name: found[t.name] for t in inputs}
    if len(inputs) == 1 and len(found) == 1:
        return {inputs[0].name: next(iter(found.values()))}
    missing = [t.name for t in inputs if t.name not in found]
    raise InputRejected(
        f"'{path}' has arrays {sorted(found) or 'none'} but no array for model input(s) {missing}.",
        hint="Name each array after the model input it feeds (see `edgeopt doctor` or the "
             "error's list of inputs); a one-input model also accepts a single array of any name.",
    )


def _open_npz(path: Path, inputs: Sequence[TensorSpec]) -> DataSource:
    try:
        with zipfile.ZipFile(path) as zf:
            members = [m for m in zf.namelist() if m.endswith(".npy")]
    except ZIP_ERRORS as exc:
        raise InputRejected(f"Cannot read '{path}' as an .npz archive: {exc}") from exc
    columns = {m[:-4]: _NpzMember(path, m) for m in members}
    labels = columns.pop(LABELS, None)
    return DataSource(path, _match_columns(path, columns, inputs), labels)


def _open_folder(path: Path, inputs: Sequence[TensorSpec], images: ImageOptions, role: str) -> DataSource:
    npys = [require_regular_file(p, role) for p in sorted(path.iterdir()) if p.suffix == ".npy"]
    # Images are read only when there are no .npy files, so only then are they checked.
    pictures = [] if npys else [require_regular_file(p, role) for p in sorted(path.rglob("*"))
                                if p.suffix.lower() in IMAGE_SUFFIXES]
    if npys:
        by_name = {p.stem: p for p in npys}
        labels = _NpyColumn(by_name.pop(LABELS)) if LABELS in by_name else None
        if all(t.name in by_name for t in inputs):
            return DataSource(path, {t.name: _NpyColumn(by_name[t.name]) for t in inputs}, labels)
        # Otherwise each file is one sample of a single-input model.
        spec = _single_input(inputs, path)
        files = list(by_name.values())
        first = np.load(files[0], allow_pickle=False)
        loader = _per_sample_npy_loader(first.shape, spec)
        shape = loader(files[0]).shape
        return DataSource(path, {spec.name: _SampleFiles(str(path), files, loader, shape, first.dtype)}, labels)
    if pictures:
        spec = _single_input(inputs, path)
        loader, shape = _image_loader(spec, images, path, pictures[0])
        return DataSource(path, {spec.name: _SampleFiles(str(path), pictures, loader, shape, np.float32)}, None)
    raise InputRejected(f"The folder '{path}' holds no .npy files and no images.")


def _per_sample_npy_loader(first_shape: tuple[int, ...], spec: TensorSpec):
    # A per-sample file may or may not carry a batch axis of 1; accept both.
    squeeze = len(first_shape) == len(spec.shape) and first_shape[:1] == (1,)

    def load(p: Path) -> np.ndarray:
        try:
            arr = np.load(p, allow_pickle=False)
        except Exception as exc:
            raise InputRejected(f"Cannot read '{p}' as a .npy array: {exc}") from exc
        return arr[0] if squeeze else arr

    return load


def _image_loader(spec: TensorSpec, opts: ImageOptions, folder: Path, first: Path):
    from edgeopt.deps import require

    image_module = require("PIL.Image", "Reading a folder of images")
    if len(spec.shape) != 4:
        raise InputRejected(
            f"The folder '{folder}' holds images, but model input {spec.describe()} is not a 4-D image tensor.",
        )
    layout = opts.layout or spec.layout or "nhwc"
    h_axis, w_axis, c_axis = (1, 2, 3) if layout == "nhwc" else (2, 3, 1)
    size = opts.size or (spec.shape[h_axis], spec.shape[w_axis])
    if None in size:
        raise UsageError(f"Model input {spec.describe()} has a free image size.",
                         hint="Pass --image-size HEIGHT,WIDTH.")
    channels = spec.shape[c_axis]
    color = opts.color or ("gray" if channels == 1 else "rgb")
    mean = np.asarray(opts.mean, dtype=np.float32)
    std = np.asarray(opts.std, dtype=np.float32)

    def load(p: Path) -> np.ndarray:
        try:
            with image_module.open(p) as img:
                img = img.convert("L" if color == "gray" else "RGB").resize((size[1], size[0]))
                pixels = np.asarray(img, dtype=np.float32) / 255.0
        # Pillow refuses images of more than twice its pixel limit (a decompression bomb).
        except (OSError, ValueError, image_module.DecompressionBombError) as exc:
            raise InputRejected(f"Cannot read the image '{p}': {exc}",
                                hint="Replace or remove that file; the folder must hold ordinary images.") from exc
        if pixels.ndim == 2:
            pixels = pixels[..., np.newaxis]
        pixels = (pixels - mean) / std
        return pixels.transpose(2, 0, 1) if layout == "nchw" else pixels

    shape = load(first).shape
    return load, shape


# How a sample of an array feeds its input: with a batch axis of 1 added (the usual case), or as
# the whole input tensor, for inputs that have no batch axis first: a recurrent state laid out
# (layers, batch, units), a 0-d sample rate, a sequence of frames.
BATCHED, WHOLE = "batched", "whole"


def _fits(got: tuple[int, ...], want: tuple[int | None, ...]) -> bool:
    return len(got) == len(want) and all(w is None or w == g for w, g in zip(want, got))


def _check_column(col: _Column, spec: TensorSpec, role: str) -> str:
    """BATCHED or WHOLE, for an array whose samples fit the input; else a clear refusal."""
    got = col.shape[1:]
    want = spec.sample_shape
    if not spec.shape or (not _fits(got, want) and _fits(got, spec.shape) and not _fits((1, *got), spec.shape)):
        mode = WHOLE  # a 0-d input has no batch axis to add
    else:
        mode = BATCHED
    if not _fits(got, spec.shape if mode == WHOLE else want):
        hint = "Arrays need the samples along the first axis, then the model input's shape."
        if len(got) == len(want) and sorted(got) == sorted(d for d in want if d is not None):
            hint = ("The same sizes in another order: the data looks like the other layout "
                    "(NHWC vs NCHW). Transpose it, or use --layout for image folders.")
        elif len(got) == len(want) - 1:
            hint = "A channel axis may be missing: add one with array[..., None]."
        expected = ",".join("?" if d is None else str(d) for d in want)
        raise InputRejected(
            f"The {role} array {col.origin} has per-sample shape {got} ({col.count} samples); "
            f"model input '{spec.name}' expects ({expected}) — input {spec.describe()}.",
            hint=hint,
        )
    want_float = np.dtype(spec.dtype).kind == "f"
    got_kind = col.dtype.kind
    if want_float and got_kind != "f":
        raise InputRejected(
            f"The {role} array {col.origin} has dtype {col.dtype}; model input '{spec.name}' "
            f"expects {spec.dtype}.",
            hint="Convert and normalise the data the way the model was trained, e.g. "
                 "(x / 255).astype('float32'); edgeopt does not guess the scaling.",
        )
    if not want_float and got_kind not in "iub":
        raise InputRejected(
            f"The {role} array {col.origin} has dtype {col.dtype}; model input '{spec.name}' "
            f"expects {spec.dtype}.",
        )
    return mode


def select(source: DataSource, *, samples: int, seed: int, holdout: int = 0) -> tuple[Subset, Subset | None]:
    """Split a source into a seeded calibration subset and an optional held-out subset.

    The held-out part is chosen first and never overlaps the calibration part.
    """
    if samples < 1:
        raise UsageError(f"--calib-samples must be at least 1; got {samples}.")
    order = np.random.default_rng(seed).permutation(source.count)
    held = tuple(sorted(int(i) for i in order[:holdout])) if holdout else ()
    rest = order[holdout:]
    calib = tuple(sorted(int(i) for i in rest[:samples]))
    return Subset(source, calib), (Subset(source, held) if held else None)


def holdout_size(count: int) -> int:
    """How many samples to keep back for validation when no separate set is given."""
    return min(max(count // 5, 1), 1000) if count >= 10 else 0
