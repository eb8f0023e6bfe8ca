"""Fixtures of the hostile-input suite: seeded hypothesis, an earlier run's outputs to keep intact,
and the valid models that hostile files are made from (built once per session)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest

try:
    from hypothesis import HealthCheck, settings
    from hypothesis.configuration import set_hypothesis_home_dir
except ImportError:  # the property and fuzz modules skip themselves
    settings = None
else:
    # Hypothesis caches what it learns in ./.hypothesis; tests write only to temporary folders.
    set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "edgeopt-hypothesis")
    # Seeded in CI: the same examples every run, nothing written to a .hypothesis folder.
    # HYPOTHESIS_PROFILE=explore searches freely, e.g. to look for new crashes locally.
    settings.register_profile("ci", derandomize=True, database=None, deadline=None, print_blob=True,
                              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    settings.register_profile("explore", database=None, deadline=None,
                              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    """A folder holding an earlier run's outputs in ``out/``, which every refusal must leave as is."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "conv_int8.tflite").write_bytes(np.random.default_rng(0).bytes(2048))
    (out / "report.json").write_text(json.dumps({"schema_version": 1}))
    (out / "recipe.yaml").write_text("model: conv.h5\n")
    return tmp_path


class Assets:
    """Valid models that hostile files are made from, each built on first use and shared."""

    def __init__(self, request: pytest.FixtureRequest, root: Path) -> None:
        self._request = request
        self.root = root
        self._cache: dict[str, object] = {}

    def _fixture(self, name: str):
        return self._request.getfixturevalue(name)

    def keras(self, suffix: str = ".h5", name: str = "conv") -> Path:
        return self._fixture("saved_model")(name, suffix)

    def onnx(self) -> Path:
        return self._fixture("onnx_model")("residual")

    def torch(self) -> tuple[str, Path, object]:
        """(``nets.py:build_residual``, its state_dict file, the module)."""
        return self._fixture("torch_model")("residual")

    def nhwc_data(self, n: int = 12) -> Path:
        """Calibration/validation data for the Keras 'conv' model (16x16x3 images, with labels)."""
        path = self.root / f"nhwc_{n}.npz"
        if not path.exists():
            rng = np.random.default_rng(1)
            np.savez(path, image=rng.random((n, 16, 16, 3), dtype=np.float32), labels=rng.integers(0, 4, n))
        return path

    def nchw_data(self, n: int = 12) -> Path:
        """Data for the ONNX/PyTorch 'residual' model (3x16x16 images, channels first)."""
        path = self.root / f"nchw_{n}.npz"
        if not path.exists():
            np.savez(path, image=np.random.default_rng(2).random((n, 3, 16, 16), dtype=np.float32))
        return path

    def tflite(self, precision: str = "fp32") -> Path:
        key = f"tflite-{precision}"
        if key not in self._cache:
            pytest.importorskip("tensorflow")
            import edgeopt

            result = edgeopt.compress(self.keras(), precision=precision, calib=self.nhwc_data(), validate=False,
                                      output=self.root / key)
            self._cache[key] = result.files[f"conv_{precision}.tflite"]
        return self._cache[key]

    def openvino(self) -> Path:
        """An fp32 OpenVINO IR (.xml with its .bin) of the ONNX residual model."""
        if "openvino" not in self._cache:
            pytest.importorskip("openvino")
            import edgeopt

            result = edgeopt.compress(self.onnx(), target="openvino", precision="fp32", validate=False,
                                      output=self.root / "openvino")
            self._cache["openvino"] = result.files["residual_fp32.xml"]
        return self._cache["openvino"]

    def torch_archive(self, kind: str) -> Path:
        """The residual model as a TorchScript archive ('torchscript') or a .pt2 program ('pt2')."""
        if kind not in self._cache:
            torch = pytest.importorskip("torch")
            _, _, module = self.torch()
            example = (torch.zeros(1, 3, 16, 16),)
            if kind == "torchscript":
                path = self.root / "scripted.pt"
                torch.jit.save(torch.jit.trace(module, example), str(path))
            else:
                path = self.root / "exported.pt2"
                torch.export.save(torch.export.export(module, example), str(path))
            self._cache[kind] = path
        return self._cache[kind]


@pytest.fixture(scope="session")
def assets(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Assets:
    return Assets(request, tmp_path_factory.mktemp("hostile_assets"))
