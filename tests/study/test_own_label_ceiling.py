import numpy as np
import pytest

from bcfeat.crosslab.cell_features import feature_names
from bcfeat.study import own_label_ceiling as olc
from bcfeat.study.crosslab_settings import feature_set_columns, parse_setting

SETTING = "logistic C=1 no_texture stain cbr"
CLASSES = np.array(["basophil", "eosinophil", "lymphocyte", "monocyte", "neutrophil"])
READ = feature_set_columns(parse_setting(SETTING)["groups"])  # columns the setting's classifier reads


def _lab(rng, order, n=40, signal=4.0, columns=READ[:6]):
    """``n`` cells per class; class ``order[i]`` sits at ``signal`` on ``columns[i]`` (noise elsewhere)."""
    y = np.repeat(CLASSES, n)
    X = rng.normal(0, 1, (len(y), len(feature_names())))
    for i, c in enumerate(order):
        X[y == c, columns[i]] += signal
    return X, y


def test_folds_cover_every_cell_once_and_hold_a_series_out_whole():
    y = np.array(list("aabbccddee") * 3)
    series = np.repeat(np.arange(6), 5)
    tested = np.concatenate([test for _, test in olc.lab_folds(y, series)])
    assert sorted(tested.tolist()) == list(range(len(y)))
    for train, test in olc.lab_folds(y, series):
        assert len(np.unique(series[test])) == 1 and series[test][0] not in series[train]
    random_folds = list(olc.lab_folds(y, n_folds=3))
    assert len(random_folds) == 3
    assert sorted(np.concatenate([t for _, t in random_folds]).tolist()) == list(range(len(y)))
    assert all(len(np.unique(y[test])) == 5 for _, test in random_folds)  # stratified


def test_a_lab_that_orders_the_classes_differently_is_learnt_from_its_own_labels_only():
    rng = np.random.default_rng(0)
    source = _lab(rng, CLASSES)
    lab = _lab(rng, CLASSES[[1, 2, 3, 4, 0]])  # each class where another class sits in the training lab
    scores = olc.out_of_fold_scores(source, *lab, SETTING)
    assert scores["source_labels"] < 0.2  # it calls every cell the class whose place it took
    assert scores["own_labels"] > 0.9
    # the lab's labels pull the training lab's the other way, but cannot outvote them all
    assert scores["source_labels"] + 0.15 < scores["source_and_own_labels"] < scores["own_labels"]
    same = olc.out_of_fold_scores(source, *_lab(rng, CLASSES), SETTING)
    assert same["source_labels"] > 0.9


def test_series_that_follow_the_classes_lift_random_folds_and_not_a_held_out_series():
    rng = np.random.default_rng(1)
    source = _lab(rng, CLASSES)
    X, y = _lab(rng, CLASSES, signal=0.0)  # the cells say nothing of their class ...
    series = np.empty(len(y), dtype=object)
    for i, c in enumerate(CLASSES):  # ... but each class was photographed in two series of its own
        rows = np.flatnonzero(y == c)
        series[rows[: len(rows) // 2]], series[rows[len(rows) // 2:]] = f"{c}-1", f"{c}-2"
        X[rows, READ[10 + i]] += 5.0  # the class's sessions share a stain that no other class has
    table = olc.own_label_table(source, {"lab": (X, y)}, SETTING, {"lab": series}).set_index("folds")
    assert table.loc["5 random folds", "own_labels"] > 0.9
    held_out = table.loc["one photograph series held out"]
    assert held_out["n_folds"] == 10 and held_out["n_cells"] == len(y)
    assert held_out["own_labels"] > 0.9  # the other series of the class share its stain here ...
    # ... but a stain of each series alone (nothing shared within a class) is not learnt across series
    X2, _ = _lab(rng, CLASSES, signal=0.0)
    for k, name in enumerate(sorted(set(series))):
        X2[series == name, READ[10 + k]] += 5.0
    table2 = olc.own_label_table(source, {"lab": (X2, y)}, SETTING, {"lab": series}).set_index("folds")
    assert table2.loc["5 random folds", "own_labels"] > 0.8
    assert table2.loc["one photograph series held out", "own_labels"] < 0.4


def test_glue_display_and_small_labs():
    rng = np.random.default_rng(2)
    source = _lab(rng, CLASSES)
    X, y = _lab(rng, CLASSES, n=20)
    spread = np.concatenate([np.flatnonzero(y == c)[:3] for c in CLASSES])  # 15 cells, 3 of each class
    labs = {"a": (X, y), "tiny": (X[:6], y[:6]), "thin": (X[spread], y[spread])}
    table = olc.own_label_table(source, labs, SETTING)
    assert table["lab"].tolist() == ["a"]  # 6 cells cannot fill 5 folds twice; no class fills 5 folds
    glue = olc.own_label_glue(table)
    assert set(glue) == {f"crosslab_ceiling_a_{name}" for name in olc.READINGS}
    shown = olc.own_label_display(table)
    assert shown.loc["a", "the lab's own labels alone"] == pytest.approx(table["own_labels"].iloc[0])
    with pytest.raises(ValueError, match="one label"):
        olc.out_of_fold_scores(source, X, y[:-1], SETTING)


def test_by_group_tells_a_group_that_carries_across_series_from_one_that_follows_them():
    from bcfeat.crosslab.cell_features import feature_groups

    rng = np.random.default_rng(3)
    size = feature_groups()["size"]
    colour = [c for c in feature_groups()["colour"] if c in set(READ)]
    X, y = _lab(rng, CLASSES, signal=0.0)
    series = np.empty(len(y), dtype=object)
    for i, c in enumerate(CLASSES):
        rows = np.flatnonzero(y == c)
        X[rows, size[0]] += 5.0 * i  # the cell's size says its class in every series
        for k, part in enumerate(np.array_split(rows, 2)):
            series[part] = f"{c}-{k}"
    for k, name in enumerate(sorted(set(series))):
        X[series == name, colour[k]] += 5.0  # each series' own stain, and with it its class
    table = olc.own_label_by_group(X, y, series, SETTING).set_index("group")
    assert table.loc["size", "series_held_out"] > 0.8
    assert table.loc["colour", "random_folds"] > 0.8 > 0.4 > table.loc["colour", "series_held_out"]
    assert table.loc["all it reads", "n_features"] == len(READ)
    assert table.loc["all but colour", "n_features"] == len(READ) - len(colour)
    shown = olc.own_label_by_group_display(table.reset_index())
    assert list(shown.columns) == ["features", "random folds", "one series held out"]
    assert shown.loc["colour", "one series held out"] == table.loc["colour", "series_held_out"]
    with pytest.raises(ValueError, match="series per cell"):
        olc.own_label_by_group(X, y, series[:-1], SETTING)
