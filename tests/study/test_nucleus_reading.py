"""The nucleus lever of the cross-lab chapter: the chosen setting read with the nucleus found in every
dye's optical density and in the nuclear dye's (bcfeat.study.nucleus_reading)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bcfeat.crosslab.cell_features import feature_names
from bcfeat.data.splits import make_splits
from bcfeat.study import nucleus_reading as nr
from bcfeat.study.crosslab_measurement import Measured
from bcfeat.study.design import StudySites

CLASSES = ["basophil", "eosinophil", "lymphocyte", "monocyte", "neutrophil"]


def _two_readings(rng):
    """A source lab and an unseen lab. In the total reading the unseen lab's eosinophils have a
    basophil's nucleus share and lose their own marker (their granules read as nucleus); in the
    red reading they look as in the source."""
    d = len(feature_names())
    share = feature_names().index("nucleus_share")
    markers = [share, 5, 6, 7, 8]  # one column per class; the basophil's is the nucleus share
    y1 = np.repeat(CLASSES, 40)
    codes = pd.factorize(y1, sort=True)[0]

    def lab():
        X = rng.normal(size=(len(y1), d))
        X[np.arange(len(y1)), np.asarray(markers)[codes]] += 4.0
        return X

    source, unseen_red = lab(), lab()
    unseen_total = unseen_red.copy()
    eos = y1 == "eosinophil"
    unseen_total[eos, share] += 4.0
    unseen_total[eos, markers[1]] -= 4.0
    samples = pd.DataFrame({"domain": ["pbc_acevedo20"] * len(y1) + ["bccd_crops"] * len(y1),
                            "label": np.tile(y1, 2), "path": [f"c{i}.png" for i in range(2 * len(y1))]})
    plan = make_splits(samples["label"].to_numpy(), samples["domain"].to_numpy(), n_repetitions=1, test_size=0.2,
                       random_state=0)
    measured = {"stain+normtex": Measured(np.vstack([source, unseen_total]), np.zeros((0,)), 3.0, None),
                "stain+rednuc+normtex": Measured(np.vstack([source, unseen_red]), np.zeros((0,)), 3.5, None)}
    return samples, plan, measured


def test_the_nucleus_lever_scores_both_readings_on_every_site_and_counts_the_false_basophils():
    samples, plan, measured = _two_readings(np.random.default_rng(0))
    design = StudySites.from_parameters("pbc_acevedo20,bccd_crops", "pbc_acevedo20")
    setting = "logistic C=0.1 all stain+normtex cbr"
    table = nr.nucleus_reading_table(measured, samples, plan, setting, 0, design=design)
    assert list(table[["reading", "site"]].itertuples(index=False, name=None)) == [
        ("total", "pbc_acevedo20"), ("total", "bccd_crops"), ("red", "pbc_acevedo20"), ("red", "bccd_crops")]
    t = table.set_index(["reading", "site"])
    assert t.loc[("total", "bccd_crops"), "n_cells"] == 200  # every cell of the unseen lab
    assert t.loc[("total", "pbc_acevedo20"), "n_cells"] == 40  # the source's test split
    # the total reading calls the unseen lab's eosinophils basophils; the red one does not
    total, red = t.loc[("total", "bccd_crops")], t.loc[("red", "bccd_crops")]
    assert total["true_basophil"] == red["true_basophil"] == 40
    assert total["called_basophil"] > 55 and abs(red["called_basophil"] - 40) <= 8
    assert total["eosinophil_recall"] < 0.3 < 0.8 < red["eosinophil_recall"]
    assert total["eosinophil_nucleus_share"] > red["eosinophil_nucleus_share"] + 3
    assert red["balanced_accuracy"] > total["balanced_accuracy"] + 0.1
    assert t.loc[("red", "bccd_crops"), "cpu_minutes"] == 3.5
    glue = nr.nucleus_reading_glue(table, ["bccd_crops"])
    assert glue["crosslab_nucleus_red_mean_unseen"] == red["balanced_accuracy"]
    assert glue["crosslab_nucleus_total_excess_basophils"] == total["called_basophil"] - 40
    assert glue["crosslab_nucleus_red_minutes"] == 3.5
    assert glue["crosslab_nucleus_total_eosinophil_recall_bccd_crops"] == total["eosinophil_recall"]
    # the lever needs the red reading measured
    del measured["stain+rednuc+normtex"]
    with pytest.raises(KeyError, match="stain\\+rednuc\\+normtex"):
        nr.nucleus_reading_table(measured, samples, plan, setting, 0, design=design)
    with pytest.raises(ValueError, match="already reads the nucleus in red"):
        nr.red_nucleus_measurement("stain+rednuc+normtex")


def test_the_chapter_shows_the_nucleus_and_ruler_tables_by_reading_and_site_with_short_names():
    from bcfeat.study.crosslab_measurement import ruler_display

    samples, plan, measured = _two_readings(np.random.default_rng(0))
    design = StudySites.from_parameters("pbc_acevedo20,bccd_crops", "pbc_acevedo20")
    table = nr.nucleus_reading_table(measured, samples, plan, "logistic C=0.1 all stain+normtex cbr", 0, design=design)
    shown = nr.nucleus_reading_display(table)
    assert shown.index.names == ["reading", "site"] and "cpu_minutes" not in shown
    assert shown.loc[("red", "bccd_crops"), "called baso."] == table.iloc[3]["called_basophil"]
    ruler = pd.DataFrame({"site": ["a"], "n_cells": [3], "cell_diameter_px": [100.0], "red_cell_diameter_px": [50.0],
                          "red_over_white": [0.5], "no_ruler_share": [0.0], "measurement": ["stain"]})
    assert list(ruler_display(ruler).columns) == ["cells", "white cell (px)", "red cell (px)", "red / white", "no ruler"]
