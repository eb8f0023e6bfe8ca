"""Where validation runs: ``cpu``, ``gpu``, or a remote device ``ssh://user@host[:port]``."""

from __future__ import annotations

import re
from dataclasses import dataclass

from edgeopt.errors import EnvironmentProblem, UsageError

_SSH = re.compile(r"^ssh://(?:(?P<user>[A-Za-z0-9._-]+)@)?(?P<host>[A-Za-z0-9.:_-]+?|\[[0-9a-fA-F:]+\])(?::(?P<port>\d+))?$")


@dataclass(frozen=True)
class Device:
    kind: str  # cpu | gpu | ssh
    host: str | None = None
    user: str | None = None
    port: int | None = None

    def public(self) -> str:
        """How reports name the device: never with credentials."""
        if self.kind != "ssh":
            return self.kind
        return f"ssh://{self.host}" + (f":{self.port}" if self.port else "")


def parse_device(text: str) -> Device:
    if text in ("cpu", "gpu"):
        return Device(text)
    match = _SSH.match(text)
    if match is None:
        raise UsageError(f"--device must be cpu, gpu or ssh://user@host[:port]; got '{_redact(text)}'.")
    port = int(match["port"]) if match["port"] else None
    if port is not None and not 0 < port < 65536:
        raise UsageError(f"The port in --device must be 1-65535; got {port}.")
    return Device("ssh", host=match["host"], user=match["user"], port=port)


def _redact(text: str) -> str:
    # A password typed into the URL (ssh://user:secret@host) must not be echoed back.
    return re.sub(r"//([^:@/]+):[^@/]*@", r"//\1:***@", text)


def require_gpu(runtime: str) -> None:
    """Fail with exit 5 when ``runtime`` has no GPU path on this machine."""
    from edgeopt.targets.onnxruntime import gpu_providers

    available = {"onnx": bool(gpu_providers()), "openvino": _openvino_has_gpu()}.get(runtime, False)
    if not available:
        how = {"onnx": 'install onnxruntime-gpu on a machine with an NVIDIA GPU and driver',
               "openvino": "install the GPU plugin and driver (an Intel GPU)",
               "tflite": "LiteRT's GPU delegate is for mobile GPUs; validate on the device over ssh://"}
        raise EnvironmentProblem(f"--device gpu: no GPU runtime for {runtime} artifacts on this machine.",
                                 hint=how.get(runtime, "validate on --device cpu") + ".")


def _openvino_has_gpu() -> bool:
    from edgeopt.deps import no_telemetry

    with no_telemetry():
        try:
            import openvino as ov
        except ImportError:
            return False
        return any(d.startswith("GPU") for d in ov.Core().available_devices)
