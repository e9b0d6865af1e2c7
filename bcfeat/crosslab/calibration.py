"""How far to trust the cross-lab classifier's probabilities, and when to warn.

A linear classifier trained on one lab's labelled cells and applied to another lab can be
confident while wrong. This module measures that and guards against it, without ever using
the labels of the lab a number is applied to:

1. **Calibration, measured.** :func:`expected_calibration_error` (top-label ECE with
   equal-width confidence bins), :func:`reliability_table` / :func:`reliability_figure`
   (confidence against accuracy per bin, one line per lab) and :func:`calibration_summary`
   (ECE, mean confidence, accuracy, their gap, negative log-likelihood).
2. **Recalibration without target labels.** :func:`fit_temperature` fits one temperature
   ``T`` on labelled *development* data (simulated labs rendered from the training lab);
   :func:`apply_temperature` then applies ``softmax(log(p) / T)`` to the probabilities of
   any lab. Because ``log softmax(z) = z - logsumexp(z)`` differs from the logits ``z`` by a
   per-row constant, this is exactly ``softmax(z / T)``: the same recalibration whether the
   classifier hands over logits or probabilities. ``T > 1`` softens overconfident
   probabilities; the predicted class never changes.
3. **An "uncertain" flag per cell.** :class:`UncertainRule` flags a cell whose top
   probability (after the temperature) is below a threshold; :func:`choose_uncertain_rule`
   picks the threshold on development data (a target share of errors caught, under a cap on
   the share of cells sent to review) and :func:`review_table` measures the review cost and
   the catch rate on any labelled set.

The lab-level warning (is this lab like any seen?) is :mod:`bcfeat.crosslab.novelty`.

Conventions: ``proba`` is ``(n, k)`` with rows that sum to 1 (within ``1e-6``);
``y_true_idx`` is ``(n,)`` integer class indices in ``[0, k)``; the predicted class of a cell
is ``argmax`` of its row and its confidence is the row maximum. Wrong shapes or values raise
``ValueError`` naming the offending value.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

__all__ = [
    "UncertainRule",
    "apply_temperature",
    "calibration_summary",
    "choose_uncertain_rule",
    "expected_calibration_error",
    "fit_temperature",
    "reliability_figure",
    "reliability_table",
    "review_table",
]

#: Probabilities are clipped to at least this before a logarithm (so p = 0 stays finite).
PROBA_FLOOR = 1e-12
#: How far a row of ``proba`` may sum from 1.
ROW_SUM_TOL = 1e-6
#: Columns of :func:`reliability_table`.
TABLE_COLUMNS = ("bin_low", "bin_high", "n", "confidence", "accuracy")
# Slack for products such as target * n_errors that should be integers (0.3 * 10 = 3.0000000000000004).
_COUNT_EPS = 1e-9


# --------------------------------------------------------------------------------------------
# validation helpers
# --------------------------------------------------------------------------------------------

def _check_proba(proba) -> np.ndarray:
    """``(n, k)`` float64 probabilities with n >= 1, k >= 2, finite, >= 0, rows summing to 1."""
    p = np.asarray(proba, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"proba must be 2-d (n, k); got shape {p.shape}")
    n, k = p.shape
    if n < 1 or k < 2:
        raise ValueError(f"proba must have at least 1 row and 2 classes; got shape {p.shape}")
    if not np.all(np.isfinite(p)):
        raise ValueError(f"proba has {int(np.sum(~np.isfinite(p)))} non-finite value(s)")
    if p.min() < 0:
        raise ValueError(f"proba has a negative value: {float(p.min()):.6g}")
    sums = p.sum(axis=1)
    worst = int(np.argmax(np.abs(sums - 1.0)))
    if abs(sums[worst] - 1.0) > ROW_SUM_TOL:
        raise ValueError(f"rows of proba must sum to 1; row {worst} sums to {float(sums[worst]):.6g}")
    return p


def _check_labels(y_true_idx, n: int, k: int) -> np.ndarray:
    """``(n,)`` integer class indices in ``[0, k)``."""
    y = np.asarray(y_true_idx)
    if y.ndim != 1 or y.shape[0] != n:
        raise ValueError(f"y_true_idx must have shape ({n},) to match proba; got shape {y.shape}")
    if y.dtype.kind not in "iu":
        if y.dtype.kind == "f" and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
            y = y.astype(np.int64)
        else:
            raise ValueError(f"y_true_idx must hold integer class indices; got dtype {y.dtype}")
    if n and (y.min() < 0 or y.max() >= k):
        bad = y[(y < 0) | (y >= k)][0]
        raise ValueError(f"y_true_idx must lie in [0, {k}); got {int(bad)}")
    return y.astype(np.int64)


def _check_n_bins(n_bins) -> int:
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ValueError(f"n_bins must be an integer >= 1; got {n_bins!r}")
    return int(n_bins)


def _check_temperature(temperature) -> float:
    try:
        t = float(temperature)
    except (TypeError, ValueError):
        raise ValueError(f"temperature must be a positive number; got {temperature!r}") from None
    if not (math.isfinite(t) and t > 0):
        raise ValueError(f"temperature must be finite and > 0; got {t!r}")
    return t


def _check_fraction(name: str, value) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number in [0, 1]; got {value!r}") from None
    if not (0.0 <= v <= 1.0):
        raise ValueError(f"{name} must lie in [0, 1]; got {v!r}")
    return v


def _proba_and_labels(proba, y_true_idx) -> tuple[np.ndarray, np.ndarray]:
    p = _check_proba(proba)
    return p, _check_labels(y_true_idx, *p.shape)


def _bin_stats(confidence: np.ndarray, correct: np.ndarray, n_bins: int):
    """Per equal-width bin on [0, 1]: edges ``(n_bins + 1,)``, counts, mean confidence, accuracy.

    Bins are ``(low, high]``; the first also holds confidence 0. Empty bins get NaN means.
    """
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.digitize(confidence, edges[1:-1], right=True)  # 0 .. n_bins - 1
    counts = np.bincount(which, minlength=n_bins).astype(np.int64)
    conf_sum = np.bincount(which, weights=confidence, minlength=n_bins)
    acc_sum = np.bincount(which, weights=correct.astype(np.float64), minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        conf_mean = np.where(counts > 0, conf_sum / np.maximum(counts, 1), np.nan)
        acc_mean = np.where(counts > 0, acc_sum / np.maximum(counts, 1), np.nan)
    return edges, counts, conf_mean, acc_mean


# --------------------------------------------------------------------------------------------
# calibration measured
# --------------------------------------------------------------------------------------------

def expected_calibration_error(proba: np.ndarray, y_true_idx: np.ndarray, n_bins: int = 15) -> float:
    """Top-label expected calibration error with equal-width confidence bins.

    ``ECE = sum_b (n_b / n) * |accuracy_b - confidence_b|`` where bin ``b`` holds the cells
    whose top probability lies in ``(b / n_bins, (b + 1) / n_bins]`` (the first bin also holds
    0), ``confidence_b`` is their mean top probability and ``accuracy_b`` the share of them
    whose ``argmax`` is the true class. 0 is perfect; an overconfident classifier scores high.

    Parameters
    ----------
    proba : (n, k) array
        Class probabilities, rows summing to 1.
    y_true_idx : (n,) int array
        True class indices in ``[0, k)``.
    n_bins : int
        Number of equal-width bins on [0, 1] (>= 1).

    Returns
    -------
    float
        The ECE, in [0, 1].

    Examples
    --------
    >>> p = np.array([[0.85, 0.15], [0.85, 0.15], [0.65, 0.35], [0.25, 0.75]])
    >>> y = np.array([0, 1, 0, 1])  # bins (0.8, 0.9]: 2 cells, 1 right; (0.6, 0.7], (0.7, 0.8]: 1 right each
    >>> round(expected_calibration_error(p, y, n_bins=10), 6)  # 2/4 * 0.35 + 1/4 * 0.35 + 1/4 * 0.25
    0.325
    """
    table = reliability_table(proba, y_true_idx, n_bins)
    used = table[table["n"] > 0]
    return float(np.sum(used["n"] / table["n"].sum() * np.abs(used["accuracy"] - used["confidence"])))


def reliability_table(proba: np.ndarray, y_true_idx: np.ndarray, n_bins: int = 10) -> pd.DataFrame:
    """Confidence against accuracy per equal-width confidence bin (the reliability diagram's data).

    Parameters
    ----------
    proba : (n, k) array
        Class probabilities, rows summing to 1.
    y_true_idx : (n,) int array
        True class indices in ``[0, k)``.
    n_bins : int
        Number of equal-width bins on [0, 1] (>= 1); bins as in
        :func:`expected_calibration_error`.

    Returns
    -------
    pandas.DataFrame
        ``n_bins`` rows, one per bin including empty ones, with columns ``bin_low``,
        ``bin_high``, ``n`` (cells in the bin), ``confidence`` (their mean top probability)
        and ``accuracy`` (share correct); both means are NaN for an empty bin. The ECE is
        ``sum(n / n.sum() * |accuracy - confidence|)`` over the non-empty rows.

    Examples
    --------
    >>> p = np.array([[0.85, 0.15], [0.85, 0.15], [0.65, 0.35], [0.25, 0.75]])
    >>> t = reliability_table(p, np.array([0, 1, 0, 1]), n_bins=2)
    >>> t["n"].tolist(), t["confidence"].round(3).tolist(), t["accuracy"].tolist()
    ([0, 4], [nan, 0.775], [nan, 0.75])
    """
    p, y = _proba_and_labels(proba, y_true_idx)
    n_bins = _check_n_bins(n_bins)
    confidence = p.max(axis=1)
    correct = p.argmax(axis=1) == y
    edges, counts, conf_mean, acc_mean = _bin_stats(confidence, correct, n_bins)
    return pd.DataFrame(dict(zip(TABLE_COLUMNS, (edges[:-1], edges[1:], counts, conf_mean, acc_mean))))


def _nll(p: np.ndarray, y: np.ndarray) -> float:
    return float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], PROBA_FLOOR, 1.0))))


def calibration_summary(proba: np.ndarray, y_true_idx: np.ndarray, n_bins: int = 15) -> dict:
    """One lab's calibration in a few numbers.

    Parameters
    ----------
    proba : (n, k) array
        Class probabilities, rows summing to 1.
    y_true_idx : (n,) int array
        True class indices in ``[0, k)``.
    n_bins : int
        Bins of the ECE.

    Returns
    -------
    dict
        ``ece`` (:func:`expected_calibration_error`), ``mean_confidence`` (mean top
        probability), ``accuracy`` (share of ``argmax`` correct), ``confidence_gap``
        (``mean_confidence - accuracy``; > 0 is overconfident), ``nll`` (mean negative log
        probability of the true class, probabilities clipped at ``1e-12``) and ``n_cells``.

    Examples
    --------
    >>> s = calibration_summary(np.array([[0.8, 0.2], [0.8, 0.2]]), np.array([0, 1]))
    >>> round(s["confidence_gap"], 3), round(s["accuracy"], 3), round(s["nll"], 3)
    (0.3, 0.5, 0.916)
    """
    p, y = _proba_and_labels(proba, y_true_idx)
    mean_conf = float(p.max(axis=1).mean())
    acc = float(np.mean(p.argmax(axis=1) == y))
    return {"ece": expected_calibration_error(p, y, n_bins=n_bins), "mean_confidence": mean_conf,
            "accuracy": acc, "confidence_gap": mean_conf - acc, "nll": _nll(p, y),
            "n_cells": int(len(y))}


# --------------------------------------------------------------------------------------------
# temperature scaling
# --------------------------------------------------------------------------------------------

def _tempered_log_proba(log_p: np.ndarray, temperature: float) -> np.ndarray:
    z = log_p / temperature
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def apply_temperature(proba: np.ndarray, temperature: float) -> np.ndarray:
    """Temperature-scaled probabilities ``softmax(log(p) / T)``.

    Equal to ``softmax(z / T)`` for the logits ``z`` behind ``p`` (the two differ by a constant
    per row), so it needs only the probabilities. ``T > 1`` softens, ``T < 1`` sharpens,
    ``T = 1`` returns ``p`` (within 1e-12); the order of the classes in a row, hence the
    prediction, never changes. ``p`` is clipped at ``1e-12`` before the logarithm, so zeros are
    allowed.

    Parameters
    ----------
    proba : (n, k) array
        Class probabilities, rows summing to 1.
    temperature : float
        ``T > 0``.

    Returns
    -------
    (n, k) array
        Rows summing to 1.

    Examples
    --------
    >>> p = np.array([[0.8, 0.2], [1.0, 0.0]])
    >>> apply_temperature(p, 1.0).round(6).tolist()
    [[0.8, 0.2], [1.0, 0.0]]
    >>> apply_temperature(p, 2.0).round(3).tolist()  # sqrt(0.8) / (sqrt(0.8) + sqrt(0.2))
    [[0.667, 0.333], [1.0, 0.0]]
    """
    p = _check_proba(proba)
    t = _check_temperature(temperature)
    return np.exp(_tempered_log_proba(np.log(np.clip(p, PROBA_FLOOR, None)), t))


def fit_temperature(proba: np.ndarray, y_true_idx: np.ndarray,
                    bounds: tuple[float, float] = (0.05, 20.0)) -> float:
    """The temperature that minimises the negative log-likelihood of labelled development data.

    Fit it on development data (simulated labs rendered from the training lab, labelled), then
    apply it with :func:`apply_temperature` to any lab, which needs none of that lab's labels.
    The NLL of ``softmax(z / T)`` is convex in ``1 / T`` (log-sum-exp minus a linear term), so
    it is unimodal in ``log T``; it is minimised over ``log T`` within ``log(bounds)`` with
    bounded Brent search (:func:`scipy.optimize.minimize_scalar`). A result at a bound means
    the optimum lies beyond it.

    Parameters
    ----------
    proba : (n, k) array
        The development data's probabilities (rows summing to 1).
    y_true_idx : (n,) int array
        Its true class indices.
    bounds : (float, float)
        ``0 < low < high``: the range of ``T`` searched.

    Returns
    -------
    float
        The fitted ``T`` (> 1: the classifier was overconfident).

    Examples
    --------
    >>> p = np.array([[0.99, 0.01]] * 6 + [[0.01, 0.99]] * 4)  # 60 % right, 99 % confident
    >>> y = np.zeros(10, dtype=int)
    >>> t = fit_temperature(p, y)
    >>> t > 1, round(float(apply_temperature(p, t)[:6, 0].mean()), 2)
    (True, 0.6)
    """
    from scipy.optimize import minimize_scalar  # here, not at import: classifying a folder fits no temperature

    p, y = _proba_and_labels(proba, y_true_idx)
    try:
        low, high = (float(b) for b in bounds)
    except (TypeError, ValueError):
        raise ValueError(f"bounds must be two numbers (low, high); got {bounds!r}") from None
    if not (0 < low < high and math.isfinite(high)):
        raise ValueError(f"bounds must satisfy 0 < low < high < inf; got {bounds!r}")
    log_p = np.log(np.clip(p, PROBA_FLOOR, None))
    rows = np.arange(len(y))

    def nll(log_t: float) -> float:
        return float(-np.mean(_tempered_log_proba(log_p, math.exp(log_t))[rows, y]))

    res = minimize_scalar(nll, bounds=(math.log(low), math.log(high)), method="bounded",
                          options={"xatol": 1e-6})
    return float(math.exp(res.x))


# --------------------------------------------------------------------------------------------
# the "uncertain" flag
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class UncertainRule:
    """Flag a cell as uncertain (for human review) when its top probability is below a threshold.

    Apply it to probabilities *after* the temperature the rule was chosen with.

    Attributes
    ----------
    min_probability : float
        A cell whose top probability is strictly below this is flagged (>= 0; 0 flags none,
        anything above 1 flags every cell).

    Examples
    --------
    >>> UncertainRule(0.7).flag(np.array([[0.6, 0.4], [0.7, 0.3], [0.1, 0.9]])).tolist()
    [True, False, False]
    """

    min_probability: float

    def __post_init__(self):
        v = float(self.min_probability)
        if not (math.isfinite(v) and v >= 0):
            raise ValueError(f"min_probability must be finite and >= 0; got {v!r}")
        object.__setattr__(self, "min_probability", v)

    def flag(self, proba: np.ndarray) -> np.ndarray:
        """``(n, k)`` probabilities -> ``(n,)`` bool: True where the top probability is below the threshold."""
        return _check_proba(proba).max(axis=1) < self.min_probability


def choose_uncertain_rule(proba: np.ndarray, y_true_idx: np.ndarray, target_catch: float = 0.5,
                          max_review: float = 0.3) -> UncertainRule:
    """Choose the uncertain-flag threshold on labelled development data.

    The catch rate (errors flagged / errors) and the review share (cells flagged / cells) both
    grow with the threshold. The rule is:

    1. the *smallest* threshold whose catch rate is at least ``target_catch``: just above
       (``numpy.nextafter``) the ``ceil(target_catch * n_errors)``-th lowest top probability
       among the misclassified cells;
    2. but never one that flags more than ``max_review`` of the cells: if (1) would, take the
       largest threshold that flags at most ``floor(max_review * n)`` cells instead (the
       catch target is then missed on this data, and :func:`review_table` shows by how much).

    With no error in the development data the catch rate is undefined and the threshold is 0
    (nothing flagged). Use probabilities after the temperature that will be applied later.

    Parameters
    ----------
    proba : (n, k) array
        Development data's probabilities (after the temperature).
    y_true_idx : (n,) int array
        Its true class indices.
    target_catch : float
        Wanted share of errors flagged, in [0, 1].
    max_review : float
        Most share of cells that may be flagged, in [0, 1].

    Returns
    -------
    UncertainRule

    Examples
    --------
    >>> p = np.array([[0.95, 0.05], [0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.6, 0.4], [0.55, 0.45]])
    >>> y = np.array([0, 0, 1, 0, 1, 1])  # errors at confidences 0.8, 0.6, 0.55
    >>> r = choose_uncertain_rule(p, y, target_catch=0.6, max_review=0.5)
    >>> r.flag(p).tolist()  # 2 of 3 errors caught, 2 of 6 cells reviewed
    [False, False, False, False, True, True]
    >>> int(choose_uncertain_rule(p, y, target_catch=1.0, max_review=0.5).flag(p).sum())  # capped at 3
    3
    """
    p, y = _proba_and_labels(proba, y_true_idx)
    target_catch = _check_fraction("target_catch", target_catch)
    max_review = _check_fraction("max_review", max_review)
    confidence = p.max(axis=1)
    errors = np.sort(confidence[p.argmax(axis=1) != y])
    n = len(confidence)

    needed = math.ceil(target_catch * len(errors) - _COUNT_EPS)
    threshold = 0.0 if needed <= 0 else float(np.nextafter(errors[needed - 1], np.inf))

    allowed = math.floor(max_review * n + _COUNT_EPS)
    if allowed < n:
        # flagging c < sorted[allowed] flags at most `allowed` cells; any larger threshold more
        threshold = min(threshold, float(np.sort(confidence)[allowed]))
    return UncertainRule(threshold)


def review_table(proba: np.ndarray, y_true_idx: np.ndarray, rule: UncertainRule) -> dict:
    """What a flag rule costs and catches on labelled data.

    Parameters
    ----------
    proba : (n, k) array
        Probabilities (after the same temperature as the rule's).
    y_true_idx : (n,) int array
        True class indices.
    rule : UncertainRule

    Returns
    -------
    dict
        ``review_share`` (flagged / n), ``catch_rate`` (flagged errors / errors; NaN when
        there is no error), ``error_rate_unflagged`` (errors among the unflagged cells; NaN
        when every cell is flagged), ``n_cells``, ``n_flagged`` and ``n_errors``.

    Examples
    --------
    >>> p = np.array([[0.9, 0.1], [0.6, 0.4], [0.55, 0.45], [0.8, 0.2]])
    >>> r = review_table(p, np.array([0, 1, 0, 1]), UncertainRule(0.7))
    >>> r["review_share"], r["catch_rate"], r["error_rate_unflagged"]
    (0.5, 0.5, 0.5)
    """
    if not isinstance(rule, UncertainRule):
        raise ValueError(f"rule must be an UncertainRule; got {rule!r}")
    p, y = _proba_and_labels(proba, y_true_idx)
    flagged = rule.flag(p)
    wrong = p.argmax(axis=1) != y
    n, n_flagged, n_errors = len(y), int(flagged.sum()), int(wrong.sum())
    n_unflagged = n - n_flagged
    return {
        "review_share": n_flagged / n,
        "catch_rate": float(np.sum(wrong & flagged) / n_errors) if n_errors else float("nan"),
        "error_rate_unflagged": (float(np.sum(wrong & ~flagged) / n_unflagged)
                                 if n_unflagged else float("nan")),
        "n_cells": n,
        "n_flagged": n_flagged,
        "n_errors": n_errors,
    }


# --------------------------------------------------------------------------------------------
# figure
# --------------------------------------------------------------------------------------------

def reliability_figure(tables: Mapping[str, pd.DataFrame]):
    """Reliability diagram: accuracy against confidence per bin, one line per lab.

    Built on a :class:`matplotlib.figure.Figure` with an Agg canvas, without pyplot (no global
    backend change, nothing shown). Empty bins (NaN) are left out of a lab's line.

    Parameters
    ----------
    tables : mapping lab name -> DataFrame
        :func:`reliability_table` of each lab (at least one).

    Returns
    -------
    matplotlib.figure.Figure
        One axes: a dashed diagonal (perfect calibration) first, then one line per lab in
        the mapping's order, labelled with the lab's name; x "confidence", y "accuracy".

    Examples
    --------
    >>> p = np.array([[0.9, 0.1], [0.6, 0.4]])
    >>> fig = reliability_figure({"lab A": reliability_table(p, np.array([0, 1]))})
    >>> len(fig.axes[0].lines)
    2
    """
    # pyplot, not a bare Figure: in a notebook the inline backend is what gives a glued figure the
    # PNG that the book writes out (a bare Agg Figure's PNG is stored but never written to the book)
    import matplotlib.pyplot as plt

    if not isinstance(tables, Mapping) or len(tables) == 0:
        raise ValueError(f"tables must be a non-empty mapping lab -> reliability table; got {tables!r}")
    for lab, table in tables.items():
        missing = [c for c in ("confidence", "accuracy") if c not in getattr(table, "columns", ())]
        if missing:
            raise ValueError(f"table of lab {lab!r} lacks column(s) {missing}")
    fig, ax = plt.subplots(figsize=(5.0, 5.0))
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="perfect calibration")
    for lab, table in tables.items():
        used = table["confidence"].notna() & table["accuracy"].notna()
        ax.plot(table.loc[used, "confidence"].to_numpy(), table.loc[used, "accuracy"].to_numpy(),
                marker="o", label=str(lab))
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_aspect("equal")
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.legend(loc="upper left", fontsize="small")
    return fig
