"""A call's accuracy estimated without its labels, from two views of its cells that disagree.

The cross-lab classifier with a texture gate carries two classifiers trained on the same
labelled cells: one reads every feature, its ``fallback_`` every feature but texture. On the
training lab they agree on almost every cell; on a lab whose texture or colour behaves unlike
the training lab's, they part. How often they part is measured on each call, with no label:

- :func:`view_disagreement`: the share of a call's cells whose top class differs between two
  probability tables (in the study: the classifier and its texture-free fallback).
- :class:`AccuracyFromDisagreement`: a straight line from that share (and, where the study's
  development calls choose it, the call's lab novelty: how far its cells sit from every training
  class, a reading that does not come from the two views) to the call's accuracy, fitted by least
  squares on labelled development calls (the virtual labs rendered from the training lab, under
  several class mixes), never on the lab it is applied to.
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
    """``accuracy ~ intercept + slope * disagreement (+ novelty_slope * novelty)``, clipped to ``[floor, ceiling]``.

    ``floor`` is chance (one over the number of classes): an estimate never says a call is worse
    than guessing. ``ceiling`` is the accuracy of the most accurate development call: an estimate
    never promises more than a call the line was fitted on reached (a lab nearer the training
    classes than every development lab would otherwise be extrapolated to 1, and its probabilities
    sharpened until no cell is left uncertain). ``n_calls`` and ``residual_std`` record what the
    line was fitted on and how far the development calls sat from it.

    The second term is optional: a call's lab novelty
    (:meth:`bcfeat.crosslab.adaptation.CrossLabClassifier.lab_novelty`, how far its cells sit from
    every training class), a reading that does not depend on the two views. ``novelty_slope`` 0
    (the default, and every file written before it) is the line from disagreement alone.

    >>> fit = AccuracyFromDisagreement.fit([0.0, 0.1, 0.2, 0.3], [0.98, 0.84, 0.70, 0.56], n_classes=5)
    >>> round(fit.slope, 2), round(fit.intercept, 2), round(fit.estimate(0.25), 2)
    (-1.4, 0.98, 0.63)
    >>> fit.estimate(0.9)   # clipped at chance
    0.2
    >>> AccuracyFromDisagreement(1.1, -1.0, 0.2, 3, 0.0, ceiling=0.95).estimate(0.0)   # at most the ceiling
    0.95
    >>> two = AccuracyFromDisagreement.fit([0.0, 0.1, 0.0, 0.1], [0.95, 0.85, 0.75, 0.65], 5, novelties=[1, 1, 2, 2])
    >>> round(two.novelty_slope, 2), round(two.estimate(0.05, novelty=1.5), 2)
    (-0.2, 0.8)
    """

    intercept: float
    slope: float
    floor: float
    n_calls: int
    residual_std: float
    novelty_slope: float = 0.0
    ceiling: float = 1.0

    @property
    def uses_novelty(self) -> bool:
        """Whether the estimate reads the call's lab novelty as well."""
        return self.novelty_slope != 0.0

    @classmethod
    def fit(cls, disagreements, accuracies, n_classes: int, novelties=None) -> AccuracyFromDisagreement:
        """Least squares on development calls; ``novelties`` (one per call): fit the two-term line."""
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
        if novelties is None:
            slope, intercept = np.polyfit(d, acc, 1)
            residual = acc - (intercept + slope * d)
            return cls(float(intercept), float(slope), 1.0 / int(n_classes), int(len(d)), float(residual.std()),
                       ceiling=float(acc.max()))
        nov = np.asarray(novelties, float)
        if nov.shape != d.shape or not np.all(np.isfinite(nov)) or np.any(nov < 0):
            raise ValueError(f"novelties must be {d.shape[0]} finite values >= 0, one per call, got shape {nov.shape}")
        if np.ptp(nov) <= 0:
            raise ValueError("every development call has the same novelty: its term cannot be fitted")
        A = np.stack([np.ones_like(d), d, nov], axis=1)
        coef = np.linalg.lstsq(A, acc, rcond=None)[0]
        residual = acc - A @ coef
        return cls(float(coef[0]), float(coef[1]), 1.0 / int(n_classes), int(len(d)), float(residual.std()),
                   float(coef[2]), float(acc.max()))

    def estimate(self, disagreement: float, novelty: float | None = None) -> float:
        """The estimated accuracy of a call whose views disagree on this share of its cells (and,
        for a two-term line, whose lab novelty is ``novelty``)."""
        if not 0.0 <= float(disagreement) <= 1.0:
            raise ValueError(f"a disagreement share lies in [0, 1], got {disagreement!r}")
        value = self.intercept + self.slope * float(disagreement)
        if self.uses_novelty:
            if novelty is None or not (np.isfinite(novelty) and float(novelty) >= 0):
                raise ValueError(f"this line reads the call's lab novelty too (a finite value >= 0), got {novelty!r}")
            value += self.novelty_slope * float(novelty)
        return float(np.clip(value, self.floor, max(self.floor, self.ceiling)))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> AccuracyFromDisagreement:
        """Read back :meth:`to_dict` (a model file's calibration); every value is checked. A record
        without ``novelty_slope`` or ``ceiling`` (written before them) is the line from disagreement
        alone, clipped at 1."""
        keys, optional = ("intercept", "slope", "floor", "n_calls", "residual_std"), ("novelty_slope", "ceiling")
        if not isinstance(d, dict) or not set(keys) <= set(d) or not set(d) <= {*keys, *optional}:
            raise ValueError(f"an accuracy-from-disagreement record needs exactly {keys} (and optionally "
                             f"{optional}), got {d!r}")
        values = {k: float(d[k]) for k in (*keys, *optional) if k in d}
        if (not all(np.isfinite(v) for v in values.values()) or not 0 < values["floor"] < 1
                or not values["floor"] <= values.get("ceiling", 1.0) <= 1):
            raise ValueError(f"an accuracy-from-disagreement record holds non-finite or invalid values: {d!r}")
        return cls(values["intercept"], values["slope"], values["floor"], int(values["n_calls"]),
                   values["residual_std"], values.get("novelty_slope", 0.0), values.get("ceiling", 1.0))


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


def calibrate_call(proba: np.ndarray, disagreement: float, fit: AccuracyFromDisagreement,
                   novelty: float | None = None) -> tuple[np.ndarray, float]:
    """One call's probabilities with their mean confidence brought to the accuracy its views'
    ``disagreement`` (:func:`view_disagreement`) and, for a two-term line, its lab ``novelty``
    predict: ``(proba', estimated accuracy)``. A
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
    estimate = fit.estimate(disagreement, novelty)
    proba = np.asarray(proba, float)
    if len(proba) < MIN_CALL_CELLS:
        return proba, estimate
    return apply_temperature(proba, temperature_for_mean_confidence(proba, estimate)), estimate


def calibrate_with_views(classifier, X: np.ndarray, proba: np.ndarray, fit: AccuracyFromDisagreement,
                         novelty: float | None = None) -> tuple[np.ndarray, float, float]:
    """:func:`calibrate_call` for one call's features ``X`` read by ``classifier`` (a
    :class:`~bcfeat.crosslab.adaptation.CrossLabClassifier` with a texture gate, whose
    ``view_probabilities`` gives the two readings, and ``lab_novelty`` the call's novelty where the
    line reads it and the caller has not computed it, ``novelty``): ``(proba', disagreement,
    estimated accuracy)``."""
    d = view_disagreement(*classifier.view_probabilities(X))
    if fit.uses_novelty and novelty is None:
        novelty = classifier.lab_novelty(X)
    out, estimate = calibrate_call(proba, d, fit, novelty if fit.uses_novelty else None)
    return out, d, estimate
