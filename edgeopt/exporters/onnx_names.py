"""Tensor names for the graph onnxruntime's quantizer works on: ones it cannot collide with, and
short enough that the names it derives do not outweigh the weights.

- The quantizer derives new tensor names from existing ones by appending to them, digits among
  others. tf2onnx names tensors after their TF scopes joined by ';', so one graph can hold both
  'conv1d_25;conv1d_25' (a bias) and 'conv1d_25;conv1d_252' (a Conv's output): quantizing
  basic-pitch's note model wired a bias's DequantizeLinear into that Conv's consumers, and the
  int8 model did not load. A name that, with digits appended, is another name, is renamed.
- Those joined scopes run to hundreds of characters, and each quantized tensor's name is written
  again in about six derived names: the same model's int8 file was 1.65x its float file, with a
  quarter of the weights. A long name is cut to its last KEPT_TAIL characters and a number.

Graph inputs and outputs and node names never change: users, recipes and reports refer to those.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

LONG_NAME = 64
KEPT_TAIL = 40


def _graphs(graph: Any) -> Iterator[Any]:
    yield graph
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.g.node or attribute.g.initializer:
                yield from _graphs(attribute.g)
            for sub in attribute.graphs:
                yield from _graphs(sub)


def _tensor_names(model: Any) -> list[str]:
    seen: dict[str, None] = {}
    for graph in _graphs(model.graph):
        seen.update(dict.fromkeys(t.name for t in graph.initializer))
        for node in graph.node:
            seen.update(dict.fromkeys(n for n in (*node.input, *node.output) if n))
    return list(seen)


def at_risk(names: set[str]) -> set[str]:
    """Names that, with digits appended, are another name."""
    risky = set()
    for name in names:
        digits_from = len(name.rstrip("0123456789"))
        risky.update(name[:k] for k in range(max(digits_from, 1), len(name)) if name[:k] in names)
    return risky


def tidy(model: Any) -> int:
    """Rename, in place, the long tensor names and those at risk of a collision; returns how many."""
    names = _tensor_names(model)
    fixed = {v.name for v in (*model.graph.input, *model.graph.output)}
    taken = set(names)
    renamed: dict[str, str] = {}
    for name in names:
        if name not in fixed and len(name) > LONG_NAME:
            # Ends in '~': no other name is this one with digits appended.
            renamed[name] = f"{name[-KEPT_TAIL:]}~{len(renamed)}~"
    after = {renamed.get(n, n) for n in names}
    for name in sorted(at_risk(after) - fixed):
        new = f"{name}.t"
        while new in taken or new in after:
            new += "t"
        renamed[name] = new
    if not renamed:
        return 0

    def rename(name: str) -> str:
        return renamed.get(name, name)

    for graph in _graphs(model.graph):
        for tensor in graph.initializer:
            tensor.name = rename(tensor.name)
        for info in graph.value_info:
            info.name = rename(info.name)
        for node in graph.node:
            node.input[:] = [rename(n) for n in node.input]
            node.output[:] = [rename(n) for n in node.output]
    return len(renamed)
