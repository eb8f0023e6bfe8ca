"""The Python API, mirroring the CLI: a keyword for each option of edgeopt.options, validated as
the CLI's flags are and with the same defaults (the config's)."""

from __future__ import annotations

import difflib
import inspect
import typing
from pathlib import Path
from typing import Any

from edgeopt import options, recipe
from edgeopt.errors import UsageError
from edgeopt.pipeline import Progress, Result
from edgeopt.pipeline import compress as _run

_ORIGIN = "the compress() arguments"


def compress(model: str | Path, *, progress: Progress | None = None, **settings: Any) -> Result:
    """Compress ``model`` for ``target`` (comma-separated for several) and validate the result.

    Every option of ``edgeopt compress`` is a keyword, named as the flag without its dashes
    (``calib_samples=``, ``image_size=(224, 224)``, ``max_fidelity_drop=0.5``), with the same
    defaults and checks; ``--no-validate`` and ``--per-tensor`` are ``validate=False`` and
    ``per_channel=False``, ``--input-shape`` is ``input_shapes=``. Text reads as the flag's does
    (``mean="0.5,0.5,0.5"``, ``prune="channels:0.5"``). Raises :class:`edgeopt.errors.EdgeoptError`
    subclasses for bad input (:class:`~edgeopt.errors.UsageError` naming the keyword), TypeError
    for an unknown keyword.

    A PyTorch model is named ``"net.py:build_model"`` with ``weights`` (a state_dict file) and
    ``input_shapes`` (``{"image": (1, 3, 224, 224)}``, or taken from ``calib``); its TFLite model
    takes NHWC images unless ``keep_layout``, while the data stays NCHW. ``prune`` and ``distill``
    also take the recipe's settings, e.g. ``prune={"method": "channels", "ratio": 0.5}``,
    ``distill={"epochs": 10, "temperature": 2.0}`` (``distill=True``: its defaults). ``budgets``
    takes the recipe's mapping (``max_accuracy_drop``, ``max_fidelity_drop`` in points,
    ``min_speedup``, ``max_size``), which the keywords of the same names override; ``overrides``
    maps a layer-name regex to ``"float"`` or ``"int8"`` (last match wins), and ``keep_float``
    patterns are laid after it. A missed budget raises :class:`edgeopt.errors.BudgetMissed`
    after the outputs are written; its ``result`` holds the best try.
    """
    return _run(config(model, **settings), progress)


def config(model: str | Path, **settings: Any) -> recipe.CompressConfig:
    """The run's configuration from compress()'s arguments, without running it."""
    declared = options.OPTIONS
    known = {opt.name for opt in declared}
    for name in settings:
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=1)
            raise TypeError(f"compress() got an unexpected keyword argument '{name}'"
                            + (f"; did you mean '{close[0]}'?" if close else ""))
    try:
        values = options.to_recipe(settings, declared=declared)
    except ValueError as exc:
        raise UsageError(f"Invalid settings in {_ORIGIN}: {exc}",
                         hint="Each keyword takes what its `edgeopt compress` flag takes, or the recipe's value.") \
            from None
    given = [opt for opt in declared if settings.get(opt.name) is not None]

    def keyword_of(loc: tuple) -> str | None:
        return ", ".join(f"{opt.name}=" for opt in options.sources(loc, given)) or None

    return recipe.validate(_ORIGIN, {"model": Path(model), **values}, names=keyword_of)


def _signature() -> inspect.Signature:
    keyword = inspect.Parameter.KEYWORD_ONLY
    params = [inspect.Parameter("model", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation="str | Path")]
    seen = set()
    for opt in options.OPTIONS:
        if opt.name not in seen:
            seen.add(opt.name)
            default = None if opt.multiple or isinstance(opt.default, dict) else opt.default
            params.append(inspect.Parameter(opt.name, keyword, default=default))
    params.append(inspect.Parameter("progress", keyword, default=None, annotation="Progress | None"))
    return inspect.Signature(params, return_annotation="Result")


def _keywords() -> str:
    lines = ["", "    Keywords, with the recipe key each sets:", ""]
    for opt in options.OPTIONS:
        default = "" if opt.default is None or opt.default is False or opt.default == {} \
            else f" [default: {opt.default!r}]"
        text = opt.help or (f"one of {', '.join(typing.get_args(opt.kind))}." if options.is_literal(opt.kind) else "")
        if opt.is_off_flag:  # the help is the flag's, which sets the keyword's opposite
            text = f"False: {text}"
        lines.append(f"    - ``{opt.name}`` ({opt.key}){default}: {text}".rstrip(": "))
    return "\n".join(lines) + "\n"


compress.__signature__ = _signature()  # what help() and IDEs show: every option, with its default
compress.__doc__ = (compress.__doc__ or "") + _keywords()
