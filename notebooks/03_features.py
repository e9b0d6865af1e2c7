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
# # Feature extraction for every site
#
# Every image of every site is turned into each feature set the benchmark compares: the
# AE-CFE latent of every trained autoencoder variant, and two classical baselines (raw pixels,
# later reduced by PCA inside the classifier; colour histograms with nucleus-shape features).
# The feature sets are stored once and read by the benchmark.

# %% tags=["parameters"]
profile: str = "cpu"  # run profile (smoke, cpu, gpu)
smoke: bool = False  # tiny run for tests and CI
seed: int = 0  # unused here (the samples are 02's); every notebook takes it
data_root: str = ""  # data root; empty: $BCFEAT_DATA_ROOT, then ../shared/datasets
results_dir: str = "book/results"  # tables go to <results_dir>/tables
artifacts_dir: str = "artifacts/cpu"  # instance features are cached in <artifacts_dir>/cache
raw_pixels_size: int = 32  # side of the resized image of the raw-pixel baseline
detector_file: str = "artifacts/cpu/checkpoints/detector.pt"  # input: the detector (made by 01_detector)
design_file: str = "book/results/tables/study_design.json"  # input: the study's design: sites, source site, cells per site, repetitions, headline (made by 00_data_overview)
autoencoders_file: str = "artifacts/cpu/checkpoints/autoencoders.json"  # input: the trained variants, their samples and settings (made by 02_autoencoder)
features_dir: str = "artifacts/cpu/features"  # output: one <name>.npz per feature set
aecfe_model_file: str = "artifacts/cpu/aecfe_model.pt"  # output: detector + headline autoencoder, for bcfeat extract
site_standardized_model_file: str = "artifacts/cpu/aecfe_model_site_standardized.pt"  # output: the same with the site_standardized variant (when 02 trained it)

# %% tags=["remove-cell"]
from pathlib import Path

import pandas as pd
from myst_nb import glue

from bcfeat.study import autoencoder as aes
from bcfeat.study import common as study
from bcfeat.evaluation.baselines import ColorShapeFeatures
from bcfeat.data import resolve_data_root

root = resolve_data_root(data_root or None)
trained = aes.TrainedVariants.read(autoencoders_file)
plan = trained.plan()
samples = trained.samples(root)
keys = study.sample_keys(samples)
glue("n_feature_images", len(samples), display=False)

# %% [markdown]
# ## AE-CFE features
#
# The 50-d latent code of every image under each autoencoder variant. The headline variant,
# with its detector, is also written as one model file that `bcfeat extract` and the
# scikit-learn transformer `bcfeat.extraction.transformer.AECFEFeatures` load.

# %% tags=["hide-input"]
instances = aes.instances_for(samples, detector_file, Path(artifacts_dir) / "cache", plan, progress=False)
dimensions = {}
for name in plan.names:
    latent = aes.encode_samples(plan, name, samples, instances, trained.checkpoints[name])
    study.save_feature_set(study.feature_path(features_dir, study.aecfe_feature_set(name)), keys, latent, variant=name)
    dimensions[study.aecfe_feature_set(name)] = latent.shape[1]
headline = study.read_study_design(design_file).headline_variant
plan.require(headline, "the study's headline feature set")
headline_model = aes.save_variant_model(plan, headline, trained.checkpoints[headline], detector_file, aecfe_model_file)
if "site_standardized" in plan.names:  # our addition, for users' own images too
    aes.save_variant_model(plan, "site_standardized", trained.checkpoints["site_standardized"], detector_file,
                           site_standardized_model_file)
pd.DataFrame({"feature set": list(dimensions), "images": len(samples), "dimensions": list(dimensions.values())})

# %% [markdown]
# ## Baselines

# %% tags=["hide-input"]
pixels = study.decoded_images(samples["path"].tolist(), raw_pixels_size)
study.save_feature_set(study.feature_path(features_dir, study.RAW_PIXELS), keys, pixels.reshape(len(pixels), -1),
                       size=raw_pixels_size)
colour_shape = study.transform_paths(ColorShapeFeatures().fit(samples["path"].tolist()[:8]), samples["path"].tolist())
study.save_feature_set(study.feature_path(features_dir, study.COLOUR_SHAPE), keys, colour_shape)
pd.DataFrame({"feature set": list(study.BASELINE_FEATURE_SETS),
              "images": [len(pixels), len(colour_shape)],
              "dimensions": [pixels[0].size, colour_shape.shape[1]]})
