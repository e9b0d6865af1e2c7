# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Data overview
#
# The four sites of this study, read from the data root: how many cells of each class
# each site holds in the two label spaces, what the images look like, and how large they are.
# Samples outside a label space are excluded and counted, never relabelled.

# %% tags=["parameters"]
profile: str = "cpu"  # run profile (smoke, cpu, gpu); recorded in the provenance
smoke: bool = False  # tiny run for tests and CI
seed: int = 0  # seed of every subsample and montage pick
data_root: str = ""  # data root; empty: $BCFEAT_DATA_ROOT, then ../shared/datasets
sites: str = "pbc_acevedo20,jtsc_zheng18,cellavision_zheng18,bccd_crops"  # the study's sites (datasets under the data root), comma-separated
max_images_per_dataset: int = 0  # 0: every image; otherwise a seeded class-stratified subset
results_dir: str = "book/results"  # where tables are written

# %% tags=["remove-cell"]
from pathlib import Path

import pandas as pd
from myst_nb import glue

from bcfeat.atomic_io import save_table
from bcfeat.study import data_overview as overview
from bcfeat.data import resolve_data_root, scan_dataset

root = resolve_data_root(data_root or None)
names = [n.strip() for n in sites.split(",") if n.strip()]
tables = Path(results_dir) / "tables"
tables.mkdir(parents=True, exist_ok=True)

# %% [markdown]
# ## Cells per class
#
# In **coarse5**, the only label space all four sites share:

# %% tags=["hide-input"]
counts = overview.class_counts(names, root, max_images_per_dataset, seed)
save_table(counts, tables / "class_counts.csv")
coarse5 = overview.count_matrix(counts, "coarse5")
glue("coarse5_counts", coarse5, display=False)
coarse5

# %% [markdown]
# And in **common13**, the 13 classes of the paper's datasets (of the four sets here, only Acevedo-20
# has fine labels):

# %% tags=["hide-input"]
common13 = overview.count_matrix(counts, "common13")
glue("common13_counts", common13, display=False)
common13

# %% tags=["remove-cell"]
scans = overview.scan_all(names, root, "coarse5")
totals = overview.dataset_totals(scans)
samples = {n: overview.subsample(s.samples, max_images_per_dataset, seed) for n, s in scans.items()}
glue("n_images_total", int(totals["images"].sum()), display=False)
for name in names:
    glue(f"n_images_{name}", int(totals.loc[name, "images"]), display=False)
    glue(f"n_coarse5_{name}", int(totals.loc[name, "in_space"]), display=False)

# %% [markdown]
# ## Image sizes and formats

# %% tags=["hide-input"]
sizes = overview.image_sizes(pd.concat(list(samples.values())))
summary = overview.size_summary(sizes)
save_table(summary, tables / "image_sizes.csv", index=True)
glue("image_sizes", summary, display=False)
summary

# %% [markdown]
# ## What each site looks like

# %% tags=["hide-input"]
figure = overview.site_montage(samples, per_dataset=8, seed=seed)
glue("site_montage", figure, display=False)
