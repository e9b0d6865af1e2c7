"""Checking a data root against the dataset manifests (file list, class counts, sha256).

A manifest (``<manifests>/<dataset>.csv``, columns ``file, class_folder,
fine_label, common13, source_path, sha256, bytes, width, height``) lists every
file of a staged dataset; ``file`` is relative to the data root and starts with
the dataset's short name. :func:`verify_dataset` compares a data root with it
and reports missing, altered and unexpected files and per-class counts. When
the dataset sits under its public release folder instead, files are matched by
``source_path``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import pandas as pd

from bcfeat import paths
from bcfeat.data.registry import DATASETS, dataset_image_files, get_spec



def sha256_of(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk_size):
            h.update(block)
    return h.hexdigest()


def load_manifest(dataset: str, manifest_dir: str | os.PathLike | None = None) -> pd.DataFrame:
    """Read ``<manifest_dir>/<dataset>.csv`` (default ``bcfeat.paths.SHARED_MANIFESTS``)."""
    manifest_dir = Path(paths.SHARED_MANIFESTS if manifest_dir is None else manifest_dir)
    path = manifest_dir / f"{dataset}.csv"
    if not path.is_file():
        raise FileNotFoundError(f"no manifest for {dataset!r}: {path} does not exist")
    df = pd.read_csv(path, dtype={"sha256": str, "file": str, "source_path": str}, keep_default_na=False)
    missing_cols = [c for c in ("file", "class_folder", "sha256", "bytes") if c not in df.columns]
    if missing_cols:
        raise ValueError(f"manifest {path} lacks column(s) {missing_cols}")
    return df


def available_manifests(manifest_dir: str | os.PathLike | None = None) -> list[str]:
    """Dataset names that have a manifest in ``manifest_dir``."""
    manifest_dir = Path(paths.SHARED_MANIFESTS if manifest_dir is None else manifest_dir)
    return sorted(p.stem for p in manifest_dir.glob("*.csv")) if manifest_dir.is_dir() else []


@dataclass
class VerificationReport:
    """Result of :func:`verify_dataset`.

    Attributes
    ----------
    dataset : str
    folder : Path
        The dataset folder checked.
    fast : bool
        True when only sizes were compared (no hashing).
    n_expected, n_checked : int
        Files in the manifest / files present and compared.
    missing : list of str
        Manifest files absent on disk (paths relative to the dataset folder).
    altered : list of (str, str)
        ``(file, what)`` where the size or sha256 differs from the manifest.
    unexpected : list of str
        Image files on disk that the manifest does not list.
    counts : pandas.DataFrame
        Per class folder: ``expected`` (manifest) and ``found`` (present on disk).
    """

    dataset: str
    folder: Path
    fast: bool
    n_expected: int
    n_checked: int
    missing: list[str] = field(default_factory=list)
    altered: list[tuple[str, str]] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    counts: pd.DataFrame = field(default_factory=pd.DataFrame)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.altered or self.unexpected)

    def summary(self, max_listed: int = 5) -> str:
        mode = "sizes only (--fast)" if self.fast else "sha256 + size"
        head = "OK" if self.ok else "PROBLEMS"
        lines = [
            f"{self.dataset}: {head} - {self.n_checked}/{self.n_expected} manifest files present, "
            f"checked by {mode}, in {self.folder}"
        ]
        for name, items in (("missing", self.missing), ("altered", self.altered), ("unexpected", self.unexpected)):
            if items:
                shown = ", ".join(i if isinstance(i, str) else f"{i[0]} ({i[1]})" for i in items[:max_listed])
                more = f" ... and {len(items) - max_listed} more" if len(items) > max_listed else ""
                lines.append(f"  {len(items)} {name}: {shown}{more}")
        bad = self.counts[self.counts["expected"] != self.counts["found"]] if len(self.counts) else self.counts
        for cls, row in bad.iterrows():
            lines.append(f"  class {cls}: expected {row['expected']}, found {row['found']}")
        return "\n".join(lines)


def _expected_relpaths(manifest: pd.DataFrame, dataset: str, folder: Path, staged: bool) -> list[str]:
    """Manifest paths relative to the dataset folder actually found."""
    if staged:
        out = []
        for f in manifest["file"]:
            parts = PurePosixPath(f).parts
            # `file` is "<dataset>/<class>/<name>": drop the dataset component
            out.append(PurePosixPath(*parts[1:]).as_posix() if parts and parts[0] == dataset else f)
        return out
    # release folder: source paths are relative to the release; drop the leading
    # components that the located folder path already ends with (e.g.
    # "PBC_dataset_normal_DIB/", or "Dataset 1/" when the folder is ".../Dataset 1").
    out = []
    for s in manifest["source_path"]:
        parts = PurePosixPath(s).parts
        strip = 0
        for k in range(min(len(parts) - 1, len(folder.parts)), 0, -1):
            if parts[:k] == folder.parts[-k:]:
                strip = k
                break
        out.append(PurePosixPath(*parts[strip:]).as_posix())
    return out


def verify_dataset(
    dataset: str,
    root: str | os.PathLike | None = None,
    *,
    manifest_dir: str | os.PathLike | None = None,
    fast: bool = False,
    only: Iterable[str] | None = None,
) -> VerificationReport:
    """Compare a dataset folder with its manifest.

    Parameters
    ----------
    dataset : str
        Dataset name (a manifest ``<dataset>.csv`` must exist).
    root : path-like, optional
        Data root (resolved as usual when None).
    manifest_dir : path-like, optional
        Folder of manifests; ``bcfeat.paths.SHARED_MANIFESTS`` by default.
    fast : bool
        Compare file sizes only, skip sha256 (seconds instead of a full read).
    only : iterable of str, optional
        Restrict the content check to these manifest ``file`` entries (for spot
        checks); presence, counts and unexpected files still cover everything.

    Returns
    -------
    VerificationReport
    """
    manifest = load_manifest(dataset, manifest_dir)
    spec = get_spec(dataset) if dataset in DATASETS else None
    if spec is None:
        raise KeyError(f"manifest {dataset!r} names no known dataset; known: {sorted(DATASETS)}")
    folder, _, on_disk = dataset_image_files(spec, root)
    staged = folder.name == spec.name
    expected = _expected_relpaths(manifest, spec.name, folder, staged)
    on_disk_set = set(on_disk)
    only_set = set(only) if only is not None else None

    missing, altered = [], []
    present = []
    for rel, file, size, digest in zip(expected, manifest["file"], manifest["bytes"], manifest["sha256"]):
        path = folder / rel
        if rel not in on_disk_set and not path.is_file():
            missing.append(rel)
            continue
        present.append(rel)
        if only_set is not None and file not in only_set:
            continue
        actual = path.stat().st_size
        if actual != int(size):
            altered.append((rel, f"size {actual} != {int(size)}"))
        elif not fast and sha256_of(path) != str(digest).lower():
            altered.append((rel, "sha256 differs"))
    unexpected = sorted(on_disk_set - set(expected))

    exp_counts = manifest.groupby("class_folder").size()
    present_set = set(present)
    found = pd.Series([r in present_set for r in expected], index=manifest.index)
    found_counts = found.groupby(manifest["class_folder"]).sum()
    counts = pd.DataFrame({"expected": exp_counts, "found": found_counts.reindex(exp_counts.index).astype(int)})
    counts.index.name = "class_folder"
    return VerificationReport(
        dataset=spec.name,
        folder=folder,
        fast=fast,
        n_expected=len(manifest),
        n_checked=len(present),
        missing=missing,
        altered=altered,
        unexpected=unexpected,
        counts=counts,
    )
