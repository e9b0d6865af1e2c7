"""Calibration of the cross-lab classifier (chapter "Beyond the paper", ``notebooks/07_crosslab.py``):
what the deployed classifier carries besides its weights, all fitted without a reported lab's labels.

- :class:`Calibration`: the temperature, the ``uncertain`` threshold, the lab-novelty threshold, the
  texture gate's envelope and the line from the two views' disagreement to a call's accuracy;
- the development calls that line is fitted on: every virtual lab's (:func:`disagreement_calls`)
  and, where they lower its leave-one-virtual-lab-out error (:func:`calibration_calls`), the training
  lab's own calls read out of fold (:func:`source_out_of_fold_calls`); the same error decides
  whether the line reads the call's lab novelty beside the disagreement;
- :func:`fit_calibration` and, per lab, :func:`calibration_table`.
"""

from __future__ import annotations

import zlib
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from bcfeat.crosslab import calibration as cal
from bcfeat.crosslab import mixes as mx
from bcfeat.crosslab import novelty as nov
from bcfeat.crosslab.adaptation import CrossLabClassifier
from bcfeat.crosslab.site_statistics import MIN_SITE_CELLS

if TYPE_CHECKING:
    from bcfeat.study.virtual_lab_features import VirtualLabs


@dataclass
class Calibration:
    """What the deployed classifier carries besides its weights, all fitted on the virtual labs."""

    temperature: float
    uncertain_min_probability: float
    novelty_threshold: float
    reference_novelty: list[float]
    gate_threshold: list | None = None  # the texture gate's [call size, threshold] pairs (texture_gate.fit_gate_threshold); None: no gate
    # view_agreement.AccuracyFromDisagreement.to_dict(): a call's accuracy from how often the classifier and its
    # texture-free fallback part (and, with a novelty_slope, from the call's lab novelty); None: no gate, so no second view
    accuracy_from_disagreement: dict | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def _index(y: np.ndarray, classes: np.ndarray) -> np.ndarray:
    lookup = {c: i for i, c in enumerate(classes)}
    return np.array([lookup[v] for v in y])


CALL_COLUMNS = ["lab", "mix", "n_cells", "disagreement", "novelty", "accuracy"]
"""The columns of a development call's row (:func:`disagreement_calls`, :func:`source_out_of_fold_calls`)."""


def _development_calls(y: np.ndarray, call_size: int, n_calls: int, rng_for) -> list[tuple[str, np.ndarray]]:
    """``(mix, indices into y)``: all of a lab's cells in one call, then ``n_calls`` calls of
    ``call_size`` under each mix of :data:`bcfeat.crosslab.mixes.MIXES`, drawn with ``rng_for(mix)``."""
    calls = [("all cells", np.arange(len(y)))]
    for mix, shares in mx.MIXES.items():
        calls += [(mix, idx) for idx in mx.draw_calls(y, shares, call_size, n_calls, rng_for(mix))]
    return calls


def _call_row(clf: CrossLabClassifier, lab: str, mix: str, X: np.ndarray, y: np.ndarray) -> dict:
    """One call read by ``clf``: how often its two views disagree, its lab novelty, and its accuracy."""
    from bcfeat.crosslab.view_agreement import view_disagreement

    full, fallback = clf.view_probabilities(X)
    return {"lab": lab, "mix": mix, "n_cells": len(y), "disagreement": view_disagreement(full, fallback),
            "novelty": clf.lab_novelty(X), "accuracy": float(np.mean(clf.predict(X) == y))}


def disagreement_calls(clf: CrossLabClassifier, virtual: VirtualLabs, source: str, call_size: int = 100,
                       n_calls: int = 3, seed: int = 0) -> pd.DataFrame:
    """The development calls the accuracy-from-disagreement line is fitted on: every virtual lab's
    cells in one call and in ``n_calls`` calls of ``call_size`` under each class mix of
    :data:`bcfeat.crosslab.mixes.MIXES`; one row per call with ``lab, mix, n_cells, disagreement,
    novelty, accuracy`` (empty when ``clf`` has no texture gate, hence no second view)."""
    rows = []
    if clf.gate_columns is None or not virtual.labs:
        return pd.DataFrame(columns=CALL_COLUMNS)
    for lab in virtual.labs:
        X, y = virtual.features[(lab.name, source)], virtual.labels
        rng_for = lambda mix, name=lab.name: np.random.default_rng([seed, zlib.crc32(f"{name}/{mix}".encode())])  # noqa: E731
        rows += [_call_row(clf, lab.name, mix, X[idx], y[idx])
                 for mix, idx in _development_calls(y, call_size, n_calls, rng_for)]
    return pd.DataFrame(rows)


def source_out_of_fold_calls(clf: CrossLabClassifier, X: np.ndarray, y: np.ndarray, n_folds: int = 5,
                             call_size: int = 100, n_calls: int = 2, seed: int = 0) -> pd.DataFrame:
    """The training lab's own calls, each read by a classifier that never saw its cells: rows like
    :func:`disagreement_calls` (``lab`` is ``"source fold k"``).

    The virtual labs all shift the training lab, so the line from the views' disagreement to a
    call's accuracy never sees a call of a lab that is not shifted at all, which is where a lab that
    trains its own classifier uses it. Here the source's training cells ``X, y`` are split into
    ``n_folds`` stratified folds; a copy of ``clf`` (same parameters, texture gate included) is
    trained on the other folds, and reads the held-out fold in one call and in ``n_calls`` calls of
    ``call_size`` under each class mix. No test cell of any site is read. Calls of fewer than
    :data:`~bcfeat.crosslab.site_statistics.MIN_SITE_CELLS` cells are left out. Empty when ``clf`` has
    no gate (no second view), when ``n_folds < 2``, or when a class has fewer cells than folds.
    """
    from sklearn.base import clone
    from sklearn.model_selection import StratifiedKFold

    X, y = np.asarray(X, dtype=np.float64), np.asarray(y)
    if len(X) != len(y):
        raise ValueError(f"{len(X)} rows of features but {len(y)} labels")
    if clf.gate_columns is None or n_folds < 2 or np.unique(y, return_counts=True)[1].min() < n_folds:
        return pd.DataFrame(columns=CALL_COLUMNS)
    rows = []
    folds = StratifiedKFold(n_folds, shuffle=True, random_state=seed).split(X, y)
    for k, (train, held) in enumerate(folds):
        fold_clf = clone(clf).fit(X[train], y[train])
        rng_for = lambda mix, k=k: np.random.default_rng([seed, k, zlib.crc32(mix.encode())])  # noqa: E731
        Xh, yh = X[held], y[held]
        # calls too small for their own statistics (a small training split) are left out
        rows += [_call_row(fold_clf, f"source fold {k}", mix, Xh[idx], yh[idx])
                 for mix, idx in _development_calls(yh, call_size, n_calls, rng_for) if len(idx) >= MIN_SITE_CELLS]
    return pd.DataFrame(rows, columns=CALL_COLUMNS)


def _fit_line(calls: pd.DataFrame, n_classes: int, with_novelty: bool):
    from bcfeat.crosslab.view_agreement import AccuracyFromDisagreement

    return AccuracyFromDisagreement.fit(calls["disagreement"], calls["accuracy"], n_classes,
                                        novelties=calls["novelty"] if with_novelty else None)


def call_estimates(line, calls: pd.DataFrame) -> np.ndarray:
    """``(n,)`` the accuracy ``line`` (an :class:`~bcfeat.crosslab.view_agreement.AccuracyFromDisagreement`)
    estimates for each development call (rows with ``disagreement`` and ``novelty``)."""
    return np.array([line.estimate(d, v) for d, v in zip(calls["disagreement"], calls["novelty"])])


def line_error_leave_one_lab_out(calls: pd.DataFrame, n_classes: int,
                                 extra: pd.DataFrame | None = None, with_novelty: bool = False) -> float:
    """Mean absolute error of the accuracy-from-disagreement line on each development lab's calls,
    the line fitted on the other labs' calls (and on ``extra``, calls that are never held out, such
    as :func:`source_out_of_fold_calls`); ``with_novelty``: the two-term line that reads the calls'
    lab novelty too. NaN when fewer than two labs have calls."""
    errors = _held_out_errors(calls, n_classes, extra, with_novelty)
    return float(np.mean(errors)) if len(errors) else float("nan")


def _held_out_errors(calls: pd.DataFrame, n_classes: int, extra: pd.DataFrame | None,
                     with_novelty: bool) -> np.ndarray:
    """Each development call's absolute error under the line fitted without its lab (empty where
    the line cannot be fitted: :func:`line_error_leave_one_lab_out`)."""
    labs = list(dict.fromkeys(calls["lab"]))
    if len(labs) < 2:
        return np.zeros(0)
    errors = []
    for lab in labs:
        dev = calls[calls["lab"] != lab]
        if extra is not None and len(extra):
            dev = pd.concat([dev, extra], ignore_index=True)
        if dev["disagreement"].nunique() < 2 or (with_novelty and dev["novelty"].nunique() < 2):
            return np.zeros(0)
        line = _fit_line(dev, n_classes, with_novelty)
        held = calls[calls["lab"] == lab]
        errors += list(np.abs(call_estimates(line, held) - held["accuracy"].to_numpy(float)))
    return np.asarray(errors)


def calibration_calls(virtual_calls: pd.DataFrame, source_calls: pd.DataFrame, n_classes: int
                      ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The development calls the line is fitted on, the line's terms, and the comparison that chose them.

    Four readings: the virtual labs' calls alone, or with the training lab's out-of-fold calls; the
    line from the disagreement alone, or from the disagreement and the calls' lab novelty (a
    reading that does not come from the two views, so it need not fail where they agree while both
    are wrong). Each is scored by :func:`line_error_leave_one_lab_out` on the virtual labs (the
    source's calls are never held out: the in-domain site is reported, and its test cells are not
    among them); the reading with the smallest error is used (the first of equal ones, in the order
    above), except that a line with the novelty term must beat every line without it by more than
    one standard error of its own error (the held-out calls' spread over the square root of their
    number): a second term that helps by less than the calls can tell is left out. Returns
    ``(calls, table)``, the table one row per reading (``reading, novelty, n_calls, error, error_se,
    used``; ``novelty``: whether that line reads it).
    """
    readings = {"virtual labs": None}
    if len(source_calls):
        readings["virtual labs + the training lab's out-of-fold calls"] = source_calls
    rows = []
    for with_novelty in (False, True):
        for name, extra in readings.items():
            errors = _held_out_errors(virtual_calls, n_classes, extra, with_novelty)
            rows.append({"reading": name + (" (disagreement and novelty)" if with_novelty else ""), "calls": name,
                         "novelty": with_novelty, "n_calls": len(virtual_calls) + (0 if extra is None else len(extra)),
                         "error": float(np.mean(errors)) if len(errors) else float("nan"),
                         "error_se": float(np.std(errors, ddof=1) / np.sqrt(len(errors))) if len(errors) > 1 else float("nan")})
    table = pd.DataFrame(rows)
    errors = table["error"].to_numpy(dtype=float)
    one_term = np.where(table["novelty"].to_numpy(), np.nan, errors)
    best = int(np.nanargmin(errors)) if np.isfinite(errors).any() else 0
    if table["novelty"].iloc[best] and np.isfinite(one_term).any():
        simpler = int(np.nanargmin(one_term))
        if errors[simpler] <= errors[best] + table["error_se"].iloc[best]:
            best = simpler
    table["used"] = np.arange(len(table)) == best
    extra = readings[table["calls"].iloc[best]]
    calls = virtual_calls if extra is None else pd.concat([virtual_calls, extra], ignore_index=True)
    return calls, table.drop(columns="calls")


def fit_calibration(clf: CrossLabClassifier, virtual: VirtualLabs, source: str, target_catch: float = 0.5,
                    max_review: float = 0.3, gate_threshold: Sequence | None = None,
                    calls: pd.DataFrame | None = None, with_novelty: bool = False) -> Calibration:
    """Temperature (pooled negative log-likelihood), ``uncertain`` threshold and lab novelty
    threshold, from each virtual lab's cells classified in one call; ``gate_threshold`` (from
    :func:`bcfeat.study.texture_gate.fit_gate_threshold`) is recorded with them. With a texture
    gate, the line from the views' disagreement (and, ``with_novelty``, the calls' lab novelty:
    the reading :func:`calibration_calls` chose) to a call's accuracy is fitted on ``calls``
    (:func:`disagreement_calls`), and the ``uncertain`` threshold is chosen on the probabilities
    that line gives each lab (what ``bcfeat classify`` deploys)."""
    from bcfeat.crosslab.view_agreement import calibrate_with_views

    probas, truths, novelty, features = [], [], [], []
    for lab in virtual.labs:
        X = virtual.features[(lab.name, source)]
        probas.append(clf.predict_proba(X))
        truths.append(_index(virtual.labels, clf.classes_))
        novelty.append(clf.lab_novelty(X))
        features.append(X)
    t = np.concatenate(truths)
    T = cal.fit_temperature(np.vstack(probas), t)
    tempered = [cal.apply_temperature(p, T) for p in probas]
    fit = None
    if clf.gate_columns is not None:
        calls = disagreement_calls(clf, virtual, source) if calls is None else calls
        if calls["disagreement"].nunique() > 1:  # else the calls say nothing of it
            fit = _fit_line(calls, len(clf.classes_), with_novelty)
            tempered = [calibrate_with_views(clf, X, p, fit)[0] for X, p in zip(features, tempered)]
    rule = cal.choose_uncertain_rule(np.vstack(tempered), t, target_catch, max_review)
    fitted = nov.fit_novelty(novelty)
    gate = None if gate_threshold is None else [[int(n), float(t)] for n, t in gate_threshold]
    return Calibration(float(T), float(rule.min_probability), float(fitted.threshold), [float(v) for v in novelty],
                       gate, None if fit is None else fit.to_dict())


def disagreement_glue(calibration: Calibration) -> dict:
    """The accuracy-from-disagreement line's numbers for the chapter (empty without one).

    >>> c = Calibration(1.5, 0.6, 2.0, [1.0], None, {"intercept": 0.97, "slope": -1.6, "floor": 0.2,
    ...                                               "n_calls": 120, "residual_std": 0.05})
    >>> disagreement_glue(c)["crosslab_disagreement_slope"]
    -1.6
    """
    fit = calibration.accuracy_from_disagreement
    if fit is None:
        return {}
    return {f"crosslab_disagreement_{k}": v for k, v in fit.items() if k != "floor"}


def review_glue(calibration_rows: pd.DataFrame, calls: pd.DataFrame) -> dict:
    """The chapter's numbers on what the deployed probabilities flag and on the development calls:
    per lab of :func:`calibration_table`, the ``uncertain`` flag's review share and catch rate
    (``crosslab_flag_review_<lab>``, ``crosslab_flag_catch_<lab>``), and the lowest accuracy of an
    ordinary and of a hard virtual lab's cells in one call among the line's development ``calls``
    (``crosslab_virtual_lowest_all_cells_accuracy``, ``crosslab_hard_lowest_all_cells_accuracy``;
    NaN without such calls).

    >>> rows = pd.DataFrame({"lab": ["a"], "review_share": [0.2], "catch_rate": [0.5]})
    >>> calls = pd.DataFrame({"lab": ["v0", "v1", "hard_00", "source fold 0"], "mix": ["all cells"] * 4,
    ...                       "accuracy": [0.7, 0.6, 0.4, 0.5]})
    >>> sorted(review_glue(rows, calls).items())  # doctest: +NORMALIZE_WHITESPACE
    [('crosslab_flag_catch_a', 0.5), ('crosslab_flag_review_a', 0.2), ('crosslab_hard_lowest_all_cells_accuracy', 0.4),
     ('crosslab_virtual_lowest_all_cells_accuracy', 0.6)]
    """
    out = {}
    for row in calibration_rows.itertuples():
        out[f"crosslab_flag_review_{row.lab}"] = float(row.review_share)
        out[f"crosslab_flag_catch_{row.lab}"] = float(row.catch_rate)
    lab = calls["lab"].astype(str)
    whole, hard = calls["mix"] == "all cells", lab.str.startswith("hard_")
    for key, part in (("virtual", whole & ~hard & ~lab.str.startswith("source fold")), ("hard", whole & hard)):
        out[f"crosslab_{key}_lowest_all_cells_accuracy"] = (float(calls.loc[part, "accuracy"].min()) if part.any()
                                                             else float("nan"))
    return out


def calibration_table(clf: CrossLabClassifier, calibration: Calibration,
                      labs: dict[str, tuple[np.ndarray, np.ndarray]]) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """Per lab (all its cells in one call): ECE and the confidence gap before and after the
    temperature and, where the calibration holds the accuracy-from-disagreement line and the
    classifier two views, after the call's own temperature (``view_disagreement``,
    ``estimated_accuracy`` and the ``_call`` columns: what ``bcfeat classify`` gives); the
    ``uncertain`` flag's review share and catch rate, the novelty score and whether it warns; and
    the reliability tables, all on the deployed probabilities.

    ``clf`` must be untempered (``temperature=1``): the calibration's temperature is applied
    here, once, as the deployed model applies it."""
    if clf.temperature != 1.0:
        raise ValueError(f"calibration_table needs the untempered classifier (temperature 1), got temperature "
                         f"{clf.temperature}: the calibration's temperature {calibration.temperature} is applied here")
    from bcfeat.crosslab.view_agreement import AccuracyFromDisagreement, calibrate_with_views

    rule = cal.UncertainRule(calibration.uncertain_min_probability)
    novelty = nov.LabNovelty(np.asarray(calibration.reference_novelty), calibration.novelty_threshold)
    fit = (None if calibration.accuracy_from_disagreement is None or clf.gate_columns is None
           else AccuracyFromDisagreement.from_dict(calibration.accuracy_from_disagreement))
    rows, reliability = [], {}
    for name, (X, y) in labs.items():
        P = clf.predict_proba(X)
        t = _index(y, clf.classes_)
        Pt = cal.apply_temperature(P, calibration.temperature)
        before, after = cal.calibration_summary(P, t), cal.calibration_summary(Pt, t)
        score = clf.lab_novelty(X)
        gate = {} if clf.gate_columns is None else {"gate_novelty": clf.gate_novelty(X),
                                                     "gate_closed": clf.gate_closed(X)}
        call = {}
        if fit is not None:  # what bcfeat classify deploys: the call's own temperature from its views
            Pt, d, estimate = calibrate_with_views(clf, X, Pt, fit)
            called = cal.calibration_summary(Pt, t)
            call = {"view_disagreement": d, "estimated_accuracy": estimate, "ece_call": called["ece"],
                    "mean_confidence_call": called["mean_confidence"], "confidence_gap_call": called["confidence_gap"]}
        rows.append({"lab": name, "n_cells": len(y), "accuracy": after["accuracy"],
                     "ece_raw": before["ece"], "mean_confidence_raw": before["mean_confidence"],
                     "ece": after["ece"], "mean_confidence": after["mean_confidence"],
                     "confidence_gap": after["confidence_gap"], **call,
                     **{k: v for k, v in cal.review_table(Pt, t, rule).items() if k != "n_cells"},
                     "novelty": score, "novelty_warning": nov.novelty_warning(score, novelty) is not None, **gate})
        reliability[name] = cal.reliability_table(Pt, t)
    return pd.DataFrame(rows), reliability


__all__ = ["CALL_COLUMNS", "Calibration", "disagreement_calls", "call_estimates", "source_out_of_fold_calls", "line_error_leave_one_lab_out",
           "calibration_calls", "fit_calibration", "disagreement_glue", "review_glue", "calibration_table"]
