"""Reference.measure_unless: a try far over its limit on the first samples is settled there, and
one that is not is judged on all samples exactly as ``measure`` judges it."""

from __future__ import annotations

import numpy as np
import pytest

from edgeopt.calibration import Subset
from edgeopt.validate.evaluate import Metric, Reference

SAMPLES, HEAD = 48, 16


class _Source:
    """Rows that carry their own index, and no labels."""

    whole: frozenset = frozenset()

    def samples(self, indices):
        for i in indices:
            yield i, {"x": np.array([i], dtype=np.int64)}

    def label_values(self, _indices):
        return None


class _Session:
    """Outputs the reference's own maps plus noise of a chosen size, counting the rows it ran."""

    def __init__(self, maps: np.ndarray, noise: float) -> None:
        self._maps, self._noise, self.ran = maps, noise, 0
        self._rng = np.random.default_rng(1)

    def run_many(self, rows):
        self.ran += len(rows)
        picked = self._maps[[int(r["x"][0]) for r in rows]]
        return [picked + self._noise * self._rng.standard_normal(picked.shape).astype(np.float32)]


@pytest.fixture
def reference() -> Reference:
    maps = np.random.default_rng(0).random((SAMPLES, 8, 8)).astype(np.float32)
    return Reference([maps], Subset(_Source(), tuple(range(SAMPLES))), Metric("top1"))


def test_a_hopeless_try_runs_only_the_first_samples(reference, tmp_path):
    session = _Session(reference.outputs[0], noise=1.0)
    art = tmp_path / "a.onnx"
    art.write_bytes(b"a")
    quality, whole = reference.measure_unless(session, (art,), HEAD, lambda q: q.fidelity_drop > 2.0)
    assert not whole and session.ran == HEAD
    assert quality.fidelity_drop > 10.0
    assert reference.known((art,)) is None  # a part judgement is never taken for the artifact's


def test_a_close_try_is_judged_on_all_samples_as_measure_does(reference, tmp_path):
    session = _Session(reference.outputs[0], noise=0.01)
    art = tmp_path / "b.onnx"
    art.write_bytes(b"b")
    quality, whole = reference.measure_unless(session, (art,), HEAD, lambda q: q.fidelity_drop > 2.0)
    assert whole and session.ran == SAMPLES
    again = _Session(reference.outputs[0], noise=0.01)
    assert reference.first(SAMPLES).judge(again.run_many(list(reference.val))).fidelity == \
        pytest.approx(quality.fidelity, rel=1e-6)
    assert reference.known((art,)) is quality  # kept: the validation after the search reuses it
    assert reference.measure_unless(session, (art,), HEAD, lambda q: True) == (quality, True)
    assert session.ran == SAMPLES
