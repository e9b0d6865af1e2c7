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
# # Figures
#
# The latent space, the domain matrix, confusion matrices and per-class F1, drawn from the
# feature sets of `03_features` and the tables of `05_benchmark`.

# %% tags=["parameters"]
profile: str = "cpu"  # run profile (smoke, cpu, gpu)
smoke: bool = False  # tiny run for tests and CI
seed: int = 0  # seed of UMAP and of the subsets
data_root: str = ""  # data root; empty: $BCFEAT_DATA_ROOT, then ../shared/datasets
results_dir: str = "book/results"  # tables are read from <results_dir>/tables
artifacts_dir: str = "artifacts/cpu"  # feature sets and per-cell predictions are read from here
max_per_site: int = 0  # as 05_benchmark
headline: str = "aecfe_moment"  # feature set of the headline figures
compare: str = "aecfe_site_standardized"  # feature set shown beside it in the latent-space figure
per_class_sets: str = "aecfe_moment,colour_shape,oracle (narrow_resnet, batch norm)"  # feature sets of the per-class F1 figure

# %% tags=["remove-cell"]
from pathlib import Path

import pandas as pd
from myst_nb import glue

from bcfeat.study import figures
from bcfeat.study import common as study
from bcfeat.evaluation.benchmark import confusion_matrices, per_class_f1
from bcfeat.data import resolve_data_root
from bcfeat.data.labels import COARSE5

root = resolve_data_root(data_root or None)
tables = Path(results_dir) / "tables"
coarse5 = study.site_samples(root, "coarse5", max_per_site=max_per_site, seed=seed)
summary = pd.read_csv(tables / "benchmark_summary.csv")
predictions = pd.read_csv(Path(artifacts_dir) / "benchmark_predictions.csv")

# %% [markdown]
# ## The latent space
#
# UMAP (fixed seed) of the 50-d features of every coarse5 cell, coloured by site and by class:
# the headline features, and the same autoencoder trained without the alignment term.

# %% tags=["hide-input"]
for name in (headline, compare):
    X = study.load_feature_set(study.feature_path(artifacts_dir, name), coarse5)
    embedding = figures.umap_embedding(X, seed=seed)
    glue(f"umap_{name}", figures.umap_figure(embedding, coarse5["domain"], coarse5["label"], title=name),
         display=False)

# %% [markdown]
# ## The domain matrix

# %% tags=["hide-input"]
headline_summary = summary[(summary["feature_set"] == headline) & (summary["label_space"] == "coarse5")]
glue("domain_matrix_heatmap", figures.domain_matrix_heatmap(
    headline_summary, "balanced_accuracy", title=f"{headline}: balanced accuracy"), display=False)

# %% [markdown]
# ## Confusion matrices (trained on Acevedo-20)

# %% tags=["hide-input"]
confusions = confusion_matrices(predictions[predictions["feature_set"] == headline], labels=list(COARSE5))
confusions.to_csv(tables / "confusion_headline.csv", index=False)
cells = [(study.SOURCE_SITE, site) for site in study.SITES]
glue("confusion_headline", figures.confusion_figure(confusions, cells, list(COARSE5), title=headline),
     display=False)

# %% [markdown]
# ## Per-class F1 on every site (trained on Acevedo-20)

# %% tags=["hide-input"]
chosen = [s for s in study.parse_list(per_class_sets) if s in set(predictions["feature_set"])]
from_source = predictions[(predictions["train_domain"] == study.SOURCE_SITE) & predictions["feature_set"].isin(chosen)]
f1 = per_class_f1(from_source, labels=list(COARSE5))
f1.to_csv(tables / "per_class_f1.csv", index=False)
glue("per_class_f1", figures.per_class_f1_figure(f1, chosen), display=False)
