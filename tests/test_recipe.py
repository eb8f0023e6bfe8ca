"""Recipes: typed settings, unknown keys named, a YAML round trip that repeats a run."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeopt import recipe
from edgeopt.errors import InputRejected, UsageError


def test_defaults():
    config = recipe.build("test", model="m.h5")
    assert config.model == Path("m.h5")
    assert config.targets == ("tflite",)
    assert config.precision == "int8"
    assert config.calibration.samples == 300 and config.calibration.seed == 0
    assert config.validation.runs == 100 and config.validation.warmup == 10
    assert config.output_dir() == Path("edgeopt_out") / "m"
    assert recipe.build("test", model="m.h5", output="x/y").output_dir() == Path("x/y")


@pytest.mark.parametrize("values, key", [
    ({"model": "m.h5", "bogus": 1}, "unknown key 'bogus'"),
    ({"model": "m.h5", "calibration": {"sampels": 10}}, "unknown key 'calibration.sampels'"),
    ({"model": "m.h5", "validation": {"run": 3}}, "unknown key 'validation.run'"),
])
def test_unknown_keys_are_rejected_by_name(values, key):
    with pytest.raises(UsageError) as info:
        recipe.build("recipe 'r.yaml'", **values)
    assert key in info.value.message
    assert "recipe 'r.yaml'" in info.value.message


def test_missing_model_is_named():
    with pytest.raises(UsageError, match="'model': Field required"):
        recipe.build("test")


@pytest.mark.parametrize("targets", ["onnnx", ["tflite", "coreml"], "tflite,foo"])
def test_unknown_target_is_rejected(targets):
    with pytest.raises(UsageError) as info:
        recipe.build("test", model="m.h5", targets=targets)
    bad = "onnnx" if targets == "onnnx" else ("coreml" if isinstance(targets, list) else "foo")
    assert f"unknown target(s) ['{bad}']" in info.value.message
    assert "'targets'" in info.value.message


def test_targets_from_a_comma_list_are_deduplicated():
    assert recipe.build("test", model="m.h5", targets=" tflite, tflite ").targets == ("tflite",)
    with pytest.raises(UsageError, match="at least one target"):
        recipe.build("test", model="m.h5", targets=",")


@pytest.mark.parametrize("values, where", [
    ({"precision": "int4"}, "'precision'"),
    ({"calibration": {"samples": 0}}, "'calibration.samples'"),
    ({"calibration": {"std": [0.5, 0.0]}}, "std values must be non-zero"),
    ({"validation": {"warmup": -1}}, "'validation.warmup'"),
    ({"version": 2}, "recipe version 2 is not supported"),
])
def test_bad_values_are_named(values, where):
    with pytest.raises(UsageError, match=where.replace("(", r"\(")):
        recipe.build("test", model="m.h5", **values)


def test_config_is_frozen():
    config = recipe.build("test", model="m.h5")
    with pytest.raises(Exception):
        config.precision = "fp32"


def test_yaml_round_trip(tmp_path):
    config = recipe.build(
        "test", model=tmp_path / "model.h5", targets="tflite", precision="fp16", int8_io=True,
        output=tmp_path / "out",
        calibration={"data": tmp_path / "calib.npz", "samples": 64, "seed": 9, "image_size": (32, 24),
                     "mean": (0.5, 0.25, 0.125), "std": (2.0, 2.0, 2.0), "layout": "nchw", "color": "rgb"},
        validation={"enabled": False, "runs": 7, "warmup": 0, "threads": 2})
    text = recipe.to_yaml(config)
    assert text.startswith("# edgeopt recipe")
    path = tmp_path / "recipe.yaml"
    path.write_text(text)

    again = recipe.load(path)

    assert again == config
    assert again.calibration.image_size == (32, 24)
    assert again.calibration.mean == (0.5, 0.25, 0.125)
    assert recipe.to_yaml(again) == text


def test_load_errors(tmp_path):
    with pytest.raises(InputRejected, match="does not exist"):
        recipe.load(tmp_path / "none.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(UsageError, match="not valid YAML"):
        recipe.load(bad)
    bad.write_text("- a\n- b\n")
    with pytest.raises(UsageError, match="must be a mapping of settings; got list"):
        recipe.load(bad)
    bad.write_text("model: m.h5\nprecison: fp16\n")
    with pytest.raises(UsageError, match="unknown key 'precison'") as info:
        recipe.load(bad)
    assert str(bad) in info.value.message
