"""What every runtime session offers: run one batch, and describe its tensors."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from edgeopt.model import TensorSpec


class Session(ABC):
    """An artifact loaded in its runtime. Feeds and results are float unless the model says otherwise."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    threads: int
    load_seconds: float

    @abstractmethod
    def run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Outputs, dequantized to float, for one sample keyed by the source model's input names."""

    @abstractmethod
    def run_raw(self) -> None:
        """One inference on the inputs last set by :meth:`prepare`; what latency timing calls."""

    @abstractmethod
    def prepare(self, feed: dict[str, np.ndarray]) -> None:
        """Load ``feed`` into the session so :meth:`run_raw` times inference alone."""

    def run_many(self, rows) -> list[np.ndarray]:
        """Run sample by sample (edge runtimes are built for batch 1) and stack the outputs."""
        per_output: list[list[np.ndarray]] = []
        for row in rows:
            outs = self.run(row)
            if not per_output:
                per_output = [[] for _ in outs]
            for bucket, out in zip(per_output, outs):
                bucket.append(out)
        return [np.concatenate(b) for b in per_output]
