"""What passes share: the data they may train on and where they leave their notes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgeopt.frameworks.base import LoadedModel


@dataclass
class PassContext:
    """``train``/``held`` are stacked batches keyed by input name; ``labels`` go with ``train``."""

    original: LoadedModel
    train: dict[str, np.ndarray] | None
    held: dict[str, np.ndarray] | None
    labels: np.ndarray | None = None
    seed: int = 0
    fine_tune_follows: bool = False
    progress: Callable[[str], None] = lambda _msg: None
    notes: list[str] = field(default_factory=list)
    state: dict[str, Any] = field(default_factory=dict)  # handed from one pass to the next


@dataclass
class PassResult:
    model: LoadedModel
    info: dict[str, Any]
