"""Scoring a lab under resampled class mixes, one smear-sized call at a time.

A lab classifies the white cells of one smear per call, and the cross-lab classifier adapts
to each call's own unlabelled statistics, so its accuracy can depend on the call's class mix
and on how many cells the call holds. This module resamples a site's labelled cells into
calls of a chosen mix (:data:`MIXES`) and size (:data:`CALL_SIZES`), has the caller predict
every call in **one** call of its own (re-running its adaptation on exactly those cells),
and scores each call: balanced accuracy, macro-F1, per-class precision and recall, and what
a lab actually reads, the differential (each class's share of the call) and its error in
percentage points.

- :func:`mix_counts` turns a mix into exact cell counts (largest-remainder rounding).
- :func:`draw_calls` draws the cells of each call from a site's labels.
- :func:`differential`, :func:`differential_error`, :func:`call_scores` score one call.
- :func:`score_under_mixes` runs every (mix, call size) and returns one row per call;
  :func:`summarize_mixes` averages the calls and :func:`mix_cost` compares each mix with the
  site's own mix at the same call size.

Examples
--------
>>> y = np.array(["neutrophil"] * 6 + ["lymphocyte"] * 3 + ["basophil"])
>>> calls = score_under_mixes(y, lambda idx: y[idx], call_sizes=(20,), n_calls=2)
>>> len(calls), bool(calls["balanced_accuracy"].eq(1.0).all())
(10, True)
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import f1_score

CLASSES: tuple[str, ...] = ("basophil", "eosinophil", "lymphocyte", "monocyte", "neutrophil")
"""The coarse5 classes, alphabetical (the order of every per-class table)."""

MIXES: dict[str, dict[str, float] | None] = {
    "own": None,
    "balanced": {c: 0.2 for c in CLASSES},
    "typical": {"neutrophil": 0.55, "lymphocyte": 0.30, "monocyte": 0.08, "eosinophil": 0.05, "basophil": 0.02},
    "neutrophil_heavy": {"neutrophil": 0.78, "lymphocyte": 0.12, "monocyte": 0.05, "eosinophil": 0.03,
                         "basophil": 0.02},
    "lymphocyte_heavy": {"lymphocyte": 0.62, "neutrophil": 0.25, "monocyte": 0.08, "eosinophil": 0.03,
                         "basophil": 0.02},
}
"""Class mixes a call is drawn to: ``None`` is the site's own mix (cells drawn uniformly)."""

CALL_SIZES: tuple[int, ...] = (20, 100, 0)
"""Cells per call; ``0`` means all cells of the site in one call."""


def _resolve_mix(mix: str | Mapping[str, float] | None) -> Mapping[str, float] | None:
    if isinstance(mix, str):
        if mix not in MIXES:
            raise KeyError(f"unknown mix {mix!r}; known: {sorted(MIXES)}")
        return MIXES[mix]
    return mix


def _label_classes(y: np.ndarray) -> list:
    """The label space of ``y``: :data:`CLASSES` when every label is one of them, else its sorted labels."""
    present = list(np.unique(y))
    if all(isinstance(c, str) and c in CLASSES for c in present):
        return list(CLASSES)
    return present


def mix_counts(mix: Mapping[str, float], n: int, classes: Iterable) -> dict:
    """Exact cell counts of a call of ``n`` cells drawn to ``mix``.

    Only the classes in ``classes`` are counted: a class of ``mix`` not among them (a class the
    site lacks) has its share renormalised away, and a class of ``classes`` absent from ``mix``
    gets 0. Counts are the floors of ``n`` times each share, and the cells left over go to the
    largest remainders (ties: larger share first, then the order of ``classes``), so the counts
    sum to exactly ``n``.

    Parameters
    ----------
    mix : mapping
        Class -> share (any non-negative weights; they are normalised).
    n : int
        Cells in the call (``>= 0``).
    classes : iterable
        The classes to count, in the order of the result.

    Returns
    -------
    dict
        Class -> count, in the order of ``classes``.

    Examples
    --------
    >>> mix_counts(MIXES["typical"], 20, CLASSES)
    {'basophil': 0, 'eosinophil': 1, 'lymphocyte': 6, 'monocyte': 2, 'neutrophil': 11}
    >>> mix_counts({"a": 0.5, "b": 0.25, "z": 0.25}, 3, ["a", "b"])   # z renormalised away
    {'a': 2, 'b': 1}
    """
    classes = list(classes)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    shares = np.array([float(mix.get(c, 0.0)) for c in classes], dtype=np.float64)
    if (shares < 0).any() or not np.isfinite(shares).all():
        raise ValueError(f"mix shares must be finite and non-negative: {dict(mix)}")
    total = shares.sum()
    if total <= 0:
        raise ValueError(f"the mix {dict(mix)} gives no share to any of the classes {classes}")
    quotas = np.round(n * shares / total, 9)  # rounding keeps float noise out of the floors
    counts = np.floor(quotas).astype(int)
    remainders = quotas - counts
    order = sorted(range(len(classes)), key=lambda i: (-remainders[i], -shares[i], i))
    for i in order[: n - int(counts.sum())]:
        counts[i] += 1
    return {c: int(k) for c, k in zip(classes, counts)}


def draw_calls(y: np.ndarray, mix: str | Mapping[str, float] | None, call_size: int, n_calls: int,
               rng: np.random.Generator | int | None = None) -> list[np.ndarray]:
    """Indices into ``y`` of the cells of each of ``n_calls`` calls.

    - ``mix`` ``None`` or ``"own"`` (the site's own mix): ``call_size`` cells drawn uniformly
      without replacement (with replacement only when ``call_size > len(y)``); ``call_size 0``
      is all cells, permuted.
    - any other mix: the exact counts of :func:`mix_counts` over the classes present in ``y``
      (``call_size 0``: ``len(y)`` cells). Within a class, cells are drawn without replacement
      when the class has enough of them, else with replacement (Zheng-18 set 1 has one
      basophil, so a typical call of 100 holds it twice). A call's cells are then shuffled.

    Parameters
    ----------
    y : array
        The site's true labels.
    mix : str, mapping or None
        A name of :data:`MIXES`, a class -> share mapping, or ``None`` for the own mix.
    call_size : int
        Cells per call; ``0`` for all cells of the site (``len(y)``).
    n_calls : int
        Number of calls (each drawn independently).
    rng : numpy Generator, int or None
        The random source (an int seeds one).

    Returns
    -------
    list of ndarray
        ``n_calls`` integer index arrays.

    Examples
    --------
    >>> y = np.array(["neutrophil"] * 8 + ["basophil"] * 2)
    >>> [np.sort(y[c]).tolist() for c in draw_calls(y, {"neutrophil": .5, "basophil": .5}, 4, 2, 0)]
    [['basophil', 'basophil', 'neutrophil', 'neutrophil'], ['basophil', 'basophil', 'neutrophil', 'neutrophil']]
    >>> sorted(draw_calls(y, "own", 0, 1, 0)[0].tolist()) == list(range(10))
    True
    """
    y = np.asarray(y)
    if call_size < 0:
        raise ValueError(f"call_size must be >= 0, got {call_size}")
    if n_calls < 0:
        raise ValueError(f"n_calls must be >= 0, got {n_calls}")
    if len(y) == 0:
        raise ValueError("no cells to draw from")
    rng = np.random.default_rng(rng)
    shares = _resolve_mix(mix)
    n = call_size or len(y)
    calls = []
    if shares is None:
        for _ in range(n_calls):
            if call_size == 0:
                calls.append(rng.permutation(len(y)))
            else:
                calls.append(rng.choice(len(y), size=n, replace=n > len(y)))
        return calls
    present = list(np.unique(y))
    members = {c: np.flatnonzero(y == c) for c in present}
    counts = mix_counts(shares, n, present)
    for _ in range(n_calls):
        parts = [rng.choice(members[c], size=k, replace=k > len(members[c])) for c, k in counts.items() if k]
        calls.append(rng.permutation(np.concatenate(parts)))
    return calls


def differential(labels: Sequence, classes: Iterable) -> pd.Series:
    """The differential of a call: each class's share (0..1) of its cells.

    The denominator is every cell of ``labels``, so a label outside ``classes`` lowers the
    shares of the rest.

    Examples
    --------
    >>> differential(["neutrophil", "neutrophil", "lymphocyte", "basophil"], CLASSES).tolist()
    [0.25, 0.0, 0.25, 0.0, 0.5]
    """
    labels = np.asarray(labels)
    classes = list(classes)
    if len(labels) == 0:
        raise ValueError("a differential needs at least one cell")
    return pd.Series([float(np.mean(labels == c)) for c in classes], index=pd.Index(classes, name="class"),
                     name="share")


def differential_error(y_true: Sequence, y_pred: Sequence, classes: Iterable) -> dict:
    """How far the predicted differential is from the true one, in percentage points.

    Returns
    -------
    dict
        ``diff_mae_pp`` (mean absolute error over ``classes``), ``diff_worst_pp`` (largest
        absolute error), ``diff_worst_class`` (its class; the first in ``classes`` on a tie), and
        ``diff_<class>_pp``: predicted share minus true share, signed, for every class.

    Examples
    --------
    >>> e = differential_error(["neutrophil", "lymphocyte"], ["neutrophil", "neutrophil"], CLASSES)
    >>> e["diff_neutrophil_pp"], e["diff_lymphocyte_pp"], e["diff_mae_pp"], e["diff_worst_class"]
    (50.0, -50.0, 20.0, 'lymphocyte')
    """
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if len(y_true) != len(y_pred):
        raise ValueError(f"{len(y_true)} true labels but {len(y_pred)} predictions")
    classes = list(classes)
    signed = 100.0 * (differential(y_pred, classes) - differential(y_true, classes))
    err = signed.abs()
    worst = int(np.argmax(err.to_numpy()))
    out = {"diff_mae_pp": float(err.mean()), "diff_worst_pp": float(err.iloc[worst]),
           "diff_worst_class": classes[worst]}
    out.update({f"diff_{c}_pp": float(v) for c, v in signed.items()})
    return out


def call_scores(y_true: Sequence, y_pred: Sequence, classes: Iterable) -> dict:
    """Every score of one call.

    Returns
    -------
    dict
        ``n_cells``; ``balanced_accuracy`` (mean recall over the classes present in ``y_true``,
        as sklearn's ``balanced_accuracy_score``); ``macro_f1`` (over the classes present in
        ``y_true``, ``zero_division=0``); ``accuracy``; ``precision_<c>`` (NaN when nothing was
        predicted ``c``) and ``recall_<c>`` (NaN when no cell is ``c``) for every class; and
        the keys of :func:`differential_error`.

    Examples
    --------
    >>> s = call_scores(["neutrophil", "neutrophil", "basophil"], ["neutrophil"] * 3, CLASSES)
    >>> s["balanced_accuracy"], s["recall_basophil"], round(s["precision_neutrophil"], 3)
    (0.5, 0.0, 0.667)
    >>> bool(np.isnan(s["recall_monocyte"]))
    True
    """
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if len(y_true) != len(y_pred):
        raise ValueError(f"{len(y_true)} true labels but {len(y_pred)} predictions")
    if len(y_true) == 0:
        raise ValueError("a call needs at least one cell")
    classes = list(classes)
    present = [c for c in classes if (y_true == c).any()]
    present += [c for c in np.unique(y_true) if c not in classes]  # never drop a true class from the scores
    recalls = {c: float(np.mean(y_pred[y_true == c] == c)) for c in present}
    row = {"n_cells": len(y_true), "balanced_accuracy": float(np.mean(list(recalls.values()))),
           "macro_f1": float(f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0)),
           "accuracy": float(np.mean(y_true == y_pred))}
    for c in classes:
        predicted = y_pred == c
        row[f"precision_{c}"] = float(np.mean(y_true[predicted] == c)) if predicted.any() else np.nan
        row[f"recall_{c}"] = recalls.get(c, np.nan)
    row.update(differential_error(y_true, y_pred, classes))
    return row


def _mix_items(mixes) -> list[tuple[str, Mapping[str, float] | None]]:
    if isinstance(mixes, Mapping):
        return list(mixes.items())
    return [(name, _resolve_mix(name)) for name in mixes]


def _call_rng(seed: int, mix: str, call_size: int) -> np.random.Generator:
    """One stream per (mix, call size), so adding or dropping a mix leaves the others' calls as they were."""
    return np.random.default_rng([seed, zlib.crc32(mix.encode()), call_size])


def score_under_mixes(y: np.ndarray, predict_call: Callable[[np.ndarray], np.ndarray],
                      mixes: Mapping[str, Mapping[str, float] | None] | Iterable[str] = MIXES,
                      call_sizes: Iterable[int] = CALL_SIZES, n_calls: int = 10, seed: int = 0,
                      classes: Iterable | None = None) -> pd.DataFrame:
    """Score a site's predictions call by call, under every class mix and call size.

    Parameters
    ----------
    y : array
        The site's true labels.
    predict_call : callable
        ``predict_call(indices)`` -> predicted labels of those cells, computed in **one** call
        (the caller re-runs its adaptation on exactly those cells, in that order).
    mixes : mapping or iterable of names
        Mix name -> shares (``None``: the site's own mix); or names of :data:`MIXES`.
    call_sizes : iterable of int
        Cells per call; ``0`` is all cells of the site.
    n_calls : int
        Calls drawn per (mix, call size); the own mix with call size 0 has 1 call (all cells).
    seed : int
        Seeds the draws; each (mix, call size) has its own stream.
    classes : iterable, optional
        The label space scored; default :data:`CLASSES` when every label of ``y`` is one of
        them, else the sorted labels of ``y``.

    Returns
    -------
    DataFrame
        One row per call: ``mix, call_size, call`` and the keys of :func:`call_scores`.
    """
    y = np.asarray(y)
    classes = list(classes) if classes is not None else _label_classes(y)
    rows = []
    for name, shares in _mix_items(mixes):
        for size in call_sizes:
            k = 1 if (size == 0 and shares is None) else n_calls
            for i, idx in enumerate(draw_calls(y, shares, size, k, _call_rng(seed, name, size))):
                pred = np.asarray(predict_call(idx))
                if pred.shape != (len(idx),):
                    raise ValueError(f"predict_call returned shape {pred.shape} for a call of {len(idx)} cells")
                rows.append({"mix": name, "call_size": int(size), "call": i, **call_scores(y[idx], pred, classes)})
    return pd.DataFrame(rows)


def summarize_mixes(calls: pd.DataFrame, group: Sequence[str] = ("mix", "call_size")) -> pd.DataFrame:
    """Mean over the calls of every numeric score, per ``group``.

    Adds ``n_calls``, ``worst_balanced_accuracy`` (the lowest call's balanced accuracy) and
    ``balanced_accuracy_se``, the standard error of the mean balanced accuracy over the calls (their
    standard deviation over the square root of their number; NaN for one call): a call of 100 cells
    holds a class of a few per cent as one or two cells, so a mean over a few calls moves by several
    points from one draw to the next. NaN scores (a precision of a class no call predicted) are skipped by the mean. Extra
    grouping columns (``site``, ``setting``) are kept when named in ``group``; groups keep
    the order in which they first appear. ``call_size`` 0 stays 0.

    Examples
    --------
    >>> calls = pd.DataFrame({"mix": ["own", "own", "typical"], "call_size": [20, 20, 20], "call": [0, 1, 0],
    ...                       "balanced_accuracy": [0.5, 0.7, 0.9], "diff_worst_class": ["a", "b", "c"]})
    >>> {k: round(v, 3) if isinstance(v, float) else v for k, v in summarize_mixes(calls).to_dict("records")[0].items()}
    {'mix': 'own', 'call_size': 20, 'n_calls': 2, 'balanced_accuracy': 0.6, 'worst_balanced_accuracy': 0.5, 'balanced_accuracy_se': 0.1}
    """
    group = list(group)
    missing = [g for g in group if g not in calls.columns]
    if missing:
        raise KeyError(f"grouping columns not in the calls: {missing}")
    scores = [c for c in calls.columns
              if c not in group and c != "call" and pd.api.types.is_numeric_dtype(calls[c])
              and not pd.api.types.is_bool_dtype(calls[c])]
    grouped = calls.groupby(group, sort=False)
    out = grouped[scores].mean()
    out.insert(0, "n_calls", grouped.size())
    if "balanced_accuracy" in calls.columns:
        out["worst_balanced_accuracy"] = grouped["balanced_accuracy"].min()
        out["balanced_accuracy_se"] = grouped["balanced_accuracy"].std(ddof=1) / np.sqrt(out["n_calls"])
    return out.reset_index()


def mix_cost(summary: pd.DataFrame, metric: str = "balanced_accuracy",
             group: Sequence[str] | None = None) -> pd.DataFrame:
    """Each mix's ``metric`` minus the site's own mix's at the same call size.

    Parameters
    ----------
    summary : DataFrame
        From :func:`summarize_mixes` (needs ``mix``, ``call_size`` and ``metric``; the own mix is
        the row with ``mix == "own"``).
    metric : str
        The column compared.
    group : sequence of str, optional
        The columns that identify a summary row (as passed to :func:`summarize_mixes`); the own
        row is matched on all of them but ``mix``. Default: ``mix``, ``call_size`` and every
        non-numeric column of ``summary`` (``site``, ``setting``...).

    Returns
    -------
    DataFrame
        The ``group`` columns, ``metric`` and ``<metric>_vs_own`` (NaN where no own row matches),
        in the order of ``summary``.

    Examples
    --------
    >>> s = pd.DataFrame({"mix": ["own", "typical", "own", "typical"], "call_size": [20, 20, 0, 0],
    ...                   "balanced_accuracy": [0.8, 0.7, 0.9, 0.95]})
    >>> mix_cost(s)["balanced_accuracy_vs_own"].round(2).tolist()
    [0.0, -0.1, 0.0, 0.05]
    """
    if group is None:
        group = ["mix", "call_size"] + [c for c in summary.columns if c not in ("mix", "call_size")
                                        and not pd.api.types.is_numeric_dtype(summary[c])]
    group = list(group)
    for col in {*group, "mix", "call_size", metric}:
        if col not in summary.columns:
            raise KeyError(f"column {col!r} not in the summary")
    if not (summary["mix"] == "own").any():
        raise ValueError('the summary has no "own" mix to compare with')
    keys = [g for g in group if g != "mix"]
    own = summary.loc[summary["mix"] == "own", keys + [metric]]
    if own.duplicated(keys).any():
        raise ValueError(f"several own rows per {keys}: pass every grouping column in `group`")
    own = own.rename(columns={metric: "_own"})
    out = summary[group + [metric]].merge(own, on=keys, how="left", validate="many_to_one")
    out[f"{metric}_vs_own"] = out[metric] - out.pop("_own")
    out.index = summary.index
    return out


__all__ = ["CLASSES", "MIXES", "CALL_SIZES", "mix_counts", "draw_calls", "differential",
           "differential_error", "call_scores", "score_under_mixes", "summarize_mixes", "mix_cost"]
