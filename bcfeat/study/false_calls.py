"""What pushes a lab's cells into a class they do not belong to: the classifier's margin, feature by feature.

The study's classifier is linear in the standardised view it reads each call in: a cell's score
for class ``k`` is ``sum_f z_f W[k, f] + b_k``. For a cell of class ``t`` that it calls ``k``, the
margin of ``k`` over ``t`` is the sum over the features of ``z_f (W[k, f] - W[t, f])``, plus
``b_k - b_t``. Averaged over one lab's false calls of ``k``, each feature's term says how much of
the push into ``k`` it carries, and summing the terms over a feature group or over the part of
the cell a feature is read in (the nucleus, the cytoplasm, the whole cell, the rings around it)
says where the lab's cells look like ``k`` to the classifier.

It reads labels, so it explains a score and never chooses a setting.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

PUSH_COLUMNS = ["lab", "called", "n_false", "grouping", "group", "push"]
TOP_COLUMNS = ["lab", "called", "rank", "feature", "push", "value"]


def cell_part(name: str) -> str:
    """The part of the cell a feature is read in, from its name: ``nucleus``, ``cytoplasm``,
    ``cell``, ``rings`` (the profile's rings) or ``other`` (size, contrasts between parts).

    >>> [cell_part(n) for n in ("cytoplasm_chroma_r", "nucleus_share", "ring3_od_sum", "log_cell_diameter")]
    ['cytoplasm', 'nucleus', 'rings', 'other']
    """
    head = name.split("_", 1)[0]
    if head.startswith("ring"):
        return "rings"
    return head if head in ("nucleus", "cytoplasm", "cell") else "other"


def false_call_push(clf, labs: dict[str, tuple[np.ndarray, np.ndarray]], called: str,
                    groups: dict[str, Sequence[int]], names: Sequence[str], top: int = 3
                    ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per lab (``labs``: name -> ``(X, y)``, all its cells in one call), the mean push into
    ``called`` of the cells called so whose label differs, per feature group (``groups``: name ->
    indices into the features) and per part of the cell (:func:`cell_part`), as rows of
    :data:`PUSH_COLUMNS` (``grouping``: ``"group"`` or ``"part"``); and the ``top`` features with the
    largest mean push per lab (:data:`TOP_COLUMNS`; ``value``: the feature's mean over the false
    calls in the standardised view, in the lab's own spread from its centre). ``clf``: a fitted linear
    :class:`bcfeat.crosslab.adaptation.CrossLabClassifier` (``estimator_.coef_``). A lab with no
    false call of ``called`` gives a row per group with push NaN and ``n_false`` 0.

    >>> from bcfeat.crosslab.adaptation import CrossLabClassifier
    >>> rng = np.random.default_rng(0)
    >>> y = np.repeat(np.array(["a", "b"]), 100)
    >>> X = np.c_[(y == "b") * 3.0 + rng.normal(size=200), rng.normal(size=200)]
    >>> clf = CrossLabClassifier(site_standardize=False, balance_rounds=0).fit(X, y)
    >>> lab = (np.c_[np.full(20, 2.5), rng.normal(size=20)], np.array(["a"] * 20))   # "a" cells that look like "b"
    >>> push, _ = false_call_push(clf, {"lab": lab}, "b", {"first": [0], "second": [1]}, ["f0", "f1"])
    >>> first, second = push.set_index("group").loc[["first", "second"], "push"]
    >>> int(push["n_false"].iloc[0]), bool(first > 1.0 > abs(second))
    (20, True)
    """
    rows, tops = [], []
    parts: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        parts.setdefault(cell_part(name), []).append(i)
    for lab, (X, y) in labs.items():
        X, y = np.asarray(X, dtype=np.float64), np.asarray(y)
        reader = clf.fallback_ if clf.gate_closed(X) else clf  # the classifier that classifies this call
        classes = list(reader.classes_)
        columns = np.arange(X.shape[1]) if reader.columns is None else np.asarray(reader.columns)
        predicted = reader.predict(X)
        false = np.flatnonzero((predicted == called) & (y != called) & np.isin(y, classes))
        term = np.full(X.shape[1], np.nan)  # mean push per feature, in the full feature indexing
        value = np.full(X.shape[1], np.nan)  # mean standardised value per feature over the false calls
        if called in classes and len(false):
            Z = reader.transform(X)[false]
            W = reader.estimator_.coef_
            if len(W) == 1:  # two classes: scikit-learn keeps the second class's score, the first's is 0
                W = np.vstack([np.zeros_like(W[0]), W[0]])
            toward = W[classes.index(called)][None, :] - W[[classes.index(t) for t in y[false]]]
            term[columns] = (Z * toward).mean(axis=0)
            value[columns] = Z.mean(axis=0)
        for grouping, members in (("group", groups), ("part", parts)):
            for group, idx in members.items():
                used = [i for i in idx if np.isfinite(term[i])]
                push = float(np.sum(term[used])) if used else (0.0 if len(false) else float("nan"))
                rows.append({"lab": lab, "called": called, "n_false": int(len(false)), "grouping": grouping,
                             "group": group, "push": push})
        if len(false):
            order = np.argsort(-np.nan_to_num(term, nan=-np.inf))[:top]
            tops += [{"lab": lab, "called": called, "rank": r + 1, "feature": names[i], "push": float(term[i]),
                      "value": float(value[i])} for r, i in enumerate(order)]
    return pd.DataFrame(rows, columns=PUSH_COLUMNS), pd.DataFrame(tops, columns=TOP_COLUMNS)


def false_call_display(push: pd.DataFrame, top: pd.DataFrame, digits: int = 2, n_features: int = 2) -> pd.DataFrame:
    """One column per lab: the number of false calls, the push per feature group and per part of
    the cell (logit units, mean over the false calls, to ``digits`` decimals), and the
    ``n_features`` features that push most."""
    if push.empty:
        return pd.DataFrame()
    labs = list(dict.fromkeys(push["lab"]))
    shown = push.assign(row=push["grouping"].map({"group": "group: ", "part": "part: "}) + push["group"])
    table = shown.pivot_table(index="row", columns="lab", values="push", sort=False, dropna=False).reindex(columns=labs)
    table = table.round(digits).astype(object)
    counts = push.drop_duplicates("lab").set_index("lab")["n_false"].reindex(labs)
    table = pd.concat([pd.DataFrame([counts.astype(int).tolist()], index=["false calls"], columns=labs, dtype=object),
                       table])
    if not top.empty:
        firsts = (top[top["rank"] <= n_features].sort_values("rank").groupby("lab", sort=False)["feature"]
                  .agg(", ".join).reindex(labs))
        table.loc["features pushing most"] = firsts.fillna("").tolist()
    table.columns.name = None
    return table


def false_call_glue(push: pd.DataFrame, top: pd.DataFrame) -> dict:
    """``crosslab_false_<called>_<lab>_n`` and ``..._<grouping>_<group>`` (the mean push), and
    ``..._top_feature`` (the feature that pushes most) with ``..._top_value`` (its mean
    standardised value over the false calls) for every lab."""
    out = {}
    for row in push.itertuples():
        stem = f"crosslab_false_{row.called}_{row.lab}"
        out[f"{stem}_n"] = int(row.n_false)
        out[f"{stem}_{row.grouping}_{row.group}"] = float(row.push)
    for row in top[top["rank"] == 1].itertuples():
        out[f"crosslab_false_{row.called}_{row.lab}_top_feature"] = str(row.feature)
        out[f"crosslab_false_{row.called}_{row.lab}_top_value"] = float(row.value)
    return out


__all__ = ["PUSH_COLUMNS", "TOP_COLUMNS", "cell_part", "false_call_push", "false_call_display", "false_call_glue"]
