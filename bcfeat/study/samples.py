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
from bcfeat.data.sites import CROSS_SITE_LABEL_SPACES, SITES
from bcfeat.study.design import DESIGN_FORMAT, StudyDesign, StudySites, parse_list  # noqa: F401 (parse_list: re-exported)
from bcfeat.validation import require_int

LABEL_SPACES = CROSS_SITE_LABEL_SPACES  # the benchmark's label spaces, each with its own splits file


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
    return {space: site_samples(root, space, design.sites_for(space), max_per_site, seed) for space in LABEL_SPACES}

def union_samples(tables: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Every image that any of the tables uses, once (features are computed for these)."""
    table = pd.concat(tables, ignore_index=True)
    return table.drop_duplicates(subset=["dataset", "relpath"]).sort_values(["dataset", "relpath"]) \
        .reset_index(drop=True)

def design_samples(root: Path, design: StudyDesign, label_space: str = "coarse5") -> pd.DataFrame:
    """The labelled samples of the design in one label space: coarse5 on every site, common13 on
    :attr:`StudySites.common13_sites`; ``max_per_site`` and ``seed`` from the design."""
    return site_samples(root, label_space, design.sites.sites_for(label_space), design.max_per_site, design.seed)


def write_study_design(path: str | os.PathLike, design: StudyDesign, samples: dict[str, pd.DataFrame],
                       splits_files: dict[str, str | os.PathLike]) -> dict[str, SplitPlan]:
    """Draw the splits of each label space's ``samples`` (:func:`design_samples`) and write them
    (CSV, one row per sample: key, label, one 0/1 ``test_r<k>`` column per repetition) and the
    design file (JSON): what ``00_data_overview`` hands every later stage. Returns
    ``{label space: plan}``."""
    import json

    from bcfeat.atomic_io import atomic_path

    for name, given in (("samples", samples), ("splits_files", splits_files)):
        if set(given) != set(LABEL_SPACES):
            raise ValueError(f"{name} needs one entry per label space {list(LABEL_SPACES)}, got {sorted(given)}")
    plans = {space: study_splits(samples[space], design.n_repetitions, design.seed, splits_files[space],
                                 design.test_size) for space in LABEL_SPACES}
    record = {"format": DESIGN_FORMAT, "design": design.to_record(),
              "splits_files": {space: Path(splits_files[space]).name for space in LABEL_SPACES},
              "test_cells": {space: [int(n) for n in plan.is_test.sum(axis=1)] for space, plan in plans.items()}}
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(record, indent=2))
    return plans


def design_table(samples: dict[str, pd.DataFrame], plans: dict[str, SplitPlan]) -> pd.DataFrame:
    """Per label space and site: labelled cells, and test cells of each repetition (min-max)."""
    rows = []
    for space in LABEL_SPACES:
        domain = samples[space]["domain"].to_numpy()
        for site in dict.fromkeys(domain):
            test = plans[space].is_test[:, domain == site].sum(axis=1)
            rows.append({"label space": space, "site": site, "cells": int((domain == site).sum()),
                         "test cells per split": f"{test.min()}" if test.min() == test.max() else f"{test.min()}-{test.max()}"})
    return pd.DataFrame(rows)


def read_study_design(path: str | os.PathLike) -> StudyDesign:
    """The design ``00_data_overview`` wrote; an error names the file and the stage that makes it."""
    import json

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"the study design {path} does not exist: it is made by the stage 00_data_overview; "
                                "run that stage first")
    try:
        record = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not a study design (not JSON: {err}); re-run 00_data_overview") from None
    if not isinstance(record, dict) or record.get("format") != DESIGN_FORMAT:
        raise ValueError(f"{path} is not a study design (format {DESIGN_FORMAT!r} expected); re-run 00_data_overview")
    try:
        return StudyDesign.from_record(record.get("design"))
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: {err}") from None


def read_study_splits(path: str | os.PathLike, samples: pd.DataFrame, design: StudyDesign) -> SplitPlan:
    """The splits ``00_data_overview`` wrote for ``samples`` (:func:`design_samples` of the same
    design), read, not made again. The file must list exactly these samples with these labels (a
    data root that changed since is an error that says so); classes too small to split are listed
    in ``train_only`` as :func:`bcfeat.data.splits.make_splits` lists them."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"the splits file {path} does not exist: it is made by the stage 00_data_overview; "
                                "run that stage first")
    stored = pd.read_csv(path)
    columns = [f"test_r{r}" for r in range(design.n_repetitions)]
    missing = [c for c in ("key", "label", *columns) if c not in stored.columns]
    if missing:
        raise ValueError(f"{path} lacks the column(s) {missing}; re-run 00_data_overview")
    keys = sample_keys(samples)
    if len(stored) != len(samples) or not (stored["key"].to_numpy() == keys.to_numpy()).all() \
            or not (stored["label"].astype(str).to_numpy() == samples["label"].astype(str).to_numpy()).all():
        raise ValueError(f"{path} lists other images or labels than the data root holds now ({len(stored)} rows "
                         f"against {len(samples)} images); re-run 00_data_overview on this data root")
    values = stored[columns].to_numpy()
    if not np.isin(values, (0, 1)).all():
        raise ValueError(f"{path}: the test_r columns must hold 0 or 1")
    counts = samples.groupby(["domain", "label"], sort=False).size()
    rare = counts[counts < 2]
    train_only = pd.DataFrame({"domain": [d for d, _ in rare.index], "label": [lab for _, lab in rare.index],
                               "n": rare.to_numpy()}, columns=["domain", "label", "n"])
    return SplitPlan(is_test=values.T.astype(bool), train_only=train_only, method="shuffle",
                     test_size=design.test_size, random_state=design.seed)

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


__all__ = ["parse_list", "site_samples", "sample_keys", "study_splits", "first_repetitions", "decoded_images", "benchmark_samples", "union_samples", "LABEL_SPACES", "design_samples", "write_study_design", "design_table", "read_study_design", "read_study_splits", "transform_paths", "run_key"]
