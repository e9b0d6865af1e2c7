"""Baseline feature extractors: shapes, the sklearn contract, and that they see what they should."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.base import clone
from sklearn.ensemble import RandomForestClassifier
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import make_pipeline

from bcfeat.evaluation.baselines import ColorShapeFeatures, check_images, resize_images, threshold_masks
from bcfeat.evaluation.benchmark import domain_matrix
from bcfeat.study import common as study

BACKGROUND = (235, 215, 205)  # beige, like pbc_acevedo20


def synthetic_cell(size, kind, rng):
    """A beige crop with a lilac cell; ``kind`` "round" = one round nucleus, "lobed" = three small lobes."""
    img = np.empty((size, size, 3), np.float32)
    img[:] = BACKGROUND
    yy, xx = np.mgrid[:size, :size] / size
    cy, cx = 0.5 + rng.uniform(-0.03, 0.03, 2)
    img[(yy - cy) ** 2 + (xx - cx) ** 2 < 0.3**2] = (200, 160, 215)
    if kind == "round":
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < 0.18**2] = (90, 40, 140)
    else:
        for a in (0.0, 2.1, 4.2):
            ly, lx = cy + 0.15 * np.sin(a), cx + 0.15 * np.cos(a)
            img[(yy - ly) ** 2 + (xx - lx) ** 2 < 0.07**2] = (90, 40, 140)
    img += rng.normal(0, 4, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def cells():
    rng = np.random.default_rng(0)
    kinds = ["round", "lobed"] * 12
    # Varying sizes, as in the real data (88-367 px).
    images = [synthetic_cell(int(s), k, rng) for s, k in zip(rng.integers(60, 140, len(kinds)), kinds)]
    return images, np.asarray(kinds)


def test_check_images_accepts_arrays_lists_grey_alpha_and_paths(tmp_path):
    stack = np.zeros((3, 8, 9, 3), np.uint8)
    assert len(check_images(stack)) == 3
    out = check_images([np.zeros((5, 5), np.uint8), np.zeros((6, 4, 4), np.uint8)])
    assert [im.shape for im in out] == [(5, 5, 3), (6, 4, 3)]
    path = tmp_path / "cell.png"
    Image.fromarray(np.full((7, 7, 3), 100, np.uint8)).save(path)
    assert check_images([path])[0].shape == (7, 7, 3)


def test_check_images_rejects_bad_input_by_index():
    with pytest.raises(ValueError, match="image 1: expected dtype uint8"):
        check_images([np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4, 3), np.float32)])
    with pytest.raises(ValueError, match="image 0"):
        check_images([np.zeros((4, 4, 5), np.uint8)])
    with pytest.raises(ValueError, match="empty"):
        check_images([])
    with pytest.raises(ValueError, match="shape"):
        check_images(np.zeros((4, 4, 3), np.uint8))


def test_resize_images_shape_and_content():
    img = np.zeros((30, 20, 3), np.uint8)
    img[:15] = 200  # top half bright
    out = resize_images([img], 10)
    assert out.shape == (1, 10, 10, 3) and out.dtype == np.uint8
    assert out[0, 1].mean() > 150 and out[0, -2].mean() < 50


def test_raw_pixels_are_the_decoded_images_resized(tmp_path):
    rng = np.random.default_rng(3)
    paths = []
    for i, (h, w) in enumerate([(30, 20), (16, 16), (9, 41)]):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
        paths.append(str(tmp_path / f"{i}.png"))
    Image.fromarray(np.full((12, 12), 90, np.uint8)).save(tmp_path / "grey.png")  # one channel: repeated to RGB
    paths.append(str(tmp_path / "grey.png"))
    pixels = study.decoded_images(paths, 16)
    assert pixels.shape == (4, 16, 16, 3) and pixels.dtype == np.uint8
    for i in range(3):  # the whole crop, PIL bilinear (a square crop of the right size is kept as it is)
        expected = np.asarray(Image.open(paths[i]).convert("RGB").resize((16, 16), Image.Resampling.BILINEAR))
        np.testing.assert_array_equal(pixels[i], expected)
    assert (pixels[3] == 90).all()


def test_raw_pixels_pca_forest_is_fitted_per_split_and_seeded(cells):
    images, kinds = cells
    X = resize_images(images, 16).reshape(len(images), -1)
    make = study.pca_forest_factory(8)
    model = make(5)
    assert [name for name, _ in model.steps] == ["pca", "randomforestclassifier"]
    assert model.get_params()["pca__n_components"] == 8 and model.get_params()["pca__random_state"] == 5
    rf = model.named_steps["randomforestclassifier"]
    assert (rf.max_depth, rf.n_estimators, rf.random_state) == (16, 100, 5)  # the benchmark's forest
    assert not hasattr(model.named_steps["pca"], "components_")  # a fresh, unfitted pipeline per call
    assert make(5) is not model
    fitted = make(5).fit(X, kinds)
    assert fitted.named_steps["pca"].components_.shape == (8, X.shape[1])
    np.testing.assert_array_equal(fitted.predict_proba(X), make(5).fit(X, kinds).predict_proba(X))
    assert cross_val_score(make(0), X, kinds, cv=3).mean() > 0.8


def test_threshold_masks_find_the_nucleus(cells):
    images, kinds = cells
    rng = np.random.default_rng(1)
    img = synthetic_cell(100, "round", rng)
    cell, nuc = threshold_masks(img)
    yy, xx = np.mgrid[:100, :100] / 100
    truth_nuc = (yy - 0.5) ** 2 + (xx - 0.5) ** 2 < 0.18**2
    truth_cell = (yy - 0.5) ** 2 + (xx - 0.5) ** 2 < 0.3**2
    dice = lambda a, b: 2 * (a & b).sum() / (a.sum() + b.sum())  # noqa: E731
    assert dice(nuc, truth_nuc) > 0.85 and dice(cell, truth_cell) > 0.85
    blank = np.full((20, 20, 3), 128, np.uint8)
    c, n = threshold_masks(blank)
    assert not c.any() and not n.any()


@pytest.mark.parametrize("segmenter", ["threshold", "auto"])
def test_color_shape_features_separate_round_from_lobed(cells, segmenter):
    images, kinds = cells
    est = ColorShapeFeatures(segmenter=segmenter)
    F = est.fit_transform(images)
    names = list(est.get_feature_names_out())
    assert F.shape == (len(images), est.n_features_out_) == (len(images), len(names))
    assert np.isfinite(F).all()
    lobes = F[:, names.index("nucleus_lobes")]
    solidity = F[:, names.index("nucleus_solidity")]
    assert (lobes[kinds == "lobed"] >= 2).mean() >= 0.9
    assert (lobes[kinds == "round"] == 1).mean() >= 0.9
    assert solidity[kinds == "lobed"].max() < solidity[kinds == "round"].min()
    # The nucleus colour histogram sees the dark purple, not the beige background.
    assert F[:, names.index("nucleus_rgb_b_mean")].mean() > F[:, names.index("nucleus_rgb_g_mean")].mean() + 0.2


def test_color_shape_features_contract(cells):
    images, _ = cells
    est = ColorShapeFeatures(n_bins=4, color_spaces=("hsv",), segmenter="threshold")
    with pytest.raises(NotFittedError):
        est.transform(images[:2])
    assert clone(est).get_params()["n_bins"] == 4
    F = est.fit(images[:3]).transform(images[:3])
    assert F.shape == (3, 9 + 2 * 3 * (4 + 1)) and est.segmenter_ == "threshold"
    with pytest.raises(ValueError, match="colour space"):
        ColorShapeFeatures(color_spaces=("lab",)).fit(images[:2])
    with pytest.raises(ValueError, match="segmenter"):
        ColorShapeFeatures(segmenter="magic").fit(images[:2])


def test_pipelines_classify_and_plug_into_the_domain_matrix(cells):
    images, kinds = cells
    pipe = make_pipeline(ColorShapeFeatures(segmenter="threshold"),
                         RandomForestClassifier(n_estimators=25, random_state=0, n_jobs=1))
    assert cross_val_score(pipe, images, kinds, cv=3).mean() > 0.8
    domain = np.asarray(["x", "y"] * 6 + ["y", "x"] * 6)
    df = domain_matrix(images, kinds, domain, make_classifier=lambda s: clone(pipe).set_params(
        randomforestclassifier__random_state=s), n_repetitions=2, feature_set_name="ColorShapeFeatures")
    assert len(df) == 8 and set(df.classifier) == {"Pipeline"}
    # The raw-pixel baseline, as notebook 05 runs it: flattened pixels, PCA + forest per training split.
    pixels = resize_images(images, 16).reshape(len(images), -1)
    raw = domain_matrix(pixels, kinds, domain, make_classifier=study.pca_forest_factory(8), n_repetitions=2,
                        feature_set_name="raw_pixels")
    assert len(raw) == 8 and set(raw.classifier) == {"Pipeline"}
    again = domain_matrix(pixels, kinds, domain, make_classifier=study.pca_forest_factory(8), n_repetitions=2,
                          feature_set_name="raw_pixels")
    pd.testing.assert_frame_equal(raw, again)  # seeded: the same scores twice
