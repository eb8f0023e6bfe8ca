"""The one table that picks an implementation by name. Entries are resolved lazily, so nothing
heavy is imported until a run needs it, and a test resolves every entry.
"""

from __future__ import annotations

import importlib
from typing import Any

from edgeopt.errors import ConversionError

# (kind, key) -> "module:attribute"
ENTRIES: dict[tuple[str, str], str] = {
    # importers, by source format
    ("loader", "keras_h5"): "edgeopt.frameworks.keras:load",
    ("loader", "keras"): "edgeopt.frameworks.keras:load",
    ("loader", "saved_model"): "edgeopt.frameworks.keras:load",
    # exporters, by "<source framework>-><target>"
    ("exporter", "keras->tflite"): "edgeopt.exporters.tflite:export_keras",
    # runtimes, by artifact format
    ("runtime", "tflite"): "edgeopt.targets.litert:open_session",
    # passes, by "<step>:<source framework>"
    ("pass", "prune:keras"): "edgeopt.passes.prune.keras:run",
    ("pass", "distill:keras"): "edgeopt.passes.distill.keras:run",
}


# What each entry needs installed, as (import name, distribution) pairs; `edgeopt doctor` reads it.
REQUIRES: dict[tuple[str, str], tuple[tuple[str, str], ...]] = {
    ("loader", "keras_h5"): (("keras", "keras"), ("h5py", "h5py")),
    ("loader", "keras"): (("keras", "keras"),),
    ("loader", "saved_model"): (("tensorflow", "tensorflow-cpu"),),
    ("exporter", "keras->tflite"): (("tensorflow", "tensorflow-cpu"),),
    ("runtime", "tflite"): (("ai_edge_litert", "ai-edge-litert"),),
    ("pass", "prune:keras"): (("keras", "keras"),),
    ("pass", "distill:keras"): (("tensorflow", "tensorflow-cpu"),),
}


def resolve(kind: str, key: str) -> Any:
    try:
        target = ENTRIES[(kind, key)]
    except KeyError:
        known = sorted(k for (k_kind, k) in ENTRIES if k_kind == kind)
        raise ConversionError(f"No {kind} for '{key}'.", hint=f"Available: {', '.join(known)}.") from None
    module_name, attr = target.split(":")
    return getattr(importlib.import_module(module_name), attr)


def available(kind: str) -> list[str]:
    return sorted(k for (k_kind, k) in ENTRIES if k_kind == kind)
