"""The work that `edgeopt compress` (and its --list-layers), `run` and `validate` hand to a
supervised child process (edgeopt.supervisor), and the checks the command makes itself before
handing it over."""

from __future__ import annotations

from pathlib import Path
from typing import Any

# Per job, what the child imports while the command checks the request: the two overlap.
PRELOAD = {"compress": ("edgeopt.pipeline",), "list_layers": ("edgeopt.pipeline",),
           "validate": ("edgeopt.validate.job",)}


def compress(config, progress) -> Any:
    from edgeopt.pipeline import compress as run

    return run(config, progress)


def check_compress(config) -> None:
    """Refusals that need no framework (output folder, methods and budgets the targets lack),
    made before the child runs: a mistyped flag costs no framework import, and no model loading."""
    from edgeopt.outputs import check_output_dir
    from edgeopt.pipeline import check_plan

    check_output_dir(config.output_dir())
    check_plan(config)


def list_layers(request: tuple[Any, tuple[str, ...] | None], progress) -> Any:
    from edgeopt.pipeline import list_layers as run

    config, targets = request
    return run(config, targets, progress)


def check_list_layers(request: tuple[Any, tuple[str, ...] | None]) -> None:
    """Refusals that need no framework: no calibration data, a target that keeps no layer in float."""
    from edgeopt.pipeline import check_listing

    check_listing(*request)


def validate(request: tuple[Any, Path], progress) -> dict[str, Any]:
    from edgeopt.validate.job import run

    config, out_dir = request
    return run(config, out_dir, progress)
