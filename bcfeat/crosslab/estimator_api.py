"""What :class:`~bcfeat.crosslab.adaptation.CrossLabClassifier` takes from scikit-learn's estimator
API, without importing scikit-learn: its parameters (``get_params``, ``set_params``, so that
``sklearn.base.clone`` copies it), ``score`` and its repr, and the fitted logistic regression of a
model file read back as arrays (:class:`FittedLogistic`).

``bcfeat classify`` reads a model file and classifies one folder; importing scikit-learn costs
about half a second of a core (it imports most of SciPy, ``scipy.stats`` included), a quarter of a
20-image call. Fitting still uses scikit-learn, imported where a classifier is fitted.
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np
from scipy.special import expit


class EstimatorParams:
    """scikit-learn's parameter protocol for a class whose ``__init__`` stores each argument
    under its own name: ``get_params``, ``set_params``, a repr of the non-default ones,
    ``score`` (accuracy, scikit-learn's classifiers' default) and the classifier's tags (built by
    scikit-learn itself, imported only when scikit-learn asks for them).

    >>> class Toy(EstimatorParams):
    ...     def __init__(self, a: int = 1, b: str = "x"):
    ...         self.a, self.b = a, b
    >>> Toy(a=2), Toy(a=2).set_params(b="y").get_params()
    (Toy(a=2), {'a': 2, 'b': 'y'})
    """

    _estimator_type = "classifier"

    @classmethod
    def _init_parameters(cls) -> dict[str, inspect.Parameter]:
        """``__init__``'s named parameters (not ``self``, ``*args`` or ``**kwargs``)."""
        return {name: p for name, p in inspect.signature(cls.__init__).parameters.items()
                if name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}

    @classmethod
    def _param_names(cls) -> list[str]:
        return list(cls._init_parameters())

    def get_params(self, deep: bool = True) -> dict[str, Any]:  # noqa: ARG002 (no nested estimators)
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params: Any) -> EstimatorParams:
        valid = self._param_names()
        for name, value in params.items():
            if name not in valid:
                raise ValueError(f"invalid parameter {name!r} for {type(self).__name__}; valid: {valid}")
            setattr(self, name, value)
        return self

    def __repr__(self) -> str:
        defaults = {name: p.default for name, p in self._init_parameters().items()}
        changed = [f"{name}={value!r}" for name, value in self.get_params().items() if not _same(value, defaults[name])]
        return f"{type(self).__name__}({', '.join(changed)})"

    def score(self, X: np.ndarray, y: np.ndarray, sample_weight: np.ndarray | None = None) -> float:
        """Mean accuracy on ``X, y`` (scikit-learn's ``ClassifierMixin.score``)."""
        from sklearn.metrics import accuracy_score

        return float(accuracy_score(y, self.predict(X), sample_weight=sample_weight))  # type: ignore[attr-defined]

    def __sklearn_tags__(self):
        from sklearn.base import BaseEstimator, ClassifierMixin

        class _Classifier(ClassifierMixin, BaseEstimator):
            pass

        return _Classifier().__sklearn_tags__()


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(a is b or a == b)
    except ValueError:  # arrays
        return False


def require_fitted(estimator: Any, attribute: str) -> None:
    """scikit-learn's ``check_is_fitted(estimator, attribute)``: its ``NotFittedError`` when the
    attribute is missing (scikit-learn is imported only then)."""
    if not hasattr(estimator, attribute):
        from sklearn.exceptions import NotFittedError

        raise NotFittedError(f"This {type(estimator).__name__} instance is not fitted yet. Call 'fit' with "
                             "appropriate arguments before using this estimator.")


class FittedLogistic:
    """A fitted ``LogisticRegression`` (lbfgs, multinomial for three classes or more) from its
    ``coef_``, ``intercept_`` and ``classes_``: ``decision_function`` and ``predict_proba`` compute
    what scikit-learn's do, in the same operations, so the numbers are the same bit for bit (the
    tests compare them); nothing can be fitted.

    >>> est = FittedLogistic(np.array(["a", "b", "c"]), np.eye(3)[:, :2], np.zeros(3))
    >>> est.predict_proba(np.array([[5.0, 0.0]])).argmax(axis=1)
    array([0])
    """

    def __init__(self, classes: np.ndarray, coef: np.ndarray, intercept: np.ndarray):
        self.classes_ = np.asarray(classes)
        self.coef_ = np.asarray(coef, dtype=np.float64)
        self.intercept_ = np.asarray(intercept, dtype=np.float64)
        rows = 1 if len(self.classes_) <= 2 else len(self.classes_)
        if self.coef_.ndim != 2 or self.coef_.shape[0] != rows or self.intercept_.shape != (rows,):
            raise ValueError(f"a logistic regression of {len(self.classes_)} classes needs coef ({rows}, d) and "
                             f"intercept ({rows},); got {self.coef_.shape} and {self.intercept_.shape}")
        self.n_features_in_ = self.coef_.shape[1]

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != self.n_features_in_:
            raise ValueError(f"X has shape {X.shape}; this logistic regression reads {self.n_features_in_} features")
        scores = X @ self.coef_.T + self.intercept_
        return scores.reshape(-1) if scores.shape[1] == 1 else scores

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        scores = self.decision_function(X)
        if len(self.classes_) <= 2:  # scikit-learn's one-vs-rest reading of a binary model
            p = expit(scores, out=scores)
            return np.stack([1 - p, p], axis=1)
        scores -= scores.max(axis=1).reshape(-1, 1)  # scikit-learn's softmax, in place
        np.exp(scores, out=scores)
        scores /= scores.sum(axis=1).reshape(-1, 1)
        return scores

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.classes_[self.predict_proba(X).argmax(axis=1)]


__all__ = ["EstimatorParams", "require_fitted", "FittedLogistic"]
