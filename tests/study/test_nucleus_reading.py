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


def _masked_smear(root, dataset, stem, granules: bool, rng):
    """One synthetic smear of a masked dataset with its expert mask (255 nucleus, 128 cytoplasm): a
    pale cell of radius 30 around a dark nucleus of radius 14 on a light background; with
    ``granules``, the cytoplasm's outer ring is densely speckled with granules as dark as the nucleus."""
    from PIL import Image

    yy, xx = np.mgrid[:120, :120]
    r2 = (yy - 60) ** 2 + (xx - 60) ** 2
    cell, nucleus = r2 < 30 ** 2, r2 < 14 ** 2
    image = np.empty((120, 120, 3), np.uint8)
    image[:] = (236, 226, 218)
    image[cell] = (214, 186, 200)
    if granules:
        ring = cell & (r2 > 18 ** 2) & (rng.random((120, 120)) < 0.85)
        image[ring] = (92, 44, 128)
    image[nucleus] = (90, 40, 130)
    expert = np.where(nucleus, 255, np.where(cell, 128, 0)).astype(np.uint8)
    (root / "datasets" / dataset / "eosinophil").mkdir(parents=True, exist_ok=True)
    (root / "masks" / dataset).mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(root / "datasets" / dataset / "eosinophil" / f"{stem}.bmp")
    Image.fromarray(expert).save(root / "masks" / dataset / f"{stem}.png")


def test_the_nucleus_is_scored_against_the_experts_and_granules_as_dark_as_it_show_as_a_share_too_large(tmp_path):
    rng = np.random.default_rng(0)
    _masked_smear(tmp_path, "jtsc_zheng18", "001", granules=False, rng=rng)
    _masked_smear(tmp_path, "jtsc_zheng18", "002", granules=True, rng=rng)
    per_image = nr.nucleus_against_experts("stain+nucdisk+normtex", tmp_path / "datasets")
    assert list(per_image[["stem", "reading"]].itertuples(index=False, name=None)) == [
        ("001", "total"), ("001", "red"), ("002", "total"), ("002", "red")]
    p = per_image.set_index(["stem", "reading"])
    assert p["expert_share"].to_numpy() == pytest.approx(14 ** 2 / 30 ** 2, abs=0.02)
    assert (p["cell_iou"] > 0.85).all()  # the segmentation finds the cell either way
    clean, granular = p.loc[("001", "total")], p.loc[("002", "total")]
    assert clean["share"] == pytest.approx(clean["expert_share"], abs=0.05) and clean["nucleus_iou"] > 0.85
    # the granules join the nucleus with the experts' cell as well: the threshold, not the cell mask
    assert granular["share_expert_cell"] > granular["expert_share"] + 0.1 and granular["nucleus_iou_expert_cell"] < 0.7
    summary = nr.nucleus_against_experts_summary(per_image)
    s = summary.set_index(["dataset", "reading", "class_folder"])
    assert s.loc[("jtsc_zheng18", "total", "all"), "n_images"] == 2
    assert s.loc[("jtsc_zheng18", "total", "eosinophil"), "nucleus_iou"] == pytest.approx(p.xs("total", level=1)["nucleus_iou"].mean())
    glue = nr.nucleus_against_experts_glue(summary)
    assert glue["crosslab_nucexp_red_n_images_jtsc_zheng18_all"] == 2
    shown = nr.nucleus_against_experts_display(summary)
    assert shown.loc[("jtsc_zheng18", "all"), ("nucleus share", "experts")] == s.loc[("jtsc_zheng18", "total", "all"), "expert_share"]
    assert shown.loc[("jtsc_zheng18", "all"), ("nucleus IoU", "red")] == s.loc[("jtsc_zheng18", "red", "all"), "nucleus_iou"]
    # a dataset folder without masks gives no rows, nor does a detector's measurement (no stain segmentation)
    assert nr.nucleus_against_experts("stain+nucdisk+normtex", tmp_path / "elsewhere").empty
    none = nr.nucleus_against_experts("detector", tmp_path / "datasets")
    assert none.empty and list(none.columns) == ["dataset", "class_folder", "stem", "reading", *nr.EXPERT_COLUMNS]
    assert nr.nucleus_by_call(none, pd.DataFrame({"test_domain": [], "row": [], "y_true": [], "y_pred": []}),
                              pd.DataFrame({"path": []})).empty


def test_on_the_shared_sites_the_deployed_cell_mask_matches_the_experts(data_root):
    per_image = nr.nucleus_against_experts("stain+nucdisk+normtex", data_root, max_images=8)
    assert sorted(per_image["dataset"].unique()) == ["cellavision_zheng18", "jtsc_zheng18"]
    assert len(per_image) == 2 * 8 * 2
    assert per_image["cell_iou"].mean() > 0.8 and per_image["nucleus_iou_expert_cell"].mean() > 0.6


def test_the_nucleus_per_call_joins_the_experts_images_with_the_cells_called_basophils():
    per_image = pd.DataFrame({
        "dataset": ["jtsc_zheng18"] * 6, "class_folder": ["eosinophil"] * 4 + ["neutrophil"] * 2,
        "stem": ["001", "001", "002", "002", "003", "003"], "reading": ["total", "red"] * 3,
        "cell_iou": [0.9] * 6, "expert_share": [0.3, 0.3, 0.32, 0.32, 0.35, 0.35],
        "share": [0.5, 0.45, 0.3, 0.3, 0.34, 0.33], "nucleus_iou": [0.5, 0.55, 0.9, 0.9, 0.88, 0.87],
        "share_expert_cell": [0.52, 0.5, 0.31, 0.3, 0.35, 0.34], "nucleus_iou_expert_cell": [0.5] * 6})
    samples = pd.DataFrame({"path": ["/d/pbc/x.jpg", "/d/jtsc_zheng18/eosinophil/001.bmp",
                                     "/d/jtsc_zheng18/eosinophil/002.bmp", "/d/jtsc_zheng18/neutrophil/003.bmp",
                                     "/d/jtsc_zheng18/neutrophil/004.bmp"]})
    predictions = pd.DataFrame({"test_domain": ["jtsc_zheng18"] * 4, "row": [1, 2, 3, 4],
                                "y_true": ["eosinophil", "eosinophil", "neutrophil", "neutrophil"],
                                "y_pred": ["basophil", "eosinophil", "basophil", "neutrophil"]})
    table = nr.nucleus_by_call(per_image, predictions, samples, "basophil")
    t = table.set_index(["true_class", "called"])
    # the eosinophil called a basophil is the one whose nucleus took its granules in (total reading)
    assert t.loc[("eosinophil", True), "share"] == 0.5 and t.loc[("eosinophil", True), "nucleus_iou"] == 0.5
    assert t.loc[("eosinophil", False), "share"] == 0.3
    assert t.loc[("neutrophil", True), "n_cells"] == 1
    assert ("neutrophil", False) not in t.index  # 004 has no expert mask
    assert nr.nucleus_by_call(per_image, predictions, samples, "basophil", reading="red").set_index(
        ["true_class", "called"]).loc[("eosinophil", True), "share"] == 0.45
    glue = nr.nucleus_by_call_glue(table, "basophil")
    shown = nr.nucleus_by_call_display(table, "basophil")
    assert shown.index.names == ["dataset", "true class", "called basophil"]
    assert shown.loc[("jtsc_zheng18", "eosinophil", "yes"), ("nucleus share (median)", "ours")] == 0.5
    assert shown.loc[("jtsc_zheng18", "neutrophil", "yes"), ("", "cells")] == 1
    assert glue["crosslab_nucbycall_jtsc_zheng18_eosinophil_basophil_share"] == 0.5
    assert glue["crosslab_nucbycall_jtsc_zheng18_eosinophil_not_n_cells"] == 1
    assert nr.nucleus_by_call(per_image.iloc[:0], predictions, samples).empty
