"""Label-free adaptation to a new lab: per-site standardisation that is blind to the class mix.

A lab shifts every feature of :mod:`bcfeat.crosslab.cell_features` by its stain, optics and
scanner. Standardising each feature with the site's own mean and spread, computed over its
unlabelled cells, removes that shift to first order (the idea of AdaBN, Li et al. 2018, on
hand features). But a site's mean also depends on its mix of cell types: Zheng-18 set 1 and
the BCCD crops are 59 % neutrophils, the Acevedo-20 half is 32 %. Plain standardisation then
pulls the neutrophils of those sites towards the middle and pushes the minority classes out.

:class:`CrossLabClassifier` therefore standardises with **class-balanced** statistics: on the
source site with the known labels (each class weighs the same), on a target site with the
classifier's own posteriors (each *predicted* class weighs the same), re-estimated for a few
rounds. No target label is read. Three readings of "class-balanced" are implemented
(``statistics``):

- ``"balanced"``: the weighted mean and standard deviation with every (predicted) class given
  the same total weight; the spread still holds the distance between the classes;
- ``"cbr"``: class-balanced re-standardisation (Sharma & Tapadiya, HemaRAI workshop, MICCAI
  2026): the centre is the average of the (predicted) class means and the spread the average
  within-class standard deviation, so neither moves with the call's class mix. Classes with
  fewer than :data:`CBR_MIN_CLASS_CELLS` predicted cells are dropped; a call of fewer than
  :data:`CBR_MIN_CELLS` cells, or with fewer than two classes left, falls back to the plain
  statistics with the spread scaled by the training site's within-to-total spread ratio;
- ``"cbr_mix"``: CBR's centre, with the spread read from every cell of the call and divided by
  the spread the training cells would have under the call's predicted class shares
  (:func:`~bcfeat.crosslab.site_statistics.mix_corrected_statistics`): only the predicted
  *shares* enter the spread, not which cells were put in which class.

Optional extras, each also label-free:

- ``prior_correction="em"``: the target's class mix re-estimated by EM from the posteriors
  (Saerens et al., Neural Computation 2002); it helps plain accuracy, not balanced accuracy,
  which already assumes equal priors, so it is off by default (see the book's ablation);
- ``self_training``: rounds in which the most confident target cells, with their predicted
  labels, join the training set.

All statistics of a site come from the cells passed to one ``predict`` call: pass one site's
cells per call (the benchmark does), at least :data:`MIN_SITE_CELLS` of them.

Labelled cells of *another* lab (a reviewer's corrections of a classified folder) join the
training as :class:`LabelledCall`: every cell of that lab's call, of which some carry labels.
They are standardised the way the classifier reads that lab when it classifies it, with the
call's own statistics (not the training lab's), so what they teach holds where it is used.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from bcfeat.crosslab.estimator_api import EstimatorParams, FittedLogistic, require_fitted
from bcfeat.crosslab.site_statistics import (CBR_MIN_CELLS, CBR_MIN_CLASS_CELLS, MIN_SITE_CELLS,  # noqa: F401
                                             SiteStatistics, class_balanced_weights, class_conditional_statistics,
                                             class_moments, em_class_priors, mix_corrected_statistics,
                                             site_statistics, soften, standardize)

MODELS = ("logistic", "forest")
PRIOR_CORRECTIONS = ("none", "em")
STATISTICS = ("balanced", "cbr", "cbr_mix")
CLASS_STATISTICS = ("cbr", "cbr_mix")  # the readings with per-class centres (and the fallback ratio)
# Shrinkage towards the identity of the gated columns' within-class covariance (standardised
# units): texture measures are strongly correlated, and the inverse must not blow up on them.
GATE_SHRINKAGE = 0.05


@dataclass(frozen=True)
class LabelledCall:
    """One call of another lab, some of its cells labelled (a reviewer's corrections).

    Attributes
    ----------
    features : np.ndarray
        ``(m, d)`` raw features of **every** cell of the call: the call's statistics are read
        from all of them, as when the lab's folder is classified.
    rows : np.ndarray
        ``(k,)`` int, the labelled cells' rows in ``features``.
    labels : np.ndarray
        ``(k,)`` their labels, each one of the training classes.
    """

    features: np.ndarray
    rows: np.ndarray
    labels: np.ndarray


def _gate_envelope(threshold) -> tuple[np.ndarray, np.ndarray]:
    """A gate threshold as ``(call sizes ascending, thresholds)``; a number is one size. Raises
    ``ValueError`` naming the value when it is neither a number >= 0 (inf: never) nor pairs of a
    call size >= 1 and a threshold >= 0 with distinct sizes."""
    if isinstance(threshold, (int, float)) and not isinstance(threshold, bool):
        if not threshold >= 0:
            raise ValueError(f"gate_threshold must be >= 0 (inf: never closes), got {threshold!r}")
        return np.array([1.0]), np.array([float(threshold)])
    try:
        pairs = [(float(n), float(t)) for n, t in threshold]
    except (TypeError, ValueError):
        raise ValueError(f"gate_threshold must be None, a number or (call size, threshold) pairs, got {threshold!r}") \
            from None
    sizes = np.array([n for n, _ in pairs])
    values = np.array([t for _, t in pairs])
    if (not pairs or np.any(sizes < 1) or np.any(~(values >= 0)) or len(set(sizes)) != len(sizes)
            or not np.all(np.isfinite(sizes))):
        raise ValueError(f"gate_threshold pairs need distinct call sizes >= 1 and thresholds >= 0, got {threshold!r}")
    order = np.argsort(sizes)
    return sizes[order], values[order]


def _array(value) -> np.ndarray:
    """A model file's tensor (torch) or array (read without torch) as a numpy array."""
    return value if isinstance(value, np.ndarray) else value.numpy()


def gate_threshold_at(threshold, n_cells: int) -> float:
    """A gate threshold (a number, or (call size, threshold) pairs) for a call of ``n_cells``
    cells: see :meth:`CrossLabClassifier.gate_threshold_for`."""
    sizes, values = _gate_envelope(threshold)
    n = float(np.clip(n_cells, sizes[0], sizes[-1]))
    return float(np.interp(1 / np.sqrt(n), (1 / np.sqrt(sizes))[::-1], values[::-1]))


class CrossLabClassifier(EstimatorParams):
    """A classifier trained on one lab's labelled cells that adapts, without labels, to each new lab.

    Parameters
    ----------
    model : {"logistic", "forest"}, default="logistic"
        Multinomial logistic regression (class-balanced) or the paper's random forest
        (``max_depth=16``, class-balanced).
    C : float, default=0.1
        Inverse L2 strength of the logistic regression.
    site_standardize : bool, default=True
        Standardise every site with its own statistics (else the training site's, for all).
    balance_rounds : int, default=2
        Rounds of class-balanced re-estimation of a target site's statistics from the
        posteriors (0: plain, unweighted statistics). The training site is always balanced
        with its labels when this is > 0.
    statistics : {"balanced", "cbr", "cbr_mix"}, default="balanced"
        Which class-balanced statistics the rounds use: the class-weighted mean and spread,
        class-balanced re-standardisation (:func:`class_conditional_statistics`), or CBR's centre
        with the call's whole spread corrected for its predicted mix
        (:func:`mix_corrected_statistics`).
    temperature : float, default=1.0
        The output probabilities are ``softmax(log p / temperature)``: a temperature > 1
        softens a classifier that is confident while wrong on new labs. It is chosen on
        development data, never on the lab it is applied to.
    prior_correction : {"none", "em"}, default="none"
        Re-weight the output by the target's EM-estimated class mix.
    self_training : int, default=0
        Rounds of self-training: target cells whose top probability is at least
        ``confidence`` join the training set with their predicted label.
    confidence : float, default=0.9
    n_estimators : int, default=200
        Trees of the forest.
    columns : tuple of int or None, default=None
        The feature columns used (e.g. all but the texture group); ``None``: every column.
    random_state : int or None, default=None
    gate_columns : tuple of int or None, default=None
        A feature group that is trusted only where a call looks like the labs it was checked on
        (the study: the texture group). Fitting also fits ``fallback_``, the same classifier
        without these columns; :meth:`gate_novelty` says how far a call's cells sit from the
        training classes in these columns alone.
    gate_threshold : float, sequence of (call size, threshold) pairs, or None, default=None
        A call whose :meth:`gate_novelty` exceeds its threshold is classified by ``fallback_``
        (its probabilities, standardised view and novelty). Pairs give a threshold per call size
        (a median over fewer cells scatters more), read by :meth:`gate_threshold_for`. ``None``:
        never (the novelty can still be read, to fit the threshold on development labs).

    Attributes
    ----------
    classes_ : np.ndarray
    source_statistics_ : SiteStatistics
    estimator_ : the fitted scikit-learn classifier (read from a model file: a
        :class:`~bcfeat.crosslab.estimator_api.FittedLogistic`, the same numbers without scikit-learn)
    class_means_ : np.ndarray
        ``(n_classes, d')`` the training classes' centroids in the standardised space.
    discriminant_means_, discriminant_whitening_ : np.ndarray
        The training classes' centroids in :meth:`discriminant_view` and the ``(k, k)`` map into
        it (how far a new lab's cells sit from every class: :mod:`bcfeat.crosslab.calibration`).
    fallback_ratio_ : np.ndarray
        ``(d',)`` the training site's within-class to total spread (``statistics`` ``"cbr"`` or
        ``"cbr_mix"``), used where a call is too small for class statistics.
    source_class_means_, source_class_variances_ : np.ndarray
        ``(n_classes, d')`` the training cells' moments per class in the standardised view
        (``statistics="cbr_mix"``).
    fallback_ : CrossLabClassifier
        With ``gate_columns``: the classifier without them.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> y = np.repeat([0, 1], 50); X = y[:, None] * 2.0 + rng.normal(size=(100, 3))
    >>> clf = CrossLabClassifier().fit(X, y)
    >>> float((clf.predict(X * 3 + 5) == y).mean()) > 0.9   # a lab that scales and shifts everything
    True
    """

    def __init__(self, model: str = "logistic", C: float = 0.1, site_standardize: bool = True,
                 balance_rounds: int = 2, prior_correction: str = "none", self_training: int = 0,
                 confidence: float = 0.9, n_estimators: int = 200, columns: tuple[int, ...] | None = None,
                 random_state: int | None = None, statistics: str = "balanced", temperature: float = 1.0,
                 gate_columns: tuple[int, ...] | None = None,
                 gate_threshold: float | tuple[tuple[int, float], ...] | None = None):
        self.model = model
        self.C = C
        self.site_standardize = site_standardize
        self.balance_rounds = balance_rounds
        self.prior_correction = prior_correction
        self.self_training = self_training
        self.confidence = confidence
        self.n_estimators = n_estimators
        self.columns = columns
        self.random_state = random_state
        self.statistics = statistics
        self.temperature = temperature
        self.gate_columns = gate_columns
        self.gate_threshold = gate_threshold

    def _check_params(self) -> None:
        if self.model not in MODELS:
            raise ValueError(f"model must be one of {MODELS}, got {self.model!r}")
        if self.prior_correction not in PRIOR_CORRECTIONS:
            raise ValueError(f"prior_correction must be one of {PRIOR_CORRECTIONS}, got {self.prior_correction!r}")
        # upper bounds too: a model file is data from someone else, and these are loop counts
        for name, value, high in (("balance_rounds", self.balance_rounds, 20), ("self_training", self.self_training, 20),
                                  ("n_estimators", self.n_estimators, 10_000)):
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or not 0 <= value <= high:
                raise ValueError(f"{name} must be an integer in [0, {high}], got {value!r}")
        if not (isinstance(self.C, (int, float)) and 1e-8 <= self.C <= 1e8):
            raise ValueError(f"C must lie in [1e-8, 1e8], got {self.C!r}")
        if self.statistics not in STATISTICS:
            raise ValueError(f"statistics must be one of {STATISTICS}, got {self.statistics!r}")
        if not (isinstance(self.temperature, (int, float)) and 0.05 <= self.temperature <= 20):
            raise ValueError(f"temperature must lie in [0.05, 20], got {self.temperature!r}")
        if not 0 < self.confidence <= 1:
            raise ValueError(f"confidence must lie in (0, 1], got {self.confidence}")
        if self.gate_threshold is not None:
            _gate_envelope(self.gate_threshold)  # raises on a bad value

    def _new_estimator(self):
        # scikit-learn is imported where a classifier is fitted: reading a model file does without it
        from sklearn.ensemble import RandomForestClassifier
        from sklearn.linear_model import LogisticRegression

        if self.model == "logistic":
            return LogisticRegression(C=self.C, max_iter=3000, class_weight="balanced")
        return RandomForestClassifier(n_estimators=self.n_estimators, max_depth=16, class_weight="balanced",
                                      n_jobs=1, random_state=self.random_state)

    def _select(self, X: np.ndarray) -> np.ndarray:
        return X if self.columns is None else X[:, list(self.columns)]

    def fit(self, X: np.ndarray, y: Sequence, labelled_calls: Sequence[LabelledCall] = ()) -> CrossLabClassifier:
        """Fit on one lab's features ``(n, d)`` (raw, unstandardised) and labels ``(n,)``.

        ``labelled_calls``: labelled cells of other labs (:class:`LabelledCall`), each standardised
        with its own call's statistics as the classifier fitted on ``X`` reads that call; the
        estimator is then refitted on the training lab's cells and theirs together."""
        from sklearn.utils.multiclass import check_classification_targets

        self._check_params()
        X = np.asarray(X, dtype=np.float64)
        y = np.asarray(y)
        check_classification_targets(y)
        if X.ndim != 2 or len(X) != len(y):
            raise ValueError(f"X must be (n, d) with one row per label; got {X.shape} and {len(y)} labels")
        self.n_features_in_ = X.shape[1]
        if self.columns is not None and (min(self.columns) < 0 or max(self.columns) >= X.shape[1]):
            raise ValueError(f"columns must index the {X.shape[1]} features, got {min(self.columns)}..{max(self.columns)}")
        X_full, X = X, self._select(X)
        self.classes_ = np.unique(y)
        onehot = (y[:, None] == self.classes_[None, :]).astype(float)
        self.fallback_ratio_ = np.ones(X.shape[1])
        if self.balance_rounds > 0 and self.statistics in CLASS_STATISTICS:
            self.source_statistics_ = class_conditional_statistics(X, y)
            self.fallback_ratio_ = self.source_statistics_.scale / site_statistics(X).scale
        else:
            weights = class_balanced_weights(onehot) if self.balance_rounds > 0 else None
            self.source_statistics_ = site_statistics(X, weights)
        self._Z_train, self._y_train = standardize(X, self.source_statistics_), y
        if self.statistics == "cbr_mix":
            self.source_class_means_, self.source_class_variances_ = class_moments(
                self._Z_train, np.searchsorted(self.classes_, y), len(self.classes_))
        self.estimator_ = self._new_estimator().fit(self._Z_train, y)
        if labelled_calls:
            self._learn_from_calls(labelled_calls)
        self._fit_discriminant_space()
        if self.gate_columns is not None:
            kept = self._gate_split()
            params = {**self.get_params(), "columns": kept, "gate_columns": None, "gate_threshold": None}
            self.fallback_ = CrossLabClassifier(**params).fit(X_full, y, labelled_calls)
            self._fit_gate()
        return self

    def _learn_from_calls(self, calls: Sequence[LabelledCall]) -> None:
        """Add each call's labelled cells, in the call's own standardised view (read with the
        estimator fitted so far), to the training cells and refit the estimator on all."""
        Z, y = [self._Z_train], [self._y_train]
        for i, call in enumerate(calls):
            features = np.asarray(call.features, dtype=np.float64)
            rows, labels = np.asarray(call.rows, dtype=np.int64), np.asarray(call.labels)
            if features.ndim != 2 or features.shape[1] != self.n_features_in_:
                raise ValueError(f"labelled call {i}: features must be (m, {self.n_features_in_}), got {features.shape}")
            if rows.shape != labels.shape or rows.ndim != 1 or not len(rows):
                raise ValueError(f"labelled call {i}: rows and labels must be two (k,) arrays with k >= 1")
            if rows.min() < 0 or rows.max() >= len(features) or len(np.unique(rows)) != len(rows):
                raise ValueError(f"labelled call {i}: rows must be distinct indices into its {len(features)} cells")
            unknown = sorted(set(labels.tolist()) - set(self.classes_.tolist()))
            if unknown:
                raise ValueError(f"labelled call {i}: labels {unknown} are not classes of the training lab "
                                 f"{self.classes_.tolist()}")
            view = self._site_view(self._select(features), self.estimator_)[0]
            Z.append(view[rows])
            y.append(labels)
        self._Z_train, self._y_train = np.vstack(Z), np.concatenate(y)
        self.estimator_ = self._new_estimator().fit(self._Z_train, self._y_train)

    def _gate_split(self) -> tuple[int, ...]:
        """The columns the fallback keeps; checks that the gated ones are used and some are not."""
        used = list(range(self.n_features_in_)) if self.columns is None else [int(c) for c in self.columns]
        gated = {int(c) for c in self.gate_columns}
        if not gated or not gated <= set(used):
            raise ValueError(f"gate_columns must be a non-empty subset of the columns used; got {sorted(gated)}")
        kept = tuple(c for c in used if c not in gated)
        if not kept:
            raise ValueError("gate_columns must leave at least one column for the fallback classifier")
        return kept

    def _fit_gate(self) -> None:
        """Where the gated columns sit in the standardised view, and the inverse of the training
        cells' within-class covariance there (shrunk towards the identity)."""
        used = list(range(self.n_features_in_)) if self.columns is None else [int(c) for c in self.columns]
        gated = {int(c) for c in self.gate_columns}
        self.gate_index_ = np.array([i for i, c in enumerate(used) if c in gated])
        Z = self._Z_train[:, self.gate_index_]
        resid = Z - self.class_means_[np.searchsorted(self.classes_, self._y_train)][:, self.gate_index_]
        cov = resid.T @ resid / len(resid)
        self.gate_precision_ = np.linalg.inv(cov + GATE_SHRINKAGE * np.eye(len(cov)))

    def gate_novelty(self, X: np.ndarray) -> float:
        """How far one call's cells sit from the training classes in the gated columns alone.

        The fallback classifier (which does not read those columns) labels the call; the call is
        standardised with those labels as in :meth:`transform`; each cell's squared whitened
        distance to its label's training mean in the gated columns, divided by their number, and
        the median over the cells. About 0.5 on the training lab's own test cells; a lab whose
        gated measurements mean something else (another camera's texture) sits far above. No
        label of the call is read."""
        require_fitted(self, "fallback_")
        X = self._checked(X)
        hard = np.searchsorted(self.classes_, self.fallback_.predict(X))
        Xs = self._select(X)
        if not self.site_standardize:
            stats = self.source_statistics_
        elif self.balance_rounds > 0:
            stats = self._labelled_statistics(Xs, hard)
        else:
            stats = site_statistics(Xs)
        Z = standardize(Xs, stats)[:, self.gate_index_]
        R = Z - self.class_means_[hard][:, self.gate_index_]
        d = np.einsum("ij,jk,ik->i", R, self.gate_precision_, R) / R.shape[1]
        return float(np.median(d))

    def gate_threshold_for(self, n_cells: int) -> float | None:
        """The gate's threshold for a call of ``n_cells`` cells: the number, or with pairs the
        threshold interpolated linearly in ``1 / sqrt(call size)`` (how a median's scatter
        shrinks) between the fitted sizes, and the nearest fitted size's outside them.

        >>> clf = CrossLabClassifier(gate_threshold=((100, 2.0), (400, 1.0)))
        >>> clf.gate_threshold_for(50), clf.gate_threshold_for(400), round(clf.gate_threshold_for(200), 3)
        (2.0, 1.0, 1.414)
        """
        return None if self.gate_threshold is None else gate_threshold_at(self.gate_threshold, n_cells)

    def gate_closed(self, X: np.ndarray) -> bool:
        """Whether this call is classified without the gated columns (``gate_novelty`` above the
        threshold for its number of cells)."""
        if self.gate_columns is None or self.gate_threshold is None:
            return False
        return self.gate_novelty(X) > self.gate_threshold_for(len(X))

    def _checked(self, X: np.ndarray) -> np.ndarray:
        require_fitted(self, "estimator_")
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != self.n_features_in_:
            raise ValueError(f"X must be (n, {self.n_features_in_}), got {X.shape}")
        return X

    def _fit_discriminant_space(self) -> None:
        """Class centroids of the training cells in the classifier's own score space, whitened by
        the pooled within-class covariance (what :meth:`discriminant_view` maps a call into)."""
        Z, y = self._Z_train, self._y_train
        self.class_means_ = np.stack([Z[y == c].mean(axis=0) for c in self.classes_])
        L = self._scores(Z)
        means = np.stack([L[y == c].mean(axis=0) for c in self.classes_])
        resid = L - means[np.searchsorted(self.classes_, y)]
        cov = resid.T @ resid / max(len(L) - len(self.classes_), 1)
        values, vectors = np.linalg.eigh(cov + 1e-6 * np.trace(cov) / len(cov) * np.eye(len(cov)))
        self.discriminant_whitening_ = vectors / np.sqrt(values)
        self.discriminant_means_ = means @ self.discriminant_whitening_

    def _scores(self, Z: np.ndarray) -> np.ndarray:
        est = self.estimator_
        if hasattr(est, "decision_function"):
            L = np.asarray(est.decision_function(Z), dtype=np.float64)
            return L[:, None] if L.ndim == 1 else L
        return np.log(np.clip(est.predict_proba(Z), 1e-12, 1.0))

    def discriminant_view(self, X: np.ndarray) -> np.ndarray:
        """``(n, d)`` raw features of one call -> ``(n, k)`` the classifier's class scores, whitened
        by the training cells' within-class spread; training classes sit at ``discriminant_means_``.
        Cells far from every class mean there are cells the classifier extrapolates on. (Without
        the gate: a closed gate's call is read by :meth:`lab_novelty` through ``fallback_``.)"""
        return self._scores(self._transform(self._checked(X))) @ self.discriminant_whitening_

    def lab_novelty(self, X: np.ndarray) -> float:
        """:func:`bcfeat.crosslab.novelty.lab_novelty_score` of one call in the score space of the
        classifier that classifies it (``fallback_`` where the gate is closed)."""
        from bcfeat.crosslab.novelty import lab_novelty_score

        clf = self.fallback_ if self.gate_closed(X) else self
        return lab_novelty_score(clf.discriminant_view(X), clf.discriminant_means_)

    def _site_view(self, X: np.ndarray, estimator) -> tuple[np.ndarray, np.ndarray]:
        """The site's standardised features and posteriors, after the balancing rounds."""
        if not self.site_standardize:
            Z = standardize(X, self.source_statistics_)
            return Z, estimator.predict_proba(Z)
        Z = standardize(X, site_statistics(X))
        P = estimator.predict_proba(Z)
        for _ in range(self.balance_rounds):
            # hard labels: soft posteriors of a regularised model are too flat to move the weights
            Z = standardize(X, self._labelled_statistics(X, P.argmax(axis=1)))
            P = estimator.predict_proba(Z)
        return Z, P

    def _labelled_statistics(self, X: np.ndarray, hard: np.ndarray) -> SiteStatistics:
        """A call's class-balanced statistics (CBR, or class-weighted) from hard class indices
        ``(n,)`` into ``classes_``: its own predictions, or the texture gate's fallback's."""
        if self.statistics == "cbr":
            return class_conditional_statistics(X, hard, self.fallback_ratio_)
        if self.statistics == "cbr_mix":
            return mix_corrected_statistics(X, hard, self.source_class_means_, self.source_class_variances_,
                                            self.fallback_ratio_)
        return site_statistics(X, class_balanced_weights(np.eye(len(self.classes_))[hard]))

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """``(n, d)`` features of **one** site -> ``(n, n_classes)`` probabilities (``fallback_``'s
        where the gate is closed for this call)."""
        X = self._checked(X)
        if self.gate_closed(X):
            return self.fallback_.predict_proba(X)
        X = self._select(X)
        estimator = self.estimator_
        Z, P = self._site_view(X, estimator)
        for _ in range(self.self_training):
            keep = P.max(axis=1) >= self.confidence
            if keep.sum() < len(self.classes_):
                break
            estimator = self._new_estimator().fit(np.vstack([self._Z_train, Z[keep]]),
                                                  np.concatenate([self._y_train, self.classes_[P[keep].argmax(1)]]))
            Z, P = self._site_view(X, estimator)
        if self.temperature != 1.0:
            P = soften(P, self.temperature)
        if self.prior_correction != "em":
            return P
        uniform = np.full(len(self.classes_), 1.0 / len(self.classes_))  # class_weight="balanced"
        return em_class_priors(P, uniform)[0]

    def view_probabilities(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """One call read twice: ``(with every column, without the gated ones)``, the untempered
        probabilities of this classifier (gate ignored) and of ``fallback_``; ``None`` without a
        gate. How often the two part is :func:`bcfeat.crosslab.view_agreement.view_disagreement`."""
        if self.gate_columns is None:
            return None
        X = self._checked(X)
        full = self._site_view(self._select(X), self.estimator_)[1]
        fallback = self.fallback_._site_view(self.fallback_._select(X), self.fallback_.estimator_)[1]
        return full, fallback

    def transform(self, X: np.ndarray) -> np.ndarray:
        """``(n, d)`` raw features of one site -> ``(n, d')`` the classifier's standardised view of them
        (after the balancing rounds), the space of ``class_means_`` (of this classifier, gate or not)."""
        return self._transform(self._checked(X))

    def _transform(self, X: np.ndarray) -> np.ndarray:
        return self._site_view(self._select(X), self.estimator_)[0]

    def predict(self, X: np.ndarray) -> np.ndarray:
        """``(n,)`` labels of one site's cells."""
        proba = self.predict_proba(X)  # first: an unfitted classifier raises NotFittedError, not AttributeError
        return self.classes_[proba.argmax(axis=1)]

    # ------------------------------------------------------------------------- model files
    def to_payload(self) -> dict:
        """The fitted logistic classifier as tensors and plain values (a model file's ``classifier``
        part, :mod:`bcfeat.crosslab.model`); :meth:`from_payload` rebuilds it."""
        import torch

        require_fitted(self, "estimator_")
        if self.model != "logistic":
            raise ValueError("only the logistic CrossLabClassifier can be stored in a model file "
                             f"(a forest is not plain data), got model={self.model!r}")
        params = self.get_params()
        for key in ("columns", "gate_columns"):
            params[key] = None if params[key] is None else [int(c) for c in params[key]]
        if params["gate_threshold"] is not None:
            sizes, values = _gate_envelope(params["gate_threshold"])
            params["gate_threshold"] = (float(values[0]) if isinstance(params["gate_threshold"], (int, float))
                                        else [[int(n), float(t)] for n, t in zip(sizes, values)])
        gate = {"fallback": self.fallback_.to_payload()} if self.gate_columns is not None else {}
        return {**gate,
            "params": params,
            "classes": [str(c) for c in self.classes_],
            "coef": torch.from_numpy(np.asarray(self.estimator_.coef_, np.float64)),
            "intercept": torch.from_numpy(np.asarray(self.estimator_.intercept_, np.float64)),
            "source_statistics": self.source_statistics_.to_dict(),
            "train_z": torch.from_numpy(self._Z_train.astype(np.float32)),
            "train_y": [str(v) for v in self._y_train],
            "fallback_ratio": torch.from_numpy(np.asarray(self.fallback_ratio_, np.float64)),
            "calibration": dict(getattr(self, "calibration_", {}) or {}),
            **({"class_moments": {"means": torch.from_numpy(self.source_class_means_),
                                  "variances": torch.from_numpy(self.source_class_variances_)}}
               if self.statistics == "cbr_mix" else {}),
        }

    @classmethod
    def from_payload(cls, p: dict, n_features_in: int) -> CrossLabClassifier:
        """Rebuild a classifier written by :meth:`to_payload`; every setting is range-checked.

        ``n_features_in``: the width of the features it reads (before ``columns`` selects some),
        which the file's model knows (its feature names)."""
        params = dict(p["params"])
        for key in ("columns", "gate_columns"):  # files before the gate have no gate_columns
            params[key] = None if params.get(key) is None else tuple(int(c) for c in params[key])
        if isinstance(params.get("gate_threshold"), list):
            params["gate_threshold"] = tuple((int(n), float(t)) for n, t in params["gate_threshold"])
        clf = cls(**params)
        clf._check_params()  # every setting read from a file, with the ranges a fit would check
        clf.classes_ = np.asarray(p["classes"])
        clf.estimator_ = FittedLogistic(clf.classes_, _array(p["coef"]), _array(p["intercept"]))
        clf.source_statistics_ = SiteStatistics.from_dict(p["source_statistics"])
        clf.n_features_in_ = int(n_features_in)
        clf._Z_train = _array(p["train_z"]).astype(np.float64)
        clf._y_train = np.asarray(p["train_y"])
        clf._fit_discriminant_space()
        ratio = p.get("fallback_ratio")  # files written before CBR have none: plain statistics
        clf.fallback_ratio_ = np.ones(clf._Z_train.shape[1]) if ratio is None else _array(ratio).astype(np.float64)
        clf.calibration_ = dict(p.get("calibration") or {})
        if clf.statistics == "cbr_mix":
            moments = p.get("class_moments")
            shape = (len(clf.classes_), clf._Z_train.shape[1])
            if moments is None:
                raise ValueError("a classifier with statistics='cbr_mix' needs its class moments in the file")
            clf.source_class_means_ = _array(moments["means"]).astype(np.float64)
            clf.source_class_variances_ = _array(moments["variances"]).astype(np.float64)
            if clf.source_class_means_.shape != shape or clf.source_class_variances_.shape != shape:
                raise ValueError(f"the file's class moments must be {shape}, got {clf.source_class_means_.shape} "
                                 f"and {clf.source_class_variances_.shape}")
        if clf.gate_columns is not None:
            if "fallback" not in p:
                raise ValueError("a classifier with gate_columns needs its fallback classifier in the file")
            if tuple(p["fallback"]["params"].get("columns") or ()) != clf._gate_split():
                raise ValueError("the file's fallback classifier does not read the columns the gate leaves")
            clf.fallback_ = cls.from_payload(p["fallback"], n_features_in)
            clf._fit_gate()
        return clf


__all__ = ["STATISTICS", "CLASS_STATISTICS", "GATE_SHRINKAGE", "gate_threshold_at", "LabelledCall", "CrossLabClassifier"]
