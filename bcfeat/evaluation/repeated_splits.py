"""Repeated stratified splits per domain (the benchmark's train/test splits), and pre-made
splits turned into test masks."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedKFold, StratifiedShuffleSplit

# The released AE-CFE code: RandomForestClassifier(max_depth=16, random_state=0), i.e. sklearn's


DEFAULT_TEST_SIZE = 0.2
DEFAULT_N_REPETITIONS = 5
# Columns that identify one cell of the domain matrix.
@dataclass
class SplitPlan:
    """Train/test assignment of every sample, for every repetition.

    Attributes
    ----------
    is_test : np.ndarray of bool, shape (n_repetitions, n_samples)
        ``True`` where a sample is in the test split of that repetition.
    train_only : pd.DataFrame
        Columns ``domain, label, n``: classes too small to stratify (fewer than
        2 samples in their domain), kept in the training split of every
        repetition.
    method, test_size, random_state :
        How the plan was made (``"given"`` for masks passed in by the caller).
    """

    is_test: np.ndarray
    train_only: pd.DataFrame = field(
        default_factory=lambda: pd.DataFrame({"domain": [], "label": [], "n": []})
    )
    method: str = "given"
    test_size: float | None = None
    random_state: int | None = None

    @property
    def n_repetitions(self) -> int:
        return int(self.is_test.shape[0])

    def to_frame(self) -> pd.DataFrame:
        """One row per sample, one ``test_r<k>`` 0/1 column per repetition (to save with the results)."""
        return pd.DataFrame(
            {f"test_r{r}": self.is_test[r].astype(np.int8) for r in range(self.n_repetitions)}
        )


def make_splits(
    y: Sequence,
    domain: Sequence,
    *,
    n_repetitions: int = DEFAULT_N_REPETITIONS,
    test_size: float = DEFAULT_TEST_SIZE,
    method: str = "shuffle",
    random_state: int = 0,
) -> SplitPlan:
    """Stratified train/test splits made within each domain separately.

    Parameters
    ----------
    y : array-like, shape (n,)
        Labels.
    domain : array-like, shape (n,)
        Site (dataset) of every sample.
    n_repetitions : int
        Number of splits (``"shuffle"``) or folds (``"kfold"``).
    test_size : float
        Test fraction for ``"shuffle"``; ignored by ``"kfold"`` (1 / n_repetitions).
    method : {"shuffle", "kfold"}
        ``StratifiedShuffleSplit`` (independent random splits) or
        ``StratifiedKFold(shuffle=True)`` (every sample is tested once).
    random_state : int
        Seed passed to the sklearn splitter of every domain.

    Returns
    -------
    SplitPlan
        ``is_test`` of shape (n_repetitions, n).

    Examples
    --------
    >>> plan = make_splits(["a"] * 5 + ["b"] * 5, ["d"] * 10, n_repetitions=2, random_state=0)
    >>> plan.is_test.shape, plan.is_test.sum(axis=1).tolist()
    ((2, 10), [2, 2])
    """
    y = np.asarray(y)
    domain = np.asarray(domain)
    if y.shape != domain.shape or y.ndim != 1:
        raise ValueError(f"y and domain must be 1-D of equal length, got {y.shape} and {domain.shape}")
    if n_repetitions < 1:
        raise ValueError(f"n_repetitions must be >= 1, got {n_repetitions}")
    is_test = np.zeros((n_repetitions, len(y)), dtype=bool)
    skipped = []
    for d in _unique_in_order(domain):
        idx = np.flatnonzero(domain == d)
        labels, counts = np.unique(y[idx], return_counts=True)
        rare = labels[counts < 2]
        for lab, c in zip(labels.tolist(), counts.tolist()):
            if c < 2:
                skipped.append({"domain": d, "label": lab, "n": c})
        keep = idx[~np.isin(y[idx], rare)]
        if len(keep) == 0:
            continue
        if method == "shuffle":
            splitter = StratifiedShuffleSplit(
                n_splits=n_repetitions, test_size=test_size, random_state=random_state
            )
        elif method == "kfold":
            splitter = StratifiedKFold(n_splits=n_repetitions, shuffle=True, random_state=random_state)
        else:
            raise ValueError(f"method must be 'shuffle' or 'kfold', got {method!r}")
        try:
            with warnings.catch_warnings():
                # StratifiedKFold warns when a class has fewer members than folds; the plan still holds.
                warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
                folds = list(splitter.split(np.zeros(len(keep)), y[keep]))
        except ValueError as err:
            raise ValueError(f"cannot split domain {d!r} ({len(keep)} samples): {err}") from err
        for r, (_, test) in enumerate(folds):
            is_test[r, keep[test]] = True
    train_only = pd.DataFrame(skipped, columns=["domain", "label", "n"])
    if len(train_only):
        warnings.warn(
            "classes with < 2 samples in their domain kept in training only: "
            + ", ".join(f"{r.domain}/{r.label} (n={r.n})" for r in train_only.itertuples()),
            stacklevel=2,
        )
    return SplitPlan(
        is_test=is_test,
        train_only=train_only,
        method=method,
        test_size=test_size if method == "shuffle" else 1.0 / n_repetitions,
        random_state=random_state,
    )


def as_test_masks(splits: SplitPlan | np.ndarray, n_samples: int) -> np.ndarray:
    """Normalise the ways a caller can give splits to a (n_repetitions, n) bool mask.

    Parameters
    ----------
    splits : SplitPlan or array
        A :class:`SplitPlan`; a 2-D array (n_repetitions, n) of booleans or 0/1
        (1 = test); a 1-D integer array (n,) of fold ids, where repetition k
        tests fold k and a negative id means "always train" (the ``fold``
        column of :func:`bcfeat.data.make_splits`); or a 1-D array of
        ``"train"``/``"test"`` strings, one repetition (its ``split`` column).
    n_samples : int
        Expected number of samples.

    Returns
    -------
    np.ndarray of bool, shape (n_repetitions, n_samples)

    Examples
    --------
    >>> as_test_masks(np.array([0, 1, 1, -1]), 4).astype(int).tolist()
    [[1, 0, 0, 0], [0, 1, 1, 0]]
    >>> as_test_masks(np.array(["train", "test"]), 2).tolist()
    [[False, True]]
    """
    if isinstance(splits, SplitPlan):
        masks = splits.is_test
    else:
        arr = np.asarray(splits)
        if arr.ndim == 1 and arr.dtype.kind in "OUS":
            values = set(arr.astype(str).tolist())
            if not values <= {"train", "test"}:
                raise ValueError(f"1-D string splits must be 'train'/'test', got {sorted(values - {'train', 'test'})}")
            masks = (arr.astype(str) == "test")[None, :]
        elif arr.ndim == 1:
            if not np.issubdtype(arr.dtype, np.integer):
                raise ValueError(f"1-D splits must be integer fold ids, got dtype {arr.dtype}")
            folds = np.unique(arr[arr >= 0])
            masks = np.stack([arr == k for k in folds]) if len(folds) else np.zeros((0, len(arr)), bool)
        elif arr.ndim == 2:
            if not (arr.dtype == bool or np.isin(arr, [0, 1]).all()):
                raise ValueError("2-D splits must be boolean or 0/1 test masks (1 = test)")
            masks = arr.astype(bool)
        else:
            raise ValueError(f"splits must be 1-D fold ids or 2-D test masks, got shape {arr.shape}")
    if masks.shape[1] != n_samples:
        raise ValueError(f"splits cover {masks.shape[1]} samples but X has {n_samples}")
    if masks.shape[0] == 0:
        raise ValueError("splits contain no repetition")
    return masks


def _unique_in_order(values: np.ndarray) -> list:
    """Unique values in order of first appearance (domains keep the caller's order)."""
    values = np.asarray(values)
    _, first = np.unique(values, return_index=True)
    return values[np.sort(first)].tolist()


def _n_samples(X: Any) -> int:
    return X.shape[0] if hasattr(X, "shape") else len(X)


def _take(X: Any, idx: np.ndarray) -> Any:
    """Rows ``idx`` of an array, a DataFrame or a list (images of varying size)."""
    if isinstance(X, pd.DataFrame):
        return X.iloc[idx]
    if isinstance(X, np.ndarray):
        return X[idx]
    return [X[i] for i in idx]
