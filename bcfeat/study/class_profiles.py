"""Do a lab's features order the classes as the training lab's do? Class profiles per feature group.

A classifier trained on one lab carries to another only where a feature puts the classes in the
same order and about as far apart there. Per lab and feature, the **class profile** is each
class's mean less the mean of the class means, over the pooled within-class standard deviation
(the lab's own: what per-lab standardisation with the class-balanced statistics leaves). Per
feature group (:func:`bcfeat.crosslab.cell_features.feature_groups`) and lab, against the
training lab's profile:

- ``median_correlation``: the median over the group's features of the correlation between the
  two profiles (1: the classes in the same order and proportions; below 0: reversed);
- ``reversed_share``: the share of the group's features whose correlation is below 0;
- ``separation``: the median over the features of the lab's largest absolute profile value over
  the training lab's (below 1: the classes sit closer together, relative to their spread, than
  where the classifier learnt them).

It reads labels, so it explains a score and never chooses a setting.
"""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
import pandas as pd

PROFILE_COLUMNS = ["lab", "group", "n_features", "median_correlation", "reversed_share", "separation"]


def class_profile(X: np.ndarray, y: np.ndarray, classes: Sequence, skip_missing: bool = False) -> np.ndarray:
    """``(k, d)``: each class's feature means less the mean of the class means, over the pooled
    within-class standard deviation (NaN where a class is missing or a feature has no spread).
    A cell whose feature could not be measured (NaN) makes that feature's profile NaN, unless
    ``skip_missing``: then the class moments are read from the cells that have it.

    >>> X = np.array([[0.0], [2.0], [10.0], [12.0]]); y = np.array(["a", "a", "b", "b"])
    >>> class_profile(X, y, ["a", "b"]).ravel().tolist()
    [-5.0, 5.0]
    >>> gap = np.array([[0.0], [2.0], [np.nan], [10.0], [12.0]]); g = np.array(["a", "a", "a", "b", "b"])
    >>> class_profile(gap, g, ["a", "b"]).ravel().tolist(), class_profile(gap, g, ["a", "b"], skip_missing=True).ravel().tolist()
    ([nan, nan], [-5.0, 5.0])
    """
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y)
    k, d = len(classes), X.shape[1]
    means = np.full((k, d), np.nan)
    variances = np.full((k, d), np.nan)
    for i, c in enumerate(classes):
        rows = X[y == c]
        if len(rows) and skip_missing:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # a feature missing on every cell of the class: NaN
                means[i] = np.nanmean(rows, axis=0)
                variances[i] = np.nanvar(rows, axis=0)
        elif len(rows):
            means[i] = rows.mean(axis=0)
            variances[i] = rows.var(axis=0)
    within = np.sqrt(variances.mean(axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return (means - means.mean(axis=0)) / np.where(within > 0, within, np.nan)


def profile_correlation(reference: np.ndarray, profile: np.ndarray) -> float:
    """The correlation of two class profiles of one feature ``(k,)`` over the classes finite in
    both; NaN where fewer than three are, or where either is flat there.

    >>> profile_correlation(np.array([-1.0, 0.0, 1.0, np.nan]), np.array([2.0, 0.0, -2.0, 5.0]))
    -1.0
    """
    ok = np.isfinite(reference) & np.isfinite(profile)
    a, b = reference[ok], profile[ok]
    if ok.sum() < 3 or np.ptp(a) <= 0 or np.ptp(b) <= 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def profile_agreement(source: tuple[np.ndarray, np.ndarray], labs: dict[str, tuple[np.ndarray, np.ndarray]],
                      groups: dict[str, Sequence[int]], columns: Sequence[int] | None = None) -> pd.DataFrame:
    """One row per lab and feature group (:data:`PROFILE_COLUMNS`): how far each lab's class
    profiles agree with the training lab's (``source``, ``(X, y)``). ``columns``: the features a
    classifier reads (``None``: all); features without a finite profile in both labs (a measure
    left out, a class missing) are skipped, and a group with none left gives no row. The classes
    are the training lab's."""
    Xs, ys = source
    classes = sorted(set(np.asarray(ys).tolist()))
    reference = class_profile(Xs, ys, classes)
    used = None if columns is None else set(int(c) for c in columns)
    rows = []
    for lab, (X, y) in labs.items():
        profile = class_profile(X, y, classes)
        for group, group_columns in groups.items():
            cols = [c for c in group_columns if (used is None or c in used)
                    and np.isfinite(profile[:, c]).all() and np.isfinite(reference[:, c]).all()
                    and np.ptp(reference[:, c]) > 0 and np.ptp(profile[:, c]) > 0]
            if not cols:
                continue
            r = np.array([profile_correlation(reference[:, c], profile[:, c]) for c in cols])
            sep = np.array([np.abs(profile[:, c]).max() / np.abs(reference[:, c]).max() for c in cols])
            rows.append({"lab": lab, "group": group, "n_features": len(cols),
                         "median_correlation": float(np.median(r)), "reversed_share": float(np.mean(r < 0)),
                         "separation": float(np.median(sep))})
    return pd.DataFrame(rows, columns=PROFILE_COLUMNS)


def setting_profile_agreement(source: tuple[np.ndarray, np.ndarray], labs: dict[str, tuple[np.ndarray, np.ndarray]],
                              setting: str) -> pd.DataFrame:
    """:func:`profile_agreement` over the cell features' groups, for the features that a
    cross-lab setting's classifier reads (its feature set)."""
    from bcfeat.crosslab.cell_features import feature_groups
    from bcfeat.study.crosslab_settings import setting_columns

    return profile_agreement(source, labs, feature_groups(), setting_columns(setting))


def profile_agreement_display(table: pd.DataFrame) -> pd.DataFrame:
    """The table as the chapter shows it: one row per feature group and measure (median
    correlation, share reversed, separation), one column per lab."""
    if table.empty:
        return table
    names = {"median_correlation": "median correlation", "reversed_share": "share reversed",
             "separation": "separation"}
    labs = list(dict.fromkeys(table["lab"]))
    groups = list(dict.fromkeys(table["group"]))
    long = table.melt(id_vars=["lab", "group"], value_vars=list(names), var_name="measure")
    long["measure"] = long["measure"].map(names)
    shown = long.pivot_table(index=["group", "measure"], columns="lab", values="value", sort=False, dropna=False)
    order = pd.MultiIndex.from_product([groups, list(names.values())], names=["group", "measure"])
    shown = shown.reindex(index=order, columns=labs)
    shown.columns.name = None
    return shown


def profile_agreement_glue(table: pd.DataFrame) -> dict:
    """``crosslab_profile_<lab>_<group>_<column>`` for every row and measure of the table."""
    out = {}
    for row in table.itertuples():
        for column in ("n_features", "median_correlation", "reversed_share", "separation"):
            value = getattr(row, column)
            out[f"crosslab_profile_{row.lab}_{row.group}_{column}"] = int(value) if column == "n_features" else float(value)
    return out


__all__ = ["PROFILE_COLUMNS", "class_profile", "profile_correlation", "profile_agreement", "setting_profile_agreement", "profile_agreement_display",
           "profile_agreement_glue"]
