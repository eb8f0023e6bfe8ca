"""The `edgeopt` command: a thin layer over the library that maps errors to exit codes."""

from __future__ import annotations

import functools
import io
import os
import signal
import sys
import threading
import typing
from pathlib import Path

import click

from edgeopt import __version__, options
from edgeopt.errors import EdgeoptError
from edgeopt.options import Option

EPILOG = ("Exit codes: 0 ok, 1 gate failed, 2 usage/config error, 3 input rejected, "
          "4 unsupported op or conversion failure, 5 environment problem, 130 interrupted.")


def handle_errors(fn):
    """Turn edgeopt's exceptions into a message and a stable exit code; --debug shows tracebacks."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from rich.markup import escape

        from edgeopt.console import err

        debug = bool(os.environ.get("EDGEOPT_DEBUG"))
        # Ctrl-C, and SIGTERM (how CI cancels a job), raise KeyboardInterrupt so that staged files
        # are removed on the way out. The signal is also remembered: a KeyboardInterrupt raised
        # inside a framework's C code can come out as some other exception.
        from edgeopt.outputs import interrupt_requested

        interrupted: list[int] = []
        interrupt_requested.clear()
        stderr = sys.stderr

        def on_signal(signum: int, frame: object) -> None:
            interrupted.append(signum)
            interrupt_requested.set()
            if not debug:  # frameworks print tracebacks of their own as the interrupt unwinds through them
                sys.stderr = io.StringIO()
            raise KeyboardInterrupt

        def exit_interrupted() -> None:
            sys.stderr = stderr
            if debug:
                err.print_exception()
            err.print("[bold red]interrupted[/]: partial outputs were removed; earlier outputs are untouched.")
            sys.exit(130)

        in_main = threading.current_thread() is threading.main_thread()
        previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)} if in_main else {}
        try:
            return fn(*args, **kwargs)
        except EdgeoptError as exc:
            if interrupted:
                exit_interrupted()
            if debug:
                err.print_exception()
            # Messages quote paths and tensor names such as 'calib.npz[image]': text, not markup.
            err.print(f"[bold red]error:[/] {escape(exc.message)}", highlight=False, soft_wrap=True)
            if exc.hint:
                err.print(f"[yellow]hint:[/] {escape(exc.hint)}", highlight=False, soft_wrap=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            exit_interrupted()
        except Exception as exc:  # a bug or a backend failure nobody anticipated
            from edgeopt.outputs import disk_full

            if interrupted:
                exit_interrupted()
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
            sys.stderr = stderr
            for signum, handler in previous.items():
                if handler is not None:  # None: a handler installed outside Python, not restorable
                    signal.signal(signum, handler)

    return wrapper


@click.group(epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgeopt")
@click.option("--debug", is_flag=True, help="Show full tracebacks and backend logs.")
def main(debug: bool) -> None:
    """Make a trained model ready for an edge device: smaller, faster, and proven accurate."""
    if debug:
        os.environ["EDGEOPT_DEBUG"] = "1"
    else:
        from edgeopt.deps import quiet_warnings

        quiet_warnings()


def _click_option(opt: Option):
    """The click option of a declaration: its type, bounds and default are the config field's."""
    names = [n for n in (opt.short, opt.flag) if n] + [opt.name]
    settings: dict = {"help": opt.help or None, "metavar": opt.metavar}
    if opt.switch:
        settings["is_flag"] = True
    elif opt.is_bool:  # sets the field to the opposite of its default: --int8-io, --no-validate
        settings.update(is_flag=True, flag_value=not opt.default, default=opt.default)
    else:
        if opt.parse is not None:
            settings["callback"] = _reader(opt)
        else:
            settings["type"] = _click_type(opt)
        settings["multiple"] = opt.multiple
        shown = _as_text(opt.default)
        if shown not in (None, "", {}, ()) and not opt.multiple:
            settings.update(default=shown, show_default=True)
    return click.option(*names, **settings)


def _click_type(opt: Option):
    kind = opt.kind
    if options.is_literal(kind):
        return click.Choice(list(typing.get_args(kind)))
    if kind is Path:
        return click.Path(path_type=Path)
    if kind in (int, float):
        bounds = {}
        for limit in opt.field.metadata:  # pydantic's ge/gt/le/lt, as annotated_types objects
            for name, low, open_ in (("ge", "min", False), ("gt", "min", True), ("le", "max", False),
                                     ("lt", "max", True)):
                if hasattr(limit, name):
                    number = getattr(limit, name)
                    bounds[low] = int(number) if float(number).is_integer() else number
                    bounds[f"{low}_open"] = open_
        if not bounds:
            return kind
        return (click.IntRange if kind is int else click.FloatRange)(**bounds)
    return click.STRING  # the config reads the text: --target tflite,onnx


def _reader(opt: Option):
    def read(ctx, param, value):
        if value is None or value == ():
            return None
        try:
            return opt.parse(value)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None

    return read


def _as_text(value):
    """A config default as the flag would spell it: ("tflite",) -> tflite."""
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    return value


def _declared(declared: tuple[Option, ...]):
    """Adds one option per declaration, in their order."""
    def decorate(fn):
        for opt in reversed(declared):
            if opt.flag:
                fn = _click_option(opt)(fn)
        return fn

    return decorate


def compress_command(declared: tuple[Option, ...] = options.OPTIONS) -> click.Command:
    """The compress command with a flag for each declaration that has one."""

    @click.command("compress", epilog=EPILOG)
    @click.argument("model", type=click.Path(path_type=Path), required=False)
    @click.option("--recipe", "recipe_file", type=click.Path(path_type=Path),
                  help="Start from this recipe; flags given here override its values.")
    @_declared(declared)
    @click.option("--list-layers", is_flag=True,
                  help="Print the layer names --keep-float, recipe overrides and budgets match, per target "
                       "(--target when given, else every target that can keep layers in float), and exit without "
                       "writing anything. Needs --calib: the names are those of the full-integer int8 model; "
                       "without calibration data int8 is dynamic range, which keeps no layer in float.")
    @click.option("--quiet", "-q", is_flag=True, help="No progress output.")
    @handle_errors
    def compress(model, recipe_file, quiet, list_layers, **flags):
        """Compress MODEL for an edge target and validate the artifact against it.

        \b
        Example:  edgeopt compress model.h5 --target tflite --calib calib.npz --val val.npz
                  edgeopt compress --recipe recipes/int8_onnx.yaml --max-fidelity-drop 0.5
        """
        from edgeopt import recipe
        from edgeopt.errors import UsageError

        ctx = click.get_current_context()
        given = {name: value for name, value in flags.items()
                 if ctx.get_parameter_source(name) is click.core.ParameterSource.COMMANDLINE}
        base, lines = recipe.read_yaml(recipe_file) if recipe_file is not None else ({}, None)
        values = options.to_recipe(given, base, declared)
        if model is not None:
            values["model"] = model
        flagged = [opt for opt in declared if opt.flag and opt.name in given]

        def flag_of(loc: tuple) -> str | None:
            return ", ".join(opt.flag for opt in options.sources(loc, flagged)) or None

        if recipe_file is not None:
            config = recipe.combine(f"recipe '{recipe_file}'", base, lines, values, flag_of)
        elif model is None:
            raise UsageError("No model given.", hint="Pass MODEL, or --recipe FILE naming one.")
        else:
            config = recipe.validate("the command line", values, names=flag_of)
        if list_layers:
            named = "target" in given or "targets" in base
            _list_layers(config, config.targets if named else None, quiet)
            return
        _run_and_show(config, quiet)

    return compress


compress = compress_command()
main.add_command(compress)


@main.command(epilog=EPILOG)
@click.argument("recipe_file", type=click.Path(path_type=Path))
@click.option("--quiet", "-q", is_flag=True, help="No progress output.")
@handle_errors
def run(recipe_file, quiet):
    """Run a recipe, such as the recipe.yaml saved beside every output."""
    from edgeopt import recipe

    _run_and_show(recipe.load(recipe_file), quiet)


def _run_and_show(config, quiet: bool) -> None:
    from edgeopt import jobs
    from edgeopt.console import steps
    from edgeopt.errors import BudgetMissed
    from edgeopt.supervisor import supervise

    try:
        with steps(quiet) as progress:
            # In a child process: a framework that crashes natively cannot take the command down silently.
            result = supervise(jobs.compress, config, progress, subject=config.model.name,
                               output_dir=config.output_dir(), preflight=lambda: jobs.check_compress(config))
    except BudgetMissed as missed:
        _show(config, missed.result)  # the best try was written: show it, then exit 1
        raise
    _show(config, result)


def _show(config, result) -> None:
    from rich.markup import escape

    from edgeopt.console import err, out, table
    from edgeopt.report import summary_rows

    header, rows = summary_rows(result.report)
    out.print(table(escape(f"edgeopt: {config.model}"), header, [[escape(c) for c in r] for r in rows],
                    transpose=True))
    for a in result.report["artifacts"]:
        ops = a.get("ops") or {}
        if ops and a["precision"] == "int8":
            verdict = "[green]full integer[/]" if ops.get("full_integer") else \
                f"[yellow]ops left in float: {', '.join(ops['float_ops'])}[/]"
            out.print(f"{escape(Path(a['path']).name)}: {verdict}")
        for line in _quantization_lines(a):
            out.print(escape(line), highlight=False, soft_wrap=True)
    for warning in result.report.get("warnings", []):
        err.print(f"[bold yellow]warning:[/] {escape(warning)}", highlight=False, soft_wrap=True)
    for note in result.report["notes"]:
        err.print(f"[yellow]note:[/] {escape(note)}", highlight=False, soft_wrap=True)
    names = ", ".join(sorted(result.files))
    out.print(f"Outputs in [bold]{escape(str(result.output_dir))}[/]: {escape(names)}")


def _list_layers(config, targets: tuple[str, ...] | None, quiet: bool) -> None:
    from rich.markup import escape

    from edgeopt import jobs
    from edgeopt.console import err, out, steps, table
    from edgeopt.supervisor import supervise

    request = (config, targets)
    with steps(quiet) as progress:
        listing = supervise(jobs.list_layers, request, progress, subject=config.model.name,
                            preflight=lambda: jobs.check_list_layers(request))
    rows = [[escape(target), escape(layer.name), escape(layer.op), escape(layer.label)]
            for target, layers in listing.layers.items() for layer in layers]
    shown = table(escape(f"layers of {config.model}"), ["target", "layer", "op", "label"], rows)
    for column in shown.columns:
        column.justify = "left"
        column.overflow = "fold"  # a name cut short by an ellipsis could not be copied into --keep-float
    out.print(shown)
    for note in listing.notes:
        err.print(f"[yellow]note:[/] {escape(note)}", highlight=False, soft_wrap=True)
    out.print("--keep-float REGEX keeps in float each layer whose name or label it matches (re.search).",
              highlight=False)


def _quantization_lines(a: dict) -> list[str]:
    """The terminal's word on layers kept in float, on the fidelity guard and on each budget."""
    from edgeopt.report import guard_line, out_of_int8, out_of_int8_phrase
    from edgeopt.report_types import GUARD_CHECK

    name, q = Path(a["path"]).name, a.get("quantization") or {}
    lines = []
    search = q.get("search") or {}
    count, kept = out_of_int8_phrase(q)
    if count:
        before, after = search.get("before", {}), search.get("after", {})
        drops = [f"{kind} drop {before[key]:.3g} -> {after[key]:.3g} points"
                 for kind, key in (("fidelity", "fidelity_drop"), ("accuracy", "accuracy_drop"))
                 if before.get(key) is not None and after.get(key) is not None]
        goal = "to hold the fidelity guard" if a.get("guard") else "to meet the budget"
        why = f" {goal} ({', '.join(drops)})" if search.get("needed") else " (overrides)"
        cost = q.get("latency_cost")
        size = q.get("size_cost")
        costs = [f"p50 {cost['percent']:+.1f}%" if cost else "", f"size {size['percent']:+.1f}%" if size else ""]
        where = "in float" if list(out_of_int8(q)) == ["float"] else "out of int8"
        lines.append(f"{name}: {count} of {q.get('layers')} layers kept {where}{why}: {kept}"
                     + (f"; {', '.join(c for c in costs if c)} against all-int8" if any(costs) else ""))
    guarded = guard_line(a)
    if guarded:
        lines.append(f"{name}: {guarded}")
    for c in a.get("budgets", []):
        if c["budget"] == GUARD_CHECK:
            continue
        value = "not measured" if c["value"] is None else f"{c['value']:,}" if isinstance(c["value"], int) \
            else f"{c['value']:.4g}"
        lines.append(f"{name}: {c['budget']} {c['limit']:g}: {value} {'ok' if c['passed'] else 'MISSED'}")
    return lines


@main.group()
def recipe() -> None:
    """Work with recipe files."""


@recipe.command("check", epilog="Exit codes: 0 the recipe is valid, 2 it is not (each problem named with its line).")
@click.argument("recipe_file", type=click.Path(path_type=Path))
@handle_errors
def recipe_check(recipe_file):
    """Validate RECIPE_FILE and print what it will do, without running it."""
    from rich.markup import escape

    from edgeopt import recipe as recipes
    from edgeopt.console import out, table
    from edgeopt.errors import UsageError
    from edgeopt.pipeline import check_plan

    config = recipes.load(recipe_file)
    check_plan(config)  # methods and budgets each target's backend can do, read without loading the model
    named = (("model", config.model), ("calibration.data", config.calibration.data),
             ("validation.data", config.validation.data), ("distill.data", config.distill.data if config.distill else None))
    missing = [f"{key} '{path}'" for key, path in named
               if path is not None and ":" not in str(path) and not Path(path).exists()]
    summary = table(escape(f"recipe {recipe_file}"), ["setting", "value"],
                    [[escape(k), escape(v)] for k, v in recipes.summary(config)])
    summary.columns[1].justify = "left"
    out.print(summary)
    if missing:
        raise UsageError(f"The recipe '{recipe_file}' names files that do not exist (from {Path.cwd()}): "
                         + ", ".join(missing) + ".",
                         hint="Relative paths are read from the folder you run edgeopt in; run it from there.")
    out.print("[green]recipe ok[/]")


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

    from edgeopt import jobs
    from edgeopt.console import out, steps, table
    from edgeopt.report import validate_rows
    from edgeopt.supervisor import supervise
    from edgeopt.validate.job import ValidateConfig

    config = ValidateConfig(artifacts=tuple(artifacts), val=val, reference=reference, device=device,
                            threads=threads, runs=runs, warmup=warmup, time_budget_s=time_budget, metric=metric,
                            trust_model=trust_model, remote_python=remote_python, ssh_identity=ssh_key,
                            ssh_known_hosts=known_hosts)
    with steps(quiet) as progress:
        report = supervise(jobs.validate, (config, output), progress, output_dir=output,
                           subject=[p.name for p in (reference, *artifacts) if p is not None])
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
