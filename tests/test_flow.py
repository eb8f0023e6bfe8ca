"""Data flows one way: no module imports one that stands after it in the flow, and no modules
import each other in a circle, lazily or not (docs/ARCHITECTURE.md draws the stages)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "edgeopt"

# The stages in flow order; a module may import its own stage and those before it.
STAGES = (
    ("base", ("errors", "deps", "model", "names", "console", "formats", "tflite_file", "outputs", "fidelity",
              "registry", "recipe", "options", "doctor", "report_types")),
    ("import", ("frameworks",)),
    ("data", ("calibration",)),
    ("passes", ("passes",)),
    ("convert", ("exporters",)),
    ("quantize", ("passes.quantize",)),
    ("runtimes", ("targets",)),
    ("validate", ("validate",)),
    ("budget", ("budget", "guard")),
    ("commands", ("pipeline", "validate.job", "validate.gate", "report", "report_html", "api", "cli", "jobs",
                  "worker", "supervisor")),
)


def stage_of(module: str) -> int:
    name = module.removeprefix("edgeopt.")
    found = [(len(prefix), i) for i, (_, prefixes) in enumerate(STAGES) for prefix in prefixes
             if name == prefix or name.startswith(prefix + ".")]
    assert found, f"{module} is in no stage of the flow; add it to STAGES and to docs/ARCHITECTURE.md"
    return max(found)[1]  # the longest prefix decides (passes.quantize before passes)


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        if name != "edgeopt":  # the package root is the facade: it names the API, lazily
            found[name] = path
    return found


def imports(path: Path, known: set[str]) -> list[tuple[str, int]]:
    """The edgeopt modules ``path`` imports anywhere in it (functions too), with their lines."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "edgeopt":
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.append((sub if sub in known else node.module, node.lineno))
        elif isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names if a.name.split(".")[0] == "edgeopt"]
    return [(name, line) for name, line in found if name in known]


def test_no_module_imports_a_later_stage():
    known = modules()
    backwards = [f"{name}:{line} ({STAGES[stage_of(name)][0]}) imports {target} ({STAGES[stage_of(target)][0]})"
                 for name, path in known.items() for target, line in imports(path, set(known))
                 if stage_of(target) > stage_of(name)]
    assert not backwards, "\n".join(backwards)


def test_no_import_circles():
    known = modules()
    graph = {name: {t for t, _ in imports(path, set(known)) if t != name} for name, path in known.items()}
    # A package's __init__ is imported by each of its modules; it may import them back lazily only
    # through the registry, so the edges from a package to its own modules are not circles here.
    circles = []
    for start in graph:
        stack, seen = [(start, (start,))], set()
        while stack:
            node, trail = stack.pop()
            for nxt in graph[node]:
                if nxt == start and len(trail) > 1:
                    circles.append(" -> ".join((*trail, start)))
                elif nxt not in seen and not _package_of(nxt, start):
                    seen.add(nxt)
                    stack.append((nxt, (*trail, nxt)))
    assert not circles, "\n".join(sorted(set(circles))[:10])


def _package_of(module: str, other: str) -> bool:
    return other.startswith(module + ".")


def test_the_stage_table_names_every_module():
    for name in modules():
        stage_of(name)
