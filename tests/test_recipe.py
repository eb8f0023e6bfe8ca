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


# --- recipe files: typed sections, errors with their line ------------------------------------

def _write(tmp_path, text: str) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("text, expected", [
    ("model: m.h5\ncalibration:\n  data: c.npz\n  sampels: 10\n", "line 4: unknown key 'calibration.sampels'"),
    ("model: m.h5\nbudgets:\n  max_fidelity_drop: 1\n  max_acuracy_drop: 1\n",
     "line 4: unknown key 'budgets.max_acuracy_drop'"),
    ("model: m.h5\ncalibration:\n  method: kl\n", "line 3: 'calibration.method'"),
    ("model: m.h5\nvalidation:\n  metric: f1\n", "line 3: 'validation.metric'"),
    ("model: m.h5\noverrides:\n  'conv[': float\n", "line 2: 'overrides'"),
    ("model: m.h5\noverrides:\n  conv: fp16\n", "line 3: 'overrides.conv'"),
    ("model: m.h5\nbudgets:\n  max_size: 12 parsecs\n", "line 3: 'budgets.max_size'"),
    ("model: m.h5\ntargets: [onnx, coreml]\n", "line 2: 'targets'"),
    ("model: m.h5\ncalibration:\n  percentile: 99.9\n", "'percentile' applies to method 'percentile'"),
])
def test_schema_errors_name_the_key_and_its_line(tmp_path, text, expected):
    path = _write(tmp_path, text)
    with pytest.raises(UsageError) as info:
        recipe.load(path)
    assert expected in info.value.message
    assert str(path) in info.value.message


def test_a_key_given_twice_is_an_error_with_both_lines(tmp_path):
    path = _write(tmp_path, "model: m.h5\nbudgets:\n  max_size: 10\n  max_size: 20\n")
    with pytest.raises(UsageError, match=r"line 4: key 'budgets.max_size' is given twice \(first on line 3\)"):
        recipe.load(path)


def test_new_sections_round_trip(tmp_path):
    path = _write(tmp_path, """version: 1
model: m.h5
targets: [onnx, openvino]
calibration: {data: c.npz, method: percentile, percentile: 99.9, per_channel: false}
validation: {data: v.npz, metric: top5}
budgets: {max_accuracy_drop: 0.5, max_fidelity_drop: 1, min_speedup: 1.5, max_size: 2MiB}
overrides: {"conv_.*": float, "conv_1$": int8}
""")
    config = recipe.load(path)
    assert (config.calibration.method, config.calibration.percentile, config.calibration.per_channel) == \
        ("percentile", 99.9, False)
    assert config.validation.metric == "top5"
    assert config.budgets.max_size == 2 * 1024 ** 2 and config.budgets.drives_search()
    assert list(config.overrides.items()) == [("conv_.*", "float"), ("conv_1$", "int8")]  # order kept: last wins
    again = tmp_path / "again.yaml"
    again.write_text(recipe.to_yaml(config))
    assert recipe.load(again) == config


def test_command_line_values_override_a_recipe_and_their_errors_have_no_line(tmp_path):
    path = _write(tmp_path, "model: m.h5\ncalibration: {data: c.npz, samples: 50}\noverrides: {a: float}\n")
    config = recipe.load(path, overrides={"calibration": {"samples": 10}, "overrides": {"b": "float"}})
    assert config.calibration.samples == 10 and config.calibration.data == Path("c.npz")
    assert list(config.overrides) == ["a", "b"]
    with pytest.raises(UsageError) as info:
        recipe.load(path, overrides={"calibration": {"samples": 0}})
    assert "'calibration.samples'" in info.value.message and "line " not in info.value.message


def test_summary_lists_steps_budgets_and_overrides():
    config = recipe.build("test", model="m.h5", targets="onnx", calibration={"data": "c.npz", "method": "entropy"},
                          budgets={"max_fidelity_drop": 1.0}, overrides={"stem": "float"},
                          prune={"method": "channels", "ratio": 0.5})
    rows = dict(recipe.summary(config))
    assert rows["steps"] == "prune channels 0.5 -> quantize int8 -> convert to onnx"
    assert "entropy" in rows["calibration"] and rows["budgets"] == "max_fidelity_drop 1.0"
    assert rows["overrides"] == "/stem/ -> float"


# --- the command line --------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]


def _cli(args, monkeypatch=None, cwd=ROOT):
    from click.testing import CliRunner

    from edgeopt.cli import main

    if monkeypatch is not None:
        monkeypatch.chdir(cwd)
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "recipes").glob("*.yaml")))
def test_recipe_check_accepts_every_shipped_recipe(name, monkeypatch):
    result = _cli(["recipe", "check", f"recipes/{name}"], monkeypatch)
    assert result.exit_code == 0, result.output
    assert "recipe ok" in result.output and "steps" in result.output


def test_recipe_check_exits_2_naming_key_and_line(tmp_path, monkeypatch):
    path = _write(tmp_path, "model: m.h5\nvalidation:\n  data: v.npz\n  runz: 5\n")
    result = _cli(["recipe", "check", path], monkeypatch)
    assert result.exit_code == 2
    assert "line 4: unknown key 'validation.runz'" in result.output


def test_recipe_check_exits_2_on_missing_files_and_refused_methods(tmp_path, monkeypatch):
    path = _write(tmp_path, "model: no/such/model.h5\n")
    result = _cli(["recipe", "check", path], monkeypatch)
    assert result.exit_code == 2 and "model 'no/such/model.h5'" in result.output
    path = _write(tmp_path, "model: examples/digits/digits_cnn.h5\ntargets: [tflite]\n"
                            "calibration: {data: calibration_data/digits/calib.npz, method: entropy}\n")
    result = _cli(["recipe", "check", path], monkeypatch)
    assert result.exit_code == 2
    assert "tflite target (keras->tflite) cannot calibrate with method 'entropy'" in result.output


def test_compress_flags_override_the_recipe(tmp_path, monkeypatch):
    import edgeopt.cli as cli

    seen = []
    monkeypatch.setattr(cli, "_run_and_show", lambda config, quiet: seen.append(config))
    result = _cli(["compress", "--recipe", "recipes/int8_accuracy_budget.yaml", "--runs", "3", "--target", "onnx",
                   "--max-fidelity-drop", "0.2", "--keep-float", "stem", "--per-tensor", "--calib-method", "entropy",
                   "-o", tmp_path / "out"], monkeypatch)
    assert result.exit_code == 0, result.output
    (config,) = seen
    assert config.validation.runs == 3 and config.validation.warmup == 10  # flag given / recipe or default kept
    assert config.targets == ("onnx",) and config.output == tmp_path / "out"
    assert config.budgets.max_fidelity_drop == 0.2 and config.budgets.max_accuracy_drop == 0.25  # from the recipe
    assert config.calibration.method == "entropy" and config.calibration.per_channel is False
    assert config.calibration.samples == 300  # the recipe's, not the flag's default
    assert list(config.overrides.items()) == [("probs", "int8"), ("stem", "float")]


def test_compress_without_model_or_recipe_is_a_usage_error(monkeypatch):
    result = _cli(["compress"], monkeypatch)
    assert result.exit_code == 2 and "No model given" in result.output
