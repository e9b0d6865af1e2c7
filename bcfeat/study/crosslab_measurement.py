"""Measuring every cell of the study for the "Beyond the paper" chapter (``notebooks/07_crosslab.py``).

A *measurement* names how a cell is found and read: the mask source (the detector of
``01_detector`` or the label-free stain segmentation), for the stain segmentation where it samples
the cell's colours (``+nucdisk``: a centre disk sized from the nucleus, not the crop), which optical
density the nucleus is found in (``+rednuc``: the red channel's, where the nuclear dye absorbs), and
how the texture reads the optical density (``+normtex``). :func:`measure_cells` measures every sample once
per measurement and caches the features and canonical crops; the rest checks and summarises what
was measured.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from bcfeat.study import common as study
from bcfeat.crosslab.cell_crop import CropConfig
from bcfeat.crosslab.cell_features import feature_groups, feature_names, ruler_column

if TYPE_CHECKING:
    from bcfeat.crosslab.model import CrossLabConfig


@dataclass
class Measured:
    """Every cell's features ``(n, d)`` and canonical crop ``(n, S, S, 3)``, aligned with the samples."""

    features: np.ndarray
    crops: np.ndarray
    minutes: float
    detector_file: str | None


# A measurement is a mask source, optionally with the stain segmentation's centre disk scaled to the
# nucleus, the nucleus found in the red channel's optical density and the texture read on the
# nucleus-normalised optical density, in that order: "stain", "detector", "stain+normtex",
# "stain+nucdisk", "stain+nucdisk+normtex", "stain+nucdisk+rednuc+normtex", "detector+rednuc".
NORMALISED_TEXTURE = "+normtex"
NUCLEUS_DISK = "+nucdisk"
RED_NUCLEUS = "+rednuc"
# How far the centre disk reaches with "+nucdisk", in nucleus reaches (SegmentationConfig.inside_from_nucleus)
NUCLEUS_DISK_FACTOR = 1.2


def measurement_parts(name: str) -> tuple[str, str]:
    """A measurement's mask source and texture reading (``CrossLabConfig.texture_od``).

    >>> measurement_parts("stain"), measurement_parts("stain+normtex"), measurement_parts("stain+nucdisk+normtex")
    (('stain', 'raw'), ('stain', 'nucleus'), ('stain', 'nucleus'))
    """
    return _measurement(name)[:2]


def _measurement(name: str) -> tuple[str, str, float, str]:
    """``(mask source, texture reading, SegmentationConfig.inside_from_nucleus, nucleus reading)`` of a
    measurement name.

    >>> _measurement("stain+nucdisk+rednuc+normtex"), _measurement("detector")
    (('stain', 'nucleus', 1.2, 'red'), ('detector', 'raw', 0.0, 'total'))
    """
    from bcfeat.crosslab.model import MASK_SOURCES

    rest = str(name)
    texture_od = "raw"
    if rest.endswith(NORMALISED_TEXTURE):
        rest, texture_od = rest[:-len(NORMALISED_TEXTURE)], "nucleus"
    nucleus_od = "total"
    if rest.endswith(RED_NUCLEUS):
        rest, nucleus_od = rest[:-len(RED_NUCLEUS)], "red"
    inside_from_nucleus = 0.0
    if rest == "stain" + NUCLEUS_DISK:
        rest, inside_from_nucleus = "stain", NUCLEUS_DISK_FACTOR
    if rest not in MASK_SOURCES:
        valid = [m + d + n + t for m in MASK_SOURCES for d in ("", NUCLEUS_DISK) if m == "stain" or not d
                 for n in ("", RED_NUCLEUS) for t in ("", NORMALISED_TEXTURE)]
        raise ValueError(f"unknown measurement {name!r}; valid: {valid}")
    return rest, texture_od, inside_from_nucleus, nucleus_od


def measurement_config(measurement: str, n_workers: int = 1, crop: CropConfig | None = None) -> CrossLabConfig:
    """The :class:`~bcfeat.crosslab.model.CrossLabConfig` of one measurement: the model's defaults
    (its stain segmentation included) with the measurement's mask source, texture reading, nucleus
    reading and centre sample."""
    from bcfeat.crosslab.model import CrossLabConfig

    mask_source, texture_od, inside_from_nucleus, nucleus_od = _measurement(measurement)
    config = CrossLabConfig(mask_source=mask_source, crop=crop or CropConfig(), n_workers=n_workers,
                            texture_od=texture_od, nucleus_od=nucleus_od)
    return replace(config, segmentation=replace(config.segmentation, inside_from_nucleus=inside_from_nucleus))


def _model(detector_file: str | Path | None, measurement: str, n_workers: int, crop: CropConfig | None = None):
    """The :class:`~bcfeat.crosslab.model.CrossLabModel` (no classifier) that measures one measurement."""
    from bcfeat.crosslab.model import CrossLabModel
    from bcfeat.detection.checkpoint import load_detector

    config = measurement_config(measurement, n_workers, crop)
    detector = None
    if config.mask_source == "detector":
        if detector_file is None:
            raise ValueError("the detector mask source needs the detector file (01_detector's detector_file)")
        detector = load_detector(study.require_input(detector_file, "01_detector"))
    return CrossLabModel(config, detector)


def measurement_settings(config: CrossLabConfig) -> dict:
    """What a cell's features depend on besides the image and the detector file, for a cache key:
    mask source, crop, the stain segmentation's settings (with that mask source), the texture
    reading (when not raw: raw keys are those of the files measured before the choice existed),
    the nucleus reading (likewise, when not the total) and the features. Settings at their defaults that did not exist when earlier caches were
    written are left out (:func:`~bcfeat.detection.pseudo_masks.segmentation_key`)."""
    from bcfeat.detection.pseudo_masks import segmentation_key

    settings = {"mask_source": config.mask_source, "crop": asdict(config.crop), "features": feature_names()}
    if config.mask_source == "stain":
        settings["segmentation"] = segmentation_key(config.segmentation)
    if config.texture_od != "raw":
        settings["texture_od"] = config.texture_od
    if config.nucleus_od != "total":
        settings["nucleus_od"] = config.nucleus_od
    return settings


def measure_cells(samples: pd.DataFrame, artifacts: Path, measurement: str = "detector", n_workers: int = 2,
                  crop: CropConfig | None = None, cache_name: str = "crosslab",
                  detector_file: str | Path | None = None) -> Measured:
    """Features and canonical crops of every sample with one measurement (:func:`measurement_parts`),
    computed once per (images, detector, settings); the cache is kept under ``<artifacts>/cache``."""
    from bcfeat.data.images import SkippedImages
    from bcfeat.detection.feature_cache import cache_key, cached_arrays

    model = _model(detector_file, measurement, n_workers, crop)
    paths = samples["path"].tolist()
    detector_file = str(detector_file) if model.config.mask_source == "detector" else None
    key = cache_key(paths, detector_file, measurement_settings(model.config))

    def compute(chunk: list[str]) -> dict[str, np.ndarray]:
        start = time.perf_counter()
        skipped = SkippedImages()
        feats, kept, crops = model.measure(chunk, skipped, return_crops=True)
        if len(kept) != len(chunk):
            raise ValueError(f"{len(skipped)} study image(s) could not be measured: {skipped.summary()}")
        seconds = np.full(len(chunk), (time.perf_counter() - start) / len(chunk))
        return {"features": feats, "crops": crops, "seconds": seconds}

    arrays = cached_arrays(paths, compute, Path(artifacts) / "cache" / cache_name, key=key, chunk_size=512,
                           progress=False, description="cross-lab cells")
    return Measured(arrays["features"], arrays["crops"], float(arrays["seconds"].sum() / 60), detector_file)


def measure_all(samples: pd.DataFrame, artifacts: Path, measurements: Sequence[str], n_workers: int = 2,
                detector_file: str | Path | None = None) -> dict[str, Measured]:
    """:func:`measure_cells` with each measurement (the selection chooses between them); every name
    is checked before any work."""
    if not measurements:
        raise ValueError("mask_sources must name one or more measurements, got none")
    for m in measurements:
        measurement_parts(m)
    return {m: measure_cells(samples, artifacts, m, n_workers, detector_file=detector_file) for m in measurements}


def stain_masks_against_experts(measurements: Sequence[str], data_root: str | Path,
                                max_images: int | None = None) -> pd.DataFrame:
    """The stain segmentation of each stain measurement (its centre colour sample sized from the
    crop, or from the nucleus with ``+nucdisk``) against the expert masks of
    :data:`~bcfeat.detection.mask_metrics.MASKED_DATASETS`: one row per segmentation and dataset
    with ``segmentation, dataset, n_images, mean_iou, median_iou``. Datasets without images or
    expert masks under ``data_root`` are left out (no rows at all when none has them)."""
    from bcfeat.detection.mask_metrics import MASKED_DATASETS, evaluate_mask_predictor
    from bcfeat.detection.pseudo_masks import segment_white_cell

    segmentations = {}
    for name in measurements:
        config = measurement_config(name)
        if config.mask_source == "stain":
            nucleus_sized = config.segmentation.inside_from_nucleus > 0
            segmentations["stain" + (NUCLEUS_DISK if nucleus_sized else "")] = config.segmentation
    rows = []
    for label, cfg in segmentations.items():
        for dataset in MASKED_DATASETS:
            try:
                result = evaluate_mask_predictor(lambda images: [segment_white_cell(im, cfg) for im in images],
                                                 [dataset], data_root=data_root, max_images=max_images)
            except FileNotFoundError:
                continue
            iou = result.per_image["mask_iou"]
            rows.append({"segmentation": label, "dataset": dataset, "n_images": len(iou),
                         "mean_iou": float(iou.mean()), "median_iou": float(iou.median())})
    return pd.DataFrame(rows, columns=["segmentation", "dataset", "n_images", "mean_iou", "median_iou"])


def mask_area_change(measured: dict[str, Measured], samples: pd.DataFrame, a: str, b: str,
                     tolerance: float = 0.1) -> pd.DataFrame:
    """Per site: the share of cells whose mask area differs by more than ``tolerance`` (relative)
    between measurements ``a`` and ``b``, and the median area ratio ``b / a``, from the cells'
    ``log_cell_diameter_px`` (area goes with the diameter squared). Columns ``site, n_cells,
    changed_share, median_area_ratio``."""
    for name in (a, b):
        if name not in measured:
            raise ValueError(f"measurement {name!r} was not measured; measured: {sorted(measured)}")
    column = feature_names().index("log_cell_diameter_px")
    ratio = np.exp(2 * (measured[b].features[:, column] - measured[a].features[:, column]))
    rows = []
    for site, idx in samples.groupby("domain", sort=False).indices.items():
        r = ratio[idx]
        rows.append({"site": site, "n_cells": len(idx), "changed_share": float(np.mean(np.abs(r - 1) > tolerance)),
                     "median_area_ratio": float(np.median(r))})
    return pd.DataFrame(rows)


def ruler_table(X: np.ndarray, samples: pd.DataFrame) -> pd.DataFrame:
    """What the red-cell ruler reads on each site, without labels: per site the median white-cell
    diameter and the median red-cell diameter it found (pixels of the image), their median ratio
    (red over white, per cell) and the share of cells whose image gave no ruler (fewer than two
    single red cells). Red cells are about 7.5 µm and white cells about 8-20 µm, so a
    working ruler reads a ratio of roughly 0.35-0.9; far below that it measured something smaller
    than a red cell.

    >>> names = feature_names(); X = np.zeros((3, len(names)))
    >>> X[:, names.index("log_cell_diameter_px")] = np.log(100.0)
    >>> X[:, names.index("log_cell_over_red_cell")] = [np.log(2.0), np.log(20.0), np.nan]
    >>> ruler_table(X, pd.DataFrame({"domain": ["a", "a", "a"]})).round(2).to_dict("records")
    [{'site': 'a', 'n_cells': 3, 'cell_diameter_px': 100.0, 'red_cell_diameter_px': 27.5, 'red_over_white': 0.28, 'no_ruler_share': 0.33}]
    """
    names = feature_names()
    log_cell = X[:, names.index("log_cell_diameter_px")]
    ratio = np.exp(-X[:, names.index("log_cell_over_red_cell")])  # red over white, NaN without a ruler
    rows = []
    for site, idx in samples.groupby("domain", sort=False).indices.items():
        found = idx[np.isfinite(ratio[idx])]
        rows.append({"site": site, "n_cells": len(idx), "cell_diameter_px": float(np.exp(np.median(log_cell[idx]))),
                     "red_cell_diameter_px": float(np.median(np.exp(log_cell[found]) * ratio[found]))
                     if len(found) else float("nan"),
                     "red_over_white": float(np.median(ratio[found])) if len(found) else float("nan"),
                     "no_ruler_share": float(1 - len(found) / len(idx))})
    return pd.DataFrame(rows)


def ruler_display(table: pd.DataFrame) -> pd.DataFrame:
    """One measurement's rows of :func:`ruler_table` as the chapter shows them: by site, short names."""
    names = {"n_cells": "cells", "cell_diameter_px": "white cell (px)", "red_cell_diameter_px": "red cell (px)",
             "red_over_white": "red / white", "no_ruler_share": "no ruler"}
    return table.set_index("site")[list(names)].rename(columns=names)


RULER_WORKS: tuple[float, float] = (0.35, 0.9)
"""Red cell over white cell (:func:`ruler_table`'s median ratio) where the red-cell ruler measures red
cells: red cells are about 7.5 µm, white cells about 8-20 µm. Outside it, the ruler measured
something else (fragments between the red cells that a tight crop cuts off)."""


def ruler_check(table: pd.DataFrame, works: tuple[float, float] = RULER_WORKS) -> pd.DataFrame:
    """The rows of :func:`ruler_table` (any number of measurements and sites) whose ratio lies
    outside ``works`` or was not read: the development labs on which the ruler fails. It reads no
    label, so the selection may act on it: a ruler that fails on a development lab is left out of
    every candidate (:func:`ruler_drop`).

    >>> t = pd.DataFrame({"site": ["a", "b", "c"], "red_over_white": [0.48, 0.08, float("nan")]})
    >>> list(ruler_check(t)["site"])
    ['b', 'c']
    """
    low, high = works
    ratio = table["red_over_white"].astype(float)
    return table[~ratio.between(low, high)]


def ruler_drop(table: pd.DataFrame, works: tuple[float, float] = RULER_WORKS) -> tuple[int, ...]:
    """The feature columns every candidate leaves out because of :func:`ruler_check`: the ruler's
    column (``log_cell_over_red_cell``) when it fails on any row of ``table``, else none. A setting
    that leaves it out does not measure the ruler at all (:func:`bcfeat.crosslab.model.measured_parts`).

    >>> t = pd.DataFrame({"site": ["a", "b"], "red_over_white": [0.48, 0.6]})
    >>> ruler_drop(t), ruler_drop(t.assign(red_over_white=[0.48, 0.06]))
    ((), (1,))
    """
    return (ruler_column(),) if len(ruler_check(table, works)) else ()


def measured_table(measured: dict[str, Measured]) -> pd.DataFrame:
    """Cost of measuring every cell with each mask source."""
    return pd.DataFrame([{"mask_source": m, "n_cells": len(v.features), "cpu_minutes": v.minutes,
                          "cells_per_cpu_second": len(v.features) / max(v.minutes * 60, 1e-9)}
                         for m, v in measured.items()])


def feature_group_table(X: np.ndarray) -> pd.DataFrame:
    """Features per group, with examples and the share of cells where each group is finite."""
    names = feature_names()
    rows = []
    for group, idx in feature_groups().items():
        rows.append({"group": group, "n_features": len(idx), "examples": ", ".join(names[i] for i in idx[:4]),
                     "finite_share": float(np.isfinite(X[:, idx]).all(axis=1).mean())})
    return pd.DataFrame(rows)


__all__ = ["Measured", "NORMALISED_TEXTURE", "NUCLEUS_DISK", "NUCLEUS_DISK_FACTOR", "measurement_parts",
           "measurement_config", "measurement_settings", "measure_cells", "measure_all", "stain_masks_against_experts",
           "mask_area_change", "ruler_table", "ruler_display", "RULER_WORKS", "ruler_check", "ruler_drop", "measured_table", "feature_group_table"]
