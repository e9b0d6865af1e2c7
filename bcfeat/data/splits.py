"""Train/test splits, made once and the same for every feature set.

Two kinds, one module:

- **The study's repeated splits** (:func:`make_splits`, :class:`SplitPlan`): every site (domain)
  is split on its own, stratified by label, with sklearn's ``StratifiedShuffleSplit`` or
  ``StratifiedKFold`` and an explicit ``random_state`` (the benchmark of the paper, Sec. 3; see
  :mod:`bcfeat.evaluation.benchmark`). :func:`as_test_masks` turns any given split into test masks.
- **Stored splits of one dataset** (:func:`make_or_load_splits`, ``bcfeat splits``): a split that
  depends only on (relative path, label) pairs and an integer seed, not on file-system order, hash
  randomisation, machine or process. Samples are sorted by relative path; each class is shuffled by
  its own ``numpy.random.Generator(PCG64)`` seeded with ``(seed, crc32(label))`` through uniform
  keys and a stable argsort (the raw PCG64 stream and its float conversion are stable across numpy
  versions, unlike ``shuffle`` algorithms). They are written under ``bcfeat.paths.SPLITS``
  (``book/results/splits``) as ``<dataset>__<label_space>__<kind>__seed<seed>.csv`` with columns
  ``relpath,label,split`` (holdout) or ``relpath,label,fold`` (k-fold).
"""

from __future__ import annotations

import os
import warnings
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from bcfeat import paths
from bcfeat.atomic_io import atomic_path
from bcfeat.data.registry import ScanResult, scan_dataset

DEFAULT_TEST_SIZE = 0.2
DEFAULT_N_REPETITIONS = 5
SPLIT_KINDS = ("holdout", "kfold")


# ---- The study's repeated splits per domain --------------------------------------------------

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
    from sklearn.model_selection import StratifiedKFold, StratifiedShuffleSplit  # late: `import bcfeat.data` stays light

    y = np.asarray(y)
    domain = np.asarray(domain)
    if y.shape != domain.shape or y.ndim != 1:
        raise ValueError(f"y and domain must be 1-D of equal length, got {y.shape} and {domain.shape}")
    if n_repetitions < 1:
        raise ValueError(f"n_repetitions must be >= 1, got {n_repetitions}")
    is_test = np.zeros((n_repetitions, len(y)), dtype=bool)
    skipped = []
    for d in unique_in_order(domain):
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
        column of :func:`split_samples`); or a 1-D array of
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


def unique_in_order(values: Sequence) -> list:
    """Unique values in order of first appearance (domains keep the caller's order).

    >>> unique_in_order(["b", "a", "b", "c"])
    ['b', 'a', 'c']
    """
    values = np.asarray(values)
    _, first = np.unique(values, return_index=True)
    return values[np.sort(first)].tolist()


# ---- Stored splits of one dataset ------------------------------------------------------------

class SplitMismatch(ValueError):
    """A split file on disk does not match the samples it is applied to."""


@dataclass(frozen=True)
class SplitConfig:
    """How to split.

    Attributes
    ----------
    kind : str
        ``"holdout"`` (one train/test split) or ``"kfold"``.
    seed : int
        Seed of the per-class shuffles.
    test_size : float
        Holdout only: fraction of each class put in test (rounded half up per
        class; every class keeps at least one training sample).
    n_folds : int
        K-fold only: number of folds.
    """

    kind: str = "holdout"
    seed: int = 0
    test_size: float = 0.2
    n_folds: int = 5

    def __post_init__(self):
        if self.kind not in SPLIT_KINDS:
            raise ValueError(f"unknown split kind {self.kind!r}; use one of {SPLIT_KINDS}")
        if not isinstance(self.seed, (int, np.integer)) or isinstance(self.seed, bool):
            raise TypeError(f"seed must be an int, got {self.seed!r}")
        if self.kind == "holdout" and not 0.0 < self.test_size < 1.0:
            raise ValueError(f"test_size must be in (0, 1), got {self.test_size}")
        if self.kind == "kfold" and self.n_folds < 2:
            raise ValueError(f"n_folds must be >= 2, got {self.n_folds}")

    @property
    def column(self) -> str:
        return "split" if self.kind == "holdout" else "fold"

    def tag(self) -> str:
        if self.kind == "holdout":
            return f"holdout{self.test_size:g}__seed{self.seed}"
        return f"kfold{self.n_folds}__seed{self.seed}"


def _class_orders(keys: np.ndarray, labels: np.ndarray, seed: int):
    """Yield (label, indices in shuffled order) per class, classes in sorted order."""
    for lab in sorted(set(labels.tolist())):
        idx = np.flatnonzero(labels == lab)
        idx = idx[np.argsort(keys[idx], kind="stable")]  # file-system order never matters
        ss = np.random.SeedSequence([int(seed), zlib.crc32(str(lab).encode("utf-8"))])
        u = np.random.Generator(np.random.PCG64(ss)).random(len(idx))
        yield lab, idx[np.argsort(u, kind="stable")]


def _check_keys(keys, labels) -> tuple[np.ndarray, np.ndarray]:
    keys = np.asarray([str(k) for k in keys], dtype=object)
    labels = np.asarray([str(x) for x in labels], dtype=object)
    if len(keys) != len(labels):
        raise ValueError(f"{len(keys)} keys but {len(labels)} labels")
    if len(set(keys.tolist())) != len(keys):
        raise ValueError("split keys (relative paths) must be unique")
    return keys, labels


def stratified_holdout(keys, labels, test_size: float = 0.2, seed: int = 0) -> np.ndarray:
    """Assign each sample to "train" or "test", stratified by label.

    Parameters
    ----------
    keys : sequence of str, shape (n,)
        Unique sample keys (relative paths).
    labels : sequence, shape (n,)
        Class of each sample.
    test_size : float
        Fraction of each class in test.
    seed : int
        Seed.

    Returns
    -------
    np.ndarray of str, shape (n,)
        ``"train"`` / ``"test"``, aligned with the input order.

    >>> s = stratified_holdout([f"{i}.png" for i in range(10)], ["a"] * 5 + ["b"] * 5, 0.4, seed=1)
    >>> sorted(s.tolist()).count("test")
    4
    """
    SplitConfig("holdout", seed, test_size)
    keys, labels = _check_keys(keys, labels)
    out = np.full(len(keys), "train", dtype=object)
    for _, order in _class_orders(keys, labels, seed):
        n = len(order)
        # rounded half up, but a class always keeps one training sample
        n_test = min(int(np.floor(n * test_size + 0.5)), n - 1)
        out[order[:n_test]] = "test"
    return out.astype(str)


def stratified_kfold(keys, labels, n_folds: int = 5, seed: int = 0) -> np.ndarray:
    """Assign each sample a fold in ``0..n_folds-1``, stratified by label.

    Within a class, shuffled samples are dealt round-robin; the dealing
    continues across classes so that small classes do not all start in fold 0
    and fold sizes differ by at most one.

    Returns
    -------
    np.ndarray of int, shape (n,)
        Fold of each sample, aligned with the input order.

    >>> f = stratified_kfold([f"{i}" for i in range(9)], ["a"] * 6 + ["b"] * 3, n_folds=3)
    >>> np.bincount(f).tolist()
    [3, 3, 3]
    """
    SplitConfig("kfold", seed, n_folds=n_folds)
    keys, labels = _check_keys(keys, labels)
    out = np.empty(len(keys), dtype=np.int64)
    offset = 0
    for _, order in _class_orders(keys, labels, seed):
        out[order] = (offset + np.arange(len(order))) % n_folds
        offset = (offset + len(order)) % n_folds
    return out


def split_samples(samples: pd.DataFrame, config: SplitConfig = SplitConfig()) -> pd.DataFrame:
    """Split a samples table (needs ``relpath`` and ``label`` columns).

    Returns
    -------
    pandas.DataFrame
        Columns ``relpath, label, split`` or ``relpath, label, fold``, sorted by relpath.
    """
    df = samples[["relpath", "label"]].astype(str).sort_values("relpath", kind="stable").reset_index(drop=True)
    if config.kind == "holdout":
        df["split"] = stratified_holdout(df["relpath"], df["label"], config.test_size, config.seed)
    else:
        df["fold"] = stratified_kfold(df["relpath"], df["label"], config.n_folds, config.seed)
    return df


_META_PREFIX = "# bcfeat-splits "


def write_splits(splits: pd.DataFrame, path: str | os.PathLike, meta: dict | None = None) -> Path:
    """Write a split table as CSV (one ``# bcfeat-splits key=value ...`` line first), atomically."""
    path = Path(path)
    header = _META_PREFIX + " ".join(f"{k}={v}" for k, v in (meta or {}).items()) + "\n"
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        f.write(header)
        splits.to_csv(f, index=False, lineterminator="\n")
    return path


def read_splits(path: str | os.PathLike) -> tuple[pd.DataFrame, dict[str, str]]:
    """Read a split CSV written by :func:`write_splits`; returns (table, metadata)."""
    path = Path(path)
    with open(path, encoding="utf-8") as f:
        first = f.readline()
    meta: dict[str, str] = {}
    skip = 0
    if first.startswith(_META_PREFIX):
        skip = 1
        meta = dict(kv.split("=", 1) for kv in first[len(_META_PREFIX) :].split() if "=" in kv)
    df = pd.read_csv(path, skiprows=skip, dtype={"relpath": str, "label": str, "split": str}, keep_default_na=False)
    if "relpath" not in df or "label" not in df or not ({"split", "fold"} & set(df.columns)):
        raise ValueError(f"{path} is not a split file (columns {list(df.columns)})")
    return df, meta


def splits_path(dataset: str, label_space: str | None, config: SplitConfig, out_dir: str | os.PathLike | None = None) -> Path:
    """Where :func:`make_or_load_splits` keeps a split."""
    out_dir = Path(paths.SPLITS if out_dir is None else out_dir)
    return out_dir / f"{dataset}__{label_space or 'all'}__{config.tag()}.csv"


def make_or_load_splits(
    dataset: str | ScanResult,
    *,
    kind: str = "holdout",
    seed: int = 0,
    test_size: float = 0.2,
    n_folds: int = 5,
    label_space: str | None = "coarse5",
    root: str | os.PathLike | None = None,
    out_dir: str | os.PathLike | None = None,
    overwrite: bool = False,
) -> pd.DataFrame:
    """Samples of a dataset with their split, read from disk or made and written once.

    Parameters
    ----------
    dataset : str or ScanResult
        Dataset name (scanned with ``root`` and ``label_space``) or a scan result.
    kind, seed, test_size, n_folds
        See :class:`SplitConfig`.
    label_space : str or None
        Label space of the scan (ignored when ``dataset`` is a ScanResult).
    root : path-like, optional
        Data root for the scan.
    out_dir : path-like, optional
        Folder of split CSVs; ``bcfeat.paths.SPLITS`` by default.
    overwrite : bool
        Remake and rewrite the split even if a file exists.

    Returns
    -------
    pandas.DataFrame
        The scan's samples (sorted by relpath) plus a ``split`` (holdout) or
        ``fold`` (k-fold) column.

    Raises
    ------
    SplitMismatch
        When an existing file lists other samples or labels than the scan (the
        data changed): pass ``overwrite=True`` to remake it.
    """
    config = SplitConfig(kind, seed, test_size, n_folds)
    scan = dataset if isinstance(dataset, ScanResult) else scan_dataset(dataset, root, label_space)
    samples = scan.samples
    path = splits_path(scan.dataset, scan.label_space, config, out_dir)
    fresh = split_samples(samples, config)
    if path.exists() and not overwrite:
        stored, _ = read_splits(path)
        _check_same(stored, fresh, path)
        table = stored
    else:
        meta = {"dataset": scan.dataset, "label_space": scan.label_space or "all", **asdict(config)}
        write_splits(fresh, path, meta)
        table = fresh
    col = config.column
    merged = samples.merge(table[["relpath", col]], on="relpath", how="left", validate="one_to_one")
    return merged.sort_values("relpath", kind="stable").reset_index(drop=True)


def _check_same(stored: pd.DataFrame, fresh: pd.DataFrame, path: Path) -> None:
    a = stored.set_index("relpath")["label"].astype(str)
    b = fresh.set_index("relpath")["label"].astype(str)
    missing = b.index.difference(a.index)
    extra = a.index.difference(b.index)
    common = a.index.intersection(b.index)
    relabelled = (a[common] != b[common]).sum()
    if len(missing) or len(extra) or relabelled:
        raise SplitMismatch(
            f"split file {path} does not match the data: {len(missing)} sample(s) not in the file, "
            f"{len(extra)} in the file but not in the data, {relabelled} with another label. "
            "The data changed since the split was written; pass overwrite=True to remake it."
        )
