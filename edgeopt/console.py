"""Terminal output: progress on stderr, tables and results on stdout."""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator

from rich.console import Console
from rich.table import Table

out = Console()
err = Console(stderr=True)


@contextmanager
def steps(quiet: bool = False) -> Iterator:
    """A callback that shows the current step with a spinner and logs each finished one."""
    if quiet:
        yield lambda _msg: None
        return
    state = {"msg": None, "t": time.perf_counter()}
    with err.status("Starting") as status:
        def step(msg: str) -> None:
            now = time.perf_counter()
            if state["msg"]:
                err.print(f"[green]✓[/] {state['msg']} [dim]({now - state['t']:.1f} s)[/]")
            state.update(msg=msg, t=now)
            status.update(msg)
        yield step
        if state["msg"]:
            err.print(f"[green]✓[/] {state['msg']} [dim]({time.perf_counter() - state['t']:.1f} s)[/]")


def table(title: str, header: list[str], rows: list[list[str]], *, transpose: bool = False) -> Table:
    """A rich table; ``transpose`` turns one-row-per-variant data into one row per metric,
    which fits a narrow terminal when there are few variants."""
    if transpose:
        header, rows = ["", *(r[0] for r in rows)], [[h, *(r[i] for r in rows)] for i, h in enumerate(header) if i]
    t = Table(title=title, title_justify="left")
    for i, h in enumerate(header):
        t.add_column(h, justify="left" if i == 0 else "right", no_wrap=i == 0)
    for r in rows:
        t.add_row(*r)
    return t
