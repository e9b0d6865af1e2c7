"""Calibration, temperature scaling, the uncertain flag and the lab novelty warning
(:mod:`bcfeat.crosslab.calibration`), on small synthetic data (fast, no real data)."""

from __future__ import annotations

import io
import math

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from bcfeat.crosslab.novelty import LabNovelty, fit_novelty, lab_novelty_score, novelty_warning
from bcfeat.crosslab.calibration import (
    UncertainRule,
    apply_temperature,
    calibration_summary,
    choose_uncertain_rule,
    expected_calibration_error,
    fit_temperature,
    reliability_figure,
    reliability_table,
    review_table,
)


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def calibrated(n: int = 20000, k: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities from random logits and labels drawn *from* them: calibrated by construction."""
    rng = np.random.default_rng(seed)
    p = softmax(rng.normal(0.0, 1.5, size=(n, k)))
    u = rng.random(n)[:, None]
    y = np.minimum((u > np.cumsum(p, axis=1)).sum(axis=1), k - 1)
    return p, y


@pytest.fixture(scope="module")
def calibrated_data():
    return calibrated()


@pytest.fixture(scope="module")
def overconfident_data(calibrated_data):
    """The calibrated probabilities sharpened with T = 0.5; the same labels."""
    p, y = calibrated_data
    return apply_temperature(p, 0.5), y


# --- ECE and reliability table ----------------------------------------------------------------

def test_ece_small_for_calibrated_data(calibrated_data):
    p, y = calibrated_data
    assert expected_calibration_error(p, y) < 0.02


def test_ece_large_for_overconfident_data(overconfident_data):
    q, y = overconfident_data
    assert expected_calibration_error(q, y) > 0.1
    s = calibration_summary(q, y)
    assert s["confidence_gap"] > 0.1  # confident while wrong


def test_ece_by_hand():
    # confidences 0.85 (right), 0.85 (wrong), 0.65 (right), 0.75 (right); 10 bins of width 0.1:
    # (0.8, 0.9]: conf 0.85, acc 0.5 -> 2/4 * 0.35; (0.6, 0.7]: 1/4 * 0.35; (0.7, 0.8]: 1/4 * 0.25
    p = np.array([[0.85, 0.15], [0.85, 0.15], [0.65, 0.35], [0.25, 0.75]])
    y = np.array([0, 1, 0, 1])
    assert expected_calibration_error(p, y, n_bins=10) == pytest.approx(0.325, abs=1e-12)
    # one bin: |mean confidence 0.775 - accuracy 0.75|
    assert expected_calibration_error(p, y, n_bins=1) == pytest.approx(0.025, abs=1e-12)
    # a perfectly confident and right classifier: 0
    assert expected_calibration_error(np.eye(3), np.arange(3)) == pytest.approx(0.0, abs=1e-12)


def test_reliability_table_by_hand_and_consistent_with_ece(calibrated_data):
    p = np.array([[0.85, 0.15], [0.85, 0.15], [0.65, 0.35], [0.25, 0.75]])
    y = np.array([0, 1, 0, 1])
    t = reliability_table(p, y, n_bins=10)
    assert list(t.columns) == ["bin_low", "bin_high", "n", "confidence", "accuracy"]
    assert len(t) == 10
    np.testing.assert_allclose(t["bin_low"], np.arange(10) / 10)
    np.testing.assert_allclose(t["bin_high"], np.arange(1, 11) / 10)
    assert t["n"].tolist() == [0, 0, 0, 0, 0, 0, 1, 1, 2, 0]
    assert t.loc[8, "confidence"] == pytest.approx(0.85)
    assert t.loc[8, "accuracy"] == pytest.approx(0.5)
    assert t.loc[6, "accuracy"] == pytest.approx(1.0)
    assert t.loc[0, ["confidence", "accuracy"]].isna().all()

    p, y = calibrated_data
    t = reliability_table(p, y, n_bins=12)
    assert t["n"].sum() == len(y)
    used = t["n"] > 0
    ece = float((t.loc[used, "n"] / len(y) * (t.loc[used, "accuracy"] - t.loc[used, "confidence"]).abs()).sum())
    assert ece == pytest.approx(expected_calibration_error(p, y, n_bins=12), abs=1e-12)


def test_calibration_summary_by_hand():
    p = np.array([[0.8, 0.2], [0.8, 0.2], [0.4, 0.6], [0.5, 0.5]])
    y = np.array([0, 1, 1, 0])
    s = calibration_summary(p, y)
    assert s["mean_confidence"] == pytest.approx((0.8 + 0.8 + 0.6 + 0.5) / 4)
    assert s["accuracy"] == pytest.approx(0.75)  # the 0.5/0.5 tie goes to class 0 (argmax)
    assert s["confidence_gap"] == pytest.approx(s["mean_confidence"] - 0.75)
    assert s["nll"] == pytest.approx(-np.mean(np.log([0.8, 0.2, 0.6, 0.5])))
    assert s["ece"] == pytest.approx(expected_calibration_error(p, y))
    assert s["n_cells"] == 4


# --- temperature ------------------------------------------------------------------------------

def test_apply_temperature_identity_and_row_sums(calibrated_data):
    p, _ = calibrated_data
    np.testing.assert_allclose(apply_temperature(p, 1.0), p, rtol=0, atol=1e-12)
    for t in (0.3, 2.0, 7.0):
        q = apply_temperature(p, t)
        np.testing.assert_allclose(q.sum(axis=1), 1.0, rtol=0, atol=1e-12)
        np.testing.assert_array_equal(q.argmax(axis=1), p.argmax(axis=1))
    # T > 1 softens, T < 1 sharpens
    assert apply_temperature(p, 2.0).max(axis=1).mean() < p.max(axis=1).mean()
    assert apply_temperature(p, 0.5).max(axis=1).mean() > p.max(axis=1).mean()


def test_apply_temperature_matches_logit_scaling_and_handles_zeros():
    rng = np.random.default_rng(1)
    z = rng.normal(size=(50, 5))
    np.testing.assert_allclose(apply_temperature(softmax(z), 3.0), softmax(z / 3.0), atol=1e-12)
    p = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.2, 0.3, 0.5]])
    for t in (0.1, 1.0, 10.0):
        q = apply_temperature(p, t)
        assert np.all(np.isfinite(q))
        np.testing.assert_allclose(q.sum(axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(apply_temperature(p, 1.0), p, atol=1e-12)
    assert apply_temperature(p, 10.0)[0, 1] > 0.05  # a zero is softened, not stuck at 0


def test_fit_temperature_recovers_two_and_lowers_ece(overconfident_data):
    q, y = overconfident_data
    t = fit_temperature(q, y)
    assert t == pytest.approx(2.0, rel=0.15)
    fixed = apply_temperature(q, t)
    before, after = expected_calibration_error(q, y), expected_calibration_error(fixed, y)
    assert after < before / 3
    assert after < 0.03
    assert calibration_summary(fixed, y)["nll"] < calibration_summary(q, y)["nll"]


def test_fit_temperature_below_one_for_underconfident(calibrated_data):
    p, y = calibrated_data
    assert fit_temperature(apply_temperature(p, 3.0), y) == pytest.approx(1 / 3, rel=0.15)
    assert fit_temperature(p, y) == pytest.approx(1.0, rel=0.1)


# --- the uncertain flag -----------------------------------------------------------------------

def test_uncertain_rule_flags_strictly_below():
    p = np.array([[0.6, 0.4], [0.7, 0.3], [0.1, 0.9], [0.5, 0.5]])
    np.testing.assert_array_equal(UncertainRule(0.7).flag(p), [True, False, False, True])
    assert not UncertainRule(0.0).flag(p).any()
    assert UncertainRule(1.01).flag(p).all()


def test_choose_uncertain_rule_meets_target_when_feasible(overconfident_data):
    q, y = overconfident_data
    p = apply_temperature(q, fit_temperature(q, y))
    for target in (0.3, 0.5):
        rule = choose_uncertain_rule(p, y, target_catch=target, max_review=0.9)
        r = review_table(p, y, rule)
        assert r["catch_rate"] >= target
        assert r["review_share"] <= 0.9
        # the smallest such threshold: one float lower misses the target
        lower = UncertainRule(float(np.nextafter(rule.min_probability, 0.0)))
        assert review_table(p, y, lower)["catch_rate"] < target


def test_choose_uncertain_rule_respects_max_review(overconfident_data):
    q, y = overconfident_data
    rule = choose_uncertain_rule(q, y, target_catch=0.99, max_review=0.1)
    r = review_table(q, y, rule)
    assert r["review_share"] <= 0.1
    assert r["review_share"] >= 0.1 - 2 / len(y)  # takes the threshold at the cap, not below
    assert r["catch_rate"] < 0.99
    assert choose_uncertain_rule(q, y, target_catch=0.99, max_review=0.0).flag(q).sum() == 0


def test_choose_uncertain_rule_by_hand():
    p = np.array([[0.95, 0.05], [0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.6, 0.4], [0.55, 0.45]])
    y = np.array([0, 0, 1, 0, 1, 1])  # errors at confidences 0.8, 0.6, 0.55
    rule = choose_uncertain_rule(p, y, target_catch=0.6, max_review=0.5)  # needs 2 of 3 errors
    assert 0.6 < rule.min_probability <= 0.7
    np.testing.assert_array_equal(rule.flag(p), [False, False, False, False, True, True])
    rule = choose_uncertain_rule(p, y, target_catch=1.0, max_review=1.0)
    np.testing.assert_array_equal(rule.flag(p), [False, False, True, True, True, True])
    rule = choose_uncertain_rule(p, y, target_catch=1.0, max_review=0.5)  # capped at 3 cells
    np.testing.assert_array_equal(rule.flag(p), [False, False, False, True, True, True])
    assert choose_uncertain_rule(p, y, target_catch=0.0).min_probability == 0.0
    # no error at all: nothing to catch, nothing flagged
    assert choose_uncertain_rule(p, np.zeros(6, dtype=int)).min_probability == 0.0


def test_review_table_by_hand():
    p = np.array([[0.9, 0.1], [0.6, 0.4], [0.55, 0.45], [0.8, 0.2], [0.3, 0.7]])
    y = np.array([0, 1, 0, 1, 1])  # wrong: cells 1 (0.6) and 3 (0.8)
    r = review_table(p, y, UncertainRule(0.7))  # flags cells 1 and 2
    assert r["n_cells"] == 5
    assert r["review_share"] == pytest.approx(2 / 5)
    assert r["catch_rate"] == pytest.approx(1 / 2)
    assert r["error_rate_unflagged"] == pytest.approx(1 / 3)
    assert r["n_flagged"] == 2 and r["n_errors"] == 2
    none_wrong = review_table(p, p.argmax(axis=1), UncertainRule(0.7))
    assert math.isnan(none_wrong["catch_rate"])
    assert none_wrong["error_rate_unflagged"] == 0.0
    all_flagged = review_table(p, y, UncertainRule(1.5))
    assert all_flagged["catch_rate"] == 1.0 and math.isnan(all_flagged["error_rate_unflagged"])


# --- lab novelty ------------------------------------------------------------------------------

def lab_cells(means: np.ndarray, n: int, seed: int, shift: np.ndarray | float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(means), n)
    return means[labels] + rng.normal(size=(n, means.shape[1])) + shift


@pytest.fixture(scope="module")
def class_means():
    return np.random.default_rng(7).normal(0.0, 3.0, size=(5, 20))


def test_lab_novelty_score_higher_for_shifted_lab(class_means):
    familiar = lab_novelty_score(lab_cells(class_means, 400, seed=1), class_means)
    assert 0.8 < familiar < 1.2  # unit within-class noise: RMS distance about 1 per feature
    shifted = lab_novelty_score(lab_cells(class_means, 400, seed=2, shift=2.5), class_means)
    novel_classes = np.random.default_rng(8).normal(0.0, 3.0, size=(5, 20))
    foreign = lab_novelty_score(lab_cells(novel_classes, 400, seed=3), class_means)
    assert shifted > 1.5 * familiar
    assert foreign > 1.5 * familiar
    # distances are measured in units of the within-class spread
    Z = lab_cells(class_means, 100, seed=4)
    assert lab_novelty_score(Z, class_means, 2.0) == pytest.approx(lab_novelty_score(Z, class_means) / 2)
    assert lab_novelty_score(Z, class_means, np.full(20, 2.0)) == pytest.approx(
        lab_novelty_score(Z, class_means, 2.0))


def test_lab_novelty_score_by_hand():
    means = np.array([[0.0, 0.0], [4.0, 0.0]])
    assert lab_novelty_score(np.array([[0.0, 1.0], [4.0, -1.0], [3.0, 0.0]]), means) == pytest.approx(
        1 / math.sqrt(2))
    # median over cells: one far cell does not decide
    assert lab_novelty_score(np.array([[0.0, 0.0], [4.0, 0.0], [100.0, 100.0]]), means) == pytest.approx(0.0)


def test_fit_novelty_and_warning(class_means):
    refs = [lab_novelty_score(lab_cells(class_means, 300, seed=s), class_means) for s in range(10, 14)]
    nov = fit_novelty(refs, margin=1.5)
    assert isinstance(nov, LabNovelty)
    assert nov.threshold == pytest.approx(max(refs) * 1.5)
    np.testing.assert_allclose(nov.reference_distances, refs)
    assert nov.reference_distances.shape == (4,)
    familiar = lab_novelty_score(lab_cells(class_means, 300, seed=20), class_means)
    shifted = lab_novelty_score(lab_cells(class_means, 300, seed=21, shift=2.5), class_means)
    assert novelty_warning(familiar, nov) is None
    msg = novelty_warning(shifted, nov)
    assert isinstance(msg, str)
    assert f"{shifted:.3g}" in msg and f"{nov.threshold:.3g}" in msg
    assert novelty_warning(nov.threshold, nov) is None  # warn strictly above
    assert isinstance(novelty_warning(nov.threshold * 1.01, nov), str)


# --- figure -----------------------------------------------------------------------------------

def test_reliability_figure_one_line_per_lab(calibrated_data, overconfident_data):
    p, y = calibrated_data
    q, _ = overconfident_data
    tables = {"dev": reliability_table(p, y), "lab B": reliability_table(q, y),
              "tiny": reliability_table(np.array([[0.9, 0.1], [0.35, 0.65]]), np.array([0, 0]))}
    fig = reliability_figure(tables)
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert len(ax.lines) == len(tables) + 1
    diagonal = ax.lines[0]
    assert diagonal.get_linestyle() == "--"
    np.testing.assert_allclose(diagonal.get_xdata(), [0, 1])
    np.testing.assert_allclose(diagonal.get_ydata(), [0, 1])
    assert [line.get_label() for line in ax.lines[1:]] == list(tables)
    assert len(ax.lines[3].get_xdata()) == 2  # empty bins are left out
    assert ax.get_xlabel() == "confidence" and ax.get_ylabel() == "accuracy"
    fig.savefig(io.BytesIO(), format="png")


# --- validation -------------------------------------------------------------------------------

GOOD = np.array([[0.7, 0.3], [0.2, 0.8]])
Y = np.array([0, 1])


@pytest.mark.parametrize("call, match", [
    (lambda: expected_calibration_error(np.array([0.7, 0.3]), Y), r"\(2,\)"),
    (lambda: expected_calibration_error(np.array([[0.7, 0.4], [0.2, 0.8]]), Y), "sums to 1.1"),
    (lambda: expected_calibration_error(GOOD, np.array([0, 1, 1])), r"\(3,\)"),
    (lambda: expected_calibration_error(GOOD, np.array([0, 2])), "got 2"),
    (lambda: expected_calibration_error(GOOD, Y, n_bins=0), "got 0"),
    (lambda: reliability_table(GOOD, Y, n_bins=-3), "got -3"),
    (lambda: apply_temperature(GOOD, 0.0), "got 0.0"),
    (lambda: apply_temperature(GOOD, -2.0), "got -2.0"),
    (lambda: apply_temperature(np.array([[0.5, 0.6]]), 1.0), "sums to 1.1"),
    (lambda: fit_temperature(GOOD, Y, bounds=(0.0, 5.0)), r"\(0.0, 5.0\)"),
    (lambda: choose_uncertain_rule(GOOD, Y, target_catch=1.5), "got 1.5"),
    (lambda: choose_uncertain_rule(GOOD, Y, max_review=-0.1), "got -0.1"),
    (lambda: UncertainRule(-0.2), "got -0.2"),
    (lambda: lab_novelty_score(np.zeros((3, 4)), np.zeros((2, 5))), r"\(2, 5\)"),
    (lambda: lab_novelty_score(np.zeros(4), np.zeros((2, 4))), r"\(4,\)"),
    (lambda: lab_novelty_score(np.zeros((3, 4)), np.zeros((2, 4)), 0.0), "got 0.0"),
    (lambda: fit_novelty([]), "none"),
    (lambda: fit_novelty([1.0], margin=0.5), "got 0.5"),
    (lambda: reliability_figure({}), "non-empty"),
    (lambda: reliability_figure({"a": pd.DataFrame({"x": [1]})}), "confidence"),
])
def test_invalid_input_raises_value_error_naming_the_value(call, match):
    with pytest.raises(ValueError, match=match):
        call()
