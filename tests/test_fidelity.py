"""Fidelity and accuracy metrics on hand-made outputs, with exact values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edgeopt import fidelity as fid


def test_identical_outputs():
    ref = [np.array([[0.1, 0.9], [0.7, 0.3], [0.5, 0.5]], np.float32)]
    result = fid.fidelity(ref, [ref[0].copy()])
    assert result["top1_agreement"] == 1.0
    assert result["cosine"] == pytest.approx(1.0, abs=1e-12)
    assert result["max_abs_err"] == 0.0
    assert result["sqnr_db"] == math.inf


def test_half_wrong():
    ref = [np.array([[1.0, 0.0], [0.0, 1.0]])]
    cand = [np.array([[1.0, 0.0], [1.0, 0.0]])]
    result = fid.fidelity(ref, cand)
    assert result == {"top1_agreement": 0.5, "cosine": 0.5, "max_abs_err": 1.0, "sqnr_db": 0.0}


def test_sqnr_and_cosine_values():
    ref = [np.array([[3.0, 4.0]])]
    cand = [np.array([[3.0, 4.5]])]
    result = fid.fidelity(ref, cand)
    # signal 25, noise 0.25 -> 20 dB; cos = (9 + 18) / (5 * sqrt(29.25))
    assert result["sqnr_db"] == pytest.approx(20.0, abs=1e-12)
    assert result["cosine"] == pytest.approx(27.0 / (5.0 * math.sqrt(29.25)), abs=1e-12)
    assert result["max_abs_err"] == pytest.approx(0.5)
    assert result["top1_agreement"] == 1.0


@pytest.mark.filterwarnings("ignore:divide by zero")  # log10(0): no signal is -inf dB
def test_zero_vectors():
    ref = [np.array([[0.0, 0.0], [0.0, 0.0]])]
    cand = [np.array([[0.0, 0.0], [0.0, 2.0]])]
    result = fid.fidelity(ref, cand)
    assert result["cosine"] == 0.5  # equal zeros count as 1, zero vs non-zero as 0
    assert result["max_abs_err"] == 2.0
    assert result["sqnr_db"] == -math.inf  # no signal at all


def test_opposite_vectors_and_non_classifier_outputs():
    ref = [np.array([[1.0], [2.0]])]
    cand = [np.array([[-1.0], [2.0]])]
    result = fid.fidelity(ref, cand)
    assert "top1_agreement" not in result  # one column is no classifier
    assert result["cosine"] == 0.0  # mean of -1 and 1
    assert result["max_abs_err"] == 2.0
    assert result["sqnr_db"] == pytest.approx(10 * math.log10(5.0 / 4.0))


def test_several_outputs_all_count():
    ref = [np.array([[1.0, 0.0]]), np.array([[[2.0, 2.0]]])]
    cand = [np.array([[1.0, 0.0]]), np.array([[[2.0, 1.0]]])]
    result = fid.fidelity(ref, cand)
    assert result["max_abs_err"] == 1.0
    assert result["sqnr_db"] == pytest.approx(10 * math.log10(9.0 / 1.0))
    assert result["top1_agreement"] == 1.0


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="output shapes differ"):
        fid.fidelity([np.zeros((2, 3))], [np.zeros((2, 4))])


def test_accuracy_top1_and_top5():
    out = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    assert fid.accuracy(out, np.array([1, 0, 0, 0])) == {"top1": 0.75}
    logits = np.tile(np.arange(10.0), (2, 1))  # class 9 highest, then 8, 7, 6, 5
    result = fid.accuracy(logits, np.array([5, 4]))
    assert result == {"top1": 0.0, "top5": 0.5}


def test_is_classifier():
    assert fid.is_classifier(np.zeros((4, 3)))
    assert not fid.is_classifier(np.zeros((4, 1)))
    assert not fid.is_classifier(np.zeros((4, 3, 2)))


def test_outputs_with_several_rows_per_sample_are_compared_sample_by_sample():
    """A (2, batch, 128) state joined over 4 samples is 8 rows; with the (4, 1) probability, each
    sample's cosine takes its own two rows, so one bad sample lowers the mean by a quarter."""
    rng = np.random.default_rng(0)
    prob = rng.uniform(size=(4, 1))
    state = rng.normal(size=(8, 1, 128))
    bad = state.copy()
    bad[2:4] *= -1  # sample 1's state, sign-flipped: cosine -1 there, 1 elsewhere (nearly)
    found = fid.fidelity([prob, state], [prob, bad])
    per_sample = [np.dot(np.r_[prob[i], state[2 * i:2 * i + 2].ravel()], np.r_[prob[i], bad[2 * i:2 * i + 2].ravel()])
                  / np.dot(np.r_[prob[i], state[2 * i:2 * i + 2].ravel()], np.r_[prob[i], state[2 * i:2 * i + 2].ravel()])
                  for i in range(4)]
    assert found["cosine"] == pytest.approx(np.mean(per_sample), abs=1e-9)
    assert found["cosine"] < 0.6
