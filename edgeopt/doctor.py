"""What is installed and which paths can run, read from package metadata (nothing heavy imported)."""

from __future__ import annotations

from edgeopt.deps import OPTIONAL, version_of
from edgeopt.registry import entries, requirements


def framework_rows() -> list[list[str]]:
    rows = []
    for dist, extra in dict(OPTIONAL.values()).items():
        rows.append([dist, version_of(dist) or "[red]not installed[/]", extra])
    return rows


def missing_distributions(kind: str, key: str) -> list[str]:
    """The distributions a registry entry needs that are not installed."""
    return [dist for _module, dist in requirements(kind, key) if version_of(dist) is None]


def path_status(kind: str, key: str) -> str:
    missing = missing_distributions(kind, key)
    if missing:
        extra = OPTIONAL.get(next(m for m, d in requirements(kind, key) if d == missing[0]), ("", "all"))[1]
        return f"[red]needs {', '.join(missing)}[/] (pip install \"edgeopt[{extra}]\")"
    return "[green]ready[/]"


# A path's quantize pass and layer lister need what its converter needs: its one row is "export".
_SHOWN = {"loader": "loader", "converter": "export", "runtime": "runtime", "pass": "pass"}


def path_rows() -> list[list[str]]:
    return [[_SHOWN[kind], key, path_status(kind, key)] for kind, key in entries() if kind in _SHOWN]
