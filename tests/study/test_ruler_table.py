"""What the red-cell ruler reads per site (bcfeat.study.crosslab_measurement.ruler_table)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bcfeat.crosslab.cell_crop import CropConfig, canonical_crop
from bcfeat.crosslab.cell_features import cell_features
from bcfeat.study.crosslab_measurement import ruler_table


def _image(size, cell_radius, rbc_radius, rbc_step):
    """A white cell in the middle of red cells on a grid."""
    img = np.full((size, size, 3), 235, np.uint8)
    yy, xx = np.mgrid[:size, :size]
    for y in range(rbc_radius + 3, size - rbc_radius - 3, rbc_step):
        for x in range(rbc_radius + 3, size - rbc_radius - 3, rbc_step):
            img[(yy - y) ** 2 + (xx - x) ** 2 < rbc_radius ** 2] = (215, 150, 150)
    c = size // 2
    cell = (yy - c) ** 2 + (xx - c) ** 2 < cell_radius ** 2
    img[cell] = (200, 170, 210)
    img[(yy - c) ** 2 + (xx - c) ** 2 < (cell_radius // 2) ** 2] = (90, 40, 130)
    return img, cell


def test_the_ruler_table_reads_a_working_ruler_and_one_that_measures_fragments_apart():
    cfg = CropConfig(ruler_work_size=400)  # the images are measured at their own size
    # lab a: whole red cells of radius 14 around a white cell of radius 30 (ratio ~0.47)
    # lab b: the same white cell among small round specks of radius 3, all that the crop holds whole
    # lab c: no red cell at all
    rows, labs = [], []
    for lab, (rbc_radius, step) in {"a": (14, 40), "b": (3, 16), "c": (0, 1000)}.items():
        for size in (220, 240):
            img, cell = _image(size, 30, rbc_radius, step)
            rows.append(cell_features(canonical_crop(img, cell, cfg)))
            labs.append(lab)
    table = ruler_table(np.array(rows), pd.DataFrame({"domain": labs})).set_index("site")
    assert list(table.index) == ["a", "b", "c"]
    assert table.loc["a", "red_over_white"] == pytest.approx(14 / 30, abs=0.06)
    assert table.loc["a", "red_cell_diameter_px"] == pytest.approx(28, abs=3)
    assert table.loc["a", "cell_diameter_px"] == pytest.approx(60, abs=2)
    assert table.loc["b", "red_over_white"] < 0.15
    assert table.loc["a", "no_ruler_share"] == table.loc["b", "no_ruler_share"] == 0.0
    assert table.loc["c", "no_ruler_share"] == 1.0 and np.isnan(table.loc["c", "red_over_white"])
    assert table.loc["c", "n_cells"] == 2


def test_a_ruler_that_measures_fragments_on_one_lab_is_left_out_of_every_candidate_and_not_measured():
    from bcfeat.crosslab.cell_features import feature_names, feature_set_columns
    from bcfeat.crosslab.model import measured_parts
    from bcfeat.study.crosslab_measurement import ruler_check, ruler_drop
    from bcfeat.study.crosslab_settings import candidate_settings, setting_columns, parse_setting

    cfg = CropConfig(ruler_work_size=400)
    rows, labs = [], []
    for lab, (rbc_radius, step) in {"a": (14, 40), "b": (3, 16)}.items():
        img, cell = _image(230, 30, rbc_radius, step)
        rows.append(cell_features(canonical_crop(img, cell, cfg)))
        labs.append(lab)
    table = ruler_table(np.array(rows), pd.DataFrame({"domain": labs}))
    assert list(ruler_check(table)["site"]) == ["b"]
    ruler = feature_names().index("log_cell_over_red_cell")
    assert ruler_drop(table) == (ruler,)
    assert ruler_drop(table[table["site"] == "a"]) == ()  # lab a alone: the ruler works and stays

    candidates = candidate_settings([0.03], ["all", "no_fine_texture", "no_ruler"], ["stain"], ["cbr"],
                                    drop=ruler_drop(table))
    # "no_ruler" less the ruler is "all" less the ruler: offered once
    assert candidates == ["logistic C=0.03 all stain cbr drop=1", "logistic C=0.03 no_fine_texture stain cbr drop=1"]
    for name in candidates:
        read = setting_columns(parse_setting(name))
        assert ruler not in read
        assert measured_parts(read)[0] is False  # the deployed model would not measure the ruler
    kept = candidate_settings([0.03], ["no_fine_texture"], ["stain"], ["cbr"])
    assert ruler in setting_columns(parse_setting(kept[0])) and measured_parts(feature_set_columns("no_fine_texture"))[0]
