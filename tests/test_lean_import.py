"""`import edgeopt` and `edgeopt --help` load no heavy framework (checked in a fresh interpreter)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "tensorflow", "keras", "onnxruntime", "openvino", "onnx", "tf2onnx", "nncf", "h5py")

REPORT = f"""
import json, sys
heavy = {HEAVY!r}
print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in heavy)))
"""


def _loaded_after(code: str) -> list[str]:
    proc = subprocess.run([sys.executable, "-c", code + REPORT], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_import_edgeopt_is_lean():
    assert _loaded_after("import edgeopt, edgeopt.errors; assert edgeopt.__version__") == []


def test_library_modules_are_lean():
    code = ("import edgeopt.api, edgeopt.pipeline, edgeopt.calibration, edgeopt.formats, edgeopt.recipe, "
            "edgeopt.registry, edgeopt.report, edgeopt.doctor, edgeopt.outputs\n"
            "from edgeopt import compress, Result\n")
    assert _loaded_after(code) == []


@pytest.mark.parametrize("argv", [["--help"], ["compress", "--help"], ["run", "--help"], ["--version"]])
def test_cli_help_is_lean(argv):
    code = (
        "import sys\n"
        "from edgeopt.cli import main\n"
        "try:\n"
        f"    main({argv!r})\n"
        "except SystemExit as exc:\n"
        "    assert exc.code in (0, None), exc.code\n"
    )
    assert _loaded_after(code) == []


def test_cli_doctor_is_lean():
    code = (
        "from edgeopt.cli import main\n"
        "try:\n"
        "    main(['doctor'])\n"
        "except SystemExit as exc:\n"
        "    assert exc.code in (0, None), exc.code\n"
    )
    assert _loaded_after(code) == []


def test_console_script_help_works():
    proc = subprocess.run([sys.executable, "-m", "edgeopt.cli", "--help"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0
    assert "compress" in proc.stdout and "Exit codes:" in proc.stdout
