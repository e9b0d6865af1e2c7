"""Scoring a lab under resampled class mixes (bcfeat.crosslab.mixes), on synthetic labels."""

from __future__ import annotations

import warnings
from collections import Counter

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

from bcfeat.crosslab import mixes as mx
from bcfeat.crosslab.mixes import (CALL_SIZES, CLASSES, MIXES, call_scores, differential,
                                   differential_error, draw_calls, mix_cost, mix_counts, score_under_mixes,
                                   summarize_mixes)

# A site of 400 cells: neutrophil 50 %, lymphocyte 25 %, monocyte 12 %, eosinophil 8 %, basophil 5 %.
SITE_COUNTS = {"neutrophil": 200, "lymphocyte": 100, "monocyte": 48, "eosinophil": 32, "basophil": 20}


def _site(counts=SITE_COUNTS, seed=0):
    y = np.concatenate([[c] * k for c, k in counts.items()])
    return np.random.default_rng(seed).permutation(y)


def _rare_blind(y):
    """A predictor that depends on the call's mix: every cell of a class under 10 % of the call
    is read as a neutrophil; the rest are read correctly."""
    def predict(idx):
        truth = y[idx]
        shares = Counter(truth)
        return np.array([c if shares[c] / len(truth) >= 0.10 else "neutrophil" for c in truth])
    return predict


# --- constants ------------------------------------------------------------------------------------

def test_constants():
    assert sorted(CLASSES) == list(CLASSES) and CALL_SIZES == (20, 100, 0)
    assert MIXES["own"] is None
    assert set(MIXES) == {"own", "balanced", "typical", "neutrophil_heavy", "lymphocyte_heavy"}
    for name, shares in MIXES.items():
        if shares is not None:
            assert set(shares) == set(CLASSES), name
            assert sum(shares.values()) == pytest.approx(1.0), name
    assert MIXES["typical"]["neutrophil"] == 0.55 and MIXES["lymphocyte_heavy"]["lymphocyte"] == 0.62
    assert MIXES["neutrophil_heavy"]["neutrophil"] == 0.78 and MIXES["balanced"]["basophil"] == 0.2
    assert set(mx.__all__) >= {"mix_counts", "draw_calls", "differential", "differential_error", "call_scores",
                               "score_under_mixes", "summarize_mixes", "mix_cost", "MIXES", "CALL_SIZES"}


# --- mix_counts -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["balanced", "typical", "neutrophil_heavy", "lymphocyte_heavy"])
@pytest.mark.parametrize("n", [0, 1, 3, 7, 20, 99, 100, 401, 1000])
def test_mix_counts_sum_exactly_and_follow_shares(name, n):
    counts = mix_counts(MIXES[name], n, CLASSES)
    assert list(counts) == list(CLASSES)
    assert all(isinstance(k, int) and k >= 0 for k in counts.values())
    assert sum(counts.values()) == n
    for c in CLASSES:
        assert abs(counts[c] - n * MIXES[name][c]) < 1, (c, counts)


def test_mix_counts_known_values():
    assert mix_counts(MIXES["typical"], 100, CLASSES) == {
        "basophil": 2, "eosinophil": 5, "lymphocyte": 30, "monocyte": 8, "neutrophil": 55}
    # 20 cells: quotas 11, 6, 1.6, 1.0, 0.4 -> floors sum to 19, the extra cell goes to monocyte.
    assert mix_counts(MIXES["typical"], 20, CLASSES) == {
        "basophil": 0, "eosinophil": 1, "lymphocyte": 6, "monocyte": 2, "neutrophil": 11}
    assert mix_counts(MIXES["balanced"], 100, CLASSES) == {c: 20 for c in CLASSES}
    assert mix_counts(MIXES["balanced"], 7, CLASSES) == {  # ties go by the order of `classes`
        "basophil": 2, "eosinophil": 2, "lymphocyte": 1, "monocyte": 1, "neutrophil": 1}
    assert mix_counts({"a": 1, "b": 2}, 3, ["a", "b"]) == {"a": 1, "b": 2}   # weights are normalised


def test_mix_counts_renormalises_absent_classes():
    no_baso = [c for c in CLASSES if c != "basophil"]
    # Without basophil the typical shares are divided by 0.98: 98 cells give the same counts as before.
    assert mix_counts(MIXES["typical"], 98, no_baso) == {
        "eosinophil": 5, "lymphocyte": 30, "monocyte": 8, "neutrophil": 55}
    assert mix_counts({"neutrophil": 1.0}, 5, ["lymphocyte", "neutrophil"]) == {"lymphocyte": 0, "neutrophil": 5}
    with pytest.raises(ValueError):
        mix_counts({"neutrophil": 1.0}, 5, ["lymphocyte"])
    with pytest.raises(ValueError):
        mix_counts(MIXES["typical"], -1, CLASSES)
    with pytest.raises(ValueError):
        mix_counts({"neutrophil": -0.1, "lymphocyte": 1.1}, 5, CLASSES)


# --- draw_calls -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["balanced", "typical", "neutrophil_heavy", "lymphocyte_heavy"])
def test_draws_follow_the_mix_exactly(name):
    y = _site()
    want = mix_counts(MIXES[name], 100, CLASSES)
    calls = draw_calls(y, name, 100, 5, np.random.default_rng(1))
    assert len(calls) == 5
    for idx in calls:
        assert idx.dtype.kind == "i" and len(idx) == 100
        got = Counter(y[idx])
        assert {c: got.get(c, 0) for c in CLASSES} == want
        for c in CLASSES:   # every class here has enough cells: no cell twice
            cells = idx[y[idx] == c]
            assert len(np.unique(cells)) == len(cells), c
        labels = y[idx]                 # shuffled: not one block of cells per class
        assert (labels[1:] != labels[:-1]).sum() > len(CLASSES) - 1
    assert not all(np.array_equal(np.sort(calls[0]), np.sort(c)) for c in calls[1:])   # calls differ


def test_draws_with_replacement_only_where_needed():
    y = _site()
    # 400 cells to the balanced mix: 80 per class; neutrophil and lymphocyte have enough, the rest repeat.
    (idx,) = draw_calls(y, "balanced", 0, 1, 3)
    assert len(idx) == len(y)
    for c in CLASSES:
        cells = idx[y[idx] == c]
        assert len(cells) == 80
        unique = len(np.unique(cells))
        if SITE_COUNTS[c] >= 80:
            assert unique == 80, c
        else:
            assert unique < 80 and unique <= SITE_COUNTS[c], c


def test_single_basophil_still_appears_in_typical_calls():
    counts = dict(SITE_COUNTS, basophil=1)    # like Zheng-18 set 1
    y = _site(counts)
    (baso,) = np.flatnonzero(y == "basophil")
    for idx in draw_calls(y, "typical", 100, 4, 0):
        assert Counter(y[idx])["basophil"] == 2
        assert idx[y[idx] == "basophil"].tolist() == [baso, baso]
        for c in ("neutrophil", "lymphocyte", "monocyte", "eosinophil"):
            cells = idx[y[idx] == c]
            assert len(np.unique(cells)) == len(cells), c


def test_mix_shares_of_classes_the_site_lacks_are_renormalised_away():
    y = _site({k: v for k, v in SITE_COUNTS.items() if k != "basophil"})
    for idx in draw_calls(y, "typical", 98, 2, 0):
        assert dict(Counter(y[idx])) == {"eosinophil": 5, "lymphocyte": 30, "monocyte": 8, "neutrophil": 55}


def test_own_mix_draws():
    y = _site()
    for mix in ("own", None):
        calls = draw_calls(y, mix, 100, 3, 0)
        for idx in calls:
            assert len(idx) == 100 and len(np.unique(idx)) == 100   # uniform, without replacement
    (everything,) = draw_calls(y, "own", 0, 1, 0)
    assert sorted(everything.tolist()) == list(range(len(y)))
    assert not np.array_equal(everything, np.arange(len(y)))     # permuted
    small = np.array(["neutrophil"] * 5 + ["lymphocyte"] * 5)
    (idx,) = draw_calls(small, "own", 20, 1, 0)                  # bigger than the site: with replacement
    assert len(idx) == 20 and len(np.unique(idx)) <= 10
    (idx,) = draw_calls(small, "own", 10, 1, 0)
    assert sorted(idx.tolist()) == list(range(10))


def test_draws_follow_an_explicit_mix_and_the_seed():
    y = _site()
    idx = draw_calls(y, {"neutrophil": 0.5, "lymphocyte": 0.5}, 10, 1, 0)[0]
    assert dict(Counter(y[idx])) == {"neutrophil": 5, "lymphocyte": 5}
    a = draw_calls(y, "typical", 20, 3, 7)
    b = draw_calls(y, "typical", 20, 3, np.random.default_rng(7))
    c = draw_calls(y, "typical", 20, 3, 8)
    assert all(np.array_equal(x, z) for x, z in zip(a, b))
    assert not all(np.array_equal(x, z) for x, z in zip(a, c))
    with pytest.raises(KeyError):
        draw_calls(y, "no_such_mix", 20, 1, 0)
    with pytest.raises(ValueError):
        draw_calls(y, "typical", -1, 1, 0)


# --- differential and scores ----------------------------------------------------------------------

def test_differential():
    labels = ["neutrophil"] * 5 + ["lymphocyte"] * 3 + ["monocyte", "eosinophil"]
    order = ("neutrophil", "lymphocyte", "monocyte", "eosinophil", "basophil")
    d = differential(labels, order)
    assert list(d.index) == list(order)
    assert d.tolist() == [0.5, 0.3, 0.1, 0.1, 0.0]
    assert differential(labels, CLASSES)["neutrophil"] == 0.5


def test_differential_error_perfect_and_always_neutrophil():
    y = np.array(["neutrophil"] * 5 + ["lymphocyte"] * 3 + ["monocyte", "eosinophil"])
    perfect = differential_error(y, y, CLASSES)
    assert perfect["diff_mae_pp"] == 0 and perfect["diff_worst_pp"] == 0
    assert all(perfect[f"diff_{c}_pp"] == 0 for c in CLASSES)

    e = differential_error(y, np.array(["neutrophil"] * len(y)), CLASSES)
    # By hand: neutrophil reads 100 % (true 50 %), lymphocyte 0 (30), monocyte 0 (10), eosinophil 0 (10), basophil 0 (0).
    assert e["diff_neutrophil_pp"] == pytest.approx(50.0)
    assert e["diff_lymphocyte_pp"] == pytest.approx(-30.0)
    assert e["diff_monocyte_pp"] == pytest.approx(-10.0)
    assert e["diff_eosinophil_pp"] == pytest.approx(-10.0)
    assert e["diff_basophil_pp"] == 0
    assert e["diff_mae_pp"] == pytest.approx(20.0)          # (50 + 30 + 10 + 10 + 0) / 5
    assert e["diff_worst_pp"] == pytest.approx(50.0) and e["diff_worst_class"] == "neutrophil"
    with pytest.raises(ValueError):
        differential_error(y, y[:-1], CLASSES)


def test_call_scores_match_sklearn():
    rng = np.random.default_rng(0)
    y = _site()[:150]
    pred = np.where(rng.random(len(y)) < 0.7, y, rng.choice(list(CLASSES), len(y)))
    s = call_scores(y, pred, CLASSES)
    assert s["n_cells"] == 150
    assert s["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert s["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert s["macro_f1"] == pytest.approx(f1_score(y, pred, labels=list(CLASSES), average="macro", zero_division=0))
    for c in CLASSES:
        assert s[f"recall_{c}"] == pytest.approx(np.mean(pred[y == c] == c))
        assert s[f"precision_{c}"] == pytest.approx(np.mean(y[pred == c] == c))
    assert s["diff_mae_pp"] == differential_error(y, pred, CLASSES)["diff_mae_pp"]


def test_call_scores_over_the_classes_present():
    # No basophil in truth, one predicted: balanced accuracy and macro-F1 ignore basophil (as sklearn's).
    y = np.array(["neutrophil"] * 4 + ["lymphocyte"] * 4)
    pred = np.array(["neutrophil"] * 3 + ["basophil"] + ["lymphocyte"] * 2 + ["neutrophil"] * 2)
    s = call_scores(y, pred, CLASSES)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert s["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred)) == pytest.approx(0.625)
    present = ["lymphocyte", "neutrophil"]
    assert s["macro_f1"] == pytest.approx(f1_score(y, pred, labels=present, average="macro", zero_division=0))
    assert s["precision_basophil"] == 0.0 and np.isnan(s["recall_basophil"])
    assert np.isnan(s["precision_monocyte"]) and np.isnan(s["recall_monocyte"])
    assert s["diff_basophil_pp"] == pytest.approx(12.5)

    always = call_scores(y, np.array(["neutrophil"] * 8), CLASSES)
    assert always["balanced_accuracy"] == 0.5 and always["accuracy"] == 0.5
    assert always["precision_neutrophil"] == 0.5 and np.isnan(always["precision_lymphocyte"])
    assert always["macro_f1"] == pytest.approx((2 * 0.5 * 1 / 1.5 + 0) / 2)


# --- score_under_mixes, summarize_mixes, mix_cost -------------------------------------------------

def test_score_under_mixes_rows_and_perfect_predictor():
    y = _site()
    seen = []

    def perfect(idx):
        seen.append(np.array(idx))
        return y[idx]

    calls = score_under_mixes(y, perfect, n_calls=4, seed=0)
    # 5 mixes x 3 call sizes x 4 calls, but the own mix over all cells is one call.
    assert len(calls) == 5 * 3 * 4 - 3 == len(seen)
    assert list(calls.columns[:3]) == ["mix", "call_size", "call"]
    assert {"balanced_accuracy", "macro_f1", "accuracy", "n_cells", "diff_mae_pp", "diff_worst_pp",
            "diff_worst_class", "precision_basophil", "recall_neutrophil", "diff_neutrophil_pp"} <= set(calls.columns)
    per = calls.groupby(["mix", "call_size"], sort=False).size()
    assert per[("own", 0)] == 1 and per[("typical", 0)] == 4 and per[("own", 20)] == 4
    assert calls["call"].max() == 3
    assert (calls["balanced_accuracy"] == 1).all() and (calls["diff_mae_pp"] == 0).all()
    n = calls.set_index(["mix", "call_size", "call"])["n_cells"]
    assert n[("own", 20, 0)] == 20 and n[("typical", 100, 2)] == 100 and n[("own", 0, 0)] == len(y)
    assert n[("balanced", 0, 0)] == len(y)
    assert all(len(s) == k for s, k in zip(seen, calls["n_cells"]))        # one predict_call per call


def test_score_under_mixes_always_neutrophil():
    y = _site()
    calls = score_under_mixes(y, lambda idx: np.array(["neutrophil"] * len(idx)),
                              mixes=["typical", "own"], call_sizes=(100, 0), n_calls=2)
    assert calls["mix"].unique().tolist() == ["typical", "own"]
    # Every class present in a call of 100 typical cells: balanced accuracy 1/5, neutrophil read 45 pp high.
    typ = calls[(calls["mix"] == "typical")]
    assert np.allclose(typ["balanced_accuracy"], 0.2)
    assert np.allclose(typ["diff_neutrophil_pp"], 45.0) and np.allclose(typ["diff_lymphocyte_pp"], -30.0)
    assert (typ["diff_worst_class"] == "neutrophil").all()
    own_all = calls[(calls["mix"] == "own") & (calls["call_size"] == 0)].iloc[0]
    assert own_all["diff_neutrophil_pp"] == pytest.approx(50.0) and own_all["diff_mae_pp"] == pytest.approx(20.0)


def test_score_under_mixes_is_deterministic_under_seed():
    y = _site()
    predict = _rare_blind(y)
    a = score_under_mixes(y, predict, call_sizes=(20, 100), n_calls=3, seed=5)
    b = score_under_mixes(y, predict, call_sizes=(20, 100), n_calls=3, seed=5)
    c = score_under_mixes(y, predict, call_sizes=(20, 100), n_calls=3, seed=6)
    pd.testing.assert_frame_equal(a, b)
    assert not a["balanced_accuracy"].equals(c["balanced_accuracy"])
    # A mix's calls do not depend on which other mixes are scored with it.
    only = score_under_mixes(y, predict, mixes={"own": None}, call_sizes=(20, 100), n_calls=3, seed=5)
    pd.testing.assert_frame_equal(only, a[a["mix"] == "own"].reset_index(drop=True))


def test_score_under_mixes_checks_the_predictions():
    y = _site()
    with pytest.raises(ValueError):
        score_under_mixes(y, lambda idx: y[idx][:-1], mixes=["own"], call_sizes=(20,), n_calls=1)


def test_a_mix_dependent_predictor_summary_and_cost():
    y = _site()
    calls = score_under_mixes(y, _rare_blind(y), call_sizes=(100, 0), n_calls=3, seed=0)
    summary = summarize_mixes(calls)
    assert list(summary.columns[:3]) == ["mix", "call_size", "n_calls"]
    assert "worst_balanced_accuracy" in summary.columns and "call" not in summary.columns
    assert "diff_worst_class" not in summary.columns and "diff_mae_pp" in summary.columns
    assert len(summary) == 10 and set(summary["call_size"]) == {100, 0}
    s = summary.set_index(["mix", "call_size"])
    assert s.loc[("own", 0), "n_calls"] == 1 and s.loc[("typical", 100), "n_calls"] == 3
    # Own mix, all cells: eosinophil (8 %) and basophil (5 %) are under 10 % -> 3 of 5 classes read right.
    assert s.loc[("own", 0), "balanced_accuracy"] == pytest.approx(0.6)
    assert s.loc[("balanced", 0), "balanced_accuracy"] == pytest.approx(1.0)
    for mix in ("typical", "neutrophil_heavy", "lymphocyte_heavy"):
        for size in (100, 0):
            assert s.loc[(mix, size), "balanced_accuracy"] == pytest.approx(0.4), (mix, size)
    assert s.loc[("typical", 100), "diff_neutrophil_pp"] == pytest.approx(15.0)   # 8 + 5 + 2 cells of 100

    cost = mix_cost(summary)
    assert list(cost.columns) == ["mix", "call_size", "balanced_accuracy", "balanced_accuracy_vs_own"]
    c = cost.set_index(["mix", "call_size"])["balanced_accuracy_vs_own"]
    assert c[("own", 0)] == 0 and c[("own", 100)] == 0
    assert c[("balanced", 0)] == pytest.approx(0.4) and c[("typical", 0)] == pytest.approx(-0.2)
    own100 = s.loc[("own", 100), "balanced_accuracy"]
    assert c[("typical", 100)] == pytest.approx(0.4 - own100)        # against own at the same call size
    d = mix_cost(summary, metric="diff_mae_pp")
    assert "diff_mae_pp_vs_own" in d.columns


def test_summarize_mixes_means_worst_call_and_extra_groups():
    calls = pd.DataFrame({
        "site": ["A", "A", "A", "B", "B", "B"],
        "mix": ["own", "own", "typical", "own", "own", "typical"],
        "call_size": [20, 20, 20, 20, 20, 20], "call": [0, 1, 0, 0, 1, 0],
        "balanced_accuracy": [0.5, 0.7, 0.9, 0.2, 0.4, 0.6], "precision_basophil": [np.nan, 1.0, 0.0, 1, 1, 1],
        "diff_worst_class": ["a", "b", "c", "d", "e", "f"]})
    summary = summarize_mixes(calls, group=("site", "mix", "call_size"))
    assert list(summary.columns) == ["site", "mix", "call_size", "n_calls", "balanced_accuracy",
                                     "precision_basophil", "worst_balanced_accuracy", "balanced_accuracy_se"]
    assert summary["site"].tolist() == ["A", "A", "B", "B"]
    a_own = summary.iloc[0]
    assert a_own["n_calls"] == 2 and a_own["balanced_accuracy"] == pytest.approx(0.6)
    # the standard error of the mean over the calls: sd (ddof 1) / sqrt(n); one call has none
    assert a_own["balanced_accuracy_se"] == pytest.approx(np.std([0.5, 0.7], ddof=1) / np.sqrt(2))
    assert np.isnan(summary.iloc[1]["balanced_accuracy_se"])
    assert a_own["worst_balanced_accuracy"] == 0.5 and a_own["precision_basophil"] == 1.0   # NaN skipped
    with pytest.raises(KeyError):
        summarize_mixes(calls, group=("setting", "mix"))

    cost = mix_cost(summary)      # the site column is found and kept: own matched per site
    assert list(cost.columns[:3]) == ["mix", "call_size", "site"]
    assert cost["balanced_accuracy_vs_own"].round(6).tolist() == [0.0, 0.3, 0.0, 0.3]
    explicit = mix_cost(summary, group=["site", "mix", "call_size"])
    assert explicit["balanced_accuracy_vs_own"].round(6).tolist() == [0.0, 0.3, 0.0, 0.3]
    with pytest.raises(ValueError):           # without the site, two own rows per call size
        mix_cost(summary, group=["mix", "call_size"])
    with pytest.raises(ValueError):
        mix_cost(summary[summary["mix"] != "own"])
