"""The study's spine: one table of samples (every site, one row per image), its splits, and the
images themselves; every feature set is aligned with it by dataset and relative path."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from bcfeat.atomic_io import save_table
from bcfeat.data.splits import SplitPlan, make_splits
from bcfeat.data import load_image, scan_dataset
from bcfeat.study.data_overview import subsample
from bcfeat.data.sites import SITES
from bcfeat.study.design import StudySites, parse_list  # noqa: F401 (parse_list: re-exported)
from bcfeat.validation import require_int


def site_samples(root: Path, label_space: str | None = "coarse5", sites: Sequence[str] = SITES,
                 max_per_site: int = 0, seed: int = 0) -> pd.DataFrame:
    """All sites' samples in one table, columns of :func:`bcfeat.data.scan_dataset` plus ``domain``.

    ``label_space=None`` keeps every image (for label-free steps: detector, autoencoder,
    feature extraction). ``max_per_site`` > 0 takes a seeded class-stratified subset per site.
    """
    require_int("max_per_site", max_per_site, 0, meaning="0: every image; else images per site")
    frames = []
    for site in sites:
        samples = scan_dataset(site, root=root, label_space=label_space).samples
        if label_space is None:
            samples = samples.assign(label=samples["cell_type"].fillna("unknown"))
        frames.append(subsample(samples, max_per_site, seed))
    table = pd.concat(frames, ignore_index=True)
    table["domain"] = table["dataset"]
    return table

def sample_keys(samples: pd.DataFrame) -> pd.Index:
    """``dataset/relpath`` of every row: the key that aligns feature arrays with samples."""
    return pd.Index(samples["dataset"] + "/" + samples["relpath"])

def study_splits(samples: pd.DataFrame, n_repetitions: int, seed: int, path: str | os.PathLike | None = None,
                 test_size: float = 0.2) -> SplitPlan:
    """Stratified per-site train/test splits, the same for every feature set and the oracle.

    With ``path``, the plan is written as CSV (one row per sample: key plus one 0/1 column per
    repetition) so the splits behind every number are on disk next to the results.
    """
    plan = make_splits(samples["label"].to_numpy(), samples["domain"].to_numpy(),
                       n_repetitions=n_repetitions, test_size=test_size, random_state=seed)
    if path is not None:
        frame = plan.to_frame()
        frame.insert(0, "key", sample_keys(samples))
        frame.insert(1, "label", samples["label"].to_numpy())
        save_table(frame, path)
    return plan

def first_repetitions(plan: SplitPlan, n: int) -> SplitPlan:
    """The first ``n`` repetitions of a plan (an expensive classifier runs on fewer)."""
    return SplitPlan(is_test=plan.is_test[:n], train_only=plan.train_only, method=plan.method,
                     test_size=plan.test_size, random_state=plan.random_state)

def decoded_images(paths: Sequence[str], size: int) -> np.ndarray:
    """Images decoded and resized to ``(n, size, size, 3)`` uint8 (whole crop, no detection)."""
    from PIL import Image

    out = np.empty((len(paths), size, size, 3), np.uint8)
    for i, path in enumerate(paths):
        out[i] = np.asarray(Image.fromarray(load_image(path)).resize((size, size), Image.BILINEAR))
    return out

def benchmark_samples(root: Path, design: StudySites, max_per_site: int = 0, seed: int = 0) -> dict[str, pd.DataFrame]:
    """The labelled samples of the benchmark: coarse5 on every site; common13 on every site in
    the paper's table (``design.label_space == "common13"``), else within the source site."""
    return {
        "coarse5": site_samples(root, "coarse5", design.sites, max_per_site, seed),
        "common13": site_samples(root, "common13", design.common13_sites, max_per_site, seed),
    }

def union_samples(tables: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Every image that any of the tables uses, once (features are computed for these)."""
    table = pd.concat(tables, ignore_index=True)
    return table.drop_duplicates(subset=["dataset", "relpath"]).sort_values(["dataset", "relpath"]) \
        .reset_index(drop=True)

def check_same_splits(plan: SplitPlan, path: str | os.PathLike) -> bool:
    """The splits file ``04_oracle`` wrote must hold the same splits as ``plan`` (every later
    stage tests on the same cells); True when it does."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"the splits file {path} does not exist: run the stage 04_oracle first")
    stored = pd.read_csv(path)
    fresh = plan.to_frame()
    cols = [c for c in fresh.columns if c in stored.columns]
    if len(stored) != len(fresh) or not (stored[cols].astype(str).values == fresh[cols].astype(str).values).all():
        raise ValueError(f"{path} holds other splits than this run's; re-run 04_oracle and 05_benchmark first")
    return True

def transform_paths(transformer, paths: Sequence[str], chunk: int = 500) -> np.ndarray:
    """``transformer.transform`` over image paths in chunks, so only ``chunk`` images are in memory."""
    parts = [transformer.transform(list(paths[start:start + chunk])) for start in range(0, len(paths), chunk)]
    return np.concatenate(parts)

def run_key(samples: pd.DataFrame, config: object = None) -> str:
    """A short hash of the samples (keys and labels) and a config: checkpoint names carry it, so a
    run on other data or settings never collides with (or is refused by) an older checkpoint."""
    import hashlib
    import json
    from dataclasses import asdict, is_dataclass

    digest = hashlib.sha256()
    digest.update("\n".join(sample_keys(samples) + "\t" + samples["label"].astype(str)).encode())
    settings = asdict(config) if is_dataclass(config) else config
    digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:10]


__all__ = ["parse_list", "site_samples", "sample_keys", "study_splits", "first_repetitions", "decoded_images", "benchmark_samples", "union_samples", "check_same_splits", "transform_paths", "run_key"]
