"""A call's accuracy estimated without its labels, from two views of its cells that disagree.

The cross-lab classifier with a texture gate carries two classifiers trained on the same
labelled cells: one reads every feature, its ``fallback_`` every feature but texture. On the
training lab they agree on almost every cell; on a lab whose texture or colour behaves unlike
the training lab's, they part. How often they part is measured on each call, with no label:

- :func:`view_disagreement`: the share of a call's cells whose top class differs between two
  probability tables (in the study: the classifier and its texture-free fallback).
- :class:`AccuracyFromDisagreement`: a straight line from that share to the call's accuracy,
  fitted by least squares on labelled development calls (the virtual labs rendered from the
  training lab, under several class mixes), never on the lab it is applied to.
- :func:`temperature_for_mean_confidence` and :func:`calibrate_call`: the temperature that
  brings a call's mean top probability to the estimated accuracy, applied to that call only.
  One temperature fitted on development labs (:func:`bcfeat.crosslab.calibration.fit_temperature`)
  leaves a lab that is harder than every development lab over-confident; this one follows the
  call.

Calls smaller than :data:`MIN_CALL_CELLS` are left as they are: a share of disagreements over a
few cells scatters too much to set a temperature.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from bcfeat.crosslab.calibration import apply_temperature

__all__ = ["MIN_CALL_CELLS", "AccuracyFromDisagreement", "view_disagreement", "temperature_for_mean_confidence",
           "calibrate_call", "calibrate_with_views"]

#: Calls of fewer cells keep their probabilities (the disagreement share scatters too much).
MIN_CALL_CELLS = 32
_TEMPERATURE_BOUNDS = (0.05, 20.0)


def view_disagreement(proba_a: np.ndarray, proba_b: np.ndarray) -> float:
    """Share of rows whose top class differs between two ``(n, k)`` probability tables.

    >>> a = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.3, 0.7]])
    >>> b = np.array([[0.8, 0.2], [0.4, 0.6], [0.1, 0.9], [0.6, 0.4]])
    >>> view_disagreement(a, b)
    0.5
    """
    a, b = np.asarray(proba_a, float), np.asarray(proba_b, float)
    if a.ndim != 2 or a.shape != b.shape or len(a) == 0:
        raise ValueError(f"view_disagreement needs two (n, k) tables of the same shape with n >= 1, "
                         f"got {a.shape} and {b.shape}")
    return float(np.mean(a.argmax(axis=1) != b.argmax(axis=1)))


@dataclass(frozen=True)
class AccuracyFromDisagreement:
    """``accuracy ~ intercept + slope * disagreement``, clipped to ``[floor, 1]``.

    ``floor`` is chance (one over the number of classes): an estimate never says a call is worse
    than guessing. ``n_calls`` and ``residual_std`` record what the line was fitted on and how
    far the development calls sat from it.

    >>> fit = AccuracyFromDisagreement.fit([0.0, 0.1, 0.2, 0.3], [0.98, 0.84, 0.70, 0.56], n_classes=5)
    >>> round(fit.slope, 2), round(fit.intercept, 2), round(fit.estimate(0.25), 2)
    (-1.4, 0.98, 0.63)
    >>> fit.estimate(0.9)   # clipped at chance
    0.2
    """

    intercept: float
    slope: float
    floor: float
    n_calls: int
    residual_std: float

    @classmethod
    def fit(cls, disagreements, accuracies, n_classes: int) -> AccuracyFromDisagreement:
        d, acc = np.asarray(disagreements, float), np.asarray(accuracies, float)
        if d.ndim != 1 or d.shape != acc.shape or len(d) < 3:
            raise ValueError(f"fitting accuracy from disagreement needs >= 3 calls of equal length, "
                             f"got {d.shape} and {acc.shape}")
        if not (np.all((d >= 0) & (d <= 1)) and np.all((acc >= 0) & (acc <= 1))):
            raise ValueError("disagreements and accuracies must lie in [0, 1]")
        if np.ptp(d) <= 0:
            raise ValueError("every development call has the same disagreement: no line can be fitted")
        if not isinstance(n_classes, (int, np.integer)) or n_classes < 2:
            raise ValueError(f"n_classes must be an int >= 2, got {n_classes!r}")
        slope, intercept = np.polyfit(d, acc, 1)
        residual = acc - (intercept + slope * d)
        return cls(float(intercept), float(slope), 1.0 / int(n_classes), int(len(d)), float(residual.std()))

    def estimate(self, disagreement: float) -> float:
        """The estimated accuracy of a call whose views disagree on this share of its cells."""
        if not 0.0 <= float(disagreement) <= 1.0:
            raise ValueError(f"a disagreement share lies in [0, 1], got {disagreement!r}")
        return float(np.clip(self.intercept + self.slope * float(disagreement), self.floor, 1.0))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> AccuracyFromDisagreement:
        """Read back :meth:`to_dict` (a model file's calibration); every value is checked."""
        keys = ("intercept", "slope", "floor", "n_calls", "residual_std")
        if not isinstance(d, dict) or set(d) != set(keys):
            raise ValueError(f"an accuracy-from-disagreement record needs exactly {keys}, got {d!r}")
        values = {k: float(d[k]) for k in keys}
        if not all(np.isfinite(v) for v in values.values()) or not 0 < values["floor"] < 1:
            raise ValueError(f"an accuracy-from-disagreement record holds non-finite or invalid values: {d!r}")
        return cls(values["intercept"], values["slope"], values["floor"], int(values["n_calls"]),
                   values["residual_std"])


def temperature_for_mean_confidence(proba: np.ndarray, target: float) -> float:
    """The temperature ``T`` with ``mean(max softmax(log p / T)) = target`` (bisection on ``log T``,
    within [0.05, 20]; the bound when the target cannot be reached).

    >>> p = np.array([[0.9, 0.1], [0.8, 0.2]])
    >>> T = temperature_for_mean_confidence(p, 0.7)
    >>> round(float(apply_temperature(p, T).max(axis=1).mean()), 4)
    0.7
    """
    if not 0.0 < float(target) <= 1.0:
        raise ValueError(f"a target mean confidence lies in (0, 1], got {target!r}")
    low, high = np.log(_TEMPERATURE_BOUNDS[0]), np.log(_TEMPERATURE_BOUNDS[1])

    def confidence(log_t: float) -> float:
        return float(apply_temperature(proba, float(np.exp(log_t))).max(axis=1).mean())

    if confidence(high) >= target:
        return _TEMPERATURE_BOUNDS[1]
    if confidence(low) <= target:
        return _TEMPERATURE_BOUNDS[0]
    for _ in range(50):  # confidence falls as T grows
        mid = (low + high) / 2
        low, high = (mid, high) if confidence(mid) > target else (low, mid)
    return float(np.exp((low + high) / 2))


def calibrate_call(proba: np.ndarray, disagreement: float,
                   fit: AccuracyFromDisagreement) -> tuple[np.ndarray, float]:
    """One call's probabilities with their mean confidence brought to the accuracy its views'
    ``disagreement`` (:func:`view_disagreement`) predicts: ``(proba', estimated accuracy)``. A
    call of fewer than :data:`MIN_CALL_CELLS` cells keeps ``proba``. The predicted classes never
    change.

    >>> fit = AccuracyFromDisagreement(0.98, -1.4, 0.2, 40, 0.05)
    >>> p = np.random.default_rng(0).dirichlet([8, 1, 1], size=40)
    >>> out, estimate = calibrate_call(p, 0.25, fit)
    >>> round(estimate, 2), round(float(out.max(axis=1).mean()), 2), bool((out.argmax(1) == p.argmax(1)).all())
    (0.63, 0.63, True)
    >>> np.array_equal(calibrate_call(p[:10], 0.25, fit)[0], p[:10])   # too few cells: unchanged
    True
    """
    estimate = fit.estimate(disagreement)
    proba = np.asarray(proba, float)
    if len(proba) < MIN_CALL_CELLS:
        return proba, estimate
    return apply_temperature(proba, temperature_for_mean_confidence(proba, estimate)), estimate


def calibrate_with_views(classifier, X: np.ndarray, proba: np.ndarray,
                         fit: AccuracyFromDisagreement) -> tuple[np.ndarray, float, float]:
    """:func:`calibrate_call` for one call's features ``X`` read by ``classifier`` (a
    :class:`~bcfeat.crosslab.adaptation.CrossLabClassifier` with a texture gate, whose
    ``view_probabilities`` gives the two readings): ``(proba', disagreement, estimated accuracy)``."""
    d = view_disagreement(*classifier.view_probabilities(X))
    out, estimate = calibrate_call(proba, d, fit)
    return out, d, estimate
