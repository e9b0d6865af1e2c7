"""A colour reference within each photograph: the cell's optical densities read against the red cells
(bcfeat.crosslab.cell_crop.red_cell_od, bcfeat.crosslab.cell_features.relative_to_red_cells,
bcfeat.study.colour_reference)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bcfeat.crosslab.cell_crop import CropConfig, canonical_crop, red_cell_od
from bcfeat.crosslab.cell_features import cell_features, feature_names, red_cell_referenced_columns, relative_to_red_cells
from bcfeat.data.splits import make_splits
from bcfeat.study import colour_reference as cr
from bcfeat.study.crosslab_measurement import Measured
from bcfeat.study.design import StudySites

CLASSES = ["basophil", "eosinophil", "lymphocyte", "monocyte", "neutrophil"]
BACKGROUND = np.array([240.0, 235.0, 230.0])


def _photograph(extra_od=(0.0, 0.0, 0.0), seed=0):
    """A smear photograph built from optical densities: red cells around a white cell (nucleus in a
    cytoplasm), every stained pixel's density raised by ``extra_od`` (a stronger stain). Returns the
    image and the white cell's mask."""
    rng = np.random.default_rng(seed)
    od = np.zeros((140, 140, 3))
    yy, xx = np.mgrid[:140, :140]
    for cy, cx in [(20, 20), (20, 70), (20, 120), (120, 20), (120, 70), (120, 120), (70, 15), (70, 125)]:
        od[(yy - cy) ** 2 + (xx - cx) ** 2 < 13 ** 2] = (0.10, 0.35, 0.20)
    cell = (yy - 70) ** 2 + (xx - 70) ** 2 < 32 ** 2
    od[cell] = (0.25, 0.30, 0.22)
    od[(yy - 70) ** 2 + (xx - 66) ** 2 < 15 ** 2] = (0.70, 0.85, 0.45)
    stained = od.sum(axis=2) > 0
    od[stained] += np.asarray(extra_od)
    od += rng.normal(0, 0.005, od.shape)
    image = np.clip(np.rint(BACKGROUND * 10 ** -od), 0, 255).astype(np.uint8)
    return image, cell


def test_the_red_cells_density_is_read_around_the_white_cell_and_is_nan_without_red_cells():
    image, cell = _photograph()
    od = red_cell_od(image, cell, BACKGROUND)
    assert od == pytest.approx([0.10, 0.35, 0.20], abs=0.02)
    blank = np.full_like(image, 235)
    blank[cell] = image[cell]
    assert np.isnan(red_cell_od(blank, cell, BACKGROUND)).all()  # slide only around the cell
    assert np.isnan(red_cell_od(image, np.ones(cell.shape, bool), BACKGROUND)).all()  # nothing outside


def test_read_against_the_red_cells_a_stronger_stain_no_longer_moves_the_cells_density():
    cfg = CropConfig(size=64, cell_diameter=44)
    levels = list(red_cell_referenced_columns())
    raw, referenced = [], []
    for extra in [(0.0, 0.0, 0.0), (0.08, 0.12, 0.06)]:
        image, cell = _photograph(extra)
        crop = canonical_crop(image, cell, cfg, ruler=False)
        features = cell_features(crop)[None]
        raw.append(features[0, levels])
        referenced.append(relative_to_red_cells(features, red_cell_od(image, cell, crop.background)[None])[0, levels])
    moved_raw = np.abs(raw[1] - raw[0])
    moved_referenced = np.abs(referenced[1] - referenced[0])
    assert moved_raw.min() > 0.05  # every level moves with the stain ...
    # ... and hardly at all against the red cells (the cell's edge, where pixels mix with the slide, least)
    assert np.median(moved_referenced) < 0.05 * np.median(moved_raw)
    assert moved_referenced.max() < 0.3 * moved_raw.max()
    names = feature_names()
    assert {names[c] for c in levels} >= {"nucleus_od_r", "cytoplasm_od_sum_q50", "ring0_od_sum"}
    assert not {names[c] for c in levels} & {"nucleus_od_r_std", "cell_chroma_b", "contrast_od_sum"}
    with pytest.raises(ValueError, match="red-cell"):
        relative_to_red_cells(np.zeros((2, len(names))), np.zeros((3, 3)))


def _labs(rng):
    """A source lab and an unseen lab whose photographs follow the classes: each class's photographs
    are stained more strongly by a class-specific amount, which moves every optical-density level of
    its cells and its red cells alike."""
    names = feature_names()
    d = len(names)
    levels = red_cell_referenced_columns()
    y1 = np.repeat(CLASSES, 40)
    codes = pd.factorize(y1, sort=True)[0]
    od_columns = [c for c, ch in levels.items() if ch is not None]

    def lab(stain_by_class):
        X = rng.normal(size=(len(y1), d))
        X[np.arange(len(y1)), np.asarray(od_columns[:5])[codes]] += 4.0  # each class's marker is an OD level
        red = np.tile([0.1, 0.3, 0.2], (len(y1), 1)) + rng.normal(0, 0.01, (len(y1), 3))
        extra = np.asarray(stain_by_class)[codes]
        red += extra[:, None]
        for c, ch in levels.items():
            X[:, c] += 3 * extra if ch is None else extra
        return X, red

    source, red_source = lab([0.0] * 5)
    unseen, red_unseen = lab([0.0, 4.0, -4.0, 4.0, -4.0])
    red_unseen[:3] = np.nan  # photographs without red cells take their lab's median
    samples = pd.DataFrame({"domain": ["pbc_acevedo20"] * len(y1) + ["bccd_crops"] * len(y1),
                            "label": np.tile(y1, 2), "path": [f"c{i}.png" for i in range(2 * len(y1))]})
    plan = make_splits(samples["label"].to_numpy(), samples["domain"].to_numpy(), n_repetitions=1, test_size=0.2,
                       random_state=0)
    measured = {"stain+normtex": Measured(np.vstack([source, unseen]), np.zeros((0,)), 3.0, None)}
    return samples, plan, measured, np.vstack([red_source, red_unseen]), y1


def test_the_lever_scores_both_readings_on_every_lab_and_the_reference_mends_a_stain_that_follows_the_class():
    rng = np.random.default_rng(0)
    samples, plan, measured, red, y1 = _labs(rng)
    design = StudySites.from_parameters("pbc_acevedo20,bccd_crops", "pbc_acevedo20")
    setting = "logistic C=0.1 all stain+normtex cbr"
    untouched = ("chula", measured["stain+normtex"].features[len(y1):], y1, red[len(y1):])
    table = cr.colour_reference_table(measured, samples, plan, setting, 0, red, design=design, untouched=untouched)
    assert list(table[["reading", "lab"]].itertuples(index=False, name=None)) == [
        ("background", "pbc_acevedo20"), ("background", "bccd_crops"), ("background", "chula"),
        ("red cells", "pbc_acevedo20"), ("red cells", "bccd_crops"), ("red cells", "chula")]
    t = table.set_index(["reading", "lab"])
    assert t.loc[("background", "bccd_crops"), "n_cells"] == 200 and t.loc[("red cells", "pbc_acevedo20"), "n_cells"] == 40
    assert t.loc[("background", "bccd_crops"), "missing_reference"] == pytest.approx(3 / 200)
    assert t.loc[("red cells", "bccd_crops"), "balanced_accuracy"] > t.loc[("background", "bccd_crops"), "balanced_accuracy"] + 0.2
    assert t.loc[("red cells", "chula"), "balanced_accuracy"] == t.loc[("red cells", "bccd_crops"), "balanced_accuracy"]
    assert t.loc[("red cells", "pbc_acevedo20"), "balanced_accuracy"] > 0.9
    glue = cr.colour_reference_glue(table)
    assert glue["crosslab_redref_red_balanced_accuracy_chula"] == t.loc[("red cells", "chula"), "balanced_accuracy"]
    assert glue["crosslab_redref_missing_bccd_crops"] == pytest.approx(3 / 200)
    shown = cr.colour_reference_display(table)
    assert list(shown.index) == ["pbc_acevedo20", "bccd_crops", "chula"]
    assert shown.loc["chula", ("balanced accuracy", "red cells")] == t.loc[("red cells", "chula"), "balanced_accuracy"]


def test_the_reference_needs_the_stain_segmentation_and_is_cached(tmp_path, data_root):
    paths = sorted((data_root / "cellavision_zheng18").rglob("*.bmp"))[:6]
    assert cr.red_cell_reference(paths, tmp_path, "detector") is None
    first = cr.red_cell_reference(paths, tmp_path, "stain+nucdisk+normtex", n_workers=1)
    assert first.shape == (6, 3) and np.isfinite(first).all()
    assert (first[:, 1] > first[:, 0]).all()  # red cells absorb green light most
    again = cr.red_cell_reference(paths, tmp_path, "stain+nucdisk+normtex", n_workers=2)
    assert np.array_equal(first, again)
    assert (tmp_path / "cache" / "red_cells").is_dir()
