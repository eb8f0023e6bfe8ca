"""Data paths that are not regular files: exit 3 naming the file, without ever opening it.

Opening a named pipe for reading waits for a writer forever, so a regression here hangs rather
than fails; each test has a timeout of its own.

| case | exit | message contains |
|---|---|---|
| named pipe among the .npy files of a folder | 3 | 'pipe.npy' is a named pipe (FIFO); edgeopt reads only regular files |
| named pipe among the images of a folder | 3 | 'stream.png' is a named pipe (FIFO) |
| unix socket among the .npy files of a folder | 3 | 'socket.npy' is a socket |
| link to /dev/null among the .npy files of a folder | 3 | 'null.npy' (a link to '/dev/null') is a character device |
| named pipe as --calib, --val or --distill-data | 3 | The calibration/validation/distillation data file '...calib.npz' is a named pipe |
| named pipe in the --calib folder a PyTorch model takes its input shapes from | 3 | 'pipe.npy' is a named pipe |
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import numpy as np
import pytest

from edgeopt import calibration as cal
from edgeopt.model import TensorSpec

from .harness import assert_outcome, cli, snapshot

pytestmark = [pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes and unix sockets are POSIX"),
              pytest.mark.timeout(60, func_only=True)]  # models are built in setup, outside the limit

ONLY_REGULAR = "edgeopt reads only regular files"


def _npy_folder(ws: Path, shape: tuple[int, ...] = (16, 16, 3), n: int = 12) -> Path:
    """One sample per .npy file, as a folder of per-sample arrays is laid out."""
    folder = ws / "calib"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(n):
        np.save(folder / f"sample_{i:02d}.npy", rng.random(shape, dtype=np.float32))
    return folder


def _unix_socket(path: Path) -> None:
    # A socket's path is limited to about 100 bytes; pytest's temporary folders can be longer.
    old = Path.cwd()
    os.chdir(path.parent)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
            server.bind(path.name)  # the socket file outlives the closed socket
    finally:
        os.chdir(old)


def fifo_in_npy_folder(ws: Path, model: Path) -> tuple[list, list[str]]:
    folder = _npy_folder(ws)
    os.mkfifo(folder / "pipe.npy")
    return [model, "--calib", folder], ["calibration data file", "pipe.npy' is a named pipe (FIFO)", ONLY_REGULAR]


def fifo_in_image_folder(ws: Path, model: Path) -> tuple[list, list[str]]:
    image = pytest.importorskip("PIL.Image")
    folder = ws / "images" / "cats"
    folder.mkdir(parents=True)
    for i in range(4):
        image.new("RGB", (16, 16), (i * 40, 0, 0)).save(folder / f"cat_{i}.png")
    os.mkfifo(folder / "stream.png")
    return [model, "--calib", ws / "images"], ["stream.png' is a named pipe (FIFO)", ONLY_REGULAR]


def socket_in_npy_folder(ws: Path, model: Path) -> tuple[list, list[str]]:
    folder = _npy_folder(ws)
    _unix_socket(folder / "socket.npy")
    return [model, "--calib", folder], ["socket.npy' is a socket", ONLY_REGULAR]


def link_to_dev_null(ws: Path, model: Path) -> tuple[list, list[str]]:
    folder = _npy_folder(ws)
    (folder / "null.npy").symlink_to("/dev/null")
    return [model, "--calib", folder], ["null.npy' (a link to '/dev/null') is a character device", ONLY_REGULAR]


def fifo_as_calib(ws: Path, model: Path) -> tuple[list, list[str]]:
    os.mkfifo(ws / "calib.npz")
    return [model, "--calib", ws / "calib.npz"], ["The calibration data file", "calib.npz' is a named pipe (FIFO)",
                                                  ONLY_REGULAR]


def fifo_as_val(ws: Path, model: Path) -> tuple[list, list[str]]:
    os.mkfifo(ws / "val.npz")
    return [model, "--calib", _npy_folder(ws), "--val", ws / "val.npz"], [
        "The validation data file", "val.npz' is a named pipe (FIFO)", ONLY_REGULAR]


def fifo_as_distill_data(ws: Path, model: Path) -> tuple[list, list[str]]:
    os.mkfifo(ws / "train.npy")
    return [model, "--calib", _npy_folder(ws), "--distill", "--distill-data", ws / "train.npy"], [
        "The distillation data file", "train.npy' is a named pipe (FIFO)", ONLY_REGULAR]


CASES = {f.__name__: f for f in [fifo_in_npy_folder, fifo_in_image_folder, socket_in_npy_folder, link_to_dev_null,
                                 fifo_as_calib, fifo_as_val, fifo_as_distill_data]}


@pytest.fixture
def keras_model(assets) -> Path:
    return assets.keras()


@pytest.mark.parametrize("case", sorted(CASES))
def test_non_regular_data_file_is_refused_unopened(case, workspace, keras_model):
    args, phrases = CASES[case](workspace, keras_model)
    before = snapshot(workspace)
    outcome = cli("compress", *args, "-o", workspace / "out", "-q")
    assert_outcome(outcome, 3, *phrases)
    assert snapshot(workspace) == before


@pytest.fixture
def torch_net(assets) -> tuple[str, Path, object]:
    return assets.torch()


def test_fifo_where_a_pytorch_model_reads_its_input_shapes(workspace, torch_net):
    # Without --input-shape, the .npy headers in --calib give a PyTorch model its input shapes,
    # read before the data itself is opened.
    spec, weights, _ = torch_net
    folder = _npy_folder(workspace, shape=(3, 16, 16))
    os.mkfifo(folder / "pipe.npy")
    outcome = cli("compress", spec, "--weights", weights, "--target", "onnx", "--calib", folder,
                  "-o", workspace / "out", "-q")
    assert_outcome(outcome, 3, "pipe.npy' is a named pipe (FIFO)", ONLY_REGULAR)


def test_regular_files_behind_links_and_unread_entries_are_still_accepted(tmp_path):
    # The check refuses what would be read, not what a folder happens to hold beside the data.
    spec = TensorSpec(name="x", shape=(None, 4), dtype="float32")
    data = tmp_path / "data.npy"
    np.save(data, np.arange(12, dtype=np.float32).reshape(3, 4))
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "x.npy").symlink_to(data)
    os.mkfifo(folder / "notes.txt")
    _unix_socket(folder / "control")
    source = cal.open_data(folder, [spec])
    assert source.count == 3
    assert [row["x"].tolist() for _, row in source.samples([2])] == [[[8.0, 9.0, 10.0, 11.0]]]
