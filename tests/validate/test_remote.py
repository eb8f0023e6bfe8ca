"""Remote validation against a real OpenSSH server that the test starts on 127.0.0.1."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "examples/digits/digits_cnn.h5"
CALIB = ROOT / "calibration_data/digits/calib.npz"
VAL = ROOT / "calibration_data/digits/val.npz"
SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
SFTP_SERVER = next((p for p in ("/usr/lib/openssh/sftp-server", "/usr/libexec/openssh/sftp-server",
                                "/usr/libexec/sftp-server") if Path(p).exists()), "internal-sftp")

pytest.importorskip("ai_edge_litert")
pytestmark = pytest.mark.skipif(not Path(SSHD).exists() or shutil.which("ssh") is None,
                                reason="OpenSSH server/client not installed (scripts/system-packages.sh installs them)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    """An sshd on a free loopback port, key-only, with its own host key and an authorised user key."""
    work = tmp_path_factory.mktemp("sshd")
    for name in ("host", "client", "stranger"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(work / name)], check=True)
    (work / "authorized_keys").write_text((work / "client.pub").read_text())
    (work / "authorized_keys").chmod(0o600)
    port = _free_port()
    config = work / "sshd_config"
    config.write_text(f"""Port {port}
ListenAddress 127.0.0.1
HostKey {work / 'host'}
PidFile {work / 'sshd.pid'}
AuthorizedKeysFile {work / 'authorized_keys'}
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin prohibit-password
StrictModes no
UsePAM no
Subsystem sftp {SFTP_SERVER}
""")
    Path("/run/sshd").mkdir(exist_ok=True)  # privilege separation directory
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stderr=subprocess.PIPE)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    else:
        proc.kill()
        pytest.skip(f"sshd did not start: {proc.stderr.read().decode()[-500:]}")
    host_pub = (work / "host.pub").read_text().split()
    (work / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_pub[0]} {host_pub[1]}\n")
    (work / "other_known_hosts").write_text("")
    user = subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip()
    yield {"port": port, "dir": work, "user": user}
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    import edgeopt

    work = tmp_path_factory.mktemp("artifacts")
    return [Path(edgeopt.compress(MODEL, calib=CALIB, precision=p, validate=False, output=work / p).artifacts[0]["path"])
            for p in ("fp32", "int8")]


def _validate(sshd, artifacts, out, *, known_hosts="known_hosts", device=None):
    device = device or f"ssh://{sshd['user']}@127.0.0.1:{sshd['port']}"
    return subprocess.run(
        [sys.executable, "-m", "edgeopt.cli", "validate", *map(str, artifacts), "--reference", str(MODEL),
         "--val", str(VAL), "--device", device, "--runs", "40", "--threads", "1",
         "--remote-python", sys.executable, "--ssh-key", str(sshd["dir"] / "client"),
         "--known-hosts", str(sshd["dir"] / known_hosts), "-o", str(out)],
        capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_remote_matches_local_fidelity_and_cleans_up(sshd, artifacts, tmp_path):
    before = set(Path("/tmp").glob("edgeopt.*"))
    remote = _validate(sshd, artifacts, tmp_path / "remote")
    assert remote.returncode == 0, remote.stderr
    local = subprocess.run([sys.executable, "-m", "edgeopt.cli", "validate", *map(str, artifacts), "--reference",
                            str(MODEL), "--val", str(VAL), "--runs", "40", "--threads", "1", "-o",
                            str(tmp_path / "local")], capture_output=True, text=True, timeout=600)
    assert local.returncode == 0, local.stderr
    r = json.loads((tmp_path / "remote/report.json").read_text())
    lo = json.loads((tmp_path / "local/report.json").read_text())
    for ra, la in zip(r["artifacts"], lo["artifacts"]):
        assert ra["device"] == f"ssh://127.0.0.1:{sshd['port']}"
        for key in ("top1_agreement", "cosine"):
            assert ra["fidelity"][key] == pytest.approx(la["fidelity"][key], abs=1e-6)
        assert ra["latency_ms"]["runs"] == 40 and ra["latency_ms"]["threads"] == 1
        # The same machine, the same protocol: the medians agree within the measured spread.
        spread = max(ra["latency_ms"]["p90"] - ra["latency_ms"]["p50"], la["latency_ms"]["p90"] - la["latency_ms"]["p50"])
        assert abs(ra["latency_ms"]["p50"] - la["latency_ms"]["p50"]) <= max(3 * spread, 0.05)
    text = (tmp_path / "remote/report.json").read_text() + remote.stdout + remote.stderr
    assert f"{sshd['user']}@" not in text  # no user name or credential in reports or output
    assert set(Path("/tmp").glob("edgeopt.*")) == before  # the remote folder was removed


def test_unknown_host_key_is_refused(sshd, artifacts, tmp_path):
    proc = _validate(sshd, artifacts[:1], tmp_path / "out", known_hosts="other_known_hosts")
    assert proc.returncode == 5, proc.stderr
    assert "host key" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_unreachable_device_is_exit_5(sshd, artifacts, tmp_path):
    proc = _validate(sshd, artifacts[:1], tmp_path / "out", device=f"ssh://127.0.0.1:{_free_port()}")
    assert proc.returncode == 5, proc.stderr
    assert "Cannot reach" in proc.stderr


@pytest.mark.slow
def test_remote_feeds_an_nhwc_artifact_from_nchw_data(sshd, torch_model, nchw_calib, tmp_path):
    """The device transposes the NCHW data for an NHWC TFLite model as a local session would."""
    for module in ("torch", "litert_torch", "onnxscript", "onnxruntime"):
        pytest.importorskip(module)
    import edgeopt

    spec, weights, _ = torch_model("residual")
    edgeopt.compress(spec, target="onnx,tflite", weights=weights, calib=nchw_calib("residual"), precision="fp32",
                     validate=False, output=tmp_path / "m")
    proc = subprocess.run(
        [sys.executable, "-m", "edgeopt.cli", "validate", str(tmp_path / "m/nets_fp32.tflite"), "--reference",
         str(tmp_path / "m/nets_fp32.onnx"), "--val", str(nchw_calib("residual", n=16, seed=5)),
         "--device", f"ssh://{sshd['user']}@127.0.0.1:{sshd['port']}", "--runs", "5", "--threads", "1",
         "--remote-python", sys.executable, "--ssh-key", str(sshd["dir"] / "client"),
         "--known-hosts", str(sshd["dir"] / "known_hosts"), "-o", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    (artifact,) = json.loads((tmp_path / "out/report.json").read_text())["artifacts"]
    assert artifact["input_layout"] == {"image": "nhwc"} and artifact["fidelity"]["max_abs_err"] < 1e-4
