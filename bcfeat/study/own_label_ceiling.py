"""How much of a lab can the features learn from that lab's own labels? A ceiling for the cross-lab scores.

A cross-lab classifier can do no better on a lab than what its features let any classifier do there.
Per lab, the same setting (feature columns, C, statistics) is scored three ways, every cell of the
lab predicted once, out of fold, with the lab's whole folder read as one call (its own statistics):

- ``source_labels``: trained on the training lab's cells alone (the cross-lab method, without the
  texture gate or temperature of the deployed model);
- ``source_and_own_labels``: the training lab's cells plus the lab's labelled cells of the other
  folds, read in the lab's statistics (what ``bcfeat train-classifier --corrections`` does with a
  reviewer's corrections);
- ``own_labels``: trained on the lab's labelled cells of the other folds alone.

The folds are the lab's photograph series where they are known (one series held out at a time: a
new series is a new stain and camera session, as a new lab is), else random stratified folds.
Random folds over a lab whose series follow the classes let a classifier recognise the series
instead of the cell, so for such a lab both are reported. It reads the labs' labels, so it
explains the scores and chooses nothing.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import numpy as np
import pandas as pd
from sklearn.metrics import balanced_accuracy_score
from sklearn.model_selection import LeaveOneGroupOut, StratifiedKFold

from bcfeat.crosslab.adaptation import LabelledCall
from bcfeat.study.crosslab_settings import classifier_for

READINGS = ("source_labels", "source_and_own_labels", "own_labels")
COLUMNS = ["lab", "folds", "n_folds", "n_cells", *READINGS]
N_RANDOM_FOLDS = 5


def lab_folds(y: np.ndarray, series: np.ndarray | None = None, n_folds: int = N_RANDOM_FOLDS,
              seed: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(train_rows, test_rows)`` pairs that cover every cell once: one photograph series held
    out at a time when ``series`` is given, else ``n_folds`` random folds stratified by class (a
    class with fewer cells than folds is missing from some training folds, as it would be from a
    lab's few labelled cells).

    >>> [t.tolist() for _, t in lab_folds(np.array(["a", "b", "a"]), np.array(["s", "s", "t"]))]
    [[0, 1], [2]]
    """
    y = np.asarray(y)
    if series is not None:
        yield from LeaveOneGroupOut().split(y, y, np.asarray(series))
        return
    with warnings.catch_warnings():  # "the least populated class has only k members": expected, see above
        warnings.simplefilter("ignore", UserWarning)
        yield from StratifiedKFold(n_folds, shuffle=True, random_state=seed).split(np.zeros((len(y), 1)), y)


def out_of_fold_scores(source: tuple[np.ndarray, np.ndarray], X: np.ndarray, y: np.ndarray, setting: str,
                       series: np.ndarray | None = None, n_folds: int = N_RANDOM_FOLDS,
                       seed: int = 0) -> dict[str, float]:
    """Balanced accuracy of :data:`READINGS` on one lab's cells ``(X, y)``, each cell predicted by
    classifiers that did not see its label (folds: :func:`lab_folds`); ``source`` is the training
    lab's ``(X, y)``."""
    X, y = np.asarray(X, dtype=np.float64), np.asarray(y).astype(str)
    Xs, ys = np.asarray(source[0], dtype=np.float64), np.asarray(source[1]).astype(str)
    if len(X) != len(y) or (series is not None and len(series) != len(y)):
        raise ValueError(f"one label (and series) per cell: {len(X)} cells, {len(y)} labels")
    predicted = {name: np.empty(len(y), dtype=object) for name in READINGS}
    predicted["source_labels"][:] = classifier_for(setting, seed).fit(Xs, ys).predict(X)
    for train, test in lab_folds(y, series, n_folds, seed):
        both = classifier_for(setting, seed).fit(Xs, ys, [LabelledCall(X, train, y[train])])
        predicted["source_and_own_labels"][test] = both.predict(X)[test]
        predicted["own_labels"][test] = _own_fold(classifier_for(setting, seed), X, y, train)[test]
    return {name: _balanced_accuracy(y, pred) for name, pred in predicted.items()}


def _own_fold(clf, X: np.ndarray, y: np.ndarray, train: np.ndarray) -> np.ndarray:
    """Every cell's class by ``clf`` fitted on the lab's ``train`` rows, the lab read as one call
    (a single class in ``train``: that class, there being nothing to tell apart)."""
    if len(np.unique(y[train])) < 2:
        return np.full(len(y), y[train][0] if len(train) else "", dtype=object)
    return clf.fit(X[train], y[train]).predict(X)


def _balanced_accuracy(y: np.ndarray, predicted: np.ndarray) -> float:
    with warnings.catch_warnings():  # a class never predicted is a recall of 0, as it should be
        warnings.simplefilter("ignore", UserWarning)
        return float(balanced_accuracy_score(y, predicted.astype(str)))


GROUP_COLUMNS = ["group", "n_features", "random_folds", "series_held_out"]
COMBINED_GROUPS = ("all it reads", "all but colour")  # the rows after the single groups


def own_label_by_group(X: np.ndarray, y: np.ndarray, series: np.ndarray, setting: str,
                       n_folds: int = N_RANDOM_FOLDS, seed: int = 0) -> pd.DataFrame:
    """Which feature groups carry from one photograph series of a lab to the next: per group that
    ``setting`` reads (:func:`bcfeat.crosslab.cell_features.feature_groups`), then all of them and
    all but colour, the setting's classifier on those columns alone, trained on the lab's own
    labels, balanced accuracy out of fold in random folds and with one series held out at a time
    (:data:`GROUP_COLUMNS`)."""
    from bcfeat.crosslab.cell_features import feature_groups
    from bcfeat.study.crosslab_settings import setting_columns

    X, y, series = np.asarray(X, dtype=np.float64), np.asarray(y).astype(str), np.asarray(series)
    if not len(X) == len(y) == len(series):
        raise ValueError(f"one label and series per cell: {len(X)} cells, {len(y)} labels, {len(series)} series")
    read = setting_columns(setting)
    read = list(range(X.shape[1])) if read is None else sorted(int(c) for c in read)
    groups = {g: [c for c in cols if c in read] for g, cols in feature_groups().items()}
    sets = {**{g: cols for g, cols in groups.items() if cols}, COMBINED_GROUPS[0]: read,
            COMBINED_GROUPS[1]: [c for c in read if c not in groups.get("colour", [])]}
    rows = []
    for name, cols in sets.items():
        if not cols:
            continue
        row = {"group": name, "n_features": len(cols)}
        for key, held in (("random_folds", None), ("series_held_out", series)):
            predicted = np.empty(len(y), dtype=object)
            for train, test in lab_folds(y, held, n_folds, seed):
                clf = classifier_for(setting, seed).set_params(columns=tuple(cols))
                predicted[test] = _own_fold(clf, X, y, train)[test]
            row[key] = _balanced_accuracy(y, predicted)
        rows.append(row)
    return pd.DataFrame(rows, columns=GROUP_COLUMNS)


def own_label_table(source: tuple[np.ndarray, np.ndarray], labs: dict[str, tuple[np.ndarray, np.ndarray]],
                    setting: str, series: dict[str, np.ndarray] | None = None, n_folds: int = N_RANDOM_FOLDS,
                    seed: int = 0) -> pd.DataFrame:
    """One row per lab and way of folding (:data:`COLUMNS`): random stratified folds for every lab,
    and one series held out at a time for the labs in ``series`` (lab name -> each cell's series).
    A lab of fewer than ``2 * n_folds`` cells, or without a class of ``n_folds`` cells, gets no row."""
    series = series or {}
    rows = []
    for lab, (X, y) in labs.items():
        if len(y) < 2 * n_folds or np.unique(y, return_counts=True)[1].max() < n_folds:
            continue  # too few cells to fold (a smoke run's labs): no row
        foldings = [(f"{n_folds} random folds", None)]
        if lab in series and len(np.unique(series[lab])) >= 2:
            foldings.append(("one photograph series held out", series[lab]))
        for name, groups in foldings:
            n = len(np.unique(groups)) if groups is not None else n_folds
            scores = out_of_fold_scores(source, X, y, setting, groups, n_folds, seed)
            rows.append({"lab": lab, "folds": name, "n_folds": int(n), "n_cells": len(y), **scores})
    return pd.DataFrame(rows, columns=COLUMNS)


def own_label_display(table: pd.DataFrame) -> pd.DataFrame:
    """The table as the chapter shows it: one row per lab and folding, readable column names."""
    names = {"folds": "held out", "n_folds": "folds", "n_cells": "cells",
             "source_labels": "training lab's labels", "source_and_own_labels": "training lab's + the lab's own",
             "own_labels": "the lab's own labels alone"}
    shown = table.set_index("lab").rename(columns=names)
    shown.index.name = None
    return shown


def own_label_by_group_display(table: pd.DataFrame) -> pd.DataFrame:
    """:func:`own_label_by_group`'s table as the chapter shows it: one row per group, readable column names."""
    names = {"n_features": "features", "random_folds": "random folds", "series_held_out": "one series held out"}
    shown = table.set_index("group").rename(columns=names)
    shown.index.name = None
    return shown


def own_label_by_group_glue(table: pd.DataFrame) -> dict[str, float | str]:
    """``crosslab_series_group_<group>_<column>`` for every row of :func:`own_label_by_group`'s table,
    and the single group that carries best across series (``..._best_single`` and ``..._best_single_value``)."""
    out: dict[str, float | str] = {}
    for row in table.itertuples(index=False):
        for column in ("random_folds", "series_held_out"):
            out[f"crosslab_series_group_{row.group.replace(' ', '_')}_{column}"] = float(getattr(row, column))
    single = table[~table["group"].isin(COMBINED_GROUPS)]
    if len(single):
        best = single.loc[single["series_held_out"].idxmax()]
        out["crosslab_series_group_best_single"] = str(best["group"])
        out["crosslab_series_group_best_single_value"] = float(best["series_held_out"])
    return out


def own_label_glue(table: pd.DataFrame) -> dict[str, float]:
    """``crosslab_ceiling_<lab>_<reading>`` (random folds) and ``..._series_<reading>`` (series held out)."""
    out = {}
    for row in table.itertuples(index=False):
        tag = "_series" if row.folds.startswith("one photograph series") else ""
        for name in READINGS:
            out[f"crosslab_ceiling_{row.lab}{tag}_{name}"] = float(getattr(row, name))
    return out
