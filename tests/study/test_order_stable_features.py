import numpy as np
import pandas as pd
import pytest

from bcfeat.crosslab.cell_features import feature_names
from bcfeat.study import order_stable_features as osf
from bcfeat.study.crosslab_settings import feature_set_columns

CLASSES = np.array(["basophil", "eosinophil", "lymphocyte", "monocyte", "neutrophil"])
SETTING = "logistic C=0.1 no_fine_texture stain cbr"


def _lab(rng, centres, n=60, noise=1.0):
    y = np.repeat(CLASSES, n)
    return np.repeat(centres, n, axis=0) + rng.normal(0, noise, (len(y), centres.shape[1])), y


def _labs(reversed_on: dict[str, list[int]], seed: int = 0):
    """A training lab and labs that keep its class order except on the columns named per lab,
    where the classes sit the other way round."""
    rng = np.random.default_rng(seed)
    d = len(feature_names())
    centres = np.zeros((5, d))
    used = list(feature_set_columns("no_fine_texture"))
    centres[:, used[:12]] = rng.normal(0, 2.0, (5, 12))  # twelve informative features, the rest noise
    source = _lab(rng, centres)
    labs = {}
    for name, cols in reversed_on.items():
        c = centres.copy()
        c[:, cols] = -c[:, cols]
        labs[name] = _lab(rng, c, n=40)
    return source, labs, used


def test_a_feature_reversed_on_one_given_lab_is_dropped_for_the_others_not_for_that_lab():
    source, labs, used = _labs({"a": [], "b": [], "flipped": [0, 1, 2, 3, 4, 5]}, seed=0)
    flipped_cols = used[:6]
    corr = osf.profile_correlations(source, labs)
    assert (corr.loc["flipped", flipped_cols] < -0.9).all() and (corr.loc["a", used[:12]] > 0.9).all()
    kept_without = osf.order_stable_columns(corr, used, ["a", "b"])
    kept_all = osf.order_stable_columns(corr, used, ["a", "b", "flipped"])
    assert set(flipped_cols) <= set(kept_without) and not set(flipped_cols) & set(kept_all)

    table = osf.order_stable_table(source, {**labs, "untouched": labs["flipped"]}, ["a", "b", "flipped"],
                                   SETTING, 0).set_index("lab")
    # the flipped lab is read with the features kept on a and b: its reversal is not seen, nothing gained
    assert table.loc["flipped", "kept_on"] == "a, b" and table.loc["flipped", "gain"] == pytest.approx(0.0, abs=0.02)
    # a lab not among the given ones gets the features kept on all three: the reversed ones are gone
    assert table.loc["untouched", "n_dropped"] >= 6
    assert table.loc["untouched", "gain"] > 0.2 and table.loc["untouched", "balanced_accuracy_all"] > 0.9
    assert set(table.columns) == set(osf.COLUMNS) - {"lab"}
    # a setting that reads every feature: the same features dropped
    every = osf.order_stable_table(source, {**labs, "untouched": labs["flipped"]}, ["a", "b", "flipped"],
                                   "logistic C=0.1 all stain cbr", 0).set_index("lab")
    assert every.loc["untouched", "n_features"] + every.loc["untouched", "n_dropped"] == len(feature_names())
    assert every.loc["untouched", "gain"] > 0.2


def test_a_given_labs_own_labels_never_choose_its_features():
    source, labs, _ = _labs({"a": [], "b": [3], "c": [7]}, seed=1)
    before = osf.order_stable_table(source, labs, ["a", "b", "c"], SETTING, 0).set_index("lab")
    X, y = labs["c"]
    shuffled = {**labs, "c": (X, np.random.default_rng(2).permutation(y))}
    after = osf.order_stable_table(source, shuffled, ["a", "b", "c"], SETTING, 0).set_index("lab")
    assert after.loc["c", "n_features"] == before.loc["c", "n_features"]
    assert after.loc["a", "n_features"] != before.loc["a", "n_features"] or after.loc["b", "n_features"] != before.loc["b", "n_features"]


def test_the_lever_needs_two_given_labs_and_known_labs():
    source, labs, used = _labs({"a": []})
    with pytest.raises(ValueError, match="needs two"):
        osf.order_stable_table(source, labs, ["a"], SETTING, 0)
    corr = osf.profile_correlations(source, labs)
    with pytest.raises(KeyError, match="nowhere"):
        osf.order_stable_columns(corr, used, ["nowhere"])
    with pytest.raises(ValueError, match="at least one lab"):
        osf.order_stable_columns(corr, used, [])
    glue = osf.order_stable_glue(pd.DataFrame(columns=osf.COLUMNS), ["a"])
    assert np.isnan(glue["crosslab_stable_given_mean_gain"])


def test_a_lab_whose_order_cannot_be_read_anywhere_gets_no_score_not_an_error():
    source, labs, _ = _labs({"a": [], "b": []}, seed=3)
    X, y = labs["b"]
    one_class = (X[y == "basophil"], y[y == "basophil"])  # no class profile to read on b
    table = osf.order_stable_table(source, {"a": labs["a"], "b": one_class}, ["a", "b"], SETTING, 0).set_index("lab")
    assert table.loc["a", "n_features"] == 0 and np.isnan(table.loc["a", "balanced_accuracy_all"])
    assert table.loc["b", "n_features"] > 0 and np.isfinite(table.loc["b", "balanced_accuracy_all"])


def test_a_feature_missing_on_some_cells_keeps_its_order_not_dropped_for_the_gaps():
    source, labs, used = _labs({"a": [], "b": []}, seed=4)
    col = used[0]
    X, y = labs["a"]
    X = X.copy()
    X[::7, col] = np.nan   # not measured on every seventh cell (a photograph without red cells, say)
    corr = osf.profile_correlations(source, {"a": (X, y), "b": labs["b"]})
    assert corr.loc["a", col] > 0.9
    assert col in osf.order_stable_columns(corr, used, ["a", "b"])
