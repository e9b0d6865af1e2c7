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
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import balanced_accuracy_score, f1_score

from bcfeat.crosslab.cell_features import feature_names
from bcfeat.data.splits import SplitPlan
from bcfeat.study.crosslab_measurement import NORMALISED_TEXTURE, RED_NUCLEUS, Measured
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


__all__ = ["red_nucleus_measurement", "with_measurement", "nucleus_reading_table", "nucleus_reading_display",
           "nucleus_reading_glue"]
