"""The detector chapter's steps: train (or restore) the detector and score it against experts.

``notebooks/01_detector.py`` calls these; the detector itself is :mod:`bcfeat.detection`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd

from bcfeat.study import common as study
from bcfeat.validation import require_int


@dataclass
class DetectorPlan:
    """Architecture, training settings and training images of one detector run."""

    config: object
    train_config: object
    images_per_site: int
    seed: int
    sites: tuple[str, ...] = study.SITES

    @classmethod
    def from_parameters(cls, preset: str, steps: int, batch_size: int, seed: int,
                        images_per_site: int, balance_sites: bool = True, *, mask_image_guidance: bool = False,
                        mask_paste: str | None = None, sites: str = ",".join(study.SITES)) -> "DetectorPlan":
        """The plan of notebooks/01_detector.py's parameters (and of ``python -m bcfeat.runner.detector``).
        ``sites``: the comma-separated datasets whose images it trains on (the study's sites).

        ``mask_image_guidance`` and ``mask_paste`` (None: the preset's) change the preset's
        :class:`DetectorConfig`; the study leaves them at their defaults.
        """
        from bcfeat.detection.config import DetectorConfig, DetectorTrainingConfig

        # gpu: the default architecture, whose 256-channel FPN gives the paper's 256x14x14 features
        presets = {"cpu": DetectorConfig.cpu, "tiny": DetectorConfig.tiny, "gpu": DetectorConfig}
        if preset not in presets:
            raise ValueError(f"unknown detector_preset {preset!r}; choose from {sorted(presets)}")
        # balance_sites: each site fills the same share of the batches (CellaVision has 100
        # images, Acevedo-20 400): the small sites' stains are learnt as well as the large ones'.
        require_int("images_per_site", images_per_site, 1)
        train_config = DetectorTrainingConfig(steps=steps, batch_size=batch_size, seed=seed,
                                   checkpoint_every=max(1, min(250, steps)), balance_groups=balance_sites)
        overrides = {"mask_image_guidance": True} if mask_image_guidance else {}
        if mask_paste is not None:
            overrides["mask_paste"] = mask_paste
        config = replace(presets[preset](), **overrides) if overrides else presets[preset]()
        design = study.StudySites.from_parameters(sites)  # the same checks as every stage's sites
        return cls(config, train_config, images_per_site, seed, design.sites)


def train_or_restore(plan: DetectorPlan, root: Path, artifacts: Path, detector_file: Path, train: bool = True):
    """Train the detector on pseudo-masks (resuming an interrupted run), or restore it.

    The run's checkpoints and caches stay in ``artifacts``; the finished detector is written to
    (or restored from) ``detector_file``, the file the later stages read.

    Returns
    -------
    model, history (DataFrame), info (dict with ``n_images``, ``steps``, ``checkpoint``)
    """
    from bcfeat.detection.checkpoint import RESERVED_KEYS, read_detector_file, load_detector, save_detector
    from bcfeat.detection.inference import calibrate_mask_threshold
    from bcfeat.detection.training_data import pseudo_label, training_images
    from bcfeat.detection.training import train_detector

    sample = training_images(plan.sites, per_dataset=plan.images_per_site, root=root, seed=plan.seed)
    paths = sample.path.tolist()
    key = study.run_key(pd.DataFrame({"dataset": "", "relpath": paths, "label": ""}),
                        {"detector": plan.config, "train": plan.train_config})
    run_checkpoint = Path(artifacts) / "checkpoints" / f"detector_{key}.pt"
    handoff = Path(detector_file)
    if train:
        # Pseudo-labelled once: the same set trains the detector and calibrates its mask threshold.
        data = pseudo_label(paths, plan.config.image_size, cache_path=Path(artifacts) / "cache" / f"pseudo_masks_{key}.pt",
                            progress=False)
        model, history = train_detector(data, plan.config, plan.train_config, run_checkpoint, resume=True,
                                        progress=False, groups=sample.dataset.tolist())
        # The mask threshold that best reproduces the training pseudo-masks (no expert labels).
        threshold, calibration = calibrate_mask_threshold(model, data, seed=plan.seed)
        model.bcfeat_config = replace(model.bcfeat_config, mask_thresh=threshold)
        stored = read_detector_file(run_checkpoint)
        extra = {k: v for k, v in stored.items() if k not in RESERVED_KEYS}
        extra["mask_threshold_calibration"] = calibration.to_dict(orient="list")
        save_detector(handoff, model, extra)
    else:
        if not handoff.exists():
            raise FileNotFoundError(f"restore requested but no detector at {handoff}; run with train_detector=True")
        model = load_detector(handoff)
        stored = read_detector_file(handoff)
        history = stored.get("history", [])
        calibration = pd.DataFrame(stored.get("mask_threshold_calibration", {}))
    return model.eval(), pd.DataFrame(history), {"n_images": len(paths), "steps": plan.train_config.steps,
                                                  "checkpoint": str(handoff), "mask_threshold_calibration": calibration,
                                                  "mask_thresh": model.bcfeat_config.mask_thresh}


def history_figure(history: pd.DataFrame):
    """Training losses of the detector against the step."""
    import matplotlib.pyplot as plt

    terms = [c for c in ("loss", "loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness",
                         "loss_rpn_box_reg") if c in history.columns]
    fig, ax = plt.subplots(figsize=(6.5, 3))
    for term in terms:
        ax.plot(history["step"], history[term], label=term, lw=1)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.legend(fontsize=7, frameon=False, ncol=2)
    fig.tight_layout()
    return fig


@dataclass
class ExpertComparison:
    table: pd.DataFrame  # index (dataset, source): mean_iou, median_iou, detection_rate, ...
    per_image: pd.DataFrame  # one row per image and source


def evaluate_against_experts(model, root: Path | None = None, max_images: int | None = None,
                             holdout_every: int = 0) -> ExpertComparison:
    """Pseudo-masks and detector masks scored against the expert masks of both masked datasets.

    With ``holdout_every > 1`` the table also has ``held_out`` rows: only the images that
    :func:`bcfeat.detection.training_data.holdout_paths` keeps out of training.
    """
    from bcfeat.detection.inference import detect
    from bcfeat.detection.training_data import holdout_paths
    from bcfeat.detection.mask_metrics import MASKED_DATASETS, evaluate_mask_predictor, summarize
    from bcfeat.detection.pseudo_masks import segment_white_cell

    predictors = {
        "pseudo_mask": lambda images: [segment_white_cell(image) for image in images],
        "detector": lambda images: detect(model, images),
    }
    held = {ds: set(holdout_paths(ds, holdout_every, root=root)) for ds in MASKED_DATASETS} \
        if holdout_every > 1 else {}
    tables, per_image = [], []
    for source, predict in predictors.items():
        result = evaluate_mask_predictor(predict, data_root=root, max_images=max_images)
        rows = result.per_image.assign(source=source)
        tables.append(result.summary.assign(source=source, subset="all"))
        if held:
            rows["held_out"] = [p in held[d] for p, d in zip(rows["image_path"], rows["dataset"])]
            tables.append(summarize(rows[rows["held_out"]]).assign(source=source, subset="held_out"))
        per_image.append(rows)
    table = pd.concat(tables, ignore_index=True)
    if not held:
        table = table.drop(columns="subset")
    keys = ["dataset", "source"] + (["subset"] if held else [])
    return ExpertComparison(table.set_index(keys).sort_index(), pd.concat(per_image, ignore_index=True))


def detector_gain(table: pd.DataFrame, metric: str = "mean_iou") -> pd.Series:
    """Detector minus pseudo-mask ``metric`` per dataset (positive: the student beats its teacher).

    ``table`` is :attr:`ExpertComparison.table`; with ``subset`` rows only ``all`` is used.
    """
    if "subset" in table.index.names:
        table = table.xs("all", level="subset")
    by_source = table[metric].unstack("source")
    return (by_source["detector"] - by_source["pseudo_mask"]).rename(f"{metric}_gain")


def outline_examples(model, per_image: pd.DataFrame, root: Path, per_dataset: int = 3):
    """Best, median and worst detector images of each masked dataset with all three outlines."""
    from bcfeat.data import load_image
    from bcfeat.detection.inference import detect
    from bcfeat.study.figures import mask_outline_figure
    from bcfeat.detection.mask_metrics import expert_mask_pairs, load_expert_mask
    from bcfeat.detection.pseudo_masks import segment_white_cell

    detector_rows = per_image[per_image["source"] == "detector"]
    picks = []
    for dataset, rows in detector_rows.groupby("dataset", sort=True):
        rows = rows.sort_values("mask_iou", ascending=False).reset_index(drop=True)
        picks += [rows.iloc[i] for i in sorted({0, len(rows) // 2, len(rows) - 1})][:per_dataset]
    images = [load_image(row["image_path"]) for row in picks]
    detections = detect(model, images)
    pairs = pd.concat([expert_mask_pairs(d, root) for d in sorted(detector_rows["dataset"].unique())])
    mask_of = dict(zip(pairs["image_path"], pairs["mask_path"]))
    expert = [load_expert_mask(mask_of[row["image_path"]]) > 0 for row in picks]
    pseudo = [segment_white_cell(image).mask for image in images]
    titles = [f"{row['dataset']}\nIoU {row['mask_iou']:.2f}" for row in picks]
    return mask_outline_figure(images, {"expert": expert, "pseudo-mask": pseudo,
                                        "detector": [d.mask for d in detections]},
                               boxes=[d.box for d in detections], titles=titles)
