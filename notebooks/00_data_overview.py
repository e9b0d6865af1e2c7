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
# Samples outside a label space are excluded and counted, never relabelled. This stage also fixes
# the study's design (sites, source site, cells per site, splits, headline feature set) and
# writes it for every later stage.

# %% tags=["parameters"]
profile: str = "cpu"  # run profile (smoke, cpu, gpu); recorded in the provenance
smoke: bool = False  # tiny run for tests and CI
seed: int = 0  # seed of every subsample and montage pick, and of the study's samples and splits
data_root: str = ""  # data root; empty: $BCFEAT_DATA_ROOT, then ../shared/datasets
sites: str = "pbc_acevedo20,jtsc_zheng18,cellavision_zheng18,bccd_crops"  # the study's sites (datasets under the data root), comma-separated, in table order
source_site: str = "pbc_acevedo20"  # the site every classifier and the cross-lab model are trained on; one of sites
label_space: str = "coarse5"  # coarse5: common13 within the source site only; common13: the paper's table (every site trained on and tested on in common13; every site needs fine labels)
max_per_site: int = 0  # cells per site of every later stage: 0 every image; else a seeded class-stratified subset per site
n_repetitions: int = 5  # stratified train/test splits per site, shared by the oracle, the forests and the cross-lab model
headline: str = "aecfe_moment"  # the feature set of the headline numbers: aecfe_<variant> (02_autoencoder must train the variant)
max_images_per_dataset: int = 0  # this overview only: 0 every image; otherwise a seeded class-stratified subset
results_dir: str = "book/results"  # where tables are written
design_file: str = "book/results/tables/study_design.json"  # output: the study's design, read by every later stage
splits_file: str = "book/results/tables/splits_coarse5.csv"  # output: the coarse5 splits every later stage tests on
splits_common13_file: str = "book/results/tables/splits_common13.csv"  # output: the common13 splits of the benchmark

# %% tags=["remove-cell"]
from pathlib import Path

import pandas as pd
from myst_nb import glue

from bcfeat.atomic_io import save_table
from bcfeat.study import common as study
from bcfeat.study import data_overview as overview
from bcfeat.data import resolve_data_root

design = study.StudyDesign.from_parameters(sites, source_site, label_space, max_per_site, n_repetitions, seed, headline)
root = resolve_data_root(data_root or None)
names = list(design.sites.sites)
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

# %% [markdown]
# ## The study's design
#
# Every later stage tests on the same cells: per site, stratified train/test splits of the
# labelled cells in each label space, drawn once here and written with the design (the sites, the
# source site, the cells per site, the number of splits and the headline feature set) to the
# results' tables. The later stages read them; none draws its own. Cells per site and test cells
# per split:

# %% tags=["hide-input"]
import warnings

labelled = {space: study.design_samples(root, design, space) for space in study.LABEL_SPACES}
with warnings.catch_warnings():
    # Classes too small to split (one basophil in a small site) stay in training.
    warnings.filterwarnings("ignore", message="classes with < 2 samples")
    plans = study.write_study_design(design_file, design, labelled,
                                     {"coarse5": splits_file, "common13": splits_common13_file})
design_table = study.design_table(labelled, plans)
glue("design_table", design_table, display=False)
design_table
