"""Calibration data: every source kind, seeded selection, streaming, and the checks on entry."""

from __future__ import annotations

import numpy as np
import pytest

from edgeopt import calibration as cal
from edgeopt.errors import InputRejected, UsageError
from edgeopt.model import TensorSpec

IMAGE = TensorSpec("image", (None, 8, 8, 1), "float32", "nhwc")
META = TensorSpec("meta", (None, 4), "float32")
RGB_NCHW = TensorSpec("pixels", (None, 3, 6, 5), "float32", "nchw")


def _array(n: int = 30, shape=(8, 8, 1), seed: int = 0) -> np.ndarray:
    # Row i is filled around i so a returned row identifies itself.
    rng = np.random.default_rng(seed)
    base = np.arange(n, dtype=np.float32).reshape(n, *([1] * len(shape)))
    return base + rng.random((n, *shape), dtype=np.float32) * 0.5


def _rows(source: cal.DataSource, indices) -> dict[int, dict[str, np.ndarray]]:
    return {i: row for i, row in source.samples(indices)}


# --- sources -------------------------------------------------------------------------------

def test_npz_with_named_arrays_and_labels(tmp_path):
    image, meta = _array(12), _array(12, (4,), seed=1)
    labels = np.arange(12) % 3
    path = tmp_path / "data.npz"
    np.savez(path, image=image, meta=meta, labels=labels)

    source = cal.open_data(path, [IMAGE, META])

    assert source.count == 12
    assert set(source.columns) == {"image", "meta"}
    rows = _rows(source, [0, 5, 11])
    for i in (0, 5, 11):
        np.testing.assert_array_equal(rows[i]["image"], image[i:i + 1])
        np.testing.assert_array_equal(rows[i]["meta"], meta[i:i + 1])
        assert rows[i]["image"].dtype == np.float32
    np.testing.assert_array_equal(source.label_values([11, 0, 5]), labels[[0, 5, 11]])


def test_npz_with_one_unnamed_array_feeds_a_one_input_model(tmp_path):
    data = _array(7)
    path = tmp_path / "calib.npz"
    np.savez(path, data)  # stored as arr_0

    source = cal.open_data(path, [IMAGE])

    assert list(source.columns) == ["image"]
    assert source.labels is None
    np.testing.assert_array_equal(_rows(source, [3])[3]["image"], data[3:4])


def test_compressed_npz_is_read_too(tmp_path):
    data = _array(9)
    path = tmp_path / "calib.npz"
    np.savez_compressed(path, image=data)
    rows = _rows(cal.open_data(path, [IMAGE]), [1, 8])
    np.testing.assert_array_equal(rows[8]["image"], data[8:9])


def test_one_unnamed_array_for_a_two_input_model_is_rejected(tmp_path):
    path = tmp_path / "calib.npz"
    np.savez(path, _array(5))
    with pytest.raises(InputRejected, match=r"no array for model input\(s\) \['image', 'meta'\]"):
        cal.open_data(path, [IMAGE, META])


def test_single_npy_file(tmp_path):
    data = _array(6)
    path = tmp_path / "calib.npy"
    np.save(path, data)
    rows = _rows(cal.open_data(path, [IMAGE]), [2])
    np.testing.assert_array_equal(rows[2]["image"], data[2:3])


def test_float64_data_is_cast_to_the_model_dtype(tmp_path):
    data = _array(4).astype(np.float64)
    path = tmp_path / "calib.npz"
    np.savez(path, image=data)
    row = _rows(cal.open_data(path, [IMAGE]), [1])[1]["image"]
    assert row.dtype == np.float32
    np.testing.assert_array_equal(row, data[1:2].astype(np.float32))


def test_folder_of_per_input_npy_files(tmp_path):
    image, meta = _array(10), _array(10, (4,), seed=2)
    np.save(tmp_path / "image.npy", image)
    np.save(tmp_path / "meta.npy", meta)
    np.save(tmp_path / "labels.npy", np.eye(3)[np.arange(10) % 3])  # one-hot

    source = cal.open_data(tmp_path, [IMAGE, META])

    assert source.count == 10
    rows = _rows(source, [4, 9])
    np.testing.assert_array_equal(rows[9]["image"], image[9:10])
    np.testing.assert_array_equal(rows[4]["meta"], meta[4:5])
    np.testing.assert_array_equal(source.label_values([4, 9]), [1, 0])


@pytest.mark.parametrize("batch_axis", [False, True])
def test_folder_of_per_sample_npy_files(tmp_path, batch_axis):
    data = _array(5)
    for i, row in enumerate(data):
        np.save(tmp_path / f"sample_{i:03d}.npy", row[np.newaxis] if batch_axis else row)

    source = cal.open_data(tmp_path, [IMAGE])

    assert source.count == 5
    rows = _rows(source, range(5))
    for i in range(5):
        assert rows[i]["image"].shape == (1, 8, 8, 1)
        np.testing.assert_array_equal(rows[i]["image"], data[i:i + 1])


def test_per_sample_file_with_another_shape_is_named(tmp_path):
    np.save(tmp_path / "a.npy", _array(1)[0])
    np.save(tmp_path / "b.npy", np.zeros((8, 8, 2), np.float32))
    source = cal.open_data(tmp_path, [IMAGE])
    with pytest.raises(InputRejected, match=r"b\.npy' has shape \(8, 8, 2\)"):
        list(source.samples([0, 1]))


def _write_png(path, pixels: np.ndarray) -> None:
    image_module = pytest.importorskip("PIL.Image")
    image_module.fromarray(pixels).save(path)


def test_folder_of_gray_images_with_mean_and_std(tmp_path):
    rng = np.random.default_rng(3)
    pictures = [rng.integers(0, 256, (8, 8), dtype=np.uint8) for _ in range(4)]
    for i, p in enumerate(pictures):
        _write_png(tmp_path / f"img_{i}.png", p)

    opts = cal.ImageOptions(mean=(0.5,), std=(0.25,))
    source = cal.open_data(tmp_path, [IMAGE], opts)

    assert source.count == 4
    rows = _rows(source, range(4))
    for i, p in enumerate(pictures):
        expected = ((p.astype(np.float32) / 255.0 - 0.5) / 0.25)[np.newaxis, :, :, np.newaxis]
        np.testing.assert_allclose(rows[i]["image"], expected, rtol=0, atol=1e-6)


def test_folder_of_rgb_images_in_nchw_layout(tmp_path):
    rng = np.random.default_rng(4)
    pictures = [rng.integers(0, 256, (6, 5, 3), dtype=np.uint8) for _ in range(3)]
    for i, p in enumerate(pictures):
        _write_png(tmp_path / f"{i}.png", p)
    mean, std = (0.1, 0.2, 0.3), (0.5, 1.0, 2.0)

    source = cal.open_data(tmp_path, [RGB_NCHW], cal.ImageOptions(mean=mean, std=std, layout="nchw"))

    row = _rows(source, [2])[2]["pixels"]
    assert row.shape == (1, 3, 6, 5)
    scaled = (pictures[2].astype(np.float32) / 255.0 - np.array(mean, np.float32)) / np.array(std, np.float32)
    np.testing.assert_allclose(row[0], scaled.transpose(2, 0, 1), atol=1e-6)
    # Channel 2 of pixel (1, 4) is that pixel's blue value, normalised with the third mean/std.
    assert row[0, 2, 1, 4] == pytest.approx((pictures[2][1, 4, 2] / 255.0 - 0.3) / 2.0, abs=1e-6)


def test_images_are_resized_to_the_model_input(tmp_path):
    _write_png(tmp_path / "big.png", np.full((32, 24), 255, np.uint8))
    row = _rows(cal.open_data(tmp_path, [IMAGE]), [0])[0]["image"]
    assert row.shape == (1, 8, 8, 1)
    np.testing.assert_allclose(row, 1.0)


def test_image_folder_with_free_size_needs_image_size(tmp_path):
    _write_png(tmp_path / "a.png", np.zeros((4, 4), np.uint8))
    free = TensorSpec("image", (None, None, None, 1), "float32", "nhwc")
    with pytest.raises(UsageError, match="free image size"):
        cal.open_data(tmp_path, [free])
    source = cal.open_data(tmp_path, [free], cal.ImageOptions(size=(3, 5)))
    assert _rows(source, [0])[0]["image"].shape == (1, 3, 5, 1)


def test_missing_file_and_unknown_kind_are_rejected(tmp_path):
    with pytest.raises(InputRejected, match="does not exist"):
        cal.open_data(tmp_path / "nope.npz", [IMAGE])
    odd = tmp_path / "data.csv"
    odd.write_text("1,2,3\n")
    with pytest.raises(InputRejected, match="neither an .npz archive"):
        cal.open_data(odd, [IMAGE])
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputRejected, match="no .npy files and no images"):
        cal.open_data(tmp_path / "empty", [IMAGE])


def test_arrays_with_different_sample_counts_are_rejected(tmp_path):
    path = tmp_path / "data.npz"
    np.savez(path, image=_array(10), labels=np.zeros(9, np.int64))
    with pytest.raises(InputRejected, match="disagree on the number of samples"):
        cal.open_data(path, [IMAGE])


# --- checks against the model --------------------------------------------------------------

def test_wrong_shape_says_expected_and_got(tmp_path):
    path = tmp_path / "calib.npz"
    np.savez(path, image=np.zeros((10, 8, 8, 3), np.float32))
    with pytest.raises(InputRejected) as info:
        cal.open_data(path, [IMAGE])
    message = str(info.value)
    assert "(8, 8, 3)" in message  # got
    assert "expects (8,8,1)" in message  # expected
    assert "'image'" in message and "10 samples" in message


def test_other_layout_gets_a_layout_hint(tmp_path):
    path = tmp_path / "calib.npz"
    np.savez(path, image=np.zeros((4, 1, 8, 8), np.float32))
    with pytest.raises(InputRejected) as info:
        cal.open_data(path, [IMAGE])
    assert "(1, 8, 8)" in info.value.message
    assert "NHWC vs NCHW" in info.value.hint


def test_missing_channel_axis_gets_a_hint(tmp_path):
    path = tmp_path / "calib.npz"
    np.savez(path, image=np.zeros((4, 8, 8), np.float32))
    with pytest.raises(InputRejected) as info:
        cal.open_data(path, [IMAGE])
    assert "array[..., None]" in info.value.hint


def test_uint8_for_a_float_model_is_rejected(tmp_path):
    path = tmp_path / "calib.npz"
    np.savez(path, image=np.zeros((4, 8, 8, 1), np.uint8))
    with pytest.raises(InputRejected, match="has dtype uint8; model input 'image' expects float32"):
        cal.open_data(path, [IMAGE])


def test_float_for_an_integer_input_is_rejected(tmp_path):
    ids = TensorSpec("ids", (None, 4), "int32")
    path = tmp_path / "calib.npz"
    np.savez(path, ids=np.zeros((3, 4), np.float32))
    with pytest.raises(InputRejected, match="has dtype float32; model input 'ids' expects int32"):
        cal.open_data(path, [ids])
    np.savez(path, ids=np.zeros((3, 4), np.int64))
    row = _rows(cal.open_data(path, [ids]), [0])[0]["ids"]
    assert row.dtype == np.int32


@pytest.mark.parametrize("bad, word", [(np.nan, "NaN"), (np.inf, "Inf"), (-np.inf, "Inf")])
def test_non_finite_values_name_the_sample(tmp_path, bad, word):
    data = _array(20)
    data[13, 2, 3, 0] = bad
    path = tmp_path / "calib.npz"
    np.savez(path, image=data)
    source = cal.open_data(path, [IMAGE])
    subset = cal.Subset(source, tuple(range(20)))
    with pytest.raises(InputRejected, match=rf"Sample 13 of '.*calib\.npz\[image\]' contains {word}"):
        subset.check_finite()
    # A selection without the bad sample passes.
    cal.Subset(source, (0, 12, 14, 19)).check_finite()


# --- selection and streaming ---------------------------------------------------------------

@pytest.fixture
def hundred(tmp_path):
    data = _array(100)
    path = tmp_path / "calib.npz"
    np.savez(path, image=data, labels=np.arange(100) % 7)
    return cal.open_data(path, [IMAGE]), data


def test_selection_is_seeded_and_deterministic(hundred):
    source, _ = hundred
    a, _ = cal.select(source, samples=10, seed=3)
    b, _ = cal.select(source, samples=10, seed=3)
    c, _ = cal.select(source, samples=10, seed=4)
    assert a.indices == b.indices
    assert a.indices != c.indices
    assert len(a) == 10 and len(set(a.indices)) == 10
    assert list(a.indices) == sorted(a.indices)
    assert a.sha256() == b.sha256() != c.sha256()
    expected = tuple(sorted(int(i) for i in np.random.default_rng(3).permutation(100)[:10]))
    assert a.indices == expected


def test_holdout_is_disjoint_from_calibration(hundred):
    source, _ = hundred
    calib, held = cal.select(source, samples=300, seed=0, holdout=cal.holdout_size(source.count))
    assert held is not None
    assert len(held) == 20 and len(calib) == 80
    assert not set(calib.indices) & set(held.indices)
    assert set(calib.indices) | set(held.indices) == set(range(100))


def test_holdout_size_rules():
    assert cal.holdout_size(9) == 0
    assert cal.holdout_size(10) == 2
    assert cal.holdout_size(40) == 8
    assert cal.holdout_size(1_000_000) == 1000


def test_zero_samples_is_a_usage_error(hundred):
    with pytest.raises(UsageError, match="at least 1"):
        cal.select(hundred[0], samples=0, seed=0)


def test_selected_rows_match_the_source_array(hundred):
    source, data = hundred
    subset, _ = cal.select(source, samples=12, seed=5)
    rows = list(subset)
    assert len(rows) == 12
    for i, row in zip(subset.indices, rows):
        assert row["image"].shape == (1, 8, 8, 1)
        np.testing.assert_array_equal(row["image"], data[i:i + 1])
    np.testing.assert_array_equal(subset.stacked()["image"], data[list(subset.indices)])
    np.testing.assert_array_equal(subset.labels(), np.array(subset.indices) % 7)


def test_npz_is_streamed_not_loaded_whole(tmp_path, monkeypatch):
    data = _array(50)
    path = tmp_path / "calib.npz"
    np.savez(path, image=data)

    def refuse(*args, **kwargs):
        raise AssertionError("numpy.load would read the whole archive")

    monkeypatch.setattr(np, "load", refuse)
    source = cal.open_data(path, [IMAGE])
    subset = cal.Subset(source, (2, 17, 49))
    got = [row["image"] for row in subset]
    for i, row in zip((2, 17, 49), got):
        np.testing.assert_array_equal(row, data[i:i + 1])


def test_npz_member_yields_only_requested_rows_lazily(tmp_path):
    data = _array(40)
    path = tmp_path / "calib.npz"
    np.savez(path, image=data)
    column = cal.open_data(path, [IMAGE]).columns["image"]
    rows = column.rows([3, 30])
    first = next(rows)  # nothing past row 3 is decoded yet
    np.testing.assert_array_equal(first, data[3])
    np.testing.assert_array_equal(next(rows), data[30])
    with pytest.raises(StopIteration):
        next(rows)


def test_npy_file_is_memory_mapped(tmp_path, monkeypatch):
    path = tmp_path / "calib.npy"
    np.save(path, _array(5))
    seen = []
    real_load = np.load

    def spy(*args, **kwargs):
        seen.append(kwargs.get("mmap_mode"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(np, "load", spy)
    cal.open_data(path, [IMAGE])
    assert seen == ["r"]


def test_fortran_order_npz_member_is_rejected(tmp_path):
    path = tmp_path / "calib.npz"
    np.savez(path, image=np.asfortranarray(_array(4)))
    with pytest.raises(InputRejected, match="Fortran order"):
        cal.open_data(path, [IMAGE])


# --- inputs without a batch axis first ----------------------------------------------------------

AUDIO = TensorSpec("input", (None, 576), "float32")
STATE = TensorSpec("state", (2, None, 128), "float32")  # (layers, batch, units), as Silero VAD's
RATE = TensorSpec("sr", (), "int64")


@pytest.fixture
def streaming(tmp_path):
    path = tmp_path / "vad.npz"
    rng = np.random.default_rng(0)
    np.savez(path, input=rng.normal(size=(5, 576)).astype(np.float32),
             state=rng.normal(size=(5, 2, 1, 128)).astype(np.float32), sr=np.full((5,), 16000, np.int64))
    return path


def test_samples_that_are_whole_tensors_feed_as_they_are(streaming):
    source = cal.open_data(streaming, [AUDIO, STATE, RATE])
    assert source.whole == {"state", "sr"}
    subset, _ = cal.select(source, samples=5, seed=0)
    stored = dict(np.load(streaming))
    for index, row in zip(subset.indices, subset):
        assert row["input"].shape == (1, 576) and row["state"].shape == (2, 1, 128) and row["sr"].shape == ()
        np.testing.assert_array_equal(row["state"], stored["state"][index])
        assert int(row["sr"]) == 16000 and row["sr"].dtype == np.int64


def test_whole_tensor_samples_are_never_batched(streaming):
    subset, _ = cal.select(cal.open_data(streaming, [AUDIO, STATE, RATE]), samples=5, seed=0)
    assert not subset.batchable
    chunks = list(subset.chunks(32))
    assert [len(c) for c in chunks] == [1] * 5
    assert cal.stack(chunks[0])["state"].shape == (2, 1, 128)  # one row stays as it is
    with pytest.raises(InputRejected, match="take whole tensors"):
        subset.stacked()


def test_a_whole_tensor_of_the_wrong_shape_is_refused_naming_the_input(tmp_path):
    path = tmp_path / "vad.npz"
    np.savez(path, input=np.zeros((3, 576), np.float32), state=np.zeros((3, 3, 1, 128), np.float32),
             sr=np.full((3,), 16000, np.int64))
    with pytest.raises(InputRejected, match=r"sample shape \(3, 1, 128\).*'state'"):
        cal.open_data(path, [AUDIO, STATE, RATE])
