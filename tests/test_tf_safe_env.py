"""TensorFlow is imported with its oneDNN custom ops off: on Intel CPUs with AMX they corrupt the
heap while a GradientTape trains (distillation), which kills the process with SIGABRT. The switch
counts only if it is set before TensorFlow's first import, so each check is a fresh interpreter."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

# Imports TensorFlow the way edgeopt does, then asks TensorFlow whether oneDNN's ops are on.
PROBE = """
import os, sys
assert "tensorflow" not in sys.modules
from edgeopt.deps import require
require(sys.argv[1], "the test")
from tensorflow.python.util import _pywrap_util_port
print(os.environ.get("TF_ENABLE_ONEDNN_OPTS"), _pywrap_util_port.IsMklEnabled())
"""


def _probe(module: str, **env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    proc = subprocess.run([sys.executable, "-c", PROBE, module], env={**clean, **env}, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize("module", ["tensorflow", "keras"])
def test_onednn_ops_are_off_when_edgeopt_imports_tensorflow(module):
    pytest.importorskip(module)
    assert _probe(module) == "0 False"


def test_a_users_setting_wins():
    pytest.importorskip("tensorflow")
    assert _probe("tensorflow", TF_ENABLE_ONEDNN_OPTS="1") == "1 True"
