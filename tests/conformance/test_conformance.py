"""Real trained models through every path they can take, with default flags, judged against the
float model and against the best peer default measured on the same data (reference.yaml)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conformance import reference, runner, zoo

REFERENCE = reference.load()["models"]
CELLS = [(case, target) for case in zoo.CASES for target in case.targets]


def _id(cell) -> str:
    return f"{cell[0].id}-{cell[1]}"


@pytest.mark.slow
@pytest.mark.timeout(1500)
@pytest.mark.parametrize("cell", CELLS, ids=[_id(c) for c in CELLS])
def test_default_run(cell, tmp_path):
    case, target = cell
    expected = REFERENCE.get(case.id, {}).get("targets", {}).get(target)
    assert expected is not None, f"no reference for {case.id} -> {target}: run python -m tests.conformance.runner --write"
    calib, val = zoo.write_data(case, tmp_path / "data", calib=case.calib_samples, val=case.val_samples)
    done = runner.edgeopt_compress(case, target, tmp_path, calib, val)
    assert "Traceback" not in done["stderr"] + done["stdout"], done["stderr"][-2000:]
    if expected["exit_code"] == 4:
        # A refusal is an unsupported op, named with its node, and nothing is written.
        assert done["rc"] == 4, done["stderr"][-1500:]
        assert "node" in done["stderr"] and not (tmp_path / f"edgeopt_{target}").exists()
        return
    assert done["rc"] == expected["exit_code"], done["stderr"][-2000:]
    art = done["artifact"]
    # The fidelity guard, on by default, held; or no mix held it, and the run says so with exit 1
    # and the best artifact written.
    assert art["guard"]["held"] is (done["rc"] == 0)
    if done["rc"] == 1:
        assert "Fidelity guard:" in done["stderr"] and Path(art["path"]).is_file()
    assert art["baseline_fidelity"]["cosine"] >= 0.9999, "the float conversion already differs from the source"
    got = runner.score(art["fidelity"], case.task)
    samples = case.val_samples
    assert got >= reference.floor(expected["int8"], case.task, samples), \
        f"int8 {got:.4f} fell below the reference {expected['int8']:.4f}"
    best = expected.get("best_peer")
    if best is not None:
        assert got >= reference.floor(best["int8"], case.task, samples), \
            f"int8 {got:.4f} is behind {best['name']}'s default ({best['int8']:.4f}) on the same data"
    # The artifact is as small as it was when the reference was measured, and smaller than fp32.
    assert art["size_bytes"] <= 1.05 * expected["size_bytes"]
    # With layers kept out of int8 by the guard, the file holds their float weights and quantizers too.
    all_int8 = not (art.get("quantization") or {}).get("keep_float")
    assert art["size_bytes"] < art["baseline_size_bytes"] or not case.int8_file_smaller or not all_int8
