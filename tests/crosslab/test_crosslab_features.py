"""Canonical crops, stain spaces and cell features of the cross-lab method (bcfeat.crosslab)."""

from __future__ import annotations

import numpy as np
import pytest

from bcfeat.crosslab.cell_crop import CropConfig, background_colour, canonical_crop, red_cell_diameter
from bcfeat.crosslab.cell_features import (GROUPS, cell_features, feature_groups, feature_names, uniform_lbp)
from bcfeat.crosslab.stain import od_chromaticity, optical_density


def _disk(shape, centre, radius):
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 < radius ** 2


def _smear(size=200, cell_radius=30, rbc_radius=14, background=(235, 225, 215), nucleus_centres=((0, 0),),
           nucleus_radius=12, cell_colour=(200, 170, 210), nucleus_colour=(90, 40, 130)):
    """A synthetic smear: red cells on a grid, one white cell in the middle, nucleus lobes."""
    img = np.empty((size, size, 3), np.uint8)
    img[:] = background
    c = size // 2
    for y in range(rbc_radius + 3, size - rbc_radius - 3, 2 * rbc_radius + 6):
        for x in range(rbc_radius + 3, size - rbc_radius - 3, 2 * rbc_radius + 6):
            img[_disk(img.shape[:2], (y, x), rbc_radius)] = (215, 150, 150)
    cell = _disk(img.shape[:2], (c, c), cell_radius)
    img[cell] = cell_colour
    for dy, dx in nucleus_centres:
        img[_disk(img.shape[:2], (c + dy, c + dx), nucleus_radius)] = nucleus_colour
    return img, cell


def test_canonical_crop_rescales_every_cell_to_the_same_diameter():
    cfg = CropConfig(size=80, cell_diameter=40)
    for radius in (15, 30, 60):
        img, cell = _smear(size=6 * radius, cell_radius=radius, rbc_radius=radius // 2)
        crop = canonical_crop(img, cell, cfg)
        assert crop.image.shape == (80, 80, 3) and crop.mask.shape == (80, 80)
        assert crop.cell_diameter_px == pytest.approx(2 * radius, rel=0.05)
        diameter_in_canvas = 2 * np.sqrt(crop.mask.sum() / np.pi)
        assert diameter_in_canvas == pytest.approx(40, rel=0.05)
        ys, xs = np.nonzero(crop.mask)
        assert ys.mean() == pytest.approx(39.5, abs=1.0) and xs.mean() == pytest.approx(39.5, abs=1.0)


def test_canonical_crop_fills_outside_the_image_with_the_background():
    img, cell = _smear(size=100, cell_radius=20)
    shifted = np.zeros_like(cell)
    shifted[:40, :40] = cell[30:70, 30:70]  # a cell at the image corner
    img2 = np.full_like(img, 235)
    img2[shifted] = (120, 60, 160)
    crop = canonical_crop(img2, shifted, CropConfig(size=64, cell_diameter=24))
    assert (crop.image[0, 0] == crop.background.round().astype(np.uint8)).all()


def test_canonical_crop_refuses_an_empty_mask_and_a_mismatched_one():
    img = np.full((50, 50, 3), 200, np.uint8)
    with pytest.raises(ValueError, match="empty"):
        canonical_crop(img, np.zeros((50, 50), bool))
    with pytest.raises(ValueError, match="does not match"):
        canonical_crop(img, np.ones((40, 50), bool))


def test_red_cell_ruler_measures_the_red_cells_of_the_image():
    for rbc_radius in (10, 16):
        img, cell = _smear(size=260, cell_radius=30, rbc_radius=rbc_radius)
        bg = background_colour(img, cell)
        d = red_cell_diameter(img, cell, bg, work_size=260)
        assert d == pytest.approx(2 * rbc_radius, rel=0.12)


def test_red_cell_ruler_is_nan_without_red_cells():
    img = np.full((120, 120, 3), 230, np.uint8)
    cell = _disk(img.shape[:2], (60, 60), 40)
    img[cell] = (150, 100, 180)
    assert np.isnan(red_cell_diameter(img, cell, background_colour(img, cell)))


def test_optical_density_is_zero_at_the_white_point_and_ignores_the_lamp_colour():
    yellow = np.array([240.0, 230.0, 120.0])
    transmittance = np.array([0.5, 0.25, 0.8])
    img = np.round(yellow * transmittance).astype(np.uint8)[None, None]
    od = optical_density(img, yellow)[0, 0]
    assert od == pytest.approx(-np.log10(transmittance), abs=0.01)
    assert optical_density(yellow.astype(np.uint8)[None, None], yellow)[0, 0] == pytest.approx(0, abs=1e-6)
    doubled = od_chromaticity(2 * od[None])[0]
    assert doubled == pytest.approx(od_chromaticity(od[None])[0], abs=0.02)


def test_uniform_lbp_is_rotation_invariant_and_flags_noise_as_non_uniform():
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 255, (40, 40)).astype(np.uint8)
    codes = uniform_lbp(grey, 1)
    assert codes.min() >= 0 and codes.max() <= 9
    rotated = uniform_lbp(np.rot90(grey), 1)
    inner = (slice(2, -2), slice(2, -2))
    assert (np.rot90(codes)[inner] == rotated[inner]).all()
    flat = uniform_lbp(np.full((10, 10), 7, np.uint8), 2)
    assert (flat == 8).all()  # every neighbour >= centre: the "all ones" uniform pattern


def test_feature_names_and_groups_cover_the_vector():
    names = feature_names()
    assert len(names) == len(set(names))
    groups = feature_groups()
    assert set(groups) == set(GROUPS)
    assert sorted(i for idx in groups.values() for i in idx) == list(range(len(names)))


def test_cell_features_see_lobes_size_and_stain_amount():
    cfg = CropConfig()
    round_img, cell = _smear(nucleus_centres=((0, 0),), nucleus_radius=13)
    lobed_img, _ = _smear(nucleus_centres=((-12, -10), (-12, 12), (12, 0)), nucleus_radius=7)
    f_round = dict(zip(feature_names(), cell_features(canonical_crop(round_img, cell, cfg))))
    f_lobed = dict(zip(feature_names(), cell_features(canonical_crop(lobed_img, cell, cfg))))
    assert f_round["nucleus_parts"] == 1 and f_lobed["nucleus_parts"] == 3
    assert f_lobed["nucleus_solidity"] < f_round["nucleus_solidity"]
    # the same cell at twice the magnification: canonical features agree, the pixel diameter does not
    big_img, big_cell = _smear(size=400, cell_radius=60, rbc_radius=28, nucleus_radius=26)
    f_big = dict(zip(feature_names(), cell_features(canonical_crop(big_img, big_cell, cfg))))
    assert f_big["log_cell_diameter_px"] - f_round["log_cell_diameter_px"] == pytest.approx(np.log(2), abs=0.05)
    assert f_big["log_cell_over_red_cell"] == pytest.approx(f_round["log_cell_over_red_cell"], abs=0.1)
    assert f_big["nucleus_share"] == pytest.approx(f_round["nucleus_share"], abs=0.03)
    # a darker stain raises the optical density but keeps its chromaticity
    dark_img, _ = _smear(nucleus_centres=((0, 0),), nucleus_radius=13, nucleus_colour=(45, 10, 90))
    f_dark = dict(zip(feature_names(), cell_features(canonical_crop(dark_img, cell, cfg))))
    assert f_dark["nucleus_od_sum_q50"] > f_round["nucleus_od_sum_q50"] + 0.3


def test_cell_features_are_finite_on_a_blank_cell():
    img = np.full((100, 100, 3), 200, np.uint8)
    cell = _disk(img.shape[:2], (50, 50), 20)
    f = cell_features(canonical_crop(img, cell))
    names = feature_names()
    finite = np.isfinite(f)
    assert finite[[i for i, n in enumerate(names) if n != "log_cell_over_red_cell"]].all()


def test_normalised_texture_reads_a_darker_stain_as_the_same_chromatin():
    """Texture on the nucleus-normalised density: a stain that doubles every optical density (the
    same chromatin, more dye) gives the same texture; read raw, the grey levels and so GLCM and LBP
    move. Every other feature is the one the raw reading gives."""
    from bcfeat.crosslab.cell_features import NUCLEUS_OD_REFERENCE, TEXTURE_OD, texture_density

    rng = np.random.default_rng(0)
    od = 0.2 + rng.gamma(2.0, 0.1, size=(56, 56))
    nucleus = _disk((56, 56), (28, 28), 12)
    od[nucleus] += 0.8 + 0.4 * rng.random(int(nucleus.sum()))
    cytoplasm = _disk((56, 56), (28, 28), 25) & ~nucleus
    from bcfeat.crosslab.cell_features import _texture_features

    normalised = [np.array(_texture_features(texture_density(k * od, nucleus, "nucleus"), nucleus, cytoplasm))
                  for k in (1.0, 2.0)]
    raw = [np.array(_texture_features(texture_density(k * od, nucleus, "raw"), nucleus, cytoplasm)) for k in (1.0, 2.0)]
    np.testing.assert_allclose(normalised[0], normalised[1], atol=1e-9)
    assert np.abs(raw[0] - raw[1]).max() > 0.05
    assert np.median(texture_density(od, nucleus, "nucleus")[nucleus]) == pytest.approx(NUCLEUS_OD_REFERENCE)
    np.testing.assert_array_equal(texture_density(od, np.zeros_like(nucleus), "nucleus"), od)  # no nucleus: as is
    with pytest.raises(ValueError, match="texture_od must be one of"):
        texture_density(od, nucleus, "median")
    assert TEXTURE_OD == ("raw", "nucleus")
    # on a real crop, only the texture group differs between the readings
    img, cell = _smear(nucleus_centres=((-6, 0), (6, 4)), nucleus_radius=9)
    img = np.clip(img.astype(float) + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)
    crop = canonical_crop(img, cell)
    a, b = cell_features(crop), cell_features(crop, "nucleus")
    np.testing.assert_array_equal(a, cell_features(crop, "raw"))
    texture = np.zeros(len(a), bool)
    texture[feature_groups()["texture"]] = True
    np.testing.assert_array_equal(a[~texture], b[~texture], strict=False)
    assert not np.allclose(a[texture], b[texture])


def test_a_nucleus_found_in_the_nuclear_dye_leaves_out_granules_as_dark_as_it_in_every_dye():
    """Orange granules with the nucleus's total optical density: the total reading takes them into the
    nucleus (a larger one, as a basophil's), the red channel's reading does not."""
    from bcfeat.crosslab.cell_features import NUCLEUS_OD, nucleus_density

    img, cell = _smear(nucleus_radius=12)
    c = img.shape[0] // 2
    granules = np.zeros(cell.shape, bool)
    for angle in np.linspace(0, 2 * np.pi, 8, endpoint=False):
        granules |= _disk(cell.shape, (c + 21 * np.sin(angle), c + 21 * np.cos(angle)), 3.5)
    img[granules] = (190, 60, 40)
    crop = canonical_crop(img, cell)
    od = optical_density(crop.image, crop.background)
    ring = crop.mask & (_disk(crop.mask.shape, (39.5, 39.5), 16) ^ _disk(crop.mask.shape, (39.5, 39.5), 24))
    # the granules are as dark as the nucleus in every dye, and far paler in red
    assert abs(od[39, 39].sum() - od[ring].sum(axis=-1).max()) < 0.15
    assert nucleus_density(od, "red")[39, 39] > 3 * np.percentile(nucleus_density(od, "red")[ring], 99)
    names = feature_names()
    total, red = (dict(zip(names, cell_features(crop, nucleus_od=n))) for n in NUCLEUS_OD)
    true_share = 12 ** 2 / 30 ** 2
    assert red["nucleus_share"] == pytest.approx(true_share, abs=0.04)
    assert red["nucleus_parts"] == 1.0
    assert total["nucleus_share"] > true_share + 0.05
    # the default is the total reading, the deployed one
    np.testing.assert_array_equal(cell_features(crop), cell_features(crop, nucleus_od="total"))
    with pytest.raises(ValueError, match="nucleus_od must be one of"):
        cell_features(crop, nucleus_od="blue")
