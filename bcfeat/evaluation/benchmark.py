"""The cross-domain classification benchmark: train on one site, test on every site.

This is the evaluation of the paper (Salehi, Sadafi et al., MICCAI 2022,
Sec. 3 "Experiments" and Table 1): a random forest is trained on the features of
one dataset's training split and scored on the held-out split of the same
dataset (in-domain) and on every other dataset (cross-domain). Everything here is
generic over the feature matrix: the AE-CFE features, the baselines of
:mod:`bcfeat.evaluation.baselines`, or raw images for :class:`bcfeat.evaluation.oracle.OracleClassifier`.

Design decisions (each one is a parameter, recorded in the output rows):

* **Splits.** Each domain is split on its own, stratified by label, with
  sklearn's ``StratifiedShuffleSplit`` (default: 5 repetitions, 20 % test, as in
  the released code's 80/20 split) or ``StratifiedKFold``, both with an explicit
  ``random_state``. A class with fewer than 2 samples in a domain (jtsc_zheng18 has
  1 basophil) cannot be stratified; its samples go to the *training* split of
  every repetition and are listed in :attr:`SplitPlan.train_only` (a counted
  skip, never a crash). Pre-made splits can be passed instead (see
  :func:`as_test_masks`).
* **Cross-domain test set.** By default (``cross_domain_test="test"``) every
  domain is always scored on its own held-out test split, whichever domain the
  classifier was trained on, so one column of the matrix compares in-domain and
  cross-domain accuracy on identical samples. The released AE-CFE code
  (``RandomForest.py``) instead scores cross-domain on *all* samples of the other
  dataset; ``cross_domain_test="all"`` reproduces that.
* **Classifier.** ``RandomForestClassifier(max_depth=16, n_estimators=100)`` as in
  the released code (``max_depth=16``, sklearn's default 100 trees), seeded with
  ``random_state + repetition``.
* **Metrics over absent classes.** Scores are computed over the labels that are
  in the label space *and* present in the test set (``labels=`` argument of the
  sklearn metrics, ``zero_division=0``). A class present in the test set but
  absent from training counts with recall 0 (the classifier cannot predict it);
  a class absent from the test set is left out, because its recall is undefined
  (predicting it wrongly is already counted against the true class). Balanced
  accuracy is therefore the macro-averaged recall over those labels, identical
  to ``sklearn.metrics.balanced_accuracy_score``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator
from sklearn.ensemble import RandomForestClassifier
from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support, recall_score

from bcfeat.data.splits import (DEFAULT_N_REPETITIONS, DEFAULT_TEST_SIZE, SplitPlan, as_test_masks, make_splits,
                                unique_in_order)

# The released AE-CFE code: RandomForestClassifier(max_depth=16, random_state=0), i.e. sklearn's
# default of 100 trees; train_test_split(test_size=0.20).
RF_MAX_DEPTH = 16
RF_N_ESTIMATORS = 100
MATRIX_KEYS = ["feature_set", "label_space", "classifier", "cross_domain_test", "train_domain", "test_domain"]
METRICS = ["accuracy", "balanced_accuracy", "macro_f1"]


def default_classifier(random_state: int | None = None, n_jobs: int | None = 2) -> RandomForestClassifier:
    """The benchmark's random forest: the released AE-CFE settings.

    Parameters
    ----------
    random_state : int or None
        Seed of the forest.
    n_jobs : int or None
        Worker processes; 2 matches the project's 2-core CPU.

    Returns
    -------
    RandomForestClassifier
        Unfitted, ``max_depth=16``, ``n_estimators=100``.

    Examples
    --------
    >>> default_classifier(0).max_depth
    16
    """
    return RandomForestClassifier(
        n_estimators=RF_N_ESTIMATORS, max_depth=RF_MAX_DEPTH, random_state=random_state, n_jobs=n_jobs
    )



def domain_matrix(
    X: Any,
    y: Sequence,
    domain: Sequence,
    splits: SplitPlan | np.ndarray | None = None,
    make_classifier: Callable[[int], BaseEstimator] | None = None,
    label_space_name: str = "",
    feature_set_name: str = "",
    random_state: int = 0,
    *,
    labels: Sequence | None = None,
    train_domains: Sequence | None = None,
    test_domains: Sequence | None = None,
    cross_domain_test: str = "test",
    n_repetitions: int = DEFAULT_N_REPETITIONS,
    test_size: float = DEFAULT_TEST_SIZE,
    return_predictions: bool = False,
) -> pd.DataFrame | tuple[pd.DataFrame, pd.DataFrame]:
    """Train on every training domain, test on every domain, for every repetition.

    Parameters
    ----------
    X : array-like, shape (n, d), or (n, H, W, 3) images, or a list of n images
        Features (or whatever ``make_classifier``'s estimator accepts); indexed
        by sample only.
    y : array-like, shape (n,)
        Labels in the label space.
    domain : array-like, shape (n,)
        Site of every sample.
    splits : SplitPlan, array or None
        Test masks (see :func:`as_test_masks`); ``None`` makes them with
        :func:`make_splits` (``n_repetitions``, ``test_size``, ``random_state``).
    make_classifier : callable ``random_state -> estimator`` or None
        Fresh unfitted estimator per (repetition, training domain); ``None`` is
        :func:`default_classifier`. Called with ``random_state + repetition``.
    label_space_name, feature_set_name : str
        Recorded in every row (e.g. ``"coarse5"``, ``"ae_cfe"``).
    random_state : int
        Seed of the splits and the classifiers.
    labels : sequence or None
        The label space; metrics use its members present in each test set.
        ``None``: the sorted unique labels of ``y``. A label of ``y`` outside it
        is an error.
    train_domains, test_domains : sequence or None
        Restrict the rows/columns of the matrix (default: every domain, in order
        of first appearance).
    cross_domain_test : {"test", "all"}
        Score other domains on their test split (default; comparable with the
        in-domain score) or on all their samples (the released code).
    return_predictions : bool
        Also return the per-sample predictions (for :func:`confusion_matrices`
        and :func:`per_class_f1`).

    Returns
    -------
    scores : pd.DataFrame
        One row per (train_domain, test_domain, repetition): columns
        ``feature_set, label_space, classifier, cross_domain_test,
        train_domain, test_domain, in_domain, repetition, n_train, n_test,
        n_test_classes, accuracy, balanced_accuracy, macro_f1``.
    predictions : pd.DataFrame, only if ``return_predictions``
        Columns ``feature_set, label_space, classifier, cross_domain_test,
        train_domain, test_domain, repetition, sample, y_true, y_pred``
        (``sample`` indexes X).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> y = np.repeat([0, 1], 40); X = y[:, None] + 0.1 * rng.normal(size=(80, 2))
    >>> dom = np.tile(["a", "b"], 40)
    >>> df = domain_matrix(X, y, dom, n_repetitions=2,
    ...                    make_classifier=lambda s: default_classifier(s, n_jobs=1))
    >>> df.shape[0], float(df["accuracy"].min())
    (8, 1.0)
    """
    y = np.asarray(y)
    domain = np.asarray(domain)
    n = len(y)
    if domain.shape != (n,) or _n_samples(X) != n:
        raise ValueError(f"X ({_n_samples(X)} samples), y ({n}) and domain ({len(domain)}) must have equal length")
    if cross_domain_test not in ("test", "all"):
        raise ValueError(f"cross_domain_test must be 'test' or 'all', got {cross_domain_test!r}")
    label_space = np.asarray(sorted(np.unique(y)) if labels is None else list(labels))
    outside = np.setdiff1d(np.unique(y), label_space)
    if len(outside):
        raise ValueError(f"labels outside the label space {label_space_name!r}: {outside.tolist()}")
    if make_classifier is None:
        make_classifier = default_classifier
    if splits is None:
        splits = make_splits(
            y, domain, n_repetitions=n_repetitions, test_size=test_size, random_state=random_state
        )
    is_test = as_test_masks(splits, n)
    all_domains = unique_in_order(domain)
    train_domains = all_domains if train_domains is None else list(train_domains)
    test_domains = all_domains if test_domains is None else list(test_domains)
    for d in [*train_domains, *test_domains]:
        if d not in all_domains:
            raise ValueError(f"domain {d!r} has no samples; domains are {all_domains}")

    rows, preds = [], []
    for r in range(is_test.shape[0]):
        for a in train_domains:
            train_idx = np.flatnonzero((domain == a) & ~is_test[r])
            clf = make_classifier(random_state + r)
            clf.fit(_take(X, train_idx), y[train_idx])
            clf_name = type(clf).__name__
            for b in test_domains:
                in_domain = bool(a == b)
                mask = domain == b
                if in_domain or cross_domain_test == "test":
                    mask &= is_test[r]
                test_idx = np.flatnonzero(mask)
                if len(test_idx) == 0:
                    raise ValueError(f"domain {b!r} has an empty test split in repetition {r}")
                y_true, y_pred = y[test_idx], np.asarray(clf.predict(_take(X, test_idx)))
                # the keys that name this cell of the matrix, shared by the score row and its predictions
                cell = {
                    "feature_set": feature_set_name,
                    "label_space": label_space_name,
                    "classifier": clf_name,
                    "cross_domain_test": cross_domain_test,
                    "train_domain": a,
                    "test_domain": b,
                }
                rows.append(
                    {
                        **cell,
                        "in_domain": in_domain,
                        "repetition": r,
                        "n_train": len(train_idx),
                        "n_test": len(test_idx),
                        "n_test_classes": len(np.unique(y_true)),
                        **classification_scores(y_true, y_pred, label_space),
                    }
                )
                if return_predictions:
                    preds.append(
                        pd.DataFrame(
                            {
                                **cell,
                                "repetition": r,
                                "sample": test_idx,
                                "y_true": y_true,
                                "y_pred": y_pred,
                            }
                        )
                    )
    scores = pd.DataFrame(rows)
    if return_predictions:
        return scores, pd.concat(preds, ignore_index=True)
    return scores


def classification_scores(y_true: Sequence, y_pred: Sequence, labels: Sequence) -> dict[str, float]:
    """Accuracy, balanced accuracy and macro F1 over the label-space classes present in ``y_true``.

    Parameters
    ----------
    y_true, y_pred : array-like, shape (n,)
    labels : sequence
        The label space.

    Returns
    -------
    dict
        ``accuracy``, ``balanced_accuracy``, ``macro_f1``.

    Examples
    --------
    >>> classification_scores(["a", "a", "b"], ["a", "c", "b"], ["a", "b", "c"])["balanced_accuracy"]
    0.75
    """
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    present = [lab for lab in labels if lab in set(y_true.tolist())]
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "balanced_accuracy": float(
            recall_score(y_true, y_pred, labels=present, average="macro", zero_division=0)
        ),
        "macro_f1": float(f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0)),
    }


def summarize(df: pd.DataFrame, metrics: Sequence[str] = METRICS) -> pd.DataFrame:
    """Mean and standard deviation over repetitions, per cell of the domain matrix.

    Parameters
    ----------
    df : pd.DataFrame
        Output of :func:`domain_matrix` (several may be concatenated).
    metrics : sequence of str
        Score columns to aggregate.

    Returns
    -------
    pd.DataFrame
        One row per (feature_set, label_space, classifier, cross_domain_test,
        train_domain, test_domain): ``n_repetitions``, ``n_test`` (mean) and
        ``<metric>_mean``, ``<metric>_std`` (sample std, ddof=1; NaN for a
        single repetition).
    """
    keys = [k for k in MATRIX_KEYS if k in df.columns]
    g = df.groupby(keys, sort=False)
    out = g.agg(n_repetitions=("repetition", "nunique"), n_test=("n_test", "mean"))
    for m in metrics:
        out[f"{m}_mean"] = g[m].mean()
        out[f"{m}_std"] = g[m].std(ddof=1)
    return out.reset_index()


def matrix_table(summary: pd.DataFrame, metric: str = "balanced_accuracy", digits: int = 3) -> pd.DataFrame:
    """A train x test table of ``"mean ± std"`` strings for one metric (for display).

    Parameters
    ----------
    summary : pd.DataFrame
        Output of :func:`summarize` for one feature set and classifier.
    metric : str
    digits : int

    Returns
    -------
    pd.DataFrame
        Index ``train_domain``, columns ``test_domain``.
    """
    for k in ("feature_set", "classifier", "label_space", "cross_domain_test"):
        if k in summary.columns and summary[k].nunique() > 1:
            raise ValueError(f"summary holds several {k}s; select one before making the table")
    cell = summary.apply(
        lambda r: f"{r[f'{metric}_mean']:.{digits}f} ± {r[f'{metric}_std']:.{digits}f}", axis=1
    )
    table = summary.assign(cell=cell).pivot(index="train_domain", columns="test_domain", values="cell")
    order_rows = unique_in_order(summary["train_domain"].to_numpy())
    order_cols = unique_in_order(summary["test_domain"].to_numpy())
    return table.loc[order_rows, order_cols]


def confusion_matrices(
    predictions: pd.DataFrame, labels: Sequence | None = None, normalize: str | None = None
) -> pd.DataFrame:
    """Confusion matrices summed over repetitions, one per cell of the domain matrix, in long form.

    Parameters
    ----------
    predictions : pd.DataFrame
        Second output of :func:`domain_matrix` with ``return_predictions=True``.
    labels : sequence or None
        Label order; every (true, predicted) pair is listed, zeros included, so
        ``.pivot(index="true_label", columns="predicted_label", values="count")``
        gives the square matrix. ``None``: sorted labels seen in the predictions.
    normalize : {None, "true"}
        ``"true"`` adds a ``fraction`` column: count / number of samples of the
        true class (rows sum to 1; NaN for a class absent from the test set).

    Returns
    -------
    pd.DataFrame
        Columns: the matrix keys, ``true_label``, ``predicted_label``, ``count``
        (and ``fraction``).
    """
    if normalize not in (None, "true"):
        raise ValueError(f"normalize must be None or 'true', got {normalize!r}")
    if labels is None:
        labels = sorted(set(predictions["y_true"]) | set(predictions["y_pred"]))
    labels = list(labels)
    keys = [k for k in MATRIX_KEYS if k in predictions.columns]
    grid = pd.MultiIndex.from_product([labels, labels], names=["true_label", "predicted_label"])
    parts = []
    for key, g in predictions.groupby(keys, sort=False):
        counts = (
            g.groupby(["y_true", "y_pred"]).size().rename_axis(["true_label", "predicted_label"])
        )
        cm = counts.reindex(grid, fill_value=0).rename("count").reset_index()
        if normalize == "true":
            row_sum = cm.groupby("true_label")["count"].transform("sum")
            cm["fraction"] = cm["count"] / row_sum.where(row_sum > 0)
        for k, v in zip(keys, key, strict=True):
            cm.insert(keys.index(k), k, v)
        parts.append(cm)
    return pd.concat(parts, ignore_index=True)


def per_class_f1(predictions: pd.DataFrame, labels: Sequence | None = None) -> pd.DataFrame:
    """Precision, recall and F1 of every class, per cell of the domain matrix and repetition.

    Only label-space classes present in the test set are listed, the same rule
    as ``macro_f1`` of :func:`domain_matrix`, so the mean of ``f1`` over a
    (cell, repetition) equals that row's ``macro_f1``.

    Parameters
    ----------
    predictions : pd.DataFrame
        Second output of :func:`domain_matrix` with ``return_predictions=True``.
    labels : sequence or None
        The label space (``None``: sorted labels seen in ``y_true``).

    Returns
    -------
    pd.DataFrame
        Columns: the matrix keys, ``repetition``, ``label``, ``precision``,
        ``recall``, ``f1``, ``support``.
    """
    if labels is None:
        labels = sorted(set(predictions["y_true"]))
    keys = [k for k in MATRIX_KEYS if k in predictions.columns] + ["repetition"]
    rows = []
    for key, g in predictions.groupby(keys, sort=False):
        present = [lab for lab in labels if lab in set(g["y_true"].tolist())]
        p, r, f, s = precision_recall_fscore_support(
            g["y_true"], g["y_pred"], labels=present, zero_division=0
        )
        for i, lab in enumerate(present):
            rows.append(
                {**dict(zip(keys, key, strict=True)), "label": lab, "precision": p[i], "recall": r[i],
                 "f1": f[i], "support": int(s[i])}
            )
    return pd.DataFrame(rows)


def _n_samples(X: Any) -> int:
    return X.shape[0] if hasattr(X, "shape") else len(X)


def _take(X: Any, idx: np.ndarray) -> Any:
    """Rows ``idx`` of an array, a DataFrame or a list (images of varying size)."""
    if isinstance(X, pd.DataFrame):
        return X.iloc[idx]
    if isinstance(X, np.ndarray):
        return X[idx]
    return [X[i] for i in idx]
