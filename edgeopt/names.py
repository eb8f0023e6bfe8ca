"""Matching an artifact's tensor names to the source model's, which converters often rename."""

from __future__ import annotations

from collections.abc import Sequence


def match_inputs(artifact: Sequence[str], source: Sequence[str] | None) -> list[str]:
    """The source name to use for each artifact input: by name when every name matches, else by
    position when the counts agree (converters keep the order), else the artifact's own names."""
    if not source:
        return list(artifact)
    if sorted(artifact) == sorted(source):
        return list(artifact)
    cleaned = [name.split(":")[0] for name in artifact]
    if sorted(cleaned) == sorted(source):
        return cleaned
    if len(artifact) == len(source):
        return list(source)
    return list(artifact)
