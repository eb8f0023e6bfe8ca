"""Safe loading: hostile model files are refused before any framework parses them, with a stable
exit code and a message naming the file, tensor, node or layer; nothing runs, nothing is written.

| case | exit | message contains |
|---|---|---|
| pickle payload in .pt (zip, legacy, raw pickle) | 3 | Refusing to load ... pickled Python object ... --trust-model |
| protocol-0 pickle named .pt | 3 | first bytes match no supported format |
| pickle payload as --weights | 3 | pickled Python objects beyond tensors |
| whole pickled module / TorchScript / .pt2 | 3 | pickled Python object / a TorchScript archive / a torch.export program |
| .keras and .h5 with a Lambda layer | 3 | layer 'double_it' is a Lambda layer |
| class from a module outside Keras | 3 | class Conv2D from module 'kerasevil.layers', outside Keras |
| keras.utils.get_file as a function | 3 | calls the function 'get_file' from 'keras.utils' |
| StringLookup vocabulary file path | 3 | reads its vocabulary from a file path |
| JSON nesting bomb (.keras, .h5) | 3 | nested too deeply |
| .keras zip bomb / 10002 entries / entry named assets/../../../x | 3 | compression ratio ... zip bomb / entries (limit 10000) / would be extracted outside its folder |
| HDF5 dataset bomb / external storage / external link | 3 | decompression bomb / keeps its data in other files / links to |
| ONNX external data ../, absolute, symlink | 3 | leaves the model's folder / absolute path / through the symlink |
| ONNX external data missing / past its end / bad offset | 3 | missing / which has only / non-numeric offset |
| random bytes named .onnx | 3 | Cannot parse ... as an ONNX model / first bytes match no supported format |
| unknown standard op / custom-domain op | 4 | node 'weird_node' is a 'FooBar' / at node 'weird_node' (com.example:FooBar) |
| OpenVINO .xml as the source | 3 | is a openvino artifact, not a source model |
| TFLite: bad buffer index, short buffer, tensor/opcode index, no subgraph, NaN scale, zero point | 3 | Refusing the TFLite file ... |
| .h5 whose reading hangs or crashes libhdf5 (in the child process) | 3 | Cannot read ... as HDF5: reading it did not finish / the HDF5 library failed |
| ONNX bytes named .tflite | 0 | named like a .tflite file but holds a onnx model |
"""

from __future__ import annotations

import subprocess

import pytest

from . import files
from .harness import MARKER, assert_outcome, cli, run_cli, snapshot


@pytest.mark.parametrize("case", sorted(files.LOADING))
def test_hostile_file_is_refused(case, workspace, assets):
    args, code, phrases = files.LOADING[case](workspace, assets)
    before = snapshot(workspace)
    outcome = cli(*args, "-o", workspace / "out", "-q")
    assert_outcome(outcome, code, *phrases)
    assert snapshot(workspace) == before  # nothing written, earlier outputs byte-identical
    assert not (workspace / MARKER).exists()


def test_content_not_name_decides(workspace, assets):
    args, code, phrases = files.onnx_named_tflite(workspace, assets)
    outcome = cli(*args, "-o", workspace / "new", "-q")
    assert_outcome(outcome, code, *phrases)
    assert (workspace / "new" / "model_fp32.onnx").is_file()


# The same cases as CI runs them: a separate process, whose temporary files must all be gone after.
SMOKE = ["pickle_in_pt", "keras_zip_bomb", "onnx_external_parent", "tflite_buffer_index"]


@pytest.mark.parametrize("case", SMOKE)
def test_hostile_file_in_a_real_process(case, workspace, assets):
    args, code, phrases = files.LOADING[case](workspace, assets)
    tmp = workspace.parent / f"{workspace.name}-tmp"
    tmp.mkdir()
    before = snapshot(workspace)
    outcome = run_cli(*args, "-o", workspace / "out", "-q", cwd=workspace, env={"TMPDIR": str(tmp)})
    assert_outcome(outcome, code, *phrases)
    assert snapshot(workspace) == before
    assert not (workspace / MARKER).exists()
    assert list(tmp.iterdir()) == []


# libhdf5 can loop forever or crash on a crafted file; the first read happens in a child process.
@pytest.mark.parametrize("failure, words", [
    (lambda cmd, timeout: (_ for _ in ()).throw(subprocess.TimeoutExpired(cmd, timeout)), "did not finish within"),
    (lambda cmd, timeout: subprocess.CompletedProcess(cmd, -11, "", "Segmentation fault"), "failed reading it"),
], ids=["hang", "crash"])
def test_hdf5_reader_that_hangs_or_crashes_is_exit_3(failure, words, workspace, assets, monkeypatch):
    import edgeopt
    from edgeopt.errors import InputRejected
    from edgeopt.frameworks import h5probe

    model = assets.keras()  # first: building it imports Keras, which runs subprocesses of its own
    monkeypatch.setattr(h5probe.subprocess, "run", lambda cmd, timeout, **_: failure(cmd, timeout))
    before = snapshot(workspace)
    # Through the API, which loads the model in this process, where the failing reader is in place:
    # the command loads it in a child process (an InputRejected from there keeps exit 3: test_supervisor.py).
    with pytest.raises(InputRejected) as refused:
        edgeopt.compress(model, output=workspace / "out")
    assert refused.value.exit_code == 3
    message = " ".join(str(refused.value).split())
    for phrase in ("Cannot read", "as HDF5", words):
        assert phrase in message, message
    assert snapshot(workspace) == before


def test_the_payload_is_live(tmp_path):
    """The marker tests prove something only if the payload really runs when unpickled."""
    import pickle

    pickle.loads(pickle.dumps(files.Payload(tmp_path / MARKER)))
    assert (tmp_path / MARKER).exists()
