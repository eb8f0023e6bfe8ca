"""The `edgeopt` command: a thin layer over the library that maps errors to exit codes."""

from __future__ import annotations

import functools
import os
import signal
import sys
import threading
from pathlib import Path

import click

from edgeopt import __version__
from edgeopt.errors import EdgeoptError

EPILOG = ("Exit codes: 0 ok, 1 gate failed, 2 usage/config error, 3 input rejected, "
          "4 unsupported op or conversion failure, 5 environment problem, 130 interrupted.")


def _floats(ctx, param, value: str | None):
    if value is None:
        return None
    try:
        return tuple(float(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"expected comma-separated numbers, got '{value}'") from None


def _size(ctx, param, value: str | None):
    if value is None:
        return None
    parts = value.lower().replace("x", ",").split(",")
    try:
        dims = tuple(int(p) for p in parts)
    except ValueError:
        dims = ()
    if len(dims) == 1:
        dims = dims * 2
    if len(dims) != 2 or min(dims) < 1:
        raise click.BadParameter(f"expected HEIGHT,WIDTH (or one number for square images), got '{value}'")
    return dims


def _prune_spec(ctx, param, value: str | None):
    if value is None:
        return None
    method, _, ratio = value.partition(":")
    try:
        return {"method": method, "ratio": float(ratio)}
    except ValueError:
        raise click.BadParameter(f"expected METHOD:RATIO such as channels:0.5, got '{value}'") from None


def _input_shapes(ctx, param, values: tuple[str, ...]):
    """NAME=1,3,224,224 per input; a bare shape names the only input."""
    if not values:
        return None
    shapes: dict[str, tuple[int, ...]] = {}
    for value in values:
        name, _, dims = value.rpartition("=")
        try:
            shape = tuple(int(d) for d in dims.lower().replace("x", ",").split(","))
        except ValueError:
            raise click.BadParameter(f"expected NAME=D0,D1,... such as image=1,3,224,224, got '{value}'") from None
        if name in shapes or (not name and values[1:]):
            raise click.BadParameter(f"'{value}': give each input once, as NAME=shape, when there are several")
        shapes[name or "input"] = shape
    return shapes


def handle_errors(fn):
    """Turn edgeopt's exceptions into a message and a stable exit code; --debug shows tracebacks."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from rich.markup import escape

        from edgeopt.console import err

        debug = bool(os.environ.get("EDGEOPT_DEBUG"))
        # CI cancels a job with SIGTERM: clean up as for Ctrl-C rather than die with staged files.
        in_main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, _interrupt) if in_main else None
        try:
            return fn(*args, **kwargs)
        except EdgeoptError as exc:
            if debug:
                err.print_exception()
            # Messages quote paths and tensor names such as 'calib.npz[image]': text, not markup.
            err.print(f"[bold red]error:[/] {escape(exc.message)}", highlight=False, soft_wrap=True)
            if exc.hint:
                err.print(f"[yellow]hint:[/] {escape(exc.hint)}", highlight=False, soft_wrap=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            err.print("[bold red]interrupted[/]: partial outputs were removed; earlier outputs are untouched.")
            sys.exit(130)
        except Exception as exc:  # a bug or a backend failure nobody anticipated
            from edgeopt.outputs import disk_full

            if debug:
                err.print_exception()
            if disk_full(exc):  # e.g. a --junit file written outside any staged output
                err.print(f"[bold red]error:[/] no space left on the device: {escape(str(exc))}",
                          highlight=False, soft_wrap=True)
                err.print("[yellow]hint:[/] free some space or write elsewhere, then run again.")
                sys.exit(5)
            err.print(f"[bold red]error:[/] unexpected {type(exc).__name__}: {escape(str(exc))}",
                      highlight=False, soft_wrap=True)
            err.print("[yellow]hint:[/] run again with --debug for the traceback, and report it.")
            sys.exit(4)
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)

    return wrapper


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@click.group(epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgeopt")
@click.option("--debug", is_flag=True, help="Show full tracebacks and backend logs.")
def main(debug: bool) -> None:
    """Make a trained model ready for an edge device: smaller, faster, and proven accurate."""
    if debug:
        os.environ["EDGEOPT_DEBUG"] = "1"


@main.command(epilog=EPILOG)
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--target", "-t", default="tflite", show_default=True, help="Artifact format(s), comma-separated.")
@click.option("--calib", type=click.Path(path_type=Path), help="Calibration data: .npz, folder of .npy, or images.")
@click.option("--val", type=click.Path(path_type=Path),
              help="Validation data (labels from an array named 'labels'). Default: held-out calibration samples.")
@click.option("--precision", type=click.Choice(["int8", "fp16", "fp32"]), default="int8", show_default=True)
@click.option("--int8-io", is_flag=True, help="int8 model inputs and outputs instead of float.")
@click.option("--keep-layout", is_flag=True,
              help="Keep NCHW inputs in TFLite artifacts of PyTorch models [default: NHWC, TFLite's own].")
@click.option("--calib-samples", type=click.IntRange(min=1), default=300, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for choosing samples.")
@click.option("--image-size", callback=_size, help="HEIGHT,WIDTH for image folders (default: the model's).")
@click.option("--mean", callback=_floats, help="Per-channel mean after scaling pixels to [0,1], e.g. 0.485,0.456,0.406.")
@click.option("--std", callback=_floats, help="Per-channel std after scaling pixels to [0,1].")
@click.option("--layout", type=click.Choice(["nhwc", "nchw"]), help="Image folder tensor layout (default: the model's).")
@click.option("--color", type=click.Choice(["rgb", "gray"]), help="Image folder colour mode (default: from channels).")
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Output folder [default: edgeopt_out/<model-stem>/].")
@click.option("--trust-model", is_flag=True, help="Allow models that carry code (Lambda layers, SavedModel graphs).")
@click.option("--weights", type=click.Path(path_type=Path),
              help="PyTorch state_dict for a model given as net.py:build_model or package.module:Class.")
@click.option("--input-shape", "input_shapes", multiple=True, callback=_input_shapes, metavar="NAME=SHAPE",
              help="PyTorch input shape, batch first, e.g. image=1,3,224,224 (repeat per input) "
                   "[default: from --calib].")
@click.option("--prune", "prune_spec", callback=_prune_spec, metavar="METHOD:RATIO",
              help="channels:0.5 removes half the channels; magnitude:0.8 zeroes 80% of the weights.")
@click.option("--distill", is_flag=True, help="Fine-tune the pruned model with the source model as teacher.")
@click.option("--distill-data", type=click.Path(path_type=Path),
              help="Data to distill on (labels optional) [default: the calibration data].")
@click.option("--distill-epochs", type=click.IntRange(min=1), default=30, show_default=True)
@click.option("--no-validate", is_flag=True, help="Skip fidelity, accuracy and latency measurement.")
@click.option("--runs", type=click.IntRange(min=1), default=100, show_default=True, help="Timed latency runs.")
@click.option("--warmup", type=click.IntRange(min=0), default=10, show_default=True, help="Untimed warm-up runs.")
@click.option("--threads", type=click.IntRange(min=1), help="Runtime threads [default: all cores].")
@click.option("--quiet", "-q", is_flag=True, help="No progress output.")
@handle_errors
def compress(model, target, calib, val, precision, int8_io, keep_layout, calib_samples, seed, image_size, mean, std,
             layout, color, output, trust_model, weights, input_shapes, prune_spec, distill, distill_data,
             distill_epochs, no_validate, runs, warmup, threads, quiet):
    """Compress MODEL for an edge target and validate the artifact against it.

    \b
    Example:  edgeopt compress model.h5 --target tflite --calib calib.npz --val val.npz
    """
    from edgeopt import recipe

    calibration = {"data": calib, "samples": calib_samples, "seed": seed, "image_size": image_size,
                   "layout": layout, "color": color}
    if mean is not None:
        calibration["mean"] = mean
    if std is not None:
        calibration["std"] = std
    config = recipe.build(
        "the command line", model=model, targets=target, precision=precision, int8_io=int8_io, keep_layout=keep_layout,
        trust_model=trust_model, output=output, calibration=calibration, weights=weights, input_shapes=input_shapes,
        validation={"enabled": not no_validate, "data": val, "runs": runs, "warmup": warmup, "threads": threads},
        prune=prune_spec,
        distill={"data": distill_data, "epochs": distill_epochs} if distill or distill_data else None)
    _run_and_show(config, quiet)


@main.command(epilog=EPILOG)
@click.argument("recipe_file", type=click.Path(path_type=Path))
@click.option("--quiet", "-q", is_flag=True, help="No progress output.")
@handle_errors
def run(recipe_file, quiet):
    """Run a recipe, such as the recipe.yaml saved beside every output."""
    from edgeopt import recipe

    _run_and_show(recipe.load(recipe_file), quiet)


def _run_and_show(config, quiet: bool) -> None:
    from rich.markup import escape

    from edgeopt.console import err, out, steps, table
    from edgeopt.pipeline import compress as run_compress
    from edgeopt.report import summary_rows

    with steps(quiet) as progress:
        result = run_compress(config, progress)
    header, rows = summary_rows(result.report)
    out.print(table(escape(f"edgeopt: {config.model}"), header, [[escape(c) for c in r] for r in rows],
                    transpose=True))
    for a in result.report["artifacts"]:
        ops = a.get("ops") or {}
        if ops and a["precision"] == "int8":
            verdict = "[green]full integer[/]" if ops.get("full_integer") else \
                f"[yellow]ops left in float: {', '.join(ops['float_ops'])}[/]"
            out.print(f"{escape(Path(a['path']).name)}: {verdict}")
    for note in result.report["notes"]:
        err.print(f"[yellow]note:[/] {escape(note)}", highlight=False, soft_wrap=True)
    names = ", ".join(sorted(result.files))
    out.print(f"Outputs in [bold]{escape(str(result.output_dir))}[/]: {escape(names)}")


@main.command(epilog=EPILOG)
@click.argument("artifacts", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--reference", type=click.Path(path_type=Path), help="Source model to compare against "
              "[default: the first artifact].")
@click.option("--val", type=click.Path(path_type=Path), required=True,
              help="Validation data (.npz/.npy folder/images); labels from an array named 'labels'.")
@click.option("--device", default="cpu", show_default=True, help="cpu, gpu, or ssh://user@host[:port].")
@click.option("--threads", type=click.IntRange(min=1), help="Runtime threads [default: all cores].")
@click.option("--runs", type=click.IntRange(min=1), default=200, show_default=True)
@click.option("--warmup", type=click.IntRange(min=0), default=10, show_default=True)
@click.option("--time-budget", type=click.FloatRange(min=0.1), help="Stop timing after this many seconds.")
@click.option("--metric", help="A metric of your own: FILE.py:FUNCTION(outputs, labels) -> {name: value}.")
@click.option("--trust-model", is_flag=True, help="Allow a reference model that carries code.")
@click.option("--remote-python", default="python3", show_default=True, help="The device's Python (ssh:// only).")
@click.option("--ssh-key", type=click.Path(path_type=Path), help="Identity file for ssh:// devices.")
@click.option("--known-hosts", type=click.Path(path_type=Path),
              help="known_hosts file for ssh:// devices [default: ssh's own]; unknown hosts are refused.")
@click.option("-o", "--output", type=click.Path(path_type=Path), default=Path("edgeopt_out/validate"),
              show_default=True)
@click.option("--quiet", "-q", is_flag=True, help="No progress output.")
@handle_errors
def validate(artifacts, reference, val, device, threads, runs, warmup, time_budget, metric, trust_model,
             remote_python, ssh_key, known_hosts, output, quiet):
    """Measure ARTIFACTS side by side: latency, fidelity against the reference, accuracy."""
    from rich.markup import escape

    from edgeopt.console import out, steps, table
    from edgeopt.report import validate_rows
    from edgeopt.validate.job import ValidateConfig, run

    config = ValidateConfig(artifacts=tuple(artifacts), val=val, reference=reference, device=device,
                            threads=threads, runs=runs, warmup=warmup, time_budget_s=time_budget, metric=metric,
                            trust_model=trust_model, remote_python=remote_python, ssh_identity=ssh_key,
                            ssh_known_hosts=known_hosts)
    with steps(quiet) as progress:
        report = run(config, output, progress)
    header, rows = validate_rows(report)
    out.print(table(escape(f"edgeopt validate on {report['artifacts'][0]['device']}"), header,
                    [[escape(c) for c in r] for r in rows], transpose=True))
    for a in report["artifacts"]:
        if a.get("metrics"):
            out.print(escape(f"{Path(a['path']).name}: " + ", ".join(f"{k} {v:.4g}" for k, v in a["metrics"].items())))
    out.print(f"Reports in [bold]{escape(str(output))}[/]: report.json, report.md, report.html")


def _percent(ctx, param, value: str | None):
    if value is None:
        return None
    try:
        return float(value.rstrip("%"))
    except ValueError:
        raise click.BadParameter(f"expected a percentage such as 10 or 10%, got '{value}'") from None


@main.command(epilog="Exit codes: 0 every check passed, 1 a check failed, 2 usage error, 3 unreadable report.")
@click.argument("candidate", type=click.Path(path_type=Path))
@click.option("--baseline", type=click.Path(path_type=Path), required=True, help="The report to compare against.")
@click.option("--max-accuracy-drop", type=float, metavar="POINTS", help="Largest allowed top-1 drop, in points.")
@click.option("--max-fidelity-drop", type=float, metavar="POINTS",
              help="Largest allowed drop of 100 x top1_agreement (or cosine), in points.")
@click.option("--max-latency-regression", callback=_percent, metavar="PCT",
              help="Largest allowed p50 increase in percent; only a rise beyond the measured noise counts.")
@click.option("--max-size", type=click.IntRange(min=1), metavar="BYTES", help="Largest allowed artifact size.")
@click.option("--junit", type=click.Path(path_type=Path), help="Write the checks as JUnit XML.")
@click.option("--markdown", type=click.Path(path_type=Path), help="Write a Markdown table for a pull-request comment.")
@handle_errors
def gate(candidate, baseline, max_accuracy_drop, max_fidelity_drop, max_latency_regression, max_size, junit,
         markdown):
    """Fail (exit 1) when CANDIDATE report.json is worse than --baseline beyond the limits."""
    from edgeopt.console import out, table
    from edgeopt.outputs import write_text
    from edgeopt.validate import gate as g

    limits = g.GateLimits(max_accuracy_drop, max_fidelity_drop, max_latency_regression, max_size)
    checks = g.evaluate(g.load_report(baseline), g.load_report(candidate), limits)
    header, body = g.rows(checks)
    out.print(table("edgeopt gate", header, body))
    if junit:
        write_text(junit, g.to_junit(checks))
    if markdown:
        write_text(markdown, g.to_markdown(checks))
    failed = [c for c in checks if not c.passed]
    if failed:
        from edgeopt.errors import GateFailed

        raise GateFailed("; ".join(c.describe() for c in failed))
    out.print(f"[green]gate passed[/]: {len(checks)} checks")


@main.command()
@handle_errors
def doctor():
    """List installed frameworks and runtimes, and which conversion paths work."""
    from edgeopt.console import out, table
    from edgeopt.doctor import framework_rows, path_rows

    out.print(table("Frameworks and runtimes", ["package", "version", "extra"], framework_rows()))
    out.print(table("Paths", ["kind", "path", "status"], path_rows()))


if __name__ == "__main__":
    main()
