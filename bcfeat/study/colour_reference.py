"""A colour reference within each photograph: the cell's optical densities read against the red cells.

Per-lab statistics (:mod:`bcfeat.crosslab.site_statistics`) take out what a lab's stain and camera
do to every cell alike. They cannot take out a stain that changes from one photograph to the next
within a lab, and where photographs follow the classes (the untouched lab's series) such a change
goes with the class. The red cells around a white cell take the same eosin and the same light, so
their optical density (:func:`bcfeat.crosslab.cell_crop.red_cell_od`) is a reference within the
photograph: :func:`bcfeat.crosslab.cell_features.relative_to_red_cells` subtracts it from every
optical-density level of the cell.

:func:`colour_reference_table` scores the chosen setting with and without the reference, trained
on the source's training split and read on the source's test split, every cell of each unseen site
and the untouched lab. The lever is reported, not chosen (the deployed setting keeps the features
the selection saw). A photograph without red-cell pixels (cells that fill their crop) takes its
lab's median reference.
"""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import balanced_accuracy_score, f1_score

from bcfeat.data.splits import SplitPlan
from bcfeat.study.crosslab_measurement import Measured, measurement_config
from bcfeat.study.crosslab_validation import fit_setting, real_labs
from bcfeat.study.design import StudySites
from bcfeat.study.nucleus_reading import with_measurement

#: The suffix of a measurement read against the red cells (a study lever, not a model setting).
RED_CELL_REFERENCE = "+redref"


def _red_cell_od_of(args: tuple[str, object]) -> np.ndarray:
    """One image's red-cell optical density around the white cell its stain segmentation finds."""
    from bcfeat.crosslab.cell_crop import background_colour, red_cell_od
    from bcfeat.data.images import read_image
    from bcfeat.detection.pseudo_masks import centred_ellipse, segment_white_cell

    path, segmentation = args
    image = read_image(path)
    mask = segment_white_cell(image, segmentation).mask
    if not mask.any():
        mask = centred_ellipse(*image.shape[:2])
    return red_cell_od(image, mask, background_colour(image, mask))


def red_cell_reference(paths: Sequence[str | Path], artifacts: Path, measurement: str, n_workers: int = 2,
                       cache_name: str = "red_cells") -> np.ndarray | None:
    """``(n, 3)`` the red cells' optical density around each image's white cell, found by the
    stain segmentation of ``measurement`` (the cell the features were read from); ``None`` for a
    detector's measurement. Cached under ``<artifacts>/cache/<cache_name>``."""
    from bcfeat.detection.feature_cache import cache_key, cached_arrays
    from bcfeat.detection.pseudo_masks import segmentation_key

    config = measurement_config(measurement)
    if config.mask_source != "stain":
        return None
    paths = [str(p) for p in paths]
    key = cache_key(paths, None, {"red_cell_od": segmentation_key(config.segmentation)})

    def compute(chunk: list[str]) -> dict[str, np.ndarray]:
        jobs = [(path, config.segmentation) for path in chunk]
        if n_workers > 1 and len(jobs) > 1:
            with ProcessPoolExecutor(n_workers) as pool:
                values = list(pool.map(_red_cell_od_of, jobs, chunksize=max(1, len(jobs) // (4 * n_workers))))
        else:
            values = [_red_cell_od_of(job) for job in jobs]
        return {"red_od": np.stack(values) if values else np.zeros((0, 3))}

    return cached_arrays(paths, compute, Path(artifacts) / "cache" / cache_name, key=key, chunk_size=512,
                         progress=False, description="red cells")["red_od"]


def fill_by_lab(red_od: np.ndarray, labs: Sequence[str]) -> np.ndarray:
    """``red_od`` with each NaN replaced by its lab's median for that channel (the lab's
    photographs without red cells take the lab's typical reference); a lab with none at all keeps NaN.

    >>> fill_by_lab(np.array([[0.1, 0.2, 0.3], [np.nan] * 3, [0.3, 0.4, 0.5]]), ["a", "a", "a"])[1].tolist()
    [0.2, 0.30000000000000004, 0.4]
    """
    out = np.array(red_od, dtype=np.float64)
    labs = np.asarray(labs)
    for lab in np.unique(labs):
        rows = labs == lab
        for c in range(out.shape[1]):
            column = out[rows, c]
            if np.isnan(column).any() and not np.isnan(column).all():
                column[np.isnan(column)] = np.nanmedian(column)
                out[rows, c] = column
    return out


def _against_red_cells(features: np.ndarray, red_od: np.ndarray, labs: Sequence[str]) -> np.ndarray:
    """Every optical-density level read against the photograph's red cells, NaN references filled
    per lab (:func:`fill_by_lab`)."""
    from bcfeat.crosslab.cell_features import relative_to_red_cells

    return relative_to_red_cells(features, fill_by_lab(red_od, labs))


#: The columns of :func:`colour_reference_table` (also of its empty table, when the lever is not run).
COLUMNS = ["reading", "lab", "n_cells", "balanced_accuracy", "macro_f1", "missing_reference"]


def colour_reference_table(measured: dict[str, Measured], samples: pd.DataFrame, plan: SplitPlan, setting: str,
                           seed: int, red_od: np.ndarray, *, design: StudySites,
                           untouched: tuple[str, np.ndarray, np.ndarray, np.ndarray] | None = None) -> pd.DataFrame:
    """One row per (reading, lab): the chosen ``setting`` trained on the source's training split
    with its features as measured (``background``: optical density against the slide's white point)
    and read against the red cells (``red cells``; ``red_od`` aligned with ``samples``), then read
    on the source's test split, every cell of each unseen site and, with ``untouched`` (name,
    features, labels, red-cell reference), that lab, each in one call. Columns: ``reading, lab,
    n_cells, balanced_accuracy, macro_f1, missing_reference`` (the share of the lab's photographs
    in which no red cells were found)."""
    from bcfeat.study.crosslab_settings import parse_setting

    measurement = parse_setting(setting)["source"]
    domains = samples["domain"].to_numpy()
    twin = measurement + RED_CELL_REFERENCE
    cells = measured[measurement]
    readings = {"background": measured, "red cells": {**measured, twin: Measured(
        _against_red_cells(cells.features, red_od, domains), cells.crops, cells.minutes, cells.detector_file)}}
    missing = pd.Series(np.isnan(red_od).any(axis=1)).groupby(domains).mean()
    rows = []
    for reading, cells in readings.items():
        name = measurement if reading == "background" else twin
        clf = fit_setting(cells, samples, plan, with_measurement(setting, name), seed, source=design.source)
        labs = {site: (X, y, float(missing.get(site, np.nan)))
                for site, (X, y) in real_labs(cells, samples, plan, name, design=design).items()}
        if untouched is not None:
            lab, X, y, lab_red = untouched
            X = X if reading == "background" else _against_red_cells(X, lab_red, [lab] * len(X))
            labs[lab] = (X, y, float(np.isnan(lab_red).any(axis=1).mean()))
        for lab, (X, y, miss) in labs.items():
            predicted = clf.predict(X)
            rows.append({"reading": reading, "lab": lab, "n_cells": len(y),
                         "balanced_accuracy": float(balanced_accuracy_score(y, predicted)),
                         "macro_f1": float(f1_score(y, predicted, average="macro", labels=clf.classes_, zero_division=0)),
                         "missing_reference": miss})
    return pd.DataFrame(rows, columns=COLUMNS)


def colour_reference_display(table: pd.DataFrame) -> pd.DataFrame:
    """The table as the chapter shows it: one row per lab, the two readings side by side."""
    if table.empty:
        return table
    labs = list(dict.fromkeys(table["lab"]))
    shown = table.pivot(index="lab", columns="reading", values=["balanced_accuracy", "macro_f1"]).reindex(labs)
    shown = shown.reindex(columns=pd.MultiIndex.from_product([["balanced_accuracy", "macro_f1"],
                                                              ["background", "red cells"]]))
    shown = shown.rename(columns={"balanced_accuracy": "balanced accuracy", "macro_f1": "macro-F1"}, level=0)
    shown[("", "no red cells found")] = table[table["reading"] == "background"].set_index("lab")[
        "missing_reference"].reindex(labs).to_numpy()
    return shown


def colour_reference_glue(table: pd.DataFrame) -> dict:
    """``crosslab_redref_<background|red>_<column>_<lab>`` for every row, and
    ``crosslab_redref_missing_<lab>``."""
    out = {}
    for row in table.itertuples():
        tag = "background" if row.reading == "background" else "red"
        out[f"crosslab_redref_{tag}_balanced_accuracy_{row.lab}"] = row.balanced_accuracy
        out[f"crosslab_redref_{tag}_macro_f1_{row.lab}"] = row.macro_f1
        if tag == "background":
            out[f"crosslab_redref_missing_{row.lab}"] = float(row.missing_reference)
    return out


__all__ = ["RED_CELL_REFERENCE", "COLUMNS", "red_cell_reference", "fill_by_lab", "colour_reference_table",
           "colour_reference_display", "colour_reference_glue"]
