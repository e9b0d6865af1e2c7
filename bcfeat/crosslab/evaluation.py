"""How the cross-lab method is measured: transfer scores with bootstrap intervals, the
adaptation ablation and the few-shot curve.

Everything here trains on labelled cells of one site and scores on another; the only use of
a target site's cells before scoring is unlabelled (its own feature statistics, AdaBN, the
classifier's own posteriors). Settings are chosen on virtual labs that no reported lab is part
of (:mod:`bcfeat.study.crosslab_validation`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import balanced_accuracy_score, f1_score

from bcfeat.crosslab.site_statistics import site_statistics, standardize


def standardize_per_site(X: np.ndarray, domain: Sequence) -> np.ndarray:
    """Every site's features ``(n, d)`` standardised with that site's own (unlabelled) statistics."""
    X = np.asarray(X, dtype=np.float64)
    domain = np.asarray(domain)
    out = np.empty_like(X)
    for site in pd.unique(domain):
        rows = domain == site
        out[rows] = standardize(X[rows], site_statistics(X[rows]))
    return out


def bootstrap_interval(y_true: Sequence, y_pred: Sequence, n_boot: int = 1000, seed: int = 0,
                       level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the balanced accuracy over the test cells.

    Cells are resampled with replacement, stratified by true class (so a class of one cell,
    like the single basophil of Zheng-18 set 1, stays in every resample).

    Examples
    --------
    >>> y = np.array([0] * 50 + [1] * 50); p = y.copy(); p[:10] = 1
    >>> lo, hi = bootstrap_interval(y, p, n_boot=200)
    >>> lo < 0.9 < hi
    True
    """
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(y_true == c) for c in np.unique(y_true)]
    stats = np.empty(n_boot)
    for b in range(n_boot):
        idx = np.concatenate([rng.choice(g, len(g)) for g in groups])
        stats[b] = balanced_accuracy_score(y_true[idx], y_pred[idx])
    alpha = (1 - level) / 2
    return float(np.quantile(stats, alpha)), float(np.quantile(stats, 1 - alpha))


def score_row(y_true: Sequence, y_pred: Sequence, labels: Sequence, n_boot: int = 0, seed: int = 0) -> dict:
    """Balanced accuracy, macro-F1 (over the labels present) and, with ``n_boot``, its 95 % interval."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    present = [c for c in labels if (y_true == c).any()]
    row = {"n_test": len(y_true), "balanced_accuracy": balanced_accuracy_score(y_true, y_pred),
           "macro_f1": f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0)}
    if n_boot:
        row["ci_low"], row["ci_high"] = bootstrap_interval(y_true, y_pred, n_boot, seed)
    return row


def transfer_scores(X: np.ndarray, y: Sequence, domain: Sequence, train_rows: np.ndarray, in_domain_test: np.ndarray,
                    make_classifier: Callable[[], object], source: str, n_boot: int = 0, seed: int = 0,
                    return_predictions: bool = False):
    """Fit on ``train_rows`` (the source's training split); score the source's test split and
    **all** cells of every other site, each site in one ``predict`` call (so a classifier that
    adapts to the cells it is given sees one site at a time).

    Returns one row per test site (``test_domain, in_domain, n_test, balanced_accuracy,
    macro_f1`` and the interval), and with ``return_predictions`` the per-cell predictions
    ``(test_domain, row, y_true, y_pred)``.
    """
    X, y, domain = np.asarray(X), np.asarray(y), np.asarray(domain)
    labels = sorted(np.unique(y))
    clf = make_classifier().fit(X[train_rows], y[train_rows])
    rows, preds = [], []
    for site in pd.unique(domain):
        test = np.flatnonzero(in_domain_test) if site == source else np.flatnonzero(domain == site)
        y_pred = np.asarray(clf.predict(X[test]))
        rows.append({"test_domain": site, "in_domain": site == source,
                     **score_row(y[test], y_pred, labels, n_boot, seed)})
        if return_predictions:
            preds.append(pd.DataFrame({"test_domain": site, "row": test, "y_true": y[test], "y_pred": y_pred}))
    table = pd.DataFrame(rows)
    return (table, pd.concat(preds, ignore_index=True)) if return_predictions else table


def few_shot_curve(X: np.ndarray, y: Sequence, domain: Sequence, source_rows: np.ndarray, target: str,
                   shots: Sequence[int], n_draws: int, make_classifier: Callable[[], object],
                   seed: int = 0, as_corrections: bool = False) -> pd.DataFrame:
    """Balanced accuracy on a target site when ``k`` labelled cells per class of it join training.

    For each ``k`` in ``shots`` and each draw, ``k`` cells of every class of the target (at most
    all but one of a class, so one is left to test) are added to the source's labelled cells;
    the classifier is refitted and scored on the target's remaining cells. ``k = 0`` is the
    unadapted-labels transfer.

    With ``as_corrections=False`` the added cells are pooled with the source's: ``X`` should then
    already be standardised per site (:func:`standardize_per_site`), so source and target cells
    share one scale. With ``as_corrections=True`` (a :class:`~bcfeat.crosslab.adaptation.CrossLabClassifier`,
    raw ``X``) they are what ``bcfeat train-classifier --corrections`` makes of a reviewer's
    corrections: a :class:`~bcfeat.crosslab.adaptation.LabelledCall` of the whole target site, read
    in its own statistics, and the target is then classified as one call.

    Returns rows ``target, k, draw, n_added, n_test, balanced_accuracy``.
    """
    from bcfeat.crosslab.adaptation import LabelledCall

    X, y, domain = np.asarray(X), np.asarray(y), np.asarray(domain)
    rng = np.random.default_rng(seed)
    target_rows = np.flatnonzero(domain == target)
    classes = np.unique(y[target_rows])
    rows = []
    for draw in range(n_draws):
        order = {c: rng.permutation(target_rows[y[target_rows] == c]) for c in classes}
        for k in shots:
            added = np.concatenate([order[c][:min(k, len(order[c]) - 1)] for c in classes]).astype(int)
            test = np.setdiff1d(target_rows, added)
            if as_corrections:
                calls = [LabelledCall(X[target_rows], np.searchsorted(target_rows, added), y[added])] if len(added) else []
                clf = make_classifier().fit(X[source_rows], y[source_rows], calls)
                predicted = clf.predict(X[target_rows])[np.isin(target_rows, test)]
            else:
                train = np.concatenate([source_rows, added])
                predicted = make_classifier().fit(X[train], y[train]).predict(X[test])
            rows.append({"target": target, "k": k, "draw": draw, "n_added": len(added), "n_test": len(test),
                         "balanced_accuracy": balanced_accuracy_score(y[test], predicted)})
    return pd.DataFrame(rows)


def summarize_curve(curve: pd.DataFrame, group: Sequence[str] = ("features", "target", "k")) -> pd.DataFrame:
    """Mean, std and count of the balanced accuracy per curve point."""
    return (curve.groupby(list(group), sort=False)["balanced_accuracy"].agg(["mean", "std", "count"])
            .reset_index().rename(columns={"mean": "balanced_accuracy_mean", "std": "balanced_accuracy_std",
                                           "count": "n_draws"}))


def ablation_table(results: Mapping[str, pd.DataFrame], unseen: Sequence[str], source: str,
                   minutes: Mapping[str, float] | None = None) -> pd.DataFrame:
    """One row per variant: in-domain and per-unseen-site balanced accuracy, their mean and minimum,
    and the CPU minutes the variant costs (when given)."""
    rows = []
    for name, table in results.items():
        t = table.set_index("test_domain")["balanced_accuracy"]
        row = {"variant": name, source: float(t[source]), **{s: float(t[s]) for s in unseen}}
        row["mean_unseen"] = float(np.mean([t[s] for s in unseen]))
        row["min_unseen"] = float(np.min([t[s] for s in unseen]))
        if minutes is not None:
            row["cpu_minutes"] = float(minutes.get(name, np.nan))
        rows.append(row)
    return pd.DataFrame(rows)


__all__ = ["standardize_per_site", "bootstrap_interval", "score_row", "transfer_scores",
           "few_shot_curve", "summarize_curve", "ablation_table"]
