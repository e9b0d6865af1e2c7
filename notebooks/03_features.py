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
seed: int = 0  # seed of the subsets
data_root: str = ""  # data root; empty: $BCFEAT_DATA_ROOT, then ../shared/datasets
results_dir: str = "book/results"  # tables go to <results_dir>/tables
artifacts_dir: str = "artifacts/cpu"  # feature sets go to <artifacts_dir>/features
max_per_site: int = 0  # 0: every image; else a seeded class-stratified subset per site (as 05_benchmark)
raw_pixels_size: int = 32  # side of the resized image of the raw-pixel baseline
max_source_images: int = 4000  # as 02_autoencoder (identifies its checkpoints)
ae_preset: str = "cpu"  # as 02_autoencoder
epochs: int = 12  # as 02_autoencoder
batch_size: int = 128  # as 02_autoencoder
variants: str = "moment,mmd,source_only,no_alignment,no_detector,site_standardized"  # autoencoder variants to encode with (first: headline)
num_threads: int = 2  # as 02_autoencoder

# %% tags=["remove-cell"]
from pathlib import Path

import pandas as pd
from myst_nb import glue

from bcfeat.study import autoencoder as aes
from bcfeat.study import common as study
from bcfeat.evaluation.baselines import ColorShapeFeatures
from bcfeat.data import resolve_data_root

root = resolve_data_root(data_root or None)
artifacts = Path(artifacts_dir)
samples = aes.autoencoder_samples(root, max_per_site, max_source_images, seed)
keys = study.sample_keys(samples)
glue("n_feature_images", len(samples), display=False)
plan = aes.VariantPlan.from_parameters(variants, ae_preset, epochs, batch_size, seed, num_threads)

# %% [markdown]
# ## AE-CFE features
#
# The 50-d latent code of every image under each autoencoder variant. The headline variant,
# with its detector, is also written as one model file that `bcfeat extract` and the
# scikit-learn transformer `bcfeat.extraction.transformer.AECFEFeatures` load.

# %% tags=["hide-input"]
instances = aes.instances_for(samples, artifacts, plan, progress=False)
dimensions = {}
for name in plan.names:
    latent = aes.encode_samples(plan, name, samples, instances, artifacts / "checkpoints")
    study.save_feature_set(study.feature_path(artifacts, f"aecfe_{name}"), keys, latent, variant=name)
    dimensions[f"aecfe_{name}"] = latent.shape[1]
headline_model = aes.save_variant_model(plan, plan.names[0], samples, artifacts, artifacts / "aecfe_model.pt")
if "site_standardized" in plan.names:  # our addition, for users' own images too
    aes.save_variant_model(plan, "site_standardized", samples, artifacts, artifacts / "aecfe_model_site_standardized.pt")
pd.DataFrame({"feature set": list(dimensions), "images": len(samples), "dimensions": list(dimensions.values())})

# %% [markdown]
# ## Baselines

# %% tags=["hide-input"]
pixels = study.decoded_images(samples["path"].tolist(), raw_pixels_size)
study.save_feature_set(study.feature_path(artifacts_dir, "raw_pixels"), keys, pixels.reshape(len(pixels), -1),
                       size=raw_pixels_size)
colour_shape = study.transform_paths(ColorShapeFeatures().fit(samples["path"].tolist()[:8]), samples["path"].tolist())
study.save_feature_set(study.feature_path(artifacts_dir, "colour_shape"), keys, colour_shape)
pd.DataFrame({"feature set": ["raw_pixels", "colour_shape"],
              "images": [len(pixels), len(colour_shape)],
              "dimensions": [pixels[0].size, colour_shape.shape[1]]})
