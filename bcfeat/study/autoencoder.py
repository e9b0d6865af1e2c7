"""The autoencoder variants of the study and the steps that train and use them.

The paper leaves open which images the autoencoder sees and its released code computes a
different alignment term from the one its text describes, so the study trains one variant per
reading, plus two ablations; :data:`VARIANTS` defines them once. The notebooks
``02_autoencoder`` (training) and ``03_features`` (encoding) call the functions here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from bcfeat.study import common as study
from bcfeat.autoencoder.aecfe_model import ExtractionConfig, autoencoder_inputs, cached_instance_arrays
from bcfeat.autoencoder.losses import LossWeights
from bcfeat.autoencoder.model import AEConfig
from bcfeat.autoencoder.training import AutoencoderTrainingConfig
from bcfeat.validation import require_int


@dataclass(frozen=True)
class Variant:
    """One way of training the autoencoder.

    Attributes
    ----------
    alignment : {"moment", "mmd"}
        Form of the domain-alignment term.
    setting : {"transductive", "source_only"}
        Which sites' (unlabelled) images the autoencoder sees.
    alignment_weight : float or None
        None: the default weight (5); 0 switches the term off.
    region : {"detected", "whole"}
        RoIAlign at the detected cell, or at the whole image (no detector).
    site_standardize : bool
        Standardise each site's instance features with its own channel statistics before
        the autoencoder (:mod:`bcfeat.autoencoder.site_standardization`; our addition, not the paper's).
    """

    alignment: str = "moment"
    setting: str = "transductive"
    alignment_weight: float | None = None
    region: str = "detected"
    site_standardize: bool = False


VARIANTS: dict[str, Variant] = {
    "moment": Variant(),
    "mmd": Variant(alignment="mmd"),
    "source_only": Variant(setting="source_only"),
    "no_alignment": Variant(alignment_weight=0.0),
    "no_detector": Variant(region="whole"),
    # Our addition: the sites' feature shift removed at the input instead of by the alignment
    # term (which, at weight 5, collapsed the latent in the cpu profile's runs).
    "site_standardized": Variant(alignment_weight=0.0, site_standardize=True),
}

# The order of the feature sets in the benchmark's tables: each variant's latent code, then the baselines.
FEATURE_SET_ORDER: tuple[str, ...] = (*(study.aecfe_feature_set(v) for v in VARIANTS), *study.BASELINE_FEATURE_SETS)


@dataclass
class VariantPlan:
    """The variants to train, with their full configurations (the study's design names the headline)."""

    names: list[str]
    ae_config: AEConfig
    train_configs: dict[str, AutoencoderTrainingConfig]
    variants: dict[str, Variant]

    @classmethod
    def from_parameters(cls, names: str, preset: str, epochs: int, batch_size: int, seed: int,
                        num_threads: int) -> "VariantPlan":
        chosen = study.parse_list(names)
        unknown = [n for n in chosen if n not in VARIANTS]
        if unknown or not chosen:
            raise ValueError(f"unknown autoencoder variant(s) {unknown}; choose from {list(VARIANTS)}")
        presets = {"cpu": AEConfig.cpu, "paper": AEConfig.paper, "tiny": AEConfig.tiny}
        if preset not in presets:
            raise ValueError(f"unknown ae_preset {preset!r}; choose from {sorted(presets)}")
        base = AutoencoderTrainingConfig(epochs=epochs, batch_size=batch_size, seed=seed, num_threads=num_threads,
                           progress=False)
        configs = {}
        for name in chosen:
            v = VARIANTS[name]
            weights = LossWeights() if v.alignment_weight is None else LossWeights(alignment=v.alignment_weight)
            configs[name] = replace(base, alignment=v.alignment, setting=v.setting, weights=weights)
        return cls(chosen, presets[preset](), configs, {n: VARIANTS[n] for n in chosen})

    def require(self, name: str, why: str) -> None:
        """An error naming ``name`` and why it is needed unless the plan trains that variant."""
        if name not in self.names:
            raise ValueError(f"the autoencoder variant {name!r} ({why}) is not among the variants trained, "
                             f"{self.names}; add it to 02_autoencoder's variants")

    def extraction(self, region: str) -> ExtractionConfig:
        return ExtractionConfig(crop_size=self.ae_config.image_size, region=region)

    @property
    def regions(self) -> list[str]:
        return sorted({v.region for v in self.variants.values()})


def autoencoder_samples(root: Path, max_per_site: int, max_source_images: int, seed: int,
                        sites: str = ",".join(study.SITES), source_site: str = study.SOURCE_SITE,
                        label_space: str = "coarse5") -> pd.DataFrame:
    """Every image the study passes through the detector, with an ``ae_train`` flag and the
    ``site_id`` the alignment term reads (0: the source site, then the other sites in order).

    The autoencoder trains on a label-free subset: a seeded random ``max_source_images`` of the
    source site (any class, labels unused) and every image of the other sites. The benchmark's
    labelled images are added (``ae_train`` False unless also drawn). ``sites``, ``source_site``
    and ``label_space`` are the study's design (:class:`bcfeat.study.design.StudySites`).
    """
    require_int("max_source_images", max_source_images, 0, meaning="0: every source image")
    design = study.StudySites.from_parameters(sites, source_site, label_space)
    unlabelled = study.site_samples(root, None, design.sites, max_per_site, seed)
    source = unlabelled["domain"] == design.source
    train = unlabelled[~source]
    source_rows = unlabelled[source]
    if max_source_images and len(source_rows) > max_source_images:
        source_rows = source_rows.sample(n=max_source_images, random_state=seed)
    train = pd.concat([source_rows, train]).assign(ae_train=True)
    labelled = study.union_samples(list(study.benchmark_samples(root, design, max_per_site, seed).values()))
    table = study.union_samples([train, labelled.assign(ae_train=False)])
    # union keeps the first occurrence: training rows come first, so their flag survives
    order = {site: i for i, site in enumerate([design.source, *design.unseen])}
    return table.reset_index(drop=True).assign(site_id=lambda t: t["domain"].map(order).astype(int))


def instances_for(samples: pd.DataFrame, detector_file: Path, cache_dir: Path, plan: VariantPlan,
                  progress: bool = True, runtime=None) -> dict:
    """Instance arrays of every sample for every region the plan needs, through the detector
    ``detector_file`` (``01_detector``'s), cached in ``cache_dir``; ``runtime``: where and how
    (:class:`bcfeat.detection.batched_inference.ExtractionRuntime`, default: the machine's)."""
    detector = study.require_input(detector_file, "01_detector")
    return {region: cached_instance_arrays(detector, samples["path"].tolist(), plan.extraction(region),
                                           Path(cache_dir), progress=progress, runtime=runtime)
            for region in plan.regions}


def variant_features(instances: dict, samples: pd.DataFrame, variant: Variant) -> np.ndarray:
    """The instance features a variant's autoencoder reads, ``(n, C, 14, 14)``: per-site
    standardised (statistics over every image of each site in ``samples``) when it asks so."""
    features = instances[variant.region]["features"]
    if not variant.site_standardize:
        return features
    from bcfeat.autoencoder.site_standardization import standardize_per_site

    return standardize_per_site(features, samples["domain"].to_numpy())


def detection_summary(samples: pd.DataFrame, arrays: dict[str, np.ndarray]) -> pd.DataFrame:
    """Per site: images, how often the detector found nothing (centred fallback) or several cells."""
    frame = pd.DataFrame({"site": samples["domain"].to_numpy(), "fallback": arrays["fallback"],
                          "several": arrays["n_candidates"] > 1, "score": arrays["scores"]})
    table = frame.groupby("site").agg(images=("fallback", "size"), no_cell_fallback=("fallback", "sum"),
                                      several_cells_best_kept=("several", "sum"), mean_score=("score", "mean"))
    return table.loc[_sites_in_order(samples)]


def _sites_in_order(samples: pd.DataFrame) -> list[str]:
    """The sites of :func:`autoencoder_samples`, the source first."""
    ids = samples.drop_duplicates("domain").sort_values("site_id")
    return ids["domain"].tolist()


def domain_ids(samples: pd.DataFrame) -> np.ndarray:
    """Integer site ids of :func:`autoencoder_samples` with the source site as 0 (the alignment
    term aligns every site to 0)."""
    return samples["site_id"].to_numpy(dtype=np.int64)


def training_rows(samples: pd.DataFrame, variant: Variant) -> np.ndarray:
    """Indices of the samples a variant's autoencoder trains on."""
    rows = samples["ae_train"].to_numpy()
    if variant.setting == "source_only":
        rows = rows & (samples["site_id"] == 0).to_numpy()
    return np.flatnonzero(rows)


def variant_checkpoint(plan: VariantPlan, name: str, samples: pd.DataFrame, checkpoints: Path) -> Path:
    """The checkpoint of one variant; its name hashes the training images and configurations."""
    rows = samples.iloc[training_rows(samples, plan.variants[name])]
    key = study.run_key(rows, {"ae": plan.ae_config, "train": plan.train_configs[name],
                               "variant": plan.variants[name]})
    return Path(checkpoints) / f"ae_{name}_{key}.pt"


def train_variants(plan: VariantPlan, samples: pd.DataFrame, instances: dict, checkpoints: Path,
                   train: bool = True) -> dict[str, pd.DataFrame]:
    """Train (or, with ``train=False``, restore) every variant; returns each one's loss history."""
    from bcfeat.autoencoder.training import fit_autoencoder

    histories = {}
    domain = domain_ids(samples)
    for name in plan.names:
        variant = plan.variants[name]
        path = variant_checkpoint(plan, name, samples, checkpoints)
        if not train and not path.exists():
            raise FileNotFoundError(f"restore requested but the autoencoder checkpoint {path} does not exist; "
                                    "run with train_autoencoder=True first")
        rows = training_rows(samples, variant)
        arrays = dict(instances[variant.region], features=variant_features(instances, samples, variant))
        data = autoencoder_inputs({k: v[rows] for k, v in arrays.items()}, domain[rows])
        _, history = fit_autoencoder(data, plan.ae_config, plan.train_configs[name], path, resume=True)
        histories[name] = history
    return histories


def load_variant(plan: VariantPlan, name: str, samples: pd.DataFrame, checkpoints: Path):
    """The trained autoencoder of one variant (eval mode)."""
    from bcfeat.autoencoder.model import load_checkpoint

    path = variant_checkpoint(plan, name, samples, checkpoints)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint {path} for autoencoder variant {name!r}: run 02_autoencoder first")
    model, _, _ = load_checkpoint(path)
    return model.eval(), path


def save_variant_model(plan: VariantPlan, name: str, checkpoint: Path, detector_file: Path, path: Path) -> Path:
    """One model file (detector + this variant's autoencoder ``checkpoint``) for ``bcfeat extract``
    and the transformer."""
    from bcfeat.autoencoder.aecfe_model import save_model

    variant = plan.variants[name]
    return save_model(path, study.require_input(detector_file, "01_detector"),
                      study.require_input(checkpoint, "02_autoencoder"), plan.extraction(variant.region),
                      site_standardize=variant.site_standardize)


def history_figure(history: pd.DataFrame):
    """Loss terms per epoch, one line per variant."""
    import matplotlib.pyplot as plt

    terms = [t for t in ("total", "image", "features", "alignment") if t in history.columns]
    fig, axes = plt.subplots(1, len(terms), figsize=(3.2 * len(terms), 2.8))
    for ax, term in zip(np.atleast_1d(axes), terms):
        for name, part in history.groupby("variant", sort=False):
            ax.plot(part["epoch"], part[term], marker="o", ms=3, label=name)
        ax.set_title(term if term != "image" else "image (1 - SSIM)", fontsize=9)
        ax.set_xlabel("epoch")
    np.atleast_1d(axes)[0].legend(fontsize=7, frameon=False)
    fig.tight_layout()
    return fig


def reconstruction_examples(plan: VariantPlan, samples: pd.DataFrame, instances: dict, checkpoints: Path,
                            per_site: int = 6, seed: int = 0):
    """Input crops and the headline variant's reconstructions for a seeded pick of cells per site."""
    from bcfeat.autoencoder.aecfe_model import reconstruct
    from bcfeat.study.figures import reconstruction_figure

    name = plan.names[0]
    model, _ = load_variant(plan, name, samples, checkpoints)
    arrays = instances[plan.variants[name].region]
    features = variant_features(instances, samples, plan.variants[name])
    crops, recons = {}, {}
    for site in _sites_in_order(samples):
        rows = np.flatnonzero((samples["domain"] == site).to_numpy())
        pick = np.random.default_rng(seed).choice(rows, size=min(per_site, len(rows)), replace=False)
        crops[site] = arrays["crops"][pick].astype(np.float32) / 255
        recons[site] = reconstruct(model, features[pick])
    return reconstruction_figure(crops, recons, per_site=per_site)


def encode_samples(plan: VariantPlan, name: str, all_samples: pd.DataFrame, instances: dict,
                   checkpoint: Path) -> np.ndarray:
    """The 50-d latent of every sample for one variant (its trained ``checkpoint``), ``(n, 50)``."""
    from bcfeat.autoencoder.aecfe_model import encode_features
    from bcfeat.autoencoder.model import load_checkpoint

    model, _, _ = load_checkpoint(study.require_input(checkpoint, "02_autoencoder"))
    return encode_features(model.eval(), variant_features(instances, all_samples, plan.variants[name]))


@dataclass
class TrainedVariants:
    """What ``02_autoencoder`` hands on (its ``autoencoders_file``): the settings it trained the
    variants with, the settings of its samples, and each variant's checkpoint."""

    plan_parameters: dict
    sample_parameters: dict
    checkpoints: dict[str, str]

    def plan(self) -> VariantPlan:
        return VariantPlan.from_parameters(**self.plan_parameters)

    def samples(self, root: Path) -> pd.DataFrame:
        """The samples the variants were trained (and are encoded) with: per-site standardisation
        takes its statistics over them, so the encoding stage must use the same ones."""
        return autoencoder_samples(root, **self.sample_parameters)

    @classmethod
    def made(cls, plan_parameters: dict, sample_parameters: dict, samples: pd.DataFrame,
             checkpoints: Path) -> "TrainedVariants":
        plan = VariantPlan.from_parameters(**plan_parameters)
        return cls(plan_parameters, sample_parameters,
                   {name: str(variant_checkpoint(plan, name, samples, checkpoints)) for name in plan.names})

    def write(self, path: Path) -> Path:
        return study.write_handoff(path, {"plan": self.plan_parameters, "samples": self.sample_parameters,
                                          "checkpoints": self.checkpoints})

    @classmethod
    def read(cls, path: Path) -> "TrainedVariants":
        record = study.read_handoff(path, "02_autoencoder")
        return cls(record["plan"], record["samples"], record["checkpoints"])
