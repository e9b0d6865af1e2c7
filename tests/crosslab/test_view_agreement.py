"""A call's accuracy estimated from how often the classifier and its texture-free fallback part,
and the per-call temperature that brings the call's mean probability to it (bcfeat classify)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bcfeat.crosslab.adaptation import CrossLabClassifier
from bcfeat.crosslab.calibration import apply_temperature
from bcfeat.crosslab.view_agreement import (MIN_CALL_CELLS, AccuracyFromDisagreement, calibrate_call,
                                            temperature_for_mean_confidence, view_disagreement)


def test_the_accuracy_line_recovers_a_known_line_and_never_leaves_chance_to_one():
    rng = np.random.default_rng(0)
    d = rng.uniform(0, 0.4, 200)
    acc = np.clip(0.97 - 1.5 * d + rng.normal(0, 0.01, 200), 0, 1)
    fit = AccuracyFromDisagreement.fit(d, acc, n_classes=5)
    assert fit.slope == pytest.approx(-1.5, abs=0.05) and fit.intercept == pytest.approx(0.97, abs=0.01)
    assert fit.n_calls == 200 and 0.005 < fit.residual_std < 0.02
    assert fit.estimate(0.2) == pytest.approx(0.67, abs=0.02)
    assert fit.estimate(0.9) == 0.2                                  # chance for five classes, not below
    assert AccuracyFromDisagreement(1.1, -1.0, 0.2, 3, 0.0).estimate(0.0) == 1.0
    assert fit.ceiling == acc.max() and fit.estimate(0.0) <= acc.max()   # never above the best development call
    steep = AccuracyFromDisagreement.fit([0.0, 0.1, 0.2], [0.9, 0.8, 0.3], 5)   # the line starts above 0.9
    assert steep.intercept > 0.95 and steep.estimate(0.0) == 0.9
    with pytest.raises(ValueError, match="lies in \\[0, 1\\]"):
        fit.estimate(1.5)
    with pytest.raises(ValueError, match="same disagreement"):
        AccuracyFromDisagreement.fit([0.1, 0.1, 0.1], [0.9, 0.8, 0.7], 5)
    with pytest.raises(ValueError, match=">= 3 calls"):
        AccuracyFromDisagreement.fit([0.1, 0.2], [0.9, 0.8], 5)
    with pytest.raises(ValueError, match="must lie in \\[0, 1\\]"):
        AccuracyFromDisagreement.fit([0.1, 0.2, 2.0], [0.9, 0.8, 0.7], 5)


def test_the_two_term_line_recovers_the_novelty_slope_and_needs_the_novelty_to_estimate():
    """Calls whose accuracy falls with disagreement and, apart from it, with the lab's novelty."""
    rng = np.random.default_rng(2)
    d, nov = rng.uniform(0, 0.3, 300), rng.uniform(0.8, 1.6, 300)
    acc = np.clip(1.3 - 1.0 * d - 0.4 * nov + rng.normal(0, 0.01, 300), 0, 1)
    fit = AccuracyFromDisagreement.fit(d, acc, 5, novelties=nov)
    assert fit.uses_novelty and fit.novelty_slope == pytest.approx(-0.4, abs=0.02)
    assert fit.slope == pytest.approx(-1.0, abs=0.05) and fit.residual_std < 0.02
    assert fit.estimate(0.1, novelty=1.5) == pytest.approx(1.3 - 0.1 - 0.6, abs=0.02)
    # the one-term line on the same calls misses the novel labs: the second term is what tells them
    one = AccuracyFromDisagreement.fit(d, acc, 5)
    assert not one.uses_novelty and one.novelty_slope == 0.0 and one.estimate(0.1, novelty=2.0) == one.estimate(0.1)
    assert abs(one.estimate(0.1) - (1.3 - 0.1 - 0.4 * 1.6)) > 2 * abs(fit.estimate(0.1, 1.6) - (1.3 - 0.1 - 0.4 * 1.6))
    with pytest.raises(ValueError, match="lab novelty too"):
        fit.estimate(0.1)
    with pytest.raises(ValueError, match="same novelty"):
        AccuracyFromDisagreement.fit(d, acc, 5, novelties=np.ones(300))
    with pytest.raises(ValueError, match="one per call"):
        AccuracyFromDisagreement.fit(d, acc, 5, novelties=nov[:10])
    with pytest.raises(ValueError, match="one per call"):
        AccuracyFromDisagreement.fit(d, acc, 5, novelties=np.where(nov > 1.5, np.nan, nov))
    out, estimate = calibrate_call(rng.dirichlet([6, 1, 1], size=50), 0.1, fit, novelty=1.5)
    assert estimate == fit.estimate(0.1, 1.5) and out.max(axis=1).mean() == pytest.approx(estimate, abs=1e-6)


def test_a_line_read_from_a_model_file_is_checked():
    fit = AccuracyFromDisagreement(0.97, -1.5, 0.2, 40, 0.03)
    assert AccuracyFromDisagreement.from_dict(fit.to_dict()) == fit
    two = AccuracyFromDisagreement(1.3, -1.0, 0.2, 40, 0.03, -0.4)
    assert AccuracyFromDisagreement.from_dict(two.to_dict()) == two and two.to_dict()["novelty_slope"] == -0.4
    # a record written before the novelty term: the line from disagreement alone
    old = {k: v for k, v in fit.to_dict().items() if k not in ("novelty_slope", "ceiling")}
    assert AccuracyFromDisagreement.from_dict(old) == fit and not AccuracyFromDisagreement.from_dict(old).uses_novelty
    for bad in ({"intercept": 0.9}, {**fit.to_dict(), "slope": float("nan")}, {**fit.to_dict(), "floor": 0.0},
                {**fit.to_dict(), "extra": 1}, {**two.to_dict(), "novelty_slope": float("inf")},
                {**fit.to_dict(), "ceiling": 0.1}, {**fit.to_dict(), "ceiling": 1.5}, "not a record"):
        with pytest.raises(ValueError, match="accuracy-from-disagreement record"):
            AccuracyFromDisagreement.from_dict(bad)


def test_the_call_temperature_reaches_the_target_both_ways_and_keeps_every_class():
    rng = np.random.default_rng(1)
    P = rng.dirichlet([6, 1, 1, 1, 1], size=300)
    now = P.max(axis=1).mean()
    for target in (0.4, 0.6, min(0.95, now + 0.1)):
        T = temperature_for_mean_confidence(P, target)
        out = apply_temperature(P, T)
        assert out.max(axis=1).mean() == pytest.approx(target, abs=1e-6)
        assert (T > 1) == (target < now)
        np.testing.assert_array_equal(out.argmax(axis=1), P.argmax(axis=1))
    assert temperature_for_mean_confidence(P, 0.1) == 20.0          # below chance: the softest bound
    with pytest.raises(ValueError, match="target mean confidence"):
        temperature_for_mean_confidence(P, 0.0)
    fit = AccuracyFromDisagreement(0.97, -1.5, 0.2, 40, 0.03)
    out, estimate = calibrate_call(P, 0.3, fit)
    assert estimate == pytest.approx(0.52) and out.max(axis=1).mean() == pytest.approx(0.52, abs=1e-6)
    small = P[:MIN_CALL_CELLS - 1]
    np.testing.assert_array_equal(calibrate_call(small, 0.3, fit)[0], small)
    assert view_disagreement(P, P) == 0.0 and view_disagreement(P, P[:, ::-1]) > 0.5
    with pytest.raises(ValueError, match="same shape"):
        view_disagreement(P, P[:10])


def _lab(rng, n_per_class=80, texture_lies=False):
    """Three classes told apart by 3 'shape' columns and by 4 'texture' columns; in a lab whose
    texture lies, class a's texture looks like class c's."""
    y = np.repeat(["a", "b", "c"], n_per_class)
    k = np.searchsorted(["a", "b", "c"], y)
    shape = k[:, None] * 2.5 + rng.normal(size=(len(y), 3))
    kt = np.where(k == 0, 2, k) if texture_lies else k
    texture = kt[:, None] * 2.0 + rng.normal(size=(len(y), 4))
    return np.hstack([shape, texture]), y


def test_the_views_part_on_a_lab_whose_texture_lies_and_classify_lowers_its_probabilities():
    from bcfeat.crosslab.folders import ESTIMATE_WARNING_BELOW, call_calibrated, classify_cells
    from bcfeat.crosslab.model import CrossLabConfig, CrossLabModel

    rng = np.random.default_rng(2)
    X, y = _lab(rng)
    clf = CrossLabClassifier(C=1.0, statistics="cbr", gate_columns=(3, 4, 5, 6), gate_threshold=float("inf")).fit(X, y)
    assert CrossLabClassifier(C=1.0).fit(X, y).view_probabilities(X) is None   # one view only
    same, y_same = _lab(rng)
    lying, y_lying = _lab(rng, texture_lies=True)
    full, fallback = clf.view_probabilities(lying)
    np.testing.assert_allclose(full, clf.predict_proba(lying))
    np.testing.assert_allclose(fallback, clf.fallback_.predict_proba(lying))
    d_same, d_lying = view_disagreement(*clf.view_probabilities(same)), view_disagreement(full, fallback)
    assert d_same < 0.1 < 0.2 < d_lying
    acc_same, acc_lying = (clf.predict(same) == y_same).mean(), (clf.predict(lying) == y_lying).mean()
    assert acc_lying < ESTIMATE_WARNING_BELOW < acc_same
    # development calls: the same lab and labs whose texture lies for a share of class a
    ds, accs = [], []
    for share in np.linspace(0, 1, 9):
        Xd, yd = _lab(rng)
        Xl, _ = _lab(rng, texture_lies=True)
        swap = (yd == "a") & (rng.uniform(size=len(yd)) < share)
        Xd[swap] = Xl[swap]
        ds.append(view_disagreement(*clf.view_probabilities(Xd)))
        accs.append((clf.predict(Xd) == yd).mean())
    fit = AccuracyFromDisagreement.fit(ds, accs, 3)
    assert fit.slope < 0 and abs(fit.estimate(d_lying) - acc_lying) < 0.1
    clf.calibration_ = {"uncertain_min_probability": 0.6, "accuracy_from_disagreement": fit.to_dict()}
    # the line travels in the classifier's part of a model file
    stored = CrossLabClassifier.from_payload(clf.to_payload(), X.shape[1])
    assert stored.calibration_["accuracy_from_disagreement"] == fit.to_dict()
    model = CrossLabModel(CrossLabConfig(mask_source="stain"), None, stored)
    # an ordinary lab: no warning, its probabilities brought near its (high) estimated accuracy
    estimate: dict = {}
    out, warning = call_calibrated(model.classifier, same, model.classifier.predict_proba(same), estimate)
    assert warning is None and out.max(axis=1).mean() == pytest.approx(fit.estimate(d_same), abs=1e-3)
    # the call's estimate is handed out for the lab to read, warning or not
    assert estimate == {"estimated_accuracy": pytest.approx(fit.estimate(d_same)), "disagreement": pytest.approx(d_same),
                        "novelty": None, "n_cells": len(same)}
    # the lab whose texture lies: mean probability near its accuracy, a warning naming the estimate
    warnings: list[str] = []
    table = classify_cells(model, pd.Series([f"c{i}.png" for i in range(len(lying))]), lying,
                           np.ones(len(lying), bool), "lab/", warnings)
    raw = clf.predict_proba(lying).max(axis=1).mean()
    assert raw - acc_lying > 0.15                                    # confident while wrong before
    assert abs(table["probability"].mean() - acc_lying) < 0.1
    np.testing.assert_array_equal(table["predicted"], clf.predict(lying))  # classes unchanged
    assert any(f"disagrees on {d_lying:.0%}" in w and "accuracy" in w for w in warnings)
    assert table["uncertain"].mean() > (clf.predict_proba(lying).max(axis=1) < 0.6).mean()
    # a two-term line reads the call's lab novelty from the classifier: a lab farther from the
    # training classes is estimated lower at the same disagreement, and its probabilities follow
    two = AccuracyFromDisagreement(fit.intercept + 0.5, fit.slope, fit.floor, fit.n_calls, fit.residual_std, -0.25)
    model.classifier.calibration_ = {"uncertain_min_probability": 0.6, "accuracy_from_disagreement": two.to_dict()}
    novelty = model.classifier.lab_novelty(lying)
    two_estimate: dict = {}
    out, warning = call_calibrated(model.classifier, lying, model.classifier.predict_proba(lying), two_estimate)
    assert f"sit {novelty:.2f} from the training classes" in warning
    assert two_estimate["novelty"] == pytest.approx(novelty) and two_estimate["n_cells"] == len(lying)
    expected = two.estimate(d_lying, novelty)
    assert expected == pytest.approx(fit.estimate(d_lying) + 0.5 - 0.25 * novelty, abs=1e-9)
    assert out.max(axis=1).mean() == pytest.approx(expected, abs=1e-4)
    assert two.estimate(d_lying, novelty + 0.4) == pytest.approx(expected - 0.1)  # farther out: lower
    # a file without the line (older files, or a lab's own classifier): probabilities as they were
    model.classifier.calibration_ = {"uncertain_min_probability": 0.6}
    P = model.classifier.predict_proba(lying)
    untouched: dict = {}
    assert call_calibrated(model.classifier, lying, P, untouched) == (P, None) and untouched == {}


def test_classify_prints_the_calls_estimated_accuracy_where_the_model_file_gives_one(capsys):
    from bcfeat.crosslab.folders import estimate_summary
    from bcfeat.runner.cli import _print_estimate

    _print_estimate({})
    assert capsys.readouterr().out == ""   # a lab's own classifier, or an older file: nothing to say
    info = {"estimated_accuracy": 0.493, "disagreement": 0.171, "novelty": None, "n_cells": 40}
    _print_estimate(info)
    printed = capsys.readouterr().out
    assert printed.startswith("bcfeat classify: estimated accuracy of this call about 49 %")
    assert "disagree on 17 % of its 40 cells)" in printed and "novelty" not in printed
    assert "lab novelty 1.20" in estimate_summary({**info, "novelty": 1.2})
