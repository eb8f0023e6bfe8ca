"""Latency measurement on a fake session and a fake clock: order, counts and statistics."""

from __future__ import annotations

import numpy as np
import pytest

from edgeopt.targets.base import Session
from edgeopt.targets import remote_runner
from edgeopt.validate import latency


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class FakeSession(Session):
    """Each run advances the shared clock by the next of ``costs_ms`` (cycled) and logs itself."""

    def __init__(self, name: str, log: list, clock: FakeClock, costs_ms, threads: int = 2) -> None:
        self.name = name
        self.log = log
        self.clock = clock
        self.costs = list(costs_ms)
        self.threads = threads
        self.prepared = []
        self.raw_runs = 0

    def _prepare(self, feed):
        self.prepared.append(feed)
        self.log.append(("prepare", self.name))

    def run_raw(self):
        self.clock.now += self.costs[self.raw_runs % len(self.costs)] / 1000.0
        self.raw_runs += 1
        self.log.append(("run", self.name))

    def _run(self, feed):
        return [np.asarray(feed["x"]) * 2]


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(remote_runner.time, "perf_counter", fake)  # the protocol's one clock
    return fake


def test_interleaving_order_and_run_counts(clock):
    log: list = []
    feed = {"x": np.ones((1, 3), np.float32)}
    sessions = {name: FakeSession(name, log, clock, [1.0]) for name in ("a", "b", "c")}

    stats = latency.measure_interleaved(sessions, feed, runs=4, warmup=2)

    assert log[:3] == [("prepare", "a"), ("prepare", "b"), ("prepare", "c")]
    runs = [name for kind, name in log[3:]]
    warm, timed = runs[:6], runs[6:]
    assert warm == ["a", "b", "c", "a", "b", "c"]
    # Each round starts one variant later, so none is always first.
    assert timed == ["a", "b", "c", "b", "c", "a", "c", "a", "b", "a", "b", "c"]
    for s in sessions.values():
        assert s.raw_runs == 6
        assert s.prepared == [feed]
    assert {name: (st.runs, st.warmup, st.threads) for name, st in stats.items()} == \
        {"a": (4, 2, 2), "b": (4, 2, 2), "c": (4, 2, 2)}


def test_statistics_from_known_durations(clock):
    log: list = []
    sessions = {
        "fp32": FakeSession("fp32", log, clock, [4.0]),
        "int8": FakeSession("int8", log, clock, [1.0, 2.0, 3.0, 4.0, 10.0], threads=1),
    }
    stats = latency.measure_interleaved(sessions, {"x": np.zeros(1)}, runs=5, warmup=0)

    fp32, int8 = stats["fp32"], stats["int8"]
    assert fp32.p50 == pytest.approx(4.0) and fp32.p90 == pytest.approx(4.0)
    assert fp32.std == pytest.approx(0.0, abs=1e-9)
    assert not fp32.unstable
    assert int8.p50 == pytest.approx(3.0)
    assert int8.p90 == pytest.approx(np.percentile([1, 2, 3, 4, 10], 90))
    assert int8.min == pytest.approx(1.0) and int8.mean == pytest.approx(4.0)
    assert int8.threads == 1
    assert int8.unstable  # p90 7.6 > 1.5 * p50
    as_dict = int8.to_dict()
    assert set(as_dict) == {"p50", "p90", "p99", "min", "mean", "std", "runs", "warmup", "threads", "unstable"}
    assert as_dict["p50"] == 3.0 and as_dict["runs"] == 5


def test_warmup_runs_are_not_timed(clock):
    log: list = []
    # The first two (warm-up) runs are slow; they must not show up in the statistics.
    s = FakeSession("only", log, clock, [100.0, 100.0, 1.0, 1.0, 1.0, 1.0])
    stats = latency.measure_interleaved({"only": s}, {"x": np.zeros(1)}, runs=4, warmup=2)
    assert stats["only"].p50 == pytest.approx(1.0)
    assert stats["only"].mean == pytest.approx(1.0)
    assert s.raw_runs == 6


def test_time_budget_stops_early_after_ten_rounds(clock):
    log: list = []
    sessions = {"a": FakeSession("a", log, clock, [50.0]), "b": FakeSession("b", log, clock, [50.0])}
    stats = latency.measure_interleaved(sessions, {"x": np.zeros(1)}, runs=1000, warmup=1, time_budget_s=0.01)
    assert stats["a"].runs == stats["b"].runs == 10
    assert sessions["a"].raw_runs == 11


def test_run_many_stacks_per_sample_outputs():
    s = FakeSession("x", [], FakeClock(), [1.0])
    rows = [{"x": np.full((1, 2), float(i))} for i in range(3)]
    (out,) = s.run_many(rows)
    np.testing.assert_array_equal(out, [[0, 0], [2, 2], [4, 4]])
