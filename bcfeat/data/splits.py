"""Deterministic, class-stratified train/test and k-fold splits, stored as CSV.

A split depends only on (relative path, label) pairs and an integer seed: not
on file-system order, hash randomisation, machine or process. Samples are
sorted by relative path; each class is shuffled by its own
``numpy.random.Generator(PCG64)`` seeded with ``(seed, crc32(label))`` through
uniform keys and a stable argsort (the raw PCG64 stream and its float
conversion are stable across numpy versions, unlike ``shuffle`` algorithms).

Splits are written under ``bcfeat.paths.SPLITS`` (``book/results/splits``) as
``<dataset>__<label_space>__<kind>__seed<seed>.csv`` with columns
``relpath,label,split`` (holdout) or ``relpath,label,fold`` (k-fold), so the
notebooks and the tests read the same assignment.
"""

from __future__ import annotations

import os
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from bcfeat import paths
from bcfeat.atomic_io import atomic_path
from bcfeat.data.registry import ScanResult, scan_dataset

SPLIT_KINDS = ("holdout", "kfold")


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


def make_splits(samples: pd.DataFrame, config: SplitConfig = SplitConfig()) -> pd.DataFrame:
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
    fresh = make_splits(samples, config)
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
