"""What every benchmark script does with its table: print it, and save it under benchmarks/results/."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from edgeopt.console import table
from edgeopt.report import markdown_table

RESULTS = Path(__file__).resolve().parent / "results"


def show_and_save(name: str, title: str, header: list[str], rows: list[list[str]]) -> Path:
    Console(width=220).print(table(title, header, rows))
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.md"
    path.write_text(f"{title}\n\n" + "\n".join(markdown_table(header, rows)) + "\n")
    return path
