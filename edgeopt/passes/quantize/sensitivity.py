"""The error each layer of an int8 model adds, from one run of it and of its float model with every
quantized layer's output read out: what the budget search ranks layers by, where keeping a layer
in float means it reads float inputs (onnxruntime edits, NNCF's ignored_scope).

A layer's noise-to-signal ratio (NSR, error power over signal power at its output) holds the error
it was fed and the error its own quantized inputs and weights add. What it adds, the NSR at its
output less the largest NSR of the quantized layers feeding it, is what keeping it in float would
take away. Sums run sample by sample: the tapped maps of a detector at full resolution would not
fit in memory all together.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np

# (name, names of the nodes it reads from) for each node of the float graph.
Node = tuple[str, Sequence[str]]
Run = Callable[[dict[str, np.ndarray]], Sequence[np.ndarray]]


def added_error(names: list[str], reference: Run, quantized: Run, rows: Iterable[dict[str, np.ndarray]],
                nodes: Iterable[Node]) -> dict[str, float]:
    """Layer name -> the NSR it adds (0 or more). ``reference`` and ``quantized`` give, for one row,
    the outputs of ``names`` in the float and the int8 model."""
    noise, signal = np.zeros(len(names)), np.zeros(len(names))
    for row in rows:
        for i, (f, q) in enumerate(zip(reference(row), quantized(row))):
            f = np.ascontiguousarray(f, dtype=np.float32).ravel()
            diff = f - np.asarray(q, dtype=np.float32).ravel()
            noise[i] += float(np.dot(diff, diff))
            signal[i] += float(np.dot(f, f))
    nsr = {name: noise[i] / signal[i] if signal[i] > 0 else 0.0 for i, name in enumerate(names)}
    feeding = nearest_upstream(list(nodes), set(names))
    return {name: max(0.0, value - max((nsr[p] for p in feeding.get(name, ())), default=0.0))
            for name, value in nsr.items()}


def nearest_upstream(nodes: list[Node], tapped: set[str]) -> dict[str, set[str]]:
    """For each tapped node, the nearest tapped nodes upstream of it (through untapped ones)."""
    reads = dict(nodes)
    found: dict[str, set[str]] = {}
    for name in tapped:
        seen, frontier, nearest = set(), list(reads.get(name, ())), set()
        while frontier:
            up = frontier.pop()
            if up in seen or up not in reads:
                continue
            seen.add(up)
            if up in tapped:
                nearest.add(up)
            else:
                frontier.extend(reads[up])
        found[name] = nearest
    return found
