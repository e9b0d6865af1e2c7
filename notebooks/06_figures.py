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
seed: int = 0  # seed of UMAP and of the figures' subsets
data_root: str = ""  # data root; empty: $BCFEAT_DATA_ROOT, then ../shared/datasets
results_dir: str = "book/results"  # tables are read from <results_dir>/tables
compare: str = "aecfe_site_standardized"  # feature set shown beside it in the latent-space figure
per_class_sets: str = "aecfe_moment,colour_shape,oracle_batch"  # feature sets of the per-class F1 figure (oracle_batch, oracle_group: the oracles; an unknown name is an error)
design_file: str = "book/results/tables/study_design.json"  # input: the study's design: sites, source site, cells per site, repetitions, headline (made by 00_data_overview)
features_dir: str = "artifacts/cpu/features"  # input: the feature sets (made by 03_features)
oracles_file: str = "artifacts/cpu/checkpoints/oracles.json"  # input: the oracles' feature-set names (made by 04_oracle)
benchmark_summary_file: str = "book/results/tables/benchmark_summary.csv"  # input: the benchmark's summary (made by 05_benchmark)
benchmark_predictions_file: str = "artifacts/cpu/benchmark_predictions.csv"  # input: its per-cell predictions (made by 05_benchmark)

# %% tags=["remove-cell"]
from pathlib import Path

import pandas as pd
from myst_nb import glue

from bcfeat.atomic_io import save_table
from bcfeat.study import figures
from bcfeat.study import common as study
from bcfeat.evaluation.benchmark import confusion_matrices, per_class_f1
from bcfeat.data import resolve_data_root
from bcfeat.data.labels import COARSE5

study_design = study.read_study_design(design_file)
design = study_design.sites
headline = study_design.headline
root = resolve_data_root(data_root or None)
tables = Path(results_dir) / "tables"
tables.mkdir(parents=True, exist_ok=True)
coarse5 = study.design_samples(root, study_design)
summary = pd.read_csv(benchmark_summary_file)
predictions = pd.read_csv(benchmark_predictions_file)
oracle_names = study.read_handoff(oracles_file, "04_oracle")["feature_sets"]

# %% [markdown]
# ## The latent space
#
# UMAP (fixed seed) of the 50-d features of every coarse5 cell, coloured by site and by class:
# the headline features, and the same autoencoder trained without the alignment term.

# %% tags=["hide-input"]
for name, X in study.load_feature_sets(features_dir, [headline, compare], coarse5).items():
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
save_table(confusions, tables / "confusion_headline.csv")
cells = [(design.source, site) for site in design.sites]
glue("confusion_headline", figures.confusion_figure(confusions, cells, list(COARSE5), title=headline),
     display=False)

# %% [markdown]
# ## Per-class F1 on every site (trained on Acevedo-20)

# %% tags=["hide-input"]
chosen = study.resolve_feature_sets(study.parse_list(per_class_sets), list(pd.unique(predictions["feature_set"])),
                                    aliases=oracle_names)
from_source = predictions[(predictions["train_domain"] == design.source) & predictions["feature_set"].isin(chosen)]
f1 = per_class_f1(from_source, labels=list(COARSE5))
save_table(f1, tables / "per_class_f1.csv")
glue("per_class_f1", figures.per_class_f1_figure(f1, chosen), display=False)
