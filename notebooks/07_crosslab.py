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
# # Beyond the paper: cells that carry across labs
#
# The reproduction's features do not carry across labs here (previous chapters). This notebook
# builds and measures the project's own method: the detector's mask cuts every cell out at one
# canonical size; colours are read as optical density against the slide's own white point;
# ~160 features a haematologist would name (size against the red cells, nucleus lobes and
# outline, nucleus and cytoplasm colour, chromatin and granule texture) are measured; each lab's
# features are standardised with that lab's own unlabelled statistics; a linear model (or the
# paper's random forest) is trained on Acevedo-20 labels only.

# %% tags=["parameters"]
profile: str = "cpu"  # run profile (smoke, cpu, gpu)
smoke: bool = False  # tiny run for tests and CI
seed: int = 0  # seed of the splits, draws and models
data_root: str = ""  # data root; empty: $BCFEAT_DATA_ROOT, then ../shared/datasets
results_dir: str = "book/results"  # tables go to <results_dir>/tables
artifacts_dir: str = "artifacts/cpu"  # measured cells are cached in <artifacts_dir>/cache
max_per_site: int = 0  # 0: every image; else a seeded class-stratified subset per site (as 04 and 05)
n_repetitions: int = 5  # stratified splits (must match 04_oracle's splits_file)
mask_sources: str = "detector,stain"  # cell masks compared by the selection: detector (01's), stain (label-free segmentation)
n_workers: int = 2  # processes measuring the crops
candidate_C: str = "0.01,0.03,0.1"  # inverse L2 strengths of the linear model compared by the selection
candidate_groups: str = "all,no_texture,no_fine_texture"  # feature sets compared by the selection
ablation_cells: int = 400  # cells per site re-measured for the crop lever (0: skip it)
ssl_epochs: int = 4  # epochs of the self-supervised encoder (0: skip the lever)
ssl_image_size: int = 40  # crop side the encoder reads
n_boot: int = 1000  # bootstrap resamples of the 95 % intervals
shots: str = "0,1,5,10,20"  # labelled target cells per class for the few-shot curve
n_draws: int = 5  # draws per few-shot point
few_shot_source_cells: int = 2000  # source training cells of the few-shot curve (stratified subsample; 0: all)
aecfe_features: str = "aecfe_moment"  # 03's feature set shown as AE-CFE in the comparisons
oracle_norm: str = "batch"  # 04's oracle whose BatchNorm statistics are re-estimated per site (AdaBN)
detector_file: str = "artifacts/cpu/checkpoints/detector.pt"  # input: the detector (made by 01_detector)
features_dir: str = "artifacts/cpu/features"  # input: the feature sets (made by 03_features)
oracles_file: str = "artifacts/cpu/checkpoints/oracles.json"  # input: the oracles' checkpoints (made by 04_oracle)
splits_file: str = "book/results/tables/splits_coarse5.csv"  # input: the coarse5 splits (made by 04_oracle)
benchmark_summary_file: str = "book/results/tables/benchmark_summary.csv"  # input: the benchmark's summary (made by 05_benchmark)
crosslab_model_file: str = "artifacts/cpu/crosslab_model.pt"  # output: detector + features + headline classifier, for bcfeat classify

# %% tags=["remove-cell"]
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from myst_nb import glue

from bcfeat.study import common as study
from bcfeat.atomic_io import save_table
from bcfeat.study import crosslab as cs
from bcfeat.data import resolve_data_root
from bcfeat.validation import require_int

require_int("max_per_site", max_per_site, 0)
require_int("n_repetitions", n_repetitions, 1)
require_int("n_draws", n_draws, 1)
require_int("n_workers", n_workers, 1)
root = resolve_data_root(data_root or None)
warnings.filterwarnings("ignore", message="classes with < 2 samples")
tables = Path(results_dir) / "tables"
tables.mkdir(parents=True, exist_ok=True)
artifacts = Path(artifacts_dir)
samples = study.site_samples(root, "coarse5", max_per_site=max_per_site, seed=seed)
plan = study.study_splits(samples, n_repetitions, seed)
plan_ok = study.check_same_splits(plan, splits_file)
unseen = [s for s in study.SITES if s != study.SOURCE_SITE]

# %% [markdown]
# ## Measuring every cell
#
# Each image's white cell is found twice: by the detector of chapter 1 and by the label-free stain
# segmentation it learned from. Each mask is cut out and rescaled so that the cell is always 56
# pixels across, and the cell features are measured on that canonical crop. Which mask serves
# better is left to the selection below.

# %% tags=["hide-input"]
measured = cs.measure_all(samples, artifacts, study.parse_list(mask_sources), n_workers, detector_file=detector_file)
costs = cs.measured_table(measured)
save_table(costs, tables / "crosslab_measurement.csv")
any_x = next(iter(measured.values())).features
glue("crosslab_n_cells", len(any_x), display=False)
glue("crosslab_n_features", any_x.shape[1], display=False)
glue("crosslab_measure_minutes", float(costs["cpu_minutes"].sum()), display=False)
display(costs)
cs.feature_group_table(any_x)

# %% [markdown]
# ## Choosing settings without the target's labels
#
# Candidate settings (mask source, linear model strength, feature set) are scored on the
# benchmark's splits with Acevedo-20 as the training site. For each unseen site, the setting is
# chosen by its mean balanced accuracy on the *other two* unseen sites; the number reported for a
# site never saw that site's labels.

# %% tags=["hide-input"]
grid = cs.candidate_grid(study.parse_list(candidate_C), study.parse_list(candidate_groups), list(measured))
grid_scores = cs.score_candidates(measured, samples, plan, grid, seed)
save_table(grid_scores, tables / "crosslab_candidates.csv")
selection = cs.select_settings(grid_scores, unseen)
save_table(selection, tables / "crosslab_selection.csv")
headline_setting = cs.deployed_setting(grid_scores, unseen, model="logistic")
glue("crosslab_headline_setting", headline_setting, display=False)
headline_source = cs.setting_by_name(headline_setting)["source"]
X, crops = measured[headline_source].features, measured[headline_source].crops
selection

# %% [markdown]
# ## The comparison, re-measured
#
# Random forest as in the paper and the linear probe, on our features; the reproduction's rows come
# from the benchmark of chapter 5 (same splits); the AdaBN oracle is chapter 4's BatchNorm oracle
# with its statistics re-estimated on each target site's images (no labels).

# %% tags=["hide-input"]
adabn = cs.adabn_oracle_scores(samples, plan, oracles_file, oracle_norm, seed)
save_table(adabn.scores, tables / "crosslab_adabn_oracle_scores.csv")
matrix = cs.domain_matrices(X, samples, plan, grid, headline_setting, seed)
save_table(matrix, tables / "crosslab_domain_matrix.csv")
comparison = cs.comparison_table(matrix, selection, benchmark_summary_file, adabn.scores,
                                 headline_setting, aecfe_features)
save_table(comparison, tables / "crosslab_comparison.csv")
for key, value in cs.comparison_glue(comparison, selection, unseen).items():
    glue(key, value, display=False)
glue("crosslab_comparison", cs.comparison_display(comparison), display=False)
cs.comparison_display(comparison)

# %% [markdown]
# Every site as the training site in turn (the linear probe, headline setting):

# %% tags=["hide-input"]
glue("crosslab_matrix_figure", cs.matrix_figure(matrix, headline_setting), display=False)
cs.matrix_display(matrix, headline_setting)

# %% [markdown]
# ## All cells of each unseen site, with bootstrap intervals
#
# The classifier of the first split, scored on every cell of each unseen site (their labels were
# never used); 95 % intervals resample the cells within each class.

# %% tags=["hide-input"]
transfer, predictions = cs.all_cells_transfer(X, samples, plan, headline_setting, n_boot, seed)
save_table(transfer, tables / "crosslab_all_cells.csv")
for _, row in transfer.iterrows():
    glue(f"crosslab_all_{row['test_domain']}", float(row["balanced_accuracy"]), display=False)
    glue(f"crosslab_all_lo_{row['test_domain']}", float(row["ci_low"]), display=False)
    glue(f"crosslab_all_hi_{row['test_domain']}", float(row["ci_high"]), display=False)
per_class = cs.per_class_table(predictions, adabn.predictions, samples)
save_table(per_class, tables / "crosslab_per_class_f1.csv")
glue("crosslab_per_class_figure", cs.per_class_figure(per_class), display=False)
transfer

# %% [markdown]
# ## Ablations: each lever on and off
#
# The adaptation levers and the feature groups are measured on the classifier of the first split
# and all cells of the unseen sites; the crop lever re-measures a subsample of each site with
# another mask or without the rescaling; the objective lever trains the self-supervised encoder.

# %% tags=["hide-input"]
ablation = cs.ablations(measured, samples, plan, headline_setting, artifacts, ablation_cells,
                        ssl_epochs, ssl_image_size, seed, n_workers)
save_table(ablation, tables / "crosslab_ablation.csv")
glue("crosslab_ablation", ablation.round(3), display=False)
for key, value in cs.ablation_glue(ablation).items():
    glue(key, value, display=False)
ablation.round(3)

# %% [markdown]
# ## A few labelled cells of the new lab
#
# With k labelled cells per class of the target lab added to the Acevedo-20 training cells,
# balanced accuracy on the rest of that lab (mean of the draws): our features with the linear
# model, AE-CFE with the paper's forest, and the AdaBN oracle's embeddings with a linear model.

# %% tags=["hide-input"]
curve = cs.few_shot(X, samples, plan, headline_setting, features_dir, aecfe_features, adabn,
                    [int(k) for k in study.parse_list(shots)], n_draws, few_shot_source_cells, seed)
save_table(curve, tables / "crosslab_few_shot.csv")
glue("crosslab_few_shot_figure", cs.few_shot_figure(curve), display=False)
for key, value in cs.few_shot_glue(curve).items():
    glue(key, value, display=False)
curve.pivot_table(index=["features", "target"], columns="k", values="balanced_accuracy_mean").round(3)

# %% [markdown]
# ## What the features see

# %% tags=["hide-input"]
glue("crosslab_umap", cs.umap_figure(X, samples, seed), display=False)
glue("crosslab_gallery", cs.gallery_figure(crops, samples, predictions, seed), display=False)

# %% [markdown]
# ## The model file
#
# The detector, the crop and feature settings and the headline classifier (trained on all of
# Acevedo-20's labelled cells) in one file that `bcfeat extract`, `bcfeat classify` and the
# scikit-learn transformer load.

# %% tags=["hide-input"]
model_path = cs.write_model_file(X, samples, crosslab_model_file, headline_source, headline_setting, n_workers,
                                 detector_file=detector_file)
glue("crosslab_model_file", str(model_path), display=False)
print(model_path)
