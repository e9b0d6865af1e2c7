"""The deployed model file read as ``bcfeat classify`` reads a lab: each lab's cells in one call.

The chapter's calibration table reads the classifier of the study's first split (trained on the
training lab's training cells, so that the training lab's test cells are held out). A lab runs the
model file, whose classifier is trained on every labelled cell of the training lab, through
:func:`bcfeat.crosslab.folders.classify_cells`: the call's own temperature from the accuracy line,
the ``uncertain`` threshold, the warnings. This module scores exactly that on labs the file never
saw, from the cells the study has already measured with the file's own measurement (the same
features ``bcfeat classify`` would compute from the images; every cell counts as found, as in the
study's other tables).
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from bcfeat.crosslab.calibration import expected_calibration_error
from bcfeat.crosslab.mixes import call_scores

COLUMNS = ["lab", "n_cells", "balanced_accuracy", "accuracy", "mean_probability", "confidence_gap", "ece",
           "uncertain_share", "uncertain_catch", "estimated_accuracy", "n_warnings"]


def deployed_file_table(model, labs: dict[str, tuple[np.ndarray, np.ndarray]]) -> pd.DataFrame:
    """One row per lab (``name -> (X raw (n, d), y (n,))``, all its cells in one call) of
    :data:`COLUMNS`: the model file's classes and probabilities as ``bcfeat classify`` gives them
    (``model``: a loaded :class:`~bcfeat.crosslab.model.CrossLabModel` with a classifier), scored
    against the labels. ``confidence_gap`` is the mean probability of the predicted class minus the
    accuracy; ``uncertain_catch`` the share of the errors among the cells marked ``uncertain``;
    ``estimated_accuracy`` the accuracy line's estimate for the call (NaN where the file has none);
    ``n_warnings`` how many warnings the call gave (counted, not logged)."""
    from bcfeat.crosslab import folders

    if model.classifier is None:
        raise ValueError("the model holds no classifier")
    classes = [str(c) for c in model.classifier.classes_]
    rows = []
    for lab, (X, y) in labs.items():
        y = np.asarray(y).astype(str)
        unknown = sorted(set(y.tolist()) - set(classes))
        if unknown:
            raise ValueError(f"lab {lab}: labels {unknown} are not classes of the model file {classes}")
        warnings: list[str] = []
        estimate: dict = {}
        quiet = folders.logger.level
        folders.logger.setLevel(logging.ERROR)  # the lab's warnings are counted here, not logged
        try:
            table = folders.classify_cells(model, pd.Series([f"{lab}/{i}" for i in range(len(y))]),
                                           np.asarray(X, float), np.ones(len(y), bool), lab, warnings,
                                           estimate=estimate)
        finally:
            folders.logger.setLevel(quiet)
        predicted = table["predicted"].to_numpy().astype(str)
        proba = table[[f"p_{c}" for c in model.classifier.classes_]].to_numpy(float)
        correct = predicted == y
        uncertain = table["uncertain"].to_numpy(bool)
        mean_probability = float(table["probability"].mean())
        rows.append({"lab": lab, "n_cells": int(len(y)),
                     "balanced_accuracy": float(call_scores(y, predicted, classes)["balanced_accuracy"]),
                     "accuracy": float(correct.mean()), "mean_probability": mean_probability,
                     "confidence_gap": mean_probability - float(correct.mean()),
                     "ece": float(expected_calibration_error(proba, np.searchsorted(classes, y))),
                     "uncertain_share": float(uncertain.mean()),
                     "uncertain_catch": float(uncertain[~correct].mean()) if (~correct).any() else float("nan"),
                     "estimated_accuracy": float(estimate.get("estimated_accuracy", np.nan)),
                     "n_warnings": len(warnings)})
    return pd.DataFrame(rows, columns=COLUMNS)


def deployed_file_glue(table: pd.DataFrame) -> dict:
    """``crosslab_deployed_<lab>_<column>`` for every lab and score column."""
    out = {}
    for row in table.itertuples():
        for column in COLUMNS[1:]:
            value = getattr(row, column)
            out[f"crosslab_deployed_{row.lab}_{column}"] = int(value) if column in ("n_cells", "n_warnings") else float(value)
    return out


__all__ = ["COLUMNS", "deployed_file_table", "deployed_file_glue"]
