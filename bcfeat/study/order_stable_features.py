"""Features whose class order holds on the development labs: the order-stable lever.

A classifier trained on one lab learns, per feature, which classes sit high and which low. Where
another lab's stain puts them the other way round (the chapter's class profiles: colour features
reversed on some labs), that feature pushes every cell of that lab towards the wrong class. This
lever keeps only the features whose class order holds on the labs whose labels the selection
already reads (the given unseen sites): per feature, the correlation between the training lab's
class profile and each given site's (:func:`bcfeat.study.class_profiles.class_profile`) must be at
least ``min_correlation`` on every one of them.

The real-lab rule (:mod:`bcfeat.study.real_lab_selection`) is offered each setting's lever variant
as a candidate of its own (``"<setting> stable"``, :func:`stable_setting` builds it): a given site
is always scored with the features kept on the *other* given sites (its labels never choose its
features), and a fold that holds a site out reads only variants whose features were kept without
it. :func:`order_stable_table` puts one setting beside its variant, each lab in one call (no
texture gate on either side of the comparison): the given sites as above, the training lab's test
cells and the untouched lab with the features kept on all the given sites.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from bcfeat.study.class_profiles import class_profile, profile_correlation

COLUMNS = ["lab", "kept_on", "n_features", "n_dropped", "balanced_accuracy_all", "setting_balanced_accuracy_all",
           "gain"]


def profile_correlations(source: tuple[np.ndarray, np.ndarray], labs: dict[str, tuple[np.ndarray, np.ndarray]]
                         ) -> pd.DataFrame:
    """One row per lab, one column per feature: the correlation between the training lab's class
    profile (``source``, ``(X, y)``) and the lab's, over the training lab's classes, each class read
    from the cells where the feature was measured (a red-cell ruler missing on some photographs
    does not hide the order of the others); NaN where fewer than three classes have it or a
    profile is flat.

    >>> rng = np.random.default_rng(0)
    >>> y = np.repeat(["a", "b", "c"], 30)
    >>> centres = np.array([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]])
    >>> X = centres[np.searchsorted(["a", "b", "c"], y)] + rng.normal(0, 0.3, (90, 2))
    >>> other = X * [1.0, -1.0]                       # the second feature reversed
    >>> profile_correlations((X, y), {"other": (other, y)}).round(2).to_numpy().tolist()
    [[1.0, -1.0]]
    """
    Xs, ys = source
    classes = sorted(set(np.asarray(ys).tolist()))
    reference = class_profile(Xs, ys, classes, skip_missing=True)
    rows = {}
    for lab, (X, y) in labs.items():
        profile = class_profile(X, y, classes, skip_missing=True)
        rows[lab] = [profile_correlation(reference[:, c], profile[:, c]) for c in range(reference.shape[1])]
    return pd.DataFrame.from_dict(rows, orient="index")


def order_stable_columns(correlations: pd.DataFrame, columns: Sequence[int], labs: Sequence[str],
                         min_correlation: float = 0.0) -> list[int]:
    """The ``columns`` whose class-profile correlation is at least ``min_correlation`` on every lab
    of ``labs`` (rows of :func:`profile_correlations`); a feature with no correlation on any of them
    is dropped.

    >>> corr = pd.DataFrame({0: [0.9, 0.8], 1: [0.9, -0.2], 2: [np.nan, np.nan]}, index=["x", "y"])
    >>> order_stable_columns(corr, [0, 1, 2], ["x", "y"]), order_stable_columns(corr, [0, 1, 2], ["x"])
    ([0], [0, 1])
    """
    labs = list(labs)
    if not labs:
        raise ValueError("the kept features need at least one lab to read the class order on")
    missing = [lab for lab in labs if lab not in correlations.index]
    if missing:
        raise KeyError(f"no class-profile correlations for {missing}")
    part = correlations.loc[labs]
    with np.errstate(all="ignore"):
        worst = part.min(axis=0, skipna=True)  # NaN only where every lab's is NaN
    return [int(c) for c in columns if np.isfinite(worst.get(int(c), np.nan)) and worst[int(c)] >= min_correlation]


STABLE_SUFFIX = " stable"
"""Appended to a setting's name, the real-lab rule's candidate that is that setting with the
order-stable lever (:func:`stable_setting`): which columns it leaves out depends on the labs its
class order is read on, so the rule names the candidate, and :func:`stable_setting` the classifier."""


def is_stable_candidate(name: str) -> bool:
    """Whether ``name`` is a lever candidate of the real-lab rule (``"<setting> stable"``)."""
    return name.endswith(STABLE_SUFFIX)


def candidate_base(name: str) -> str:
    """The setting a lever candidate is built on (``name`` itself for any other setting).

    >>> candidate_base("logistic C=0.03 all stain cbr stable")
    'logistic C=0.03 all stain cbr'
    """
    return name[:-len(STABLE_SUFFIX)] if is_stable_candidate(name) else name


def stable_setting(setting: str, correlations: pd.DataFrame, kept_on: Sequence[str],
                   min_correlation: float = 0.0) -> str | None:
    """``setting`` with the order-stable lever, as a setting name: the columns it reads whose class
    order reverses (class-profile correlation below ``min_correlation``; ``correlations``, rows of
    :func:`profile_correlations`) on any lab of ``kept_on`` (or cannot be read on all of them) are
    left out (``drop=``). ``None`` when no column would be kept (the order could be read nowhere: a
    few cells, classes missing).

    >>> rng = np.random.default_rng(0)
    >>> y = np.repeat(["basophil", "eosinophil", "lymphocyte"], 30)
    >>> X = rng.normal(0, 0.3, (90, 157)) + np.searchsorted(["basophil", "eosinophil", "lymphocyte"], y)[:, None]
    >>> other = X.copy(); other[:, 5] *= -1              # column 5 reversed on the other lab
    >>> corr = profile_correlations((X, y), {"other": (other, y)})
    >>> stable_setting("logistic C=0.1 all stain cbr", corr, ["other"])
    'logistic C=0.1 all stain cbr drop=5'
    """
    from bcfeat.crosslab.cell_features import feature_names
    from bcfeat.study.crosslab_settings import parse_setting, setting_columns, setting_name

    s = parse_setting(setting)
    read = setting_columns(s)
    columns = list(range(len(feature_names()))) if read is None else [int(c) for c in read]
    kept = set(order_stable_columns(correlations, columns, kept_on, min_correlation))
    if not kept:
        return None
    return setting_name(s["C"], s["groups"], s["source"], s["statistics"],
                        drop=list(s["drop"]) + [c for c in columns if c not in kept])


def order_stable_table(source: tuple[np.ndarray, np.ndarray], labs: dict[str, tuple[np.ndarray, np.ndarray]],
                       given: Sequence[str], setting: str, seed: int, min_correlation: float = 0.0) -> pd.DataFrame:
    """The lever on every lab of ``labs`` (``name -> (X raw, y)``, each lab one call of all its cells):
    :data:`COLUMNS`. A lab of ``given`` is read with the features kept on the other given labs, any
    other lab with those kept on all of ``given``; beside it, the setting's own classifier (same
    training cells, all its features). A lab for which no feature keeps its order (none could be
    read on the other labs: a few cells, classes missing) gets no score (NaN), not an error."""
    from bcfeat.study.crosslab_settings import classifier_for, parse_setting, setting_columns
    from bcfeat.crosslab.mixes import call_scores

    given = [g for g in given if g in labs]
    if len(given) < 2:
        raise ValueError(f"the lever reads the class order on the given labs, leaving each out once: needs two, "
                         f"got {given}")
    s = parse_setting(setting)
    Xs, ys = source
    read = setting_columns(s)  # None: every feature
    columns = list(range(Xs.shape[1])) if read is None else [int(c) for c in read]
    correlations = profile_correlations(source, {g: labs[g] for g in given})
    classes = sorted(set(np.asarray(ys).tolist()))
    setting_clf = classifier_for(s, seed).fit(Xs, ys)
    fitted: dict[tuple[int, ...], object] = {}
    rows = []
    for lab, (X, y) in labs.items():
        kept_on = [g for g in given if g != lab]
        kept = tuple(order_stable_columns(correlations, columns, kept_on, min_correlation))
        if kept and kept not in fitted:
            fitted[kept] = classifier_for(s, seed).set_params(columns=kept).fit(Xs, ys)
        # no feature whose order could be read on the other labs (a few cells, classes missing): no score
        score = call_scores(y, fitted[kept].predict(X), classes)["balanced_accuracy"] if kept else float("nan")
        base = call_scores(y, setting_clf.predict(X), classes)["balanced_accuracy"]
        rows.append({"lab": lab, "kept_on": ", ".join(kept_on), "n_features": len(kept),
                     "n_dropped": len(columns) - len(kept), "balanced_accuracy_all": float(score),
                     "setting_balanced_accuracy_all": float(base), "gain": float(score - base)})
    return pd.DataFrame(rows, columns=COLUMNS)


def lever_choice_glue(folds: pd.DataFrame, candidate: str, deployed: str, offered: bool,
                      left_out: Sequence[int] = ()) -> dict:
    """What the real-lab rule made of the lever candidates: whether they were offered
    (``crosslab_lever_offered``), whether the deployed choice is one (``crosslab_lever_deployed``),
    how many folds chose one (``crosslab_lever_folds``, of ``crosslab_lever_n_folds``), and the
    columns the deployed setting leaves out beyond ``left_out`` (those every candidate left out,
    the ruler check's) (``crosslab_headline_n_dropped`` and their names,
    ``crosslab_headline_dropped``; "none" without).

    >>> folds = pd.DataFrame({"chosen": ["a", "a stable", "a"]})
    >>> g = lever_choice_glue(folds, "a stable", "logistic C=0.1 all stain cbr drop=0,2", True)
    >>> g["crosslab_lever_deployed"], g["crosslab_lever_folds"], g["crosslab_headline_n_dropped"]
    ('yes', 1, 2)
    >>> lever_choice_glue(folds, "a stable", "logistic C=0.1 all stain cbr drop=0,2", True, left_out=[0])["crosslab_headline_n_dropped"]
    1
    """
    from bcfeat.crosslab.cell_features import feature_names
    from bcfeat.study.crosslab_settings import parse_setting

    everywhere = {int(k) for k in left_out}
    drop = [c for c in parse_setting(deployed)["drop"] if c not in everywhere]
    names = feature_names()
    return {"crosslab_lever_offered": "yes" if offered else "no",
            "crosslab_lever_deployed": "yes" if is_stable_candidate(candidate) else "no",
            "crosslab_lever_folds": int(folds["chosen"].map(is_stable_candidate).sum()),
            "crosslab_lever_n_folds": int(len(folds)),
            "crosslab_headline_n_dropped": len(drop),
            "crosslab_headline_dropped": ", ".join(names[c] for c in drop) or "none"}


def order_stable_glue(table: pd.DataFrame, given: Sequence[str]) -> dict:
    """``crosslab_stable_<lab>_<column>`` per lab, and the mean gain over the given labs."""
    out = {}
    for row in table.itertuples():
        for column in ("n_features", "n_dropped", "balanced_accuracy_all", "setting_balanced_accuracy_all", "gain"):
            value = getattr(row, column)
            out[f"crosslab_stable_{row.lab}_{column}"] = int(value) if column.startswith("n_") else float(value)
    part = table[table["lab"].isin(list(given))]
    out["crosslab_stable_given_mean_gain"] = float(part["gain"].mean()) if len(part) else float("nan")
    return out


__all__ = ["COLUMNS", "STABLE_SUFFIX", "is_stable_candidate", "candidate_base", "stable_setting", "lever_choice_glue", "profile_correlations", "order_stable_columns", "order_stable_table", "order_stable_glue"]
