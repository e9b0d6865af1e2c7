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
# # The cell detector
#
# A one-class Mask R-CNN ("white cell") on a small GroupNorm ResNet with a feature pyramid,
# trained from scratch **without expert labels**: its targets are pseudo-masks from a classical
# stain segmentation (nucleus and cytoplasm take up the basic dye; the cell of interest is the
# large one near the centre). The expert masks of the two Zheng-18 sets are used only to
# measure both the pseudo-masks and the trained detector.

# %% tags=["parameters"]
profile: str = "cpu"  # run profile (smoke, cpu, gpu)
smoke: bool = False  # tiny run for tests and CI
seed: int = 0  # seed of the image sample and of training
data_root: str = ""  # data root; empty: $BCFEAT_DATA_ROOT, then ../shared/datasets
results_dir: str = "book/results"  # tables go to <results_dir>/tables
artifacts_dir: str = "artifacts/cpu"  # the training run's checkpoints and pseudo-mask cache go here
design_file: str = "book/results/tables/study_design.json"  # input: the study's design: sites, source site, cells per site, repetitions, headline (made by 00_data_overview)
detector_file: str = "artifacts/cpu/checkpoints/detector.pt"  # output: the trained detector the later stages read
images_per_site: int = 400  # unlabelled training images drawn from each site
steps: int = 2500  # optimizer steps
batch_size: int = 6  # images per step
balance_sites: bool = True  # every site fills the same share of the batches (False: every image equally often)
detector_preset: str = "cpu"  # DetectorConfig preset: cpu (64-channel FPN), gpu (256, as the paper) or tiny
max_eval_images: int = 0  # expert-masked images scored per dataset (0: all)
train_detector: bool = True  # True: train (resuming an interrupted run); False: restore the saved detector

# %% tags=["remove-cell"]
from pathlib import Path

from myst_nb import glue

from bcfeat.atomic_io import save_table
from bcfeat.study import common as study
from bcfeat.study import detector as ds
from bcfeat.data import resolve_data_root

root = resolve_data_root(data_root or None)
study_design = study.read_study_design(design_file)
tables = Path(results_dir) / "tables"
tables.mkdir(parents=True, exist_ok=True)
plan = ds.DetectorPlan.from_parameters(detector_preset, steps, batch_size, seed, images_per_site, balance_sites,
                                       sites=",".join(study_design.sites.sites))

# %% [markdown]
# ## Training on pseudo-masks

# %% tags=["hide-input"]
model, history, info = ds.train_or_restore(plan, root, Path(artifacts_dir), Path(detector_file), train=train_detector)
glue("detector_train_images", info["n_images"], display=False)
glue("detector_steps", info["steps"], display=False)
figure = ds.history_figure(history)
glue("detector_history", figure, display=False)

# %% [markdown]
# The detector's mask is a probability map; the threshold that turns it into a mask is chosen
# after training as the one whose masks best reproduce the training pseudo-masks (mean IoU on a
# seeded sample of confident ones). No expert mask takes part in this choice.

# %% tags=["hide-input"]
calibration = info["mask_threshold_calibration"]
save_table(calibration, tables / "detector_mask_threshold.csv")
glue("detector_mask_thresh", info["mask_thresh"], display=False)
calibration.round(4)

# %% [markdown]
# ## Against the expert masks
#
# Mean mask IoU and detection rate (IoU >= 0.5) per dataset, for the classical pseudo-masks
# the detector learned from and for the trained detector. Target: mean IoU >= 0.80 on both
# datasets, and the detector better than its pseudo-masks.

# %% tags=["hide-input"]
evaluation = ds.evaluate_against_experts(model, root, max_eval_images or None)
save_table(evaluation.table, tables / "detector_vs_expert.csv", index=True)
save_table(evaluation.per_image, tables / "detector_vs_expert_per_image.csv")
for (dataset, source), row in evaluation.table.iterrows():
    glue(f"iou_{source}_{dataset}", float(row["mean_iou"]), display=False)
    glue(f"detrate_{source}_{dataset}", float(row["detection_rate"]), display=False)
glue("detector_vs_expert", evaluation.table, display=False)
for dataset, gain in ds.detector_gain(evaluation.table).items():
    glue(f"iou_gain_{dataset}", float(gain), display=False)
evaluation.table

# %% [markdown]
# Expert outline (green), pseudo-mask (orange), detector mask (magenta) and box (cyan) on
# the images where the detector does best, at the median and worst:

# %% tags=["hide-input"]
figure = ds.outline_examples(model, evaluation.per_image, root)
glue("detector_examples", figure, display=False)
