"""How much a feature set still tells the sites apart (domain invariance).

The paper's claim (Sec. 2.3, Fig. 3) is that its domain-alignment loss makes the
features of different labs overlap. Two numbers measure that for any feature
matrix:

* :func:`site_classification` - how well a classifier predicts the *site* from
  the features (cross-validated). Every site is subsampled to the same size
  (the smallest site, capped by ``max_per_site``), so chance accuracy is
  ``1 / n_sites`` and the large source site (5k+ images vs 100-351) cannot
  dominate; balanced accuracy is reported as well. Invariant features score
  near chance.
* :func:`pairwise_mmd` - the unbiased Gaussian-kernel maximum mean discrepancy
  MMD² (Gretton et al., JMLR 2012, eq. 3) between every pair of sites, on
  features standardised over an equal-sized pooled subsample, with one
  median-heuristic bandwidth for all pairs so the pairs are comparable. Zero in
  expectation when two sites share a distribution (the unbiased estimate can be
  slightly negative).
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations

import numpy as np
import pandas as pd
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, balanced_accuracy_score
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.validation import check_array

from bcfeat.evaluation.benchmark import RF_MAX_DEPTH, RF_N_ESTIMATORS


def balanced_subsample(domain: Sequence, n_per_site: int, random_state: int | np.random.Generator = 0) -> np.ndarray:
    """Indices of ``n_per_site`` random samples of every site (without replacement).

    Parameters
    ----------
    domain : array-like, shape (n,)
    n_per_site : int
        Must not exceed the smallest site.
    random_state : int or Generator

    Returns
    -------
    np.ndarray of int, shape (n_sites * n_per_site,)
        Sorted indices.

    Examples
    --------
    >>> balanced_subsample(["a"] * 5 + ["b"] * 2, 2, 0).shape
    (4,)
    """
    domain = np.asarray(domain)
    rng = np.random.default_rng(random_state)
    out = []
    for d in np.unique(domain).tolist():
        idx = np.flatnonzero(domain == d)
        if len(idx) < n_per_site:
            raise ValueError(f"site {d!r} has {len(idx)} samples, fewer than n_per_site={n_per_site}")
        out.append(rng.choice(idx, size=n_per_site, replace=False))
    return np.sort(np.concatenate(out))


def _site_classifier(classifier: str, random_state: int, n_jobs: int):
    if classifier == "rf":
        return RandomForestClassifier(
            n_estimators=RF_N_ESTIMATORS, max_depth=RF_MAX_DEPTH, random_state=random_state, n_jobs=n_jobs
        )
    if classifier == "logreg":
        return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=random_state))
    raise ValueError(f"classifier must be 'rf' or 'logreg', got {classifier!r}")


def site_classification(
    X: np.ndarray,
    domain: Sequence,
    *,
    classifier: str = "rf",
    max_per_site: int | None = 500,
    n_splits: int = 5,
    n_repeats: int = 3,
    feature_set_name: str = "",
    random_state: int = 0,
    n_jobs: int = 2,
) -> pd.DataFrame:
    """Cross-validated accuracy of predicting the site from the features.

    Parameters
    ----------
    X : array-like, shape (n, d)
    domain : array-like, shape (n,)
    classifier : {"rf", "logreg"}
        The benchmark's random forest, or a standardised logistic regression
        (a linear probe).
    max_per_site : int or None
        Cap on the per-site subsample; the subsample size is
        ``min(smallest site, max_per_site)``.
    n_splits : int
        Stratified folds (by site) of each subsample.
    n_repeats : int
        Independent subsamples (seeds ``random_state + repeat``).
    feature_set_name : str
    random_state : int
    n_jobs : int
        Forest workers.

    Returns
    -------
    pd.DataFrame
        One row per (repeat, fold): ``feature_set, classifier, repeat, fold,
        n_sites, n_per_site, chance, accuracy, balanced_accuracy``.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> X = np.r_[rng.normal(0, 1, (60, 3)), rng.normal(5, 1, (60, 3))]
    >>> df = site_classification(X, ["a"] * 60 + ["b"] * 60, classifier="logreg", n_repeats=1)
    >>> float(df.accuracy.mean())
    1.0
    """
    X = check_array(X, dtype=np.float64)
    domain = np.asarray(domain)
    if len(domain) != len(X):
        raise ValueError(f"X has {len(X)} rows but domain has {len(domain)}")
    sites, counts = np.unique(domain, return_counts=True)
    if len(sites) < 2:
        raise ValueError(f"need at least 2 sites, got {sites.tolist()}")
    n_per_site = int(counts.min() if max_per_site is None else min(counts.min(), max_per_site))
    if n_per_site < n_splits:
        raise ValueError(f"the smallest site has {counts.min()} samples, fewer than n_splits={n_splits}")
    rows = []
    for rep in range(n_repeats):
        idx = balanced_subsample(domain, n_per_site, random_state + rep)
        Xs, ds = X[idx], domain[idx]
        cv = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=random_state + rep)
        for fold, (tr, te) in enumerate(cv.split(Xs, ds)):
            clf = _site_classifier(classifier, random_state + rep, n_jobs).fit(Xs[tr], ds[tr])
            pred = clf.predict(Xs[te])
            rows.append(
                {
                    "feature_set": feature_set_name,
                    "classifier": classifier,
                    "repeat": rep,
                    "fold": fold,
                    "n_sites": len(sites),
                    "n_per_site": n_per_site,
                    "chance": 1.0 / len(sites),
                    "accuracy": accuracy_score(ds[te], pred),
                    "balanced_accuracy": balanced_accuracy_score(ds[te], pred),
                }
            )
    return pd.DataFrame(rows)


def _sq_dists(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances ``(len(A), len(B))``, clipped at 0 against round-off."""
    d = (A * A).sum(1)[:, None] + (B * B).sum(1)[None, :] - 2.0 * A @ B.T
    return np.maximum(d, 0.0)


def median_bandwidth(Z: np.ndarray) -> float:
    """Median heuristic: the median pairwise Euclidean distance between distinct rows of ``Z``.

    Examples
    --------
    >>> median_bandwidth(np.array([[0.0], [1.0], [3.0]]))
    2.0
    """
    d = np.sqrt(_sq_dists(Z, Z)[np.triu_indices(len(Z), k=1)])
    bw = float(np.median(d))
    if bw <= 0:
        raise ValueError("median pairwise distance is 0 (constant features); give a bandwidth")
    return bw


def mmd2_unbiased(X: np.ndarray, Y: np.ndarray, bandwidth: float) -> float:
    """Unbiased MMD² with the Gaussian kernel ``exp(-||x - y||² / (2 bandwidth²))``.

    Parameters
    ----------
    X : np.ndarray, shape (m, d)
    Y : np.ndarray, shape (n, d)
        m, n >= 2.
    bandwidth : float

    Returns
    -------
    float
        ``mean_{i!=j} k(x_i, x_j) + mean_{i!=j} k(y_i, y_j) - 2 mean k(x_i, y_j)``.

    Examples
    --------
    >>> round(mmd2_unbiased(np.array([[0.0], [0.0]]), np.array([[0.0], [0.0]]), 1.0), 6)
    0.0
    """
    X, Y = np.asarray(X, np.float64), np.asarray(Y, np.float64)
    m, n = len(X), len(Y)
    if m < 2 or n < 2:
        raise ValueError(f"MMD needs >= 2 samples per set, got {m} and {n}")
    gamma = 1.0 / (2.0 * bandwidth**2)
    kxx = np.exp(-gamma * _sq_dists(X, X))
    kyy = np.exp(-gamma * _sq_dists(Y, Y))
    kxy = np.exp(-gamma * _sq_dists(X, Y))
    return float(
        (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
        + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
        - 2.0 * kxy.mean()
    )


def pairwise_mmd(
    X: np.ndarray,
    domain: Sequence,
    *,
    max_per_site: int = 500,
    bandwidth: float | str = "median",
    feature_set_name: str = "",
    random_state: int = 0,
) -> pd.DataFrame:
    """Unbiased Gaussian-kernel MMD² between every pair of sites.

    Each site is randomly subsampled to ``min(its size, max_per_site)``
    samples; features are standardised with the mean and std of an
    equal-sized pooled subsample (``min(smallest site, max_per_site)`` per site),
    so no site dominates the scaling or the median-heuristic bandwidth.

    Parameters
    ----------
    X : array-like, shape (n, d)
    domain : array-like, shape (n,)
    max_per_site : int
    bandwidth : float or "median"
        Kernel width on the standardised features; ``"median"``: see
        :func:`median_bandwidth` (on the pooled subsample).
    feature_set_name : str
    random_state : int

    Returns
    -------
    pd.DataFrame
        One row per site pair ``(site_a, site_b)`` in sorted order: columns
        ``feature_set, site_a, site_b, n_a, n_b, bandwidth, mmd2``.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> X = np.r_[rng.normal(0, 1, (100, 2)), rng.normal(3, 1, (100, 2))]
    >>> float(pairwise_mmd(X, ["a"] * 100 + ["b"] * 100).mmd2.iloc[0]) > 0.3
    True
    """
    X = check_array(X, dtype=np.float64)
    domain = np.asarray(domain)
    if len(domain) != len(X):
        raise ValueError(f"X has {len(X)} rows but domain has {len(domain)}")
    rng = np.random.default_rng(random_state)
    sites, counts = np.unique(domain, return_counts=True)
    if len(sites) < 2:
        raise ValueError(f"need at least 2 sites, got {sites.tolist()}")
    pooled = X[balanced_subsample(domain, int(min(counts.min(), max_per_site)), rng)]
    mu, sd = pooled.mean(0), pooled.std(0)
    sd[sd == 0] = 1.0  # a constant feature carries no site information; leave it at 0
    Z = (X - mu) / sd
    bw = median_bandwidth((pooled - mu) / sd) if bandwidth == "median" else float(bandwidth)
    per_site = {}
    for s, c in zip(sites.tolist(), counts.tolist()):
        idx = np.flatnonzero(domain == s)
        per_site[s] = Z[rng.choice(idx, size=min(c, max_per_site), replace=False)]
    rows = []
    for a, b in combinations(sites.tolist(), 2):
        rows.append(
            {
                "feature_set": feature_set_name,
                "site_a": a,
                "site_b": b,
                "n_a": len(per_site[a]),
                "n_b": len(per_site[b]),
                "bandwidth": bw,
                "mmd2": mmd2_unbiased(per_site[a], per_site[b], bw),
            }
        )
    return pd.DataFrame(rows)
