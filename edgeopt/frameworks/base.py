"""What every importer returns: the model's handle and a way to run it on numpy inputs."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np

from edgeopt.model import ModelHandle


class LoadedModel(ABC):
    """A source model in its own framework. ``native`` is the framework object."""

    handle: ModelHandle
    native: Any

    @abstractmethod
    def predict(self, feed: dict[str, np.ndarray], batch_size: int = 64) -> list[np.ndarray]:
        """Outputs, in ``handle.outputs`` order, for a batch keyed by input name."""


def guess_layout(shape: tuple[int | None, ...], prefer: str) -> str | None:
    """"nhwc"/"nchw" for 4-D image tensors, judged by where a small channel axis sits."""
    if len(shape) != 4:
        return None
    last, second = shape[3], shape[1]
    if last in (1, 3, 4) and second not in (1, 3, 4):
        return "nhwc"
    if second in (1, 3, 4) and last not in (1, 3, 4):
        return "nchw"
    return prefer
