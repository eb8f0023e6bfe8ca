"""Validation on a remote device over SSH, with the device's own Python and runtime.

edgeopt makes a unique temporary folder on the device, copies the artifacts, the validation
inputs and the self-contained runner there, runs the same protocol as locally, brings the
results back and removes the folder, also when something fails. Host keys are checked strictly
(an unknown host is refused, never added); every remote argument is shell-quoted; reports name
the device by host and port only.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeopt.errors import EnvironmentProblem
from edgeopt.targets import remote_runner
from edgeopt.validate.devices import Device

CONNECT_TIMEOUT_S = 10
_REMOTE_DIR = re.compile(r"^/[A-Za-z0-9._/-]+$")


@dataclass(frozen=True)
class SshOptions:
    python: str = "python3"  # the device's interpreter
    identity: Path | None = None
    known_hosts: Path | None = None
    timeout_s: float = 600.0


class RemoteDevice:
    def __init__(self, device: Device, options: SshOptions) -> None:
        self.device, self.options = device, options
        self.target = f"{device.user}@{device.host}" if device.user else device.host

    def _common(self) -> list[str]:
        opts = ["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes", "-o", f"ConnectTimeout={CONNECT_TIMEOUT_S}",
                "-o", "LogLevel=ERROR"]
        if self.options.known_hosts is not None:
            opts += ["-o", f"UserKnownHostsFile={self.options.known_hosts}", "-o", "GlobalKnownHostsFile=/dev/null"]
        if self.options.identity is not None:
            opts += ["-o", "IdentitiesOnly=yes", "-i", str(self.options.identity)]
        return opts

    def ssh(self, *remote_argv: str) -> str:
        """Run one remote command; every argument is quoted for the remote shell."""
        port = ["-p", str(self.device.port)] if self.device.port else []
        command = " ".join(shlex.quote(a) for a in remote_argv)
        return self._run(["ssh", *self._common(), *port, self.target, command])

    def put(self, files: list[Path], remote_dir: str) -> None:
        port = ["-P", str(self.device.port)] if self.device.port else []
        self._run(["scp", "-q", *self._common(), *port, *map(str, files), f"{self.target}:{remote_dir}/"])

    def get(self, remote_paths: list[str], local_dir: Path) -> None:
        port = ["-P", str(self.device.port)] if self.device.port else []
        self._run(["scp", "-q", *self._common(), *port, *(f"{self.target}:{p}" for p in remote_paths), str(local_dir)])

    def _run(self, argv: list[str]) -> str:
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=self.options.timeout_s,
                                  stdin=subprocess.DEVNULL)
        except FileNotFoundError:
            raise EnvironmentProblem("The ssh client is not installed on this machine.",
                                     hint="Install OpenSSH (the openssh-client package).") from None
        except subprocess.TimeoutExpired:
            raise EnvironmentProblem(f"The device {self.device.public()} did not finish within "
                                     f"{self.options.timeout_s:.0f} s.") from None
        if proc.returncode != 0:
            raise self._explain(proc.returncode, proc.stderr)
        return proc.stdout

    def _explain(self, code: int, stderr: str) -> EnvironmentProblem:
        where = self.device.public()
        text = stderr.strip().splitlines()[-1] if stderr.strip() else f"exit status {code}"
        if "Host key verification failed" in stderr or "No ED25519 host key is known" in stderr \
                or "host key" in stderr.lower() and "known" in stderr.lower():
            return EnvironmentProblem(
                f"Refusing {where}: its host key is not in known_hosts, or does not match it.",
                hint="Check the device's fingerprint out of band, then add it: "
                     f"ssh-keyscan -p {self.device.port or 22} {self.device.host} >> ~/.ssh/known_hosts")
        if code == 255:
            return EnvironmentProblem(f"Cannot reach the device {where}: {_scrub(text, self.device)}.",
                                      hint="Check that it is on, reachable, and accepts your SSH key.")
        return EnvironmentProblem(f"A command failed on the device {where}: {_scrub(text, self.device)}.")


def _scrub(text: str, device: Device) -> str:
    return text.replace(f"{device.user}@", "") if device.user else text


def measure(device: Device, options: SshOptions, artifacts: list[tuple[Path, str]], inputs: dict[str, np.ndarray],
            *, threads: int | None, runs: int, warmup: int, time_budget_s: float | None,
            orders: list[list[str]] | None = None,
            axes: list[list[tuple[int, ...] | None]] | None = None) -> tuple[list[dict], list[list]]:
    """Run the protocol on the device. Returns per artifact (timings, load time) and its outputs.

    ``axes``: per artifact, per input in its order, the transpose into the artifact's layout (None: as is).
    """
    remote = RemoteDevice(device, options)
    with tempfile.TemporaryDirectory(prefix="edgeopt-remote-") as tmp:
        local = Path(tmp)
        np.savez(local / "inputs.npz", **inputs)
        job = {"inputs": "inputs.npz", "input_names": list(inputs), "threads": threads, "runs": runs,
               "warmup": warmup, "time_budget_s": time_budget_s,
               "artifacts": [{"file": _remote_name(i, p), "runtime": kind,
                              "order": orders[i] if orders else list(inputs),
                              "axes": [list(a) if a else None for a in axes[i]] if axes else None}
                             for i, (p, kind) in enumerate(artifacts)]}
        (local / "job.json").write_text(json.dumps(job))
        uploads = [local / "job.json", local / "inputs.npz", Path(remote_runner.__file__)]
        for i, (path, _kind) in enumerate(artifacts):
            staged = local / _remote_name(i, path)
            staged.symlink_to(path.resolve())
            uploads.append(staged)
            if path.suffix == ".xml" and path.with_suffix(".bin").exists():
                companion = local / _remote_name(i, path.with_suffix(".bin"))
                companion.symlink_to(path.with_suffix(".bin").resolve())
                uploads.append(companion)
        folder = remote.ssh("mktemp", "-d", "/tmp/edgeopt.XXXXXXXX").strip()
        if not _REMOTE_DIR.match(folder):
            raise EnvironmentProblem(f"The device {device.public()} returned an unexpected temp folder name.")
        try:
            remote.put(uploads, folder)
            try:
                remote.ssh(options.python, f"{folder}/remote_runner.py", f"{folder}/job.json")
            except EnvironmentProblem:
                pass  # the runner explains itself in results.json; read that first
            outputs_remote = [f"{folder}/results.json", *(f"{folder}/outputs_{i}.npz" for i in range(len(artifacts)))]
            try:
                remote.get(outputs_remote, local)
            except EnvironmentProblem:
                remote.get([f"{folder}/results.json"], local)
        finally:
            remote.ssh("rm", "-rf", "--", folder)
        results = json.loads((local / "results.json").read_text())
        if "error" in results:
            raise EnvironmentProblem(f"The runner on {device.public()} failed: {results['error']}",
                                     hint=f"Check that '{options.python}' on the device has numpy and the runtime.")
        outputs = []
        for i in range(len(artifacts)):
            with np.load(local / f"outputs_{i}.npz") as data:
                outputs.append([data[k] for k in sorted(data.files, key=lambda k: int(k.split("_")[1]))])
        for entry in results["artifacts"]:
            entry["device_info"] = results.get("device", {})
        return results["artifacts"], outputs


def _remote_name(index: int, path: Path) -> str:
    # Fixed, safe names on the device: the user's file names never reach a remote shell.
    stem = "model_" + str(index)
    return stem + (path.suffix if path.suffix in (".tflite", ".onnx", ".xml", ".bin") else "")

