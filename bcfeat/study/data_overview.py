"""Summaries of the datasets for the data chapter: class counts, image sizes, a montage per site.

Everything the data-overview notebook shows is computed here; the notebook only calls it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from bcfeat.data import load_image, scan_dataset
from bcfeat.data.labels import COARSE5, COMMON13

LABEL_SPACES = {"common13": COMMON13, "coarse5": COARSE5}


def class_counts(datasets: list[str], root: Path, max_images: int = 0, seed: int = 0) -> pd.DataFrame:
    """Samples per class, per dataset and label space; excluded samples as their own rows.

    Returns a tidy frame ``[dataset, label_space, label, n]``; excluded samples appear
    with ``label = "(excluded: <label>)"`` so nothing disappears silently.
    """
    rows = []
    for name in datasets:
        for space in LABEL_SPACES:
            scan = scan_dataset(name, root=root, label_space=space)
            samples = subsample(scan.samples, max_images, seed)
            for label, n in samples["label"].value_counts().items():
                rows.append((name, space, label, int(n)))
            if max_images == 0:
                for reason, n in sorted(scan.excluded.items()):
                    rows.append((name, space, f"(excluded: {reason.split('/')[-1]})", int(n)))
    return pd.DataFrame(rows, columns=["dataset", "label_space", "label", "n"])


def count_matrix(counts: pd.DataFrame, label_space: str) -> pd.DataFrame:
    """Classes as rows, datasets as columns, for one label space (in the space's class order)."""
    table = counts[counts["label_space"] == label_space].pivot_table(
        index="label", columns="dataset", values="n", aggfunc="sum", fill_value=0)
    order = [c for c in LABEL_SPACES[label_space] if c in table.index]
    order += sorted(i for i in table.index if i not in order)
    table = table.loc[order]
    table.loc["total (in space)"] = table.loc[[c for c in LABEL_SPACES[label_space] if c in table.index]].sum()
    return table.astype(int)


def subsample(samples: pd.DataFrame, max_images: int, seed: int) -> pd.DataFrame:
    """A seeded, class-stratified subset of at most ``max_images`` rows (0: all rows)."""
    if max_images <= 0 or len(samples) <= max_images:
        return samples
    fraction = max_images / len(samples)
    picked = samples.groupby("label", group_keys=False).sample(frac=fraction, random_state=seed)
    return picked.sort_values("path").reset_index(drop=True)


def image_sizes(samples: pd.DataFrame) -> pd.DataFrame:
    """Width, height, mode and format of each image, read from the file header only."""
    rows = []
    for path in samples["path"]:
        with Image.open(path) as image:
            rows.append((image.width, image.height, image.mode, image.format))
    sizes = pd.DataFrame(rows, columns=["width", "height", "mode", "format"], index=samples.index)
    return pd.concat([samples[["dataset", "path"]], sizes], axis=1)


def size_summary(sizes: pd.DataFrame) -> pd.DataFrame:
    """Per dataset: image count, file formats, and min / median / max of width and height."""
    grouped = sizes.groupby("dataset")
    summary = grouped.agg(images=("path", "size"),
                          formats=("format", lambda s: ", ".join(sorted(set(s)))),
                          modes=("mode", lambda s: ", ".join(sorted(set(s)))),
                          width_min=("width", "min"), width_median=("width", "median"),
                          width_max=("width", "max"), height_min=("height", "min"),
                          height_median=("height", "median"), height_max=("height", "max"))
    return summary


def site_montage(samples_by_dataset: dict[str, pd.DataFrame], per_dataset: int = 8, seed: int = 0,
                 tile: int = 96):
    """One row of example cells per site (a seeded, class-balanced pick), as a matplotlib figure."""
    import matplotlib.pyplot as plt

    names = list(samples_by_dataset)
    fig, axes = plt.subplots(len(names), per_dataset, figsize=(per_dataset * 1.3, len(names) * 1.5),
                             squeeze=False)
    rng = np.random.default_rng(seed)
    for row, name in enumerate(names):
        samples = samples_by_dataset[name]
        labels = sorted(samples["label"].unique())
        picks = []
        for i in range(per_dataset):  # cycle through classes so each row shows several
            pool = samples[samples["label"] == labels[i % len(labels)]]
            picks.append(pool.iloc[int(rng.integers(len(pool)))])
        for col, sample in enumerate(picks):
            ax = axes[row, col]
            image = Image.fromarray(load_image(sample["path"])).resize((tile, tile))
            ax.imshow(image)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(sample["label"], fontsize=7)
            if col == 0:
                ax.set_ylabel(name, fontsize=8)
    fig.tight_layout()
    return fig


def scan_all(datasets: list[str], root: Path, label_space: str = "coarse5") -> dict:
    """``{dataset: ScanResult}`` for several datasets in one label space."""
    return {name: scan_dataset(name, root=root, label_space=label_space) for name in datasets}


def dataset_totals(scans: dict) -> pd.DataFrame:
    """Per dataset: images found, images inside the label space, images excluded from it."""
    rows = []
    for name, scan in scans.items():
        excluded = int(sum(scan.excluded.values()))
        rows.append((name, len(scan.samples) + excluded, len(scan.samples), excluded))
    return pd.DataFrame(rows, columns=["dataset", "images", "in_space", "excluded"]).set_index("dataset")
