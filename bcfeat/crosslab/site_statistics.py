"""A site's feature statistics, computed from its own unlabelled cells: plain, class-weighted and
class-balanced (CBR) centres and spreads, standardisation with them, the EM re-estimate of a
site's class mix, and the temperature that softens probabilities.

:class:`bcfeat.crosslab.adaptation.CrossLabClassifier` adapts to each lab with these; they read no
label of a target site (the class-balanced ones take the classifier's own predictions).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

# Fewer cells give statistics too noisy to stand for a site.
MIN_SITE_CELLS = 10
# Standardised values beyond this many spreads are clipped (a failed segmentation is an outlier).
CLIP = 6.0
# CBR: a predicted class needs this many cells for its mean and spread to count ...
CBR_MIN_CLASS_CELLS = 3
# ... and a call this many cells (the published rule) before class statistics replace plain ones.
CBR_MIN_CELLS = 32


@dataclass(frozen=True)
class SiteStatistics:
    """Centre, spread and NaN fill value of every feature over one site's cells.

    Attributes
    ----------
    centre, scale, fill : np.ndarray
        ``(d,)`` float64. ``scale`` is never 0 (a constant feature gets 1).
    n_cells : int
    """

    centre: np.ndarray
    scale: np.ndarray
    fill: np.ndarray
    n_cells: int

    def to_dict(self) -> dict:
        """Plain lists (JSON-able), for model files."""
        return {"centre": self.centre.tolist(), "scale": self.scale.tolist(), "fill": self.fill.tolist(),
                "n_cells": int(self.n_cells)}

    @classmethod
    def from_dict(cls, d: dict) -> SiteStatistics:
        return cls(np.asarray(d["centre"], float), np.asarray(d["scale"], float), np.asarray(d["fill"], float),
                   int(d["n_cells"]))


def _weighted_median(X: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Column-wise weighted median of ``(n, d)`` values (NaN-free) with weights ``(n,)``."""
    order = np.argsort(X, axis=0)
    cum = np.cumsum(w[order], axis=0)
    idx = (cum >= 0.5 * cum[-1]).argmax(axis=0)
    return np.take_along_axis(X, order, axis=0)[idx, np.arange(X.shape[1])]


_STATISTICS_COLUMNS = 16  # columns of the features summarised at a time (bounds the temporaries)


def site_statistics(X: np.ndarray, weights: np.ndarray | None = None) -> SiteStatistics:
    """Weighted mean and standard deviation of a site's features ``(n, d)`` (NaN ignored).

    ``weights`` ``(n,)`` >= 0, e.g. from :func:`class_balanced_weights`; ``None`` weighs every
    cell the same. NaNs (a feature that could not be measured on a cell) are left out of the
    statistics and later filled with the site's weighted median (``fill``).

    Examples
    --------
    >>> s = site_statistics(np.array([[0.0], [2.0], [4.0], [np.nan]] * 5))
    >>> float(s.centre[0]), round(float(s.scale[0]), 3), float(s.fill[0])
    (2.0, 1.633, 2.0)
    """
    X = np.asarray(X, dtype=np.float64)
    n = len(X)
    if n < MIN_SITE_CELLS:
        raise ValueError(f"site statistics need at least {MIN_SITE_CELLS} cells of the site, got {n}")
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (n,) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError(f"weights must be {n} non-negative numbers with a positive sum")
    centre, scale, fill = np.empty(X.shape[1]), np.empty(X.shape[1]), np.empty(X.shape[1])
    # a few columns at a time: the temporaries of a large call (20,000 cells) stay a few MB
    for start in range(0, X.shape[1], _STATISTICS_COLUMNS):
        cols = slice(start, start + _STATISTICS_COLUMNS)
        centre[cols], scale[cols], fill[cols] = _column_statistics(X[:, cols], w)
    return SiteStatistics(centre, scale, fill, n)


def _column_statistics(X: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weighted centre, scale and NaN fill of each column of ``X`` (see :func:`site_statistics`)."""
    missing = np.isnan(X)
    W = np.where(missing, 0.0, w[:, None])
    total = np.maximum(W.sum(axis=0), 1e-12)
    filled = np.where(missing, 0.0, X)
    centre = (W * filled).sum(axis=0) / total
    var = (W * (filled - centre) ** 2).sum(axis=0) / total
    scale = np.sqrt(var)
    scale = np.where(scale > 1e-9 * np.maximum(1.0, np.abs(centre)), scale, 1.0)
    return centre, scale, _weighted_median(np.where(missing, centre, X), w)


def standardize(X: np.ndarray, stats: SiteStatistics) -> np.ndarray:
    """``(n, d)`` features -> ``(X - centre) / scale``, NaN filled first, clipped to +-:data:`CLIP`."""
    X = np.asarray(X, dtype=np.float64)
    Z = np.where(np.isnan(X), stats.fill, X)  # the one new (n, d) array: the rest is done in place
    Z -= stats.centre
    Z /= stats.scale
    return np.clip(Z, -CLIP, CLIP, out=Z)


def class_balanced_weights(posteriors: np.ndarray) -> np.ndarray:
    """Cell weights that give every (predicted) class the same total weight.

    ``posteriors`` ``(n, k)``: one-hot labels or a classifier's probabilities. Cell ``i``
    gets ``sum_c P[i, c] / sum_j P[j, c]`` over the classes present (total weight > 0.5 cell).

    Examples
    --------
    >>> class_balanced_weights(np.eye(2)[[0, 0, 0, 1]]).round(3).tolist()
    [0.333, 0.333, 0.333, 1.0]
    """
    P = np.asarray(posteriors, dtype=np.float64)
    mass = P.sum(axis=0)
    present = mass > 0.5
    return (P[:, present] / mass[present]).sum(axis=1)


def _cbr_classes(labels: np.ndarray, min_class_cells: int, min_cells: int) -> np.ndarray | None:
    """The classes whose statistics CBR averages, or ``None`` where a call falls back to the
    plain statistics (fewer than ``min_cells`` cells, or fewer than two classes of at least
    ``min_class_cells`` cells)."""
    classes, counts = np.unique(labels, return_counts=True)
    kept = classes[counts >= min_class_cells]
    return None if len(labels) < min_cells or len(kept) < 2 else kept


def class_conditional_statistics(X: np.ndarray, labels: np.ndarray, fallback_ratio: np.ndarray | None = None,
                                 min_class_cells: int = CBR_MIN_CLASS_CELLS,
                                 min_cells: int = CBR_MIN_CELLS) -> SiteStatistics:
    """Class-balanced re-standardisation statistics of one site's features ``(n, d)``.

    ``labels`` ``(n,)``: known labels (the training site) or hard pseudo-labels (a target site).
    The centre is the unweighted average of the class means and the scale the square root of
    the average within-class variance, over the classes with at least ``min_class_cells`` cells;
    both are independent of how many cells each class has. With fewer than ``min_cells`` cells
    or fewer than two such classes, the plain statistics are used, their scale multiplied by
    ``fallback_ratio`` ``(d,)`` (the training site's within-class to total spread) when given.

    Examples
    --------
    >>> X = np.array([[0.0]] * 40 + [[10.0]] * 10) + np.tile([[-1.0], [1.0]], (25, 1))
    >>> s = class_conditional_statistics(X, np.array([0] * 40 + [1] * 10))
    >>> float(s.centre[0]), float(s.scale[0])     # the 4:1 mix moves neither
    (5.0, 1.0)
    """
    X = np.asarray(X, dtype=np.float64)
    labels = np.asarray(labels)
    return _class_conditional(X, labels, site_statistics(X), _cbr_classes(labels, min_class_cells, min_cells),
                              fallback_ratio)


def _class_conditional(X: np.ndarray, labels: np.ndarray, plain: SiteStatistics, kept: np.ndarray | None,
                       fallback_ratio: np.ndarray | None) -> SiteStatistics:
    """:func:`class_conditional_statistics` from the call's plain statistics and the classes CBR
    keeps (``None``: the fallback)."""
    if kept is None:
        ratio = np.ones(X.shape[1]) if fallback_ratio is None else np.asarray(fallback_ratio, np.float64)
        return SiteStatistics(plain.centre, plain.scale * ratio, plain.fill, plain.n_cells)
    means, variances = [], []
    for c in kept:
        rows = X[labels == c]
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a column all NaN in a class: filled below
            m = np.nanmean(rows, axis=0)
            v = np.nanmean((rows - m) ** 2, axis=0)
        means.append(np.where(np.isnan(m), plain.centre, m))
        variances.append(np.where(np.isnan(v), plain.scale ** 2, v))
    centre = np.mean(means, axis=0)
    scale = np.sqrt(np.mean(variances, axis=0))
    scale = np.where(scale > 1e-9 * np.maximum(1.0, np.abs(centre)), scale, plain.scale)
    return SiteStatistics(centre, scale, plain.fill, plain.n_cells)


def class_moments(Z: np.ndarray, labels: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance of every class's rows (NaN ignored): two ``(n_classes, d)`` arrays.

    ``labels`` ``(n,)``: class indices ``0 .. n_classes - 1``; each class needs a row.

    >>> m, v = class_moments(np.array([[0.0], [2.0], [5.0]]), np.array([0, 0, 1]), 2)
    >>> m.ravel().tolist(), v.ravel().tolist()
    ([1.0, 5.0], [1.0, 0.0])
    """
    Z = np.asarray(Z, dtype=np.float64)
    labels = np.asarray(labels)
    missing = sorted(set(range(n_classes)) - set(labels.tolist()))
    if missing:
        raise ValueError(f"class moments need a row of every class; classes {missing} have none")
    means = np.stack([np.nanmean(Z[labels == c], axis=0) for c in range(n_classes)])
    variances = np.stack([np.nanvar(Z[labels == c], axis=0) for c in range(n_classes)])
    return means, variances


def mix_spread(class_means: np.ndarray, class_variances: np.ndarray, shares: np.ndarray) -> np.ndarray:
    """``(d,)`` standard deviation of a population made of the classes in ``shares`` ``(k,)``,
    from each class's mean and variance ``(k, d)``: the within-class variance and the spread of
    the class means, both weighted by the shares.

    >>> mix_spread(np.array([[0.0], [2.0]]), np.array([[1.0], [1.0]]), np.array([0.5, 0.5])).tolist()
    [1.4142135623730951]
    """
    shares = np.asarray(shares, dtype=np.float64)
    mean = shares @ class_means
    second = shares @ (class_variances + class_means ** 2)
    return np.sqrt(np.maximum(second - mean ** 2, 0.0))


def mix_corrected_statistics(X: np.ndarray, labels: np.ndarray, class_means: np.ndarray,
                             class_variances: np.ndarray, fallback_ratio: np.ndarray | None = None,
                             min_class_cells: int = CBR_MIN_CLASS_CELLS,
                             min_cells: int = CBR_MIN_CELLS) -> SiteStatistics:
    """CBR's centre with a spread read from the whole call, corrected for its predicted mix.

    CBR's spread is the average within-class spread of the *predicted* classes, so every cell
    the classifier puts in the wrong class widens or narrows it. Here the spread is the call's
    plain standard deviation (every cell, whatever its class) divided by the standard deviation
    the training cells would have in the classifier's standardised view with the call's
    predicted class shares (:func:`mix_spread`): a lab that only stretches a feature keeps the
    training lab's spread in that view, whatever its class mix, and only the class *shares*, not
    the class members, are read from the predictions.

    ``labels`` ``(n,)``: hard class indices ``0 .. k-1`` (the classifier's own predictions);
    ``class_means``, ``class_variances`` ``(k, d)``: the training cells' moments per class in
    the classifier's standardised view (:func:`class_moments`). Where CBR falls back (a small
    call, fewer than two classes; :func:`class_conditional_statistics`) so does this, and a
    feature whose training spread under the mix is 0 keeps CBR's spread.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> Z = np.r_[rng.normal(0, 1, (200, 1)), rng.normal(4, 1, (200, 1))]; y = np.repeat([0, 1], 200)
    >>> m, v = class_moments(Z, y, 2)
    >>> lab = Z[:300] * 3.0 + 7.0        # another lab: the feature stretched 3 times, a 2:1 class mix
    >>> s = mix_corrected_statistics(lab, y[:300], m, v)
    >>> round(float(s.scale[0]), 1)      # the stretch, read from all its cells
    3.0
    """
    X = np.asarray(X, dtype=np.float64)
    labels = np.asarray(labels)
    plain = site_statistics(X)
    kept = _cbr_classes(labels, min_class_cells, min_cells)
    cbr = _class_conditional(X, labels, plain, kept, fallback_ratio)
    if kept is None:
        return cbr
    k = len(class_means)
    if labels.min() < 0 or labels.max() >= k:
        raise ValueError(f"labels must be class indices in 0..{k - 1}, got {labels.min()}..{labels.max()}")
    shares = np.bincount(labels.astype(np.int64), minlength=k) / len(labels)
    spread = mix_spread(class_means, class_variances, shares)
    usable = spread > 1e-9
    scale = np.where(usable, plain.scale / np.where(usable, spread, 1.0), cbr.scale)
    return SiteStatistics(cbr.centre, scale, cbr.fill, cbr.n_cells)


def em_class_priors(posteriors: np.ndarray, train_priors: np.ndarray, max_iter: int = 200,
                    tol: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    """EM re-estimation of a target site's class mix (Saerens, Latinne & Decaestecker 2002).

    Parameters
    ----------
    posteriors : (n, k) array
        The classifier's probabilities on the target cells, under ``train_priors``.
    train_priors : (k,) array
        The class mix the classifier's probabilities assume.

    Returns
    -------
    adjusted : (n, k) array
        Posteriors under the estimated target mix.
    priors : (k,) array
        The estimated target mix.
    """
    P = np.asarray(posteriors, dtype=np.float64)
    base = np.asarray(train_priors, dtype=np.float64)
    priors = base.copy()
    adjusted = P
    for _ in range(max_iter):
        adjusted = P * (priors / base)
        adjusted /= np.maximum(adjusted.sum(axis=1, keepdims=True), 1e-300)
        new = adjusted.mean(axis=0)
        done = np.abs(new - priors).max() < tol
        priors = new
        if done:
            break
    return adjusted, priors


def soften(proba: np.ndarray, temperature: float) -> np.ndarray:
    """``(n, k)`` probabilities -> ``softmax(log p / temperature)``, rows summing to 1.

    >>> soften(np.array([[0.8, 0.2]]), 2.0).round(3).tolist()
    [[0.667, 0.333]]
    """
    logp = np.log(np.clip(np.asarray(proba, np.float64), 1e-12, 1.0)) / float(temperature)
    logp -= logp.max(axis=1, keepdims=True)
    e = np.exp(logp)
    return e / e.sum(axis=1, keepdims=True)


__all__ = ["MIN_SITE_CELLS", "CLIP", "CBR_MIN_CLASS_CELLS", "CBR_MIN_CELLS", "SiteStatistics", "site_statistics",
           "standardize", "class_balanced_weights", "class_conditional_statistics", "class_moments", "mix_spread",
           "mix_corrected_statistics", "em_class_priors", "soften"]
