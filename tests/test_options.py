"""The compress options are declared once (edgeopt.options): the CLI's flags and the API's keywords
both come from the declarations, and every user setting of CompressConfig has one."""

from __future__ import annotations

import inspect
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from edgeopt import api, cli, options, recipe
from edgeopt.errors import UsageError
from edgeopt.options import Option


def cli_config(args, monkeypatch, command=None):
    """The config `edgeopt compress ARGS` would run, without running it."""
    seen = []
    monkeypatch.setattr(cli, "_run_and_show", lambda config, quiet: seen.append(config))
    args = [str(a) for a in args] if command else ["compress", *map(str, args)]
    result = CliRunner().invoke(command or cli.main, args)
    assert result.exit_code == 0, result.output
    (config,) = seen
    return config


def cli_error(args) -> str:
    result = CliRunner().invoke(cli.main, [str(a) for a in args])
    assert result.exit_code == 2, result.output
    return result.output


def flags_of(command: click.Command) -> dict[str, click.Parameter]:
    return {opt: param for param in command.params if isinstance(param, click.Option) for opt in param.opts}


# --- the declarations cover the config, and nothing else ---------------------------------------

def test_every_setting_has_a_declaration_or_a_reason():
    declared = {opt.key for opt in options.OPTIONS}
    settings = set(options.settings())
    missing = settings - declared - set(options.NOT_DECLARED)
    assert not missing, f"declare these in edgeopt/options.py (or say why not in NOT_DECLARED): {sorted(missing)}"
    assert set(options.NOT_DECLARED) <= settings, "NOT_DECLARED names keys CompressConfig does not have"
    assert not set(options.NOT_DECLARED) & declared, "NOT_DECLARED names keys that are declared"
    for opt in options.OPTIONS:  # a section (budgets, prune, distill) or one setting
        options.field(opt.key)


def test_declarations_have_unique_flags_and_names():
    flags = [f for opt in options.OPTIONS for f in (opt.flag, opt.short) if f]
    names = [opt.name for opt in options.OPTIONS]
    assert len(flags) == len(set(flags)) and len(names) == len(set(names))
    assert all(name.isidentifier() for name in names)


def test_unknown_keys_are_refused():
    with pytest.raises(KeyError, match="'calibration.sampels' is not a CompressConfig setting"):
        options.field("calibration.sampels")
    with pytest.raises(KeyError, match="is not a section"):
        options.field("precision.bits")


# --- each declaration is a flag and a keyword ---------------------------------------------------

def test_each_declaration_is_a_compress_flag_and_an_api_keyword():
    flags = flags_of(cli.compress)
    keywords = inspect.signature(api.compress).parameters
    for opt in options.OPTIONS:
        assert opt.name in keywords and keywords[opt.name].kind is inspect.Parameter.KEYWORD_ONLY
        if opt.flag:
            assert flags[opt.flag].name == opt.name
            assert (flags[opt.flag].help or "") == opt.help
    commandline_only = {"--recipe", "--list-layers", "--quiet", "-q", "--help", "-h"}
    assert set(flags) - commandline_only == {f for opt in options.OPTIONS for f in (opt.flag, opt.short) if f}


def test_a_new_declaration_is_a_flag_and_a_keyword(monkeypatch):
    new = Option("distill.temperature", "--distill-temperature", "Softmax temperature of the teacher.")
    monkeypatch.setattr(options, "NOT_DECLARED", {k: v for k, v in options.NOT_DECLARED.items()
                                                  if k != "distill.temperature"})
    monkeypatch.setattr(options, "OPTIONS", (*options.OPTIONS, new))

    command = cli.compress_command(options.OPTIONS)
    flag = flags_of(command)["--distill-temperature"]
    assert flag.help == new.help
    assert isinstance(flag.type, click.FloatRange) and (flag.type.min, flag.type.min_open) == (0, True)  # gt=0
    help_text = CliRunner().invoke(command, ["--help"]).output
    assert "--distill-temperature FLOAT RANGE" in help_text and "Softmax temperature" in help_text
    config = cli_config(["m.h5", "--distill", "--distill-temperature", "2.5"], monkeypatch, command)
    assert config.distill.temperature == 2.5
    result = CliRunner().invoke(command, ["m.h5", "--distill", "--distill-temperature", "0"])
    assert result.exit_code == 2 and "x>0" in result.output  # the config's bound, checked by click

    assert api.config("m.h5", distill=True, distill_temperature=2.5).distill.temperature == 2.5
    with pytest.raises(UsageError, match=r"'distill.temperature' \(from distill_temperature=\)"):
        api.config("m.h5", distill=True, distill_temperature=0)
    test_every_setting_has_a_declaration_or_a_reason()


def test_flag_types_and_defaults_come_from_the_config():
    flags = flags_of(cli.compress)
    assert isinstance(flags["--runs"].type, click.IntRange) and flags["--runs"].type.min == 1
    assert flags["--runs"].default == 100 == recipe.ValidationConfig().runs
    assert flags["--warmup"].type.min == 0 and flags["--threads"].type.min == 1
    assert list(flags["--precision"].type.choices) == ["int8", "fp16", "fp32"]
    assert list(flags["--calib-method"].type.choices) == ["auto", "minmax", "percentile", "entropy", "mse"]
    percentile = flags["--percentile"].type
    assert (percentile.min, percentile.max, percentile.min_open, percentile.max_open) == (50, 100, True, False)
    assert flags["--target"].default == "tflite" and flags["--calib-samples"].default == 300
    assert flags["--per-tensor"].name == "per_channel" and flags["--no-validate"].name == "validate"


# --- the CLI and the API give the same config ---------------------------------------------------

SAME = [
    ([], {}),
    (["--target", "onnx,openvino", "--precision", "fp16", "--int8-io", "--keep-layout", "--trust-model"],
     {"target": "onnx,openvino", "precision": "fp16", "int8_io": True, "keep_layout": True, "trust_model": True}),
    (["--calib", "c.npz", "--calib-samples", "64", "--seed", "3", "--image-size", "32x24", "--mean", "0.5,0.25,0.125",
      "--std", "2,2,2", "--layout", "nchw", "--color", "rgb"],
     {"calib": "c.npz", "calib_samples": 64, "seed": 3, "image_size": (32, 24), "mean": (0.5, 0.25, 0.125),
      "std": (2.0, 2.0, 2.0), "layout": "nchw", "color": "rgb"}),
    (["--image-size", "96", "--mean", "0.5"], {"image_size": "96", "mean": "0.5"}),  # text reads as the flag's
    (["--calib-method", "percentile", "--percentile", "99.9", "--per-tensor"],
     {"calib_method": "percentile", "percentile": 99.9, "per_channel": False}),
    (["--val", "v.npz", "--metric", "top5", "--runs", "7", "--warmup", "0", "--threads", "2"],
     {"val": "v.npz", "metric": "top5", "runs": 7, "warmup": 0, "threads": 2}),
    (["--no-validate"], {"validate": False}),
    (["-o", "out", "--weights", "w.pt", "--input-shape", "image=1,3,8,8", "--input-shape", "mask:1x8"],
     {"output": "out", "weights": "w.pt", "input_shapes": {"image": (1, 3, 8, 8), "mask": (1, 8)}}),
    (["--input-shape", "1,3,8,8"], {"input_shapes": "1,3,8,8"}),
    (["--prune", "channels:0.5", "--distill", "--distill-epochs", "4"],
     {"prune": {"method": "channels", "ratio": 0.5}, "distill": True, "distill_epochs": 4}),
    (["--prune", "magnitude:0.8", "--distill-data", "d.npz"], {"prune": "magnitude:0.8", "distill_data": "d.npz"}),
    (["--keep-float", "stem", "--keep-float", "head$"], {"keep_float": ["stem", "head$"]}),
    (["--max-accuracy-drop", "0.5", "--max-fidelity-drop", "1", "--min-speedup", "1.5", "--max-size", "512KiB"],
     {"max_accuracy_drop": 0.5, "max_fidelity_drop": 1.0, "min_speedup": 1.5, "max_size": "512KiB"}),
]


@pytest.mark.parametrize("args, keywords", SAME, ids=[" ".join(a) or "defaults" for a, _ in SAME])
def test_cli_and_api_give_the_same_config(args, keywords, monkeypatch):
    assert cli_config(["m.h5", *args], monkeypatch) == api.config("m.h5", **keywords)


def test_what_the_flags_set():
    config = api.config("m.h5", image_size="32x24", mean="0.5", per_channel=False, validate=False,
                        keep_float="stem", distill=True, distill_data="d.npz", max_size="2MB")
    c = config.calibration
    assert (c.image_size, c.mean, c.per_channel) == ((32, 24), (0.5,), False)
    assert config.validation.enabled is False and config.overrides == {"stem": "float"}
    assert config.distill.data == Path("d.npz") and config.distill.epochs == 30
    assert config.budgets.max_size == 2_000_000
    with pytest.raises(UsageError, match="epochs of distillation given, and distillation is off"):
        api.config("m.h5", distill_epochs=4)


def test_api_section_mappings_still_work_and_keywords_lay_over_them():
    budgets = {"max_fidelity_drop": 1.0, "max_size": 1000}
    config = api.config("m.h5", budgets=budgets, max_size=2000, overrides={"stem": "int8", "a": "int8"},
                        keep_float=["stem"], distill={"epochs": 3, "temperature": 2.0}, distill_data="d.npz",
                        prune={"method": "channels", "ratio": 0.25, "criterion": "l1"})
    assert config.budgets.max_fidelity_drop == 1.0 and config.budgets.max_size == 2000
    assert budgets == {"max_fidelity_drop": 1.0, "max_size": 1000}  # the caller's mapping is left as given
    assert list(config.overrides.items()) == [("stem", "float"), ("a", "int8")]
    assert (config.distill.epochs, config.distill.temperature, config.distill.data) == (3, 2.0, Path("d.npz"))
    assert config.prune.criterion == "l1"


def test_api_defaults_are_the_configs():
    assert api.config("m.h5") == recipe.build("test", model="m.h5")
    keywords = inspect.signature(api.compress).parameters
    assert keywords["calib_samples"].default == 300 and keywords["validate"].default is True
    assert keywords["per_channel"].default is True and keywords["metric"].default == "top1"


def test_api_errors_name_the_keyword():
    with pytest.raises(UsageError, match=r"'validation.runs' \(from runs=\): Input should be greater"):
        api.config("m.h5", runs=0)
    with pytest.raises(UsageError, match=r"'calibration.std' \(from std=\).*non-zero"):
        api.config("m.h5", std=(1.0, 0.0))
    with pytest.raises(UsageError, match=r"image_size: expected HEIGHT,WIDTH"):
        api.config("m.h5", image_size="big")
    with pytest.raises(UsageError, match=r"unknown key 'budgets.max_sise' \(from budgets=\)"):
        api.config("m.h5", budgets={"max_sise": 10})
    with pytest.raises(UsageError, match=r"'calibration' \(from percentile=\): Value error, 'percentile' applies"):
        api.config("m.h5", percentile=99.0)
    with pytest.raises(TypeError, match="unexpected keyword argument 'calib_sample'; did you mean 'calib_samples'"):
        api.compress("m.h5", calib_sample=10)


def test_cli_errors_name_the_flag():
    assert "'calibration.std' (from --std)" in cli_error(["compress", "m.h5", "--std", "1,0"])
    assert "'validation.metric' (from --metric)" in cli_error(["compress", "m.h5", "--metric", "f1"])
    assert "expected HEIGHT,WIDTH" in cli_error(["compress", "m.h5", "--image-size", "big"])
    assert "unknown target(s) ['coreml']" in cli_error(["compress", "m.h5", "--target", "coreml"])


# --- flags over a recipe ------------------------------------------------------------------------

def test_distill_flags_over_a_recipe(tmp_path, monkeypatch):
    with_distill = tmp_path / "distill.yaml"
    with_distill.write_text("model: m.h5\ndistill: {data: d.npz, epochs: 50, temperature: 2.0}\n")
    without = tmp_path / "plain.yaml"
    without.write_text("model: m.h5\n")
    config = cli_config(["--recipe", with_distill, "--distill-epochs", "5"], monkeypatch)
    assert (config.distill.epochs, config.distill.temperature) == (5, 2.0)
    config = cli_config(["--recipe", with_distill, "--distill-data", "e.npz"], monkeypatch)
    assert (config.distill.data, config.distill.epochs) == (Path("e.npz"), 50)  # the recipe's epochs kept
    assert "distillation is off" in cli_error(["compress", "--recipe", without, "--distill-epochs", "5"])
    assert "Add --distill" in cli_error(["compress", "m.h5", "--distill-epochs", "5"])
    assert cli_config(["--recipe", without, "--distill"], monkeypatch).distill == recipe.DistillConfig()


def test_a_flag_error_over_a_recipe_names_the_flag_not_a_line(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("model: m.h5\ncalibration:\n  method: minmax\n")
    output = cli_error(["compress", "--recipe", path, "--percentile", "99"])
    assert "'calibration' (from --percentile): Value error, 'percentile' applies to method 'percentile'" in output
    assert "line " not in output


def test_compress_help_is_readable():
    result = CliRunner().invoke(cli.main, ["compress", "--help"], terminal_width=100)
    assert result.exit_code == 0
    text = result.output
    for line in ("-t, --target TEXT", "[default: tflite]", "--calib-samples INTEGER RANGE", "[default: 300; x>=1]",
                 "--precision [int8|fp16|fp32]", "--no-validate", "--per-tensor", "--keep-float REGEX",
                 "--input-shape NAME=SHAPE", "--prune METHOD:RATIO", "--max-size BYTES", "--percentile FLOAT RANGE",
                 "[50<x<=100]", "-o, --output PATH", "--list-layers", "-q, --quiet", "Exit codes:"):
        assert line in text, line
    options_part = text[text.index("Options:"):]
    order = [options_part.index(f) for f in ("  --recipe", "  -t, --target", "  --threads", "  --list-layers")]
    assert order == sorted(order)
    assert "True" not in text and "False" not in text  # no flag shows a bool default
