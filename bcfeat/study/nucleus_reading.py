"""Where the false basophils come from: the nucleus read in every dye's optical density or in the nuclear dye's.

The deployed classifier's largest error on the given unseen sites is cells called basophils
(eosinophils and neutrophils above all). Those cells' nucleus share sits far above the training
lab's for their class: the nucleus, found as the darker class of the *total* optical density
inside the cell (:func:`bcfeat.crosslab.cell_features.cell_features`), takes in granules that a
darker stain brings near the nucleus's density, and a cell that is mostly "nucleus" is what a
basophil looks like. The nuclear dye (azure, haematoxylin) absorbs red light and eosin hardly does,
so a nucleus found in the red channel's optical density (``+rednuc``,
:data:`bcfeat.crosslab.cell_features.NUCLEUS_OD`) should leave eosinophil granules out.

:func:`nucleus_reading_table` scores the chosen setting with each reading on the source's test
split and every cell of each unseen site: balanced accuracy and macro-F1 over all cells in one
call, the cells called basophils against the site's true basophils, the eosinophils' recall and
their median nucleus share. The lever is reported, not chosen: the deployed setting keeps the
reading the selection saw.

:func:`nucleus_against_experts` asks which part of the reading goes wrong, on the two sites whose
experts drew the nucleus as well as the cell (Zheng-18's masks: 255 nucleus, 128 cytoplasm): the
stain segmentation's cell against the experts' cell, and the nucleus found in it (and in the
experts' cell) against the experts' nucleus. A cell mask that leaves pale cytoplasm out makes the
nucleus share large with a right nucleus; granules taken into the nucleus make it large with a
right cell mask.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import balanced_accuracy_score, f1_score

from bcfeat.crosslab.cell_crop import canonical_crop, canvas_mask
from bcfeat.crosslab.cell_features import NUCLEUS_OD, feature_names, nucleus_mask
from bcfeat.data.splits import SplitPlan
from bcfeat.study.crosslab_measurement import NORMALISED_TEXTURE, RED_NUCLEUS, Measured, measurement_config
from bcfeat.study.crosslab_settings import parse_setting
from bcfeat.study.crosslab_validation import fit_setting, real_labs
from bcfeat.study.design import StudySites

def red_nucleus_measurement(measurement: str) -> str:
    """The same measurement with the nucleus found in the red channel's optical density.

    >>> red_nucleus_measurement("stain+nucdisk+normtex"), red_nucleus_measurement("detector")
    ('stain+nucdisk+rednuc+normtex', 'detector+rednuc')
    """
    if RED_NUCLEUS in measurement:
        raise ValueError(f"{measurement!r} already reads the nucleus in red")
    if measurement.endswith(NORMALISED_TEXTURE):
        return measurement[:-len(NORMALISED_TEXTURE)] + RED_NUCLEUS + NORMALISED_TEXTURE
    return measurement + RED_NUCLEUS


def with_measurement(setting: str, measurement: str) -> str:
    """A setting name with its measurement replaced.

    >>> with_measurement("logistic C=0.03 no_fine_texture stain+normtex cbr", "stain+rednuc+normtex")
    'logistic C=0.03 no_fine_texture stain+rednuc+normtex cbr'
    """
    parts = setting.split()
    parse_setting(setting)  # a valid name
    parts[3] = measurement
    return " ".join(parts)


def nucleus_reading_table(measured: dict[str, Measured], samples: pd.DataFrame, plan: SplitPlan, setting: str,
                          seed: int, *, design: StudySites) -> pd.DataFrame:
    """One row per (nucleus reading, site): the chosen ``setting`` trained on the source's training
    split with the measurement it names (``total``) and with that measurement's red-nucleus twin
    (``red``, which ``measured`` must hold), then read on the source's test split and on every
    cell of each unseen site in one call. Columns: ``reading``, ``site``, ``n_cells``,
    ``balanced_accuracy``, ``macro_f1``, ``called_basophil``, ``true_basophil``,
    ``eosinophil_recall``, ``eosinophil_nucleus_share`` (median; NaN without eosinophils) and
    ``cpu_minutes`` (measuring every cell of the study that way)."""
    total = parse_setting(setting)["source"]
    share = feature_names().index("nucleus_share")
    rows = []
    for reading, measurement in (("total", total), ("red", red_nucleus_measurement(total))):
        if measurement not in measured:
            raise KeyError(f"the nucleus lever needs the cells measured as {measurement!r}")
        clf = fit_setting(measured, samples, plan, with_measurement(setting, measurement), seed, source=design.source)
        for site, (X, y) in real_labs(measured, samples, plan, measurement, design=design).items():
            y = np.asarray(y)
            predicted = clf.predict(X)
            eosinophils = y == "eosinophil"
            rows.append({
                "reading": reading, "site": site, "n_cells": len(y),
                "balanced_accuracy": float(balanced_accuracy_score(y, predicted)),
                "macro_f1": float(f1_score(y, predicted, average="macro", labels=clf.classes_, zero_division=0)),
                "called_basophil": int(np.sum(predicted == "basophil")), "true_basophil": int(np.sum(y == "basophil")),
                "eosinophil_recall": float(np.mean(predicted[eosinophils] == "eosinophil")) if eosinophils.any()
                else float("nan"),
                "eosinophil_nucleus_share": float(np.median(X[eosinophils, share])) if eosinophils.any()
                else float("nan"),
                "cpu_minutes": float(measured[measurement].minutes)})
    return pd.DataFrame(rows)


def nucleus_reading_display(table: pd.DataFrame) -> pd.DataFrame:
    """The table as the chapter shows it: indexed by reading and site, short column names, no minutes."""
    names = {"n_cells": "cells", "balanced_accuracy": "bal. acc.", "macro_f1": "macro-F1",
             "called_basophil": "called baso.", "true_basophil": "baso.", "eosinophil_recall": "eos. recall",
             "eosinophil_nucleus_share": "eos. nucleus share"}
    return table.set_index(["reading", "site"])[list(names)].rename(columns=names)


def nucleus_reading_glue(table: pd.DataFrame, unseen: list[str]) -> dict:
    """``crosslab_nucleus_<reading>_<column>_<site>`` for every row, and per reading the mean balanced
    accuracy and macro-F1 over the unseen sites and the excess basophil calls summed over them."""
    out = {}
    for row in table.itertuples():
        for column in ("balanced_accuracy", "macro_f1", "called_basophil", "true_basophil", "eosinophil_recall",
                       "eosinophil_nucleus_share"):
            out[f"crosslab_nucleus_{row.reading}_{column}_{row.site}"] = getattr(row, column)
    for reading, part in table[table["site"].isin(unseen)].groupby("reading"):
        out[f"crosslab_nucleus_{reading}_mean_unseen"] = float(part["balanced_accuracy"].mean())
        out[f"crosslab_nucleus_{reading}_macro_f1_mean_unseen"] = float(part["macro_f1"].mean())
        out[f"crosslab_nucleus_{reading}_excess_basophils"] = int((part["called_basophil"] - part["true_basophil"]).sum())
        out[f"crosslab_nucleus_{reading}_minutes"] = float(part["cpu_minutes"].iloc[0])
    return out


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return float(np.count_nonzero(a & b) / union) if union else float("nan")


def _share(nucleus: np.ndarray, cell: np.ndarray) -> float:
    return float(np.count_nonzero(nucleus & cell) / max(np.count_nonzero(cell), 1))


EXPERT_COLUMNS = ("cell_iou", "expert_share", "share", "nucleus_iou", "share_expert_cell", "nucleus_iou_expert_cell")
"""What :func:`nucleus_against_experts` measures per image and nucleus reading."""


def nucleus_against_experts(measurement: str, data_root: str | Path, max_images: int | None = None,
                            masks_root: str | Path | None = None) -> pd.DataFrame:
    """The cell and nucleus that a stain ``measurement`` reads, against the experts' masks.

    For every image of :data:`~bcfeat.detection.mask_metrics.MASKED_DATASETS` under ``data_root``
    that has an expert mask (the first ``max_images`` per dataset), and every nucleus reading of
    :data:`~bcfeat.crosslab.cell_features.NUCLEUS_OD`, one row: ``dataset, class_folder, stem,
    reading``; ``cell_iou``, the measurement's stain segmentation against the experts' whole cell
    (image pixels); ``expert_share``, the experts' nucleus over their cell; ``share`` and
    ``nucleus_iou``, the nucleus that :func:`~bcfeat.crosslab.cell_features.cell_features` reads
    on the canonical crop cut around the segmentation, its share of the crop's cell and its IoU
    with the experts' nucleus on the same canvas; ``share_expert_cell`` and
    ``nucleus_iou_expert_cell``, the same with the crop cut around the experts' cell (the nucleus
    threshold alone, the cell mask taken as right). Datasets without images or masks under
    ``data_root``, and a measurement without a stain segmentation (the detector's), give no rows.
    """
    from bcfeat.data.images import read_image
    from bcfeat.detection.mask_metrics import MASKED_DATASETS, expert_mask_pairs, load_expert_mask, load_expert_nucleus
    from bcfeat.detection.pseudo_masks import centred_ellipse, segment_white_cell

    config = measurement_config(measurement)
    columns = ["dataset", "class_folder", "stem", "reading", *EXPERT_COLUMNS]
    if config.mask_source != "stain":
        return pd.DataFrame(columns=columns)
    rows = []
    for dataset in MASKED_DATASETS:
        try:
            pairs = expert_mask_pairs(dataset, data_root, masks_root)
        except FileNotFoundError:
            continue
        for pair in pairs.head(max_images).itertuples() if max_images is not None else pairs.itertuples():
            image = read_image(pair.image_path)
            expert_cell, expert_nucleus = load_expert_mask(pair.mask_path), load_expert_nucleus(pair.mask_path)
            if expert_cell.shape != image.shape[:2] or not expert_cell.any():
                raise ValueError(f"expert mask {pair.mask_path} does not fit its image {pair.image_path}")
            cell = segment_white_cell(image, config.segmentation).mask
            cell = cell if cell.any() else centred_ellipse(*image.shape[:2])
            crops = {"ours": canonical_crop(image, cell, config.crop, ruler=False),
                     "expert": canonical_crop(image, expert_cell, config.crop, ruler=False)}
            truth = {"ours": canvas_mask(expert_nucleus, cell, config.crop),
                     "expert": canvas_mask(expert_nucleus, expert_cell, config.crop)}
            image_row = {"dataset": dataset, "class_folder": pair.class_folder, "stem": pair.stem,
                         "cell_iou": _iou(cell, expert_cell), "expert_share": _share(expert_nucleus, expert_cell)}
            for reading in NUCLEUS_OD:
                found = {k: nucleus_mask(crop, reading) for k, crop in crops.items()}
                rows.append({**image_row, "reading": reading,
                             "share": _share(found["ours"], crops["ours"].mask),
                             "nucleus_iou": _iou(found["ours"], truth["ours"]),
                             "share_expert_cell": _share(found["expert"], crops["expert"].mask),
                             "nucleus_iou_expert_cell": _iou(found["expert"], truth["expert"])})
    return pd.DataFrame(rows, columns=columns)


def nucleus_against_experts_summary(per_image: pd.DataFrame) -> pd.DataFrame:
    """Per dataset, class (and ``"all"``) and reading: ``n_images``, the mean ``cell_iou``, the median
    ``expert_share``, ``share`` and ``share_expert_cell``, and the mean ``nucleus_iou`` and
    ``nucleus_iou_expert_cell``."""
    agg = {"n_images": ("stem", "size"), "cell_iou": ("cell_iou", "mean"), "expert_share": ("expert_share", "median"),
           "share": ("share", "median"), "share_expert_cell": ("share_expert_cell", "median"),
           "nucleus_iou": ("nucleus_iou", "mean"), "nucleus_iou_expert_cell": ("nucleus_iou_expert_cell", "mean")}
    every = per_image.assign(class_folder="all")
    both = pd.concat([per_image, every], ignore_index=True)
    return both.groupby(["dataset", "reading", "class_folder"], sort=False).agg(**agg).reset_index()


def nucleus_by_call(per_image: pd.DataFrame, predictions: pd.DataFrame, samples: pd.DataFrame,
                    called: str = "basophil", reading: str = "total") -> pd.DataFrame:
    """Are the cells called ``called`` the ones whose nucleus goes wrong? ``per_image`` (from
    :func:`nucleus_against_experts`, one ``reading``) joined, by dataset and file stem, with a
    classifier's per-cell ``predictions`` (``test_domain, row, y_true, y_pred``; ``row`` indexes
    ``samples``, whose ``path`` names the image). One row per dataset, true class and whether the
    cell was called ``called``: ``n_cells``, the median ``expert_share``, ``share`` and
    ``share_expert_cell``, and the mean ``nucleus_iou`` and ``cell_iou``. Expert-masked images that
    the predictions do not cover are left out."""
    columns = ["dataset", "true_class", "called", "n_cells", "expert_share", "share", "share_expert_cell",
               "nucleus_iou", "cell_iou"]
    per_image = per_image[per_image["reading"] == reading]
    if per_image.empty:
        return pd.DataFrame(columns=columns)
    paths = samples["path"].to_numpy()
    calls = pd.DataFrame({"dataset": predictions["test_domain"].to_numpy(),
                          "stem": [Path(paths[r]).stem for r in predictions["row"]],
                          "true_class": predictions["y_true"].to_numpy(),
                          "called": predictions["y_pred"].to_numpy() == called})
    joined = per_image.merge(calls, on=["dataset", "stem"], validate="one_to_one")
    if joined.empty:
        return pd.DataFrame(columns=columns)
    return joined.groupby(["dataset", "true_class", "called"], sort=False).agg(
        n_cells=("stem", "size"), expert_share=("expert_share", "median"), share=("share", "median"),
        share_expert_cell=("share_expert_cell", "median"), nucleus_iou=("nucleus_iou", "mean"),
        cell_iou=("cell_iou", "mean")).reset_index()[columns]


def nucleus_by_call_glue(table: pd.DataFrame, called: str = "basophil") -> dict:
    """``crosslab_nucbycall_<dataset>_<true class>_<called|not>_<column>`` for every row and column of
    :func:`nucleus_by_call`'s table (``called`` the class it was built for)."""
    out = {}
    for row in table.itertuples():
        tag = f"{row.dataset}_{row.true_class}_{called if row.called else 'not'}"
        for column in ("n_cells", "expert_share", "share", "share_expert_cell", "nucleus_iou", "cell_iou"):
            value = getattr(row, column)
            out[f"crosslab_nucbycall_{tag}_{column}"] = int(value) if column == "n_cells" else float(value)
    return out


def nucleus_against_experts_display(summary: pd.DataFrame) -> pd.DataFrame:
    """The summary as the chapter shows it: one row per dataset and class, and columns under three
    headings: the images and the cell mask's IoU; the share of the cell that is nucleus (the
    experts', ours, ours inside the experts' cell outline); the nucleus IoU (in our cell, in the
    experts' cell, and for the nucleus read in the red channel, whose share comes last)."""
    total = summary[summary["reading"] == "total"].set_index(["dataset", "class_folder"])
    red = summary[summary["reading"] == "red"].set_index(["dataset", "class_folder"])
    columns = {
        ("cell", "images"): total["n_images"], ("cell", "IoU"): total["cell_iou"],
        ("nucleus share", "experts"): total["expert_share"], ("nucleus share", "ours"): total["share"],
        ("nucleus share", "ours, experts' cell"): total["share_expert_cell"],
        ("nucleus share", "red"): red["share"],
        ("nucleus IoU", "ours"): total["nucleus_iou"],
        ("nucleus IoU", "ours, experts' cell"): total["nucleus_iou_expert_cell"],
        ("nucleus IoU", "red"): red["nucleus_iou"]}
    table = pd.DataFrame(columns)  # tuple keys: two-level column headings
    table.index.names = ["dataset", "class"]
    return table


def nucleus_by_call_display(table: pd.DataFrame, called: str = "basophil") -> pd.DataFrame:
    """:func:`nucleus_by_call`'s table as the chapter shows it: rows by dataset, true class and
    whether the cell was called ``called``; columns under readable headings."""
    shown = table.assign(called=table["called"].map({True: "yes", False: "no"}))
    shown = shown.set_index(["dataset", "true_class", "called"])
    shown.index.names = ["dataset", "true class", f"called {called}"]
    columns = {("", "cells"): shown["n_cells"],
               ("nucleus share (median)", "experts"): shown["expert_share"],
               ("nucleus share (median)", "ours"): shown["share"],
               ("nucleus share (median)", "ours, experts' cell"): shown["share_expert_cell"],
               ("IoU (mean)", "nucleus"): shown["nucleus_iou"], ("IoU (mean)", "cell"): shown["cell_iou"]}
    return pd.DataFrame(columns)  # tuple keys: two-level column headings


def nucleus_against_experts_glue(summary: pd.DataFrame) -> dict:
    """``crosslab_nucexp_<reading>_<column>_<dataset>_<class>`` for every row and column of the summary."""
    out = {}
    for row in summary.itertuples():
        for column in ("n_images", "cell_iou", "expert_share", "share", "share_expert_cell", "nucleus_iou",
                       "nucleus_iou_expert_cell"):
            value = getattr(row, column)
            out[f"crosslab_nucexp_{row.reading}_{column}_{row.dataset}_{row.class_folder}"] = (
                int(value) if column == "n_images" else float(value))
    return out


__all__ = ["red_nucleus_measurement", "with_measurement", "nucleus_reading_table", "nucleus_reading_display",
           "nucleus_reading_glue", "EXPERT_COLUMNS", "nucleus_against_experts", "nucleus_against_experts_summary",
           "nucleus_by_call", "nucleus_by_call_glue", "nucleus_by_call_display", "nucleus_against_experts_display", "nucleus_against_experts_glue"]
