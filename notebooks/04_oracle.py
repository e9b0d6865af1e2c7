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
# # The supervised oracle
#
# The paper compares its unsupervised features with "oracle" networks: CNNs trained with the
# source site's labels (Matek *et al.* 2019 used ResNeXt-50). Here the oracle is trained from
# scratch on Acevedo-20's training split (coarse5) and tested on the test split of every site,
# the same splits as the random forests. It is trained with BatchNorm and with GroupNorm, since
# batch statistics are one way a network absorbs a site's staining.

# %% tags=["parameters"]
profile: str = "cpu"  # run profile (smoke, cpu, gpu): picks the oracle architecture and size
smoke: bool = False  # tiny run for tests and CI
seed: int = 0  # seed of every oracle (the splits are the design's)
data_root: str = ""  # data root; empty: $BCFEAT_DATA_ROOT, then ../shared/datasets
results_dir: str = "book/results"  # results folder (this stage's tables are the *_file outputs below)
artifacts_dir: str = "artifacts/cpu"  # checkpoints go to <artifacts_dir>/checkpoints
oracle_repetitions: int = 1  # how many of those splits the oracle is trained on (each is a full training)
oracle_norms: str = "batch,group"  # normalisation layers to compare, comma-separated
oracle_epochs: int = 0  # 0: the profile's default
train_oracle: bool = True  # True: train (resuming an interrupted run); False: restore the saved checkpoints
design_file: str = "book/results/tables/study_design.json"  # input: the study's design: sites, source site, cells per site, repetitions, headline (made by 00_data_overview)
splits_file: str = "book/results/tables/splits_coarse5.csv"  # input: the coarse5 splits every later stage tests on (made by 00_data_overview)
oracles_file: str = "artifacts/cpu/checkpoints/oracles.json"  # output: each oracle's feature-set name and checkpoints
oracle_scores_file: str = "book/results/tables/oracle_scores.csv"  # output: scores per split and test site
oracle_predictions_file: str = "book/results/tables/oracle_predictions.csv"  # output: per-cell predictions

# %% tags=["remove-cell"]
import warnings
from pathlib import Path

from myst_nb import glue

from bcfeat.study import common as study
from bcfeat.atomic_io import save_table
from bcfeat.evaluation.benchmark import matrix_table, summarize
from bcfeat.data import resolve_data_root
from bcfeat.evaluation.oracle_model import oracle_config

study_design = study.read_study_design(design_file)
design = study_design.sites
root = resolve_data_root(data_root or None)
# Classes too small to split (one basophil in a small site) stay in training; the splits table lists them.
warnings.filterwarnings("ignore", message="classes with < 2 samples")
checkpoints = Path(artifacts_dir) / "checkpoints"
samples = study.design_samples(root, study_design)
plan = study.read_study_splits(splits_file, samples, study_design)
oracle_plan = study.first_repetitions(plan, oracle_repetitions)

# %% [markdown]
# ## Training
#
# Every image is resized whole (no detector) to the oracle's input size; augmentation is flips
# and 90° rotations. Training curves per normalisation:

# %% tags=["hide-input"]
configs = {norm: oracle_config(profile, norm=norm, **({"epochs": oracle_epochs} if oracle_epochs else {}))
           for norm in study.parse_list(oracle_norms)}
images = study.decoded_images(samples["path"].tolist(), next(iter(configs.values())).image_size)
classifiers = {norm: study.oracle_factory(cfg, study.oracle_checkpoint_pattern(checkpoints, cfg, samples, norm),
                                          train_oracle)
               for norm, cfg in configs.items()}
names = {norm: study.oracle_feature_set(cfg.arch, norm) for norm, cfg in configs.items()}
scores, predictions = study.run_feature_sets(
    {names[norm]: images for norm in configs}, samples, oracle_plan,
    "coarse5", seed, make_classifier=None, train_domains=[design.source],
    classifier_per_set={names[norm]: classifiers[norm] for norm in configs})
save_table(scores, oracle_scores_file)
save_table(predictions, oracle_predictions_file)
study.write_handoff(oracles_file, study.oracle_handoff(configs, samples, checkpoints, seed, oracle_plan.n_repetitions))
summary = summarize(scores)
summary[["feature_set", "test_domain", "n_repetitions", "accuracy_mean", "balanced_accuracy_mean", "macro_f1_mean"]]

# %% [markdown]
# ## Balanced accuracy by test site

# %% tags=["hide-input"]
for name, part in summary.groupby("feature_set", sort=False):
    display(matrix_table(part, "balanced_accuracy").rename_axis(name))
glue("oracle_summary", summary, display=False)
