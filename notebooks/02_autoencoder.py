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
# # Training the cross-domain autoencoder
#
# The detector of the previous chapter turns every image into instance features (RoIAlign over
# the feature pyramid at the detected cell) and a masked crop of the cell. The autoencoder
# learns, **without labels**, to reconstruct both from a 50-d latent code, while the alignment
# term pulls the latent codes of the sites together. Several variants are trained, one per
# reading of the paper and per ablation; the next chapters compare them.

# %% tags=["parameters"]
profile: str = "cpu"  # run profile (smoke, cpu, gpu)
smoke: bool = False  # tiny run for tests and CI
seed: int = 0  # seed of every training run (the samples follow the design's seed)
data_root: str = ""  # data root; empty: $BCFEAT_DATA_ROOT, then ../shared/datasets
results_dir: str = "book/results"  # tables go to <results_dir>/tables
artifacts_dir: str = "artifacts/cpu"  # checkpoints go to <artifacts_dir>/checkpoints, caches to <artifacts_dir>/cache
design_file: str = "book/results/tables/study_design.json"  # input: the study's design: sites, source site, cells per site, repetitions, headline (made by 00_data_overview)
detector_file: str = "artifacts/cpu/checkpoints/detector.pt"  # input: the detector (made by 01_detector)
autoencoders_file: str = "artifacts/cpu/checkpoints/autoencoders.json"  # output: the variants' settings and checkpoints (read by 03_features)
max_source_images: int = 4000  # label-free subset of the source site the autoencoder trains on (0: all)
ae_preset: str = "cpu"  # AEConfig preset: cpu (64x14x14 -> 64 px crops), paper (256x14x14 -> 128 px), tiny
epochs: int = 12  # autoencoder epochs per variant
batch_size: int = 128  # autoencoder batch size (the released code used 500 on a GPU)
variants: str = "moment,mmd,source_only,no_alignment,no_detector,site_standardized"  # variants to train, comma-separated
num_threads: int = 2  # torch CPU threads
train_autoencoder: bool = True  # True: train (resuming an interrupted run); False: restore saved checkpoints

# %% tags=["remove-cell"]
from pathlib import Path

import pandas as pd
from myst_nb import glue

from bcfeat.atomic_io import save_table
from bcfeat.study import autoencoder as aes
from bcfeat.study import common as study
from bcfeat.data import resolve_data_root

root = resolve_data_root(data_root or None)
study_design = study.read_study_design(design_file)
tables = Path(results_dir) / "tables"
tables.mkdir(parents=True, exist_ok=True)
artifacts = Path(artifacts_dir)
plan_parameters = dict(names=variants, preset=ae_preset, epochs=epochs, batch_size=batch_size, seed=seed,
                       num_threads=num_threads)
sample_parameters = dict(max_per_site=study_design.max_per_site, max_source_images=max_source_images,
                         seed=study_design.seed, sites=",".join(study_design.sites.sites),
                         source_site=study_design.sites.source, label_space=study_design.sites.label_space)
plan = aes.VariantPlan.from_parameters(**plan_parameters)
plan.require(study_design.headline_variant, "the study's headline feature set (00_data_overview's headline)")

# %% [markdown]
# ## Instance features of every image
#
# The images the autoencoder trains on (every image of the small sites, and a label-free
# subset of the source site) and every image the benchmark uses. Each is passed once through
# the detector; the result is cached per data and detector checkpoint.

# %% tags=["hide-input"]
samples = aes.autoencoder_samples(root, **sample_parameters)
instances = aes.instances_for(samples, detector_file, artifacts / "cache", plan, progress=False)
detections = aes.detection_summary(samples, instances["detected"])
save_path = tables / "detections_per_site.csv"
save_table(detections, save_path, index=True)
glue("detections_per_site", detections, display=False)
detections

# %% [markdown]
# ## Training
#
# | variant | alignment term | images seen | region |
# |---|---|---|---|
# | `moment` | moment matching, as the released code | all sites (transductive) | detected cell |
# | `mmd` | kernel MMD, as the paper's text | all sites (transductive) | detected cell |
# | `source_only` | none (one site) | source site only, as the abstract says | detected cell |
# | `no_alignment` | none (weight 0) | all sites | detected cell |
# | `no_detector` | moment matching | all sites | whole image |
# | `site_standardized` | none (weight 0); per-site standardisation of the instance features instead (our addition) | all sites | detected cell |
#
# The last variant is not in the paper: before the autoencoder, each site's instance features
# are standardised per channel with that site's own mean and standard deviation over its
# unlabelled images (`bcfeat.autoencoder.site_standardization`), which removes a lab's overall shift of the
# feature maps at the input instead of through a loss term; the released code scales each
# cell's features on their own.

# %% tags=["hide-input"]
histories = aes.train_variants(plan, samples, instances, artifacts / "checkpoints", train=train_autoencoder)
aes.TrainedVariants.made(plan_parameters, sample_parameters, samples, artifacts / "checkpoints").write(autoencoders_file)
history = pd.concat([h.assign(variant=name) for name, h in histories.items()], ignore_index=True)
save_table(history, tables / "autoencoder_history.csv")
figure = aes.history_figure(history)
glue("ae_history", figure, display=False)

# %% tags=["remove-cell"]
final = history.sort_values("epoch").groupby("variant").tail(1).set_index("variant")
for name, row in final.iterrows():
    glue(f"ae_final_ssim_{name}", float(1 - row["image"]), display=False)
glue("ae_final", final[["epoch", "total", "image", "features", "alignment", "seconds"]], display=False)

# %% [markdown]
# ## Reconstructions per site
#
# Masked crops of cells from each site (upper rows) and what the headline autoencoder
# reconstructs from their 50-d code (lower rows).

# %% tags=["hide-input"]
figure = aes.reconstruction_examples(plan, samples, instances, artifacts / "checkpoints", per_site=6, seed=seed)
glue("reconstructions", figure, display=False)
