import numpy as np
import pytest

from bcfeat.study import class_profiles as cp

CLASSES = np.array(["basophil", "eosinophil", "lymphocyte", "monocyte", "neutrophil"])


def _lab(rng, centres, noise, n=60):
    """``n`` cells per class around per-class centres ``(5, d)``."""
    y = np.repeat(CLASSES, n)
    X = np.repeat(centres, n, axis=0) + rng.normal(0, noise, (len(y), centres.shape[1]))
    return X, y


def test_a_lab_that_scales_and_shifts_every_feature_keeps_the_training_labs_profiles():
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 3, (5, 4))
    source = _lab(rng, centres, 1.0)
    X, y = _lab(rng, centres, 1.0)
    labs = {"scaled": (X * np.array([2.0, 0.5, 3.0, 1.0]) + 7.0, y)}
    table = cp.profile_agreement(source, labs, {"all": [0, 1, 2, 3]})
    row = table.iloc[0]
    assert row["n_features"] == 4 and row["reversed_share"] == 0
    assert row["median_correlation"] > 0.98 and row["separation"] == pytest.approx(1.0, abs=0.15)


def test_reversed_and_compressed_classes_are_told_apart_per_group():
    rng = np.random.default_rng(1)
    centres = rng.normal(0, 3, (5, 4))
    source = _lab(rng, centres, 1.0)
    flipped = centres.copy()
    flipped[:, :2] = -flipped[:, :2]  # group "colour": the classes in the opposite order
    X, y = _lab(rng, flipped, 1.0)
    Xc, yc = _lab(rng, centres, 3.0)  # the same order, three times the spread within each class
    groups = {"colour": [0, 1], "shape": [2, 3]}
    table = cp.profile_agreement(source, {"flipped": (X, y), "crowded": (Xc, yc)}, groups).set_index(["lab", "group"])
    assert table.loc[("flipped", "colour"), "reversed_share"] == 1.0
    assert table.loc[("flipped", "colour"), "median_correlation"] < -0.95
    assert table.loc[("flipped", "shape"), "median_correlation"] > 0.95
    assert table.loc[("crowded", "shape"), "median_correlation"] > 0.9
    assert table.loc[("crowded", "shape"), "separation"] < 0.5


def test_features_not_read_or_without_a_profile_are_skipped():
    rng = np.random.default_rng(2)
    centres = rng.normal(0, 3, (5, 3))
    source = _lab(rng, centres, 1.0)
    X, y = _lab(rng, centres, 1.0)
    X[:, 1] = np.nan  # a measure this lab left out
    table = cp.profile_agreement(source, {"lab": (X, y)}, {"a": [0, 1], "b": [2]}, columns=[0, 1])
    assert list(table["group"]) == ["a"] and table["n_features"].tolist() == [1]
    # a class the lab lacks: no finite profile anywhere, so no rows
    keep = y != "basophil"
    assert cp.profile_agreement(source, {"lab": (X[keep], y[keep])}, {"a": [0]}).empty
    glue = cp.profile_agreement_glue(table)
    assert glue["crosslab_profile_lab_a_n_features"] == 1
    shown = cp.profile_agreement_display(table)
    assert shown.loc[("a", "median correlation"), "lab"] == table["median_correlation"].iloc[0]
    assert list(shown.index.get_level_values("measure")) == ["median correlation", "share reversed", "separation"]
