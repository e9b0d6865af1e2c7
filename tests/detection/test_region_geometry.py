"""bcfeat.detection.region_geometry returns scikit-image's region measures and resize bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage import measure
from skimage.morphology import convex_hull_image
from skimage.transform import resize

from bcfeat.detection import region_geometry as rg


def _blobs(seed: int, n: int = 300):
    rng = np.random.default_rng(seed)
    for _ in range(n):
        h, w = (int(v) for v in rng.integers(2, 50, 2))
        mask = rng.random((h, w)) < rng.uniform(0.1, 0.9)
        if rng.random() < 0.5:
            mask = ndi.binary_opening(mask)
        if mask.any():
            yield mask


def test_convex_hull_area_and_solidity_are_scikit_images():
    for mask in _blobs(0):
        hull = convex_hull_image(mask)
        assert rg.convex_hull_area(mask) == int(hull.sum())
        region = measure.regionprops(mask.astype(np.uint8))[0]
        assert rg.solidity(mask[region.slice]) == region.solidity
    assert rg.convex_hull_area(np.zeros((4, 4), bool)) == 0


def test_solidity_at_least_answers_as_solidity_does_at_every_threshold():
    decided_early = 0
    for mask in [*_blobs(3), *(m for m in _edge_cases() if m.any())]:
        value = rg.solidity(mask)
        for threshold in (0.5, 0.8, 0.9, value, np.nextafter(value, 2.0)):
            assert rg.solidity_at_least(mask, threshold) == (value >= threshold), (mask.shape, threshold)
        rows = mask[mask.any(axis=1)]
        runs = mask.shape[1] - rows[:, ::-1].argmax(axis=1) - rows.argmax(axis=1)
        decided_early += mask.sum() / runs.sum() < 0.9
    assert decided_early > 20  # the bound alone rejects some masks: the shortcut is exercised


def _edge_cases():
    """Single pixels, lines, diagonals, masks filling or touching the image's borders, large blobs."""
    yield np.ones((1, 1), bool)
    yield np.ones((5, 7), bool)
    for h, w in ((1, 9), (9, 1), (6, 6)):
        m = np.zeros((h, w), bool); m[h // 2, w // 2] = True
        yield m
        yield np.ones((h, w), bool)
    eye = np.eye(12, dtype=bool)
    yield eye
    yield eye[::-1]
    yield eye | eye[::-1]
    m = np.zeros((10, 10), bool); m[0, :] = True; m[:, -1] = True
    yield m
    rng = np.random.default_rng(7)
    for _ in range(40):
        h, w = (int(v) for v in rng.integers(60, 200, 2))
        yield ndi.gaussian_filter(rng.random((h, w)), float(rng.uniform(2, 12))) > 0.5
        pts = np.zeros((h, w), bool)
        pts[rng.integers(0, h, 4), rng.integers(0, w, 4)] = True  # a few scattered pixels
        yield pts


def test_convex_hull_area_counts_scikit_images_hull_on_lines_borders_and_large_masks():
    for mask in _edge_cases():
        assert rg.convex_hull_area(mask) == int(convex_hull_image(mask).sum()), mask.shape


def test_labelled_regions_and_diameter_are_regionprops():
    for mask in _blobs(1, 100):
        labels = measure.label(mask)
        props = measure.regionprops(labels)
        ours = list(rg.labelled_regions(labels))
        assert len(ours) == len(props)
        for (box, image, area), region in zip(ours, props):
            assert box == region.slice and area == region.area
            np.testing.assert_array_equal(image, region.image)
            assert rg.equivalent_diameter(area) == region.equivalent_diameter_area


@pytest.mark.parametrize("shape_in,shape_out", [((363, 360), (160, 159)), ((120, 120), (120, 120)),
                                                ((90, 300), (48, 160)), ((40, 50), (64, 80))])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_resize_float_is_skimage_resize(shape_in, shape_out, dtype):
    rng = np.random.default_rng(2)
    image = (rng.random(shape_in) * 255).astype(dtype)
    expected = resize(image, shape_out, anti_aliasing=shape_out[0] < shape_in[0] or shape_out[1] < shape_in[1],
                      preserve_range=True)
    got = rg.resize_float(image, shape_out)
    assert got.dtype == expected.dtype
    np.testing.assert_array_equal(got, expected)
    mask = (rng.random(shape_in) < 0.3).astype(np.float32)
    np.testing.assert_array_equal(rg.resize_float(mask, shape_out), resize(mask, shape_out, order=1))


def test_the_segmentations_quality_check_reads_regionprops_centroid_and_solidity_bit_for_bit():
    """``_quality`` once built a regionprops object per try; its replacement gives the same numbers
    on masks of several parts, holes and edges (a changed centroid or solidity would change which
    try of the segmentation is kept)."""
    from bcfeat.detection.pseudo_masks import _centroid_and_solidity

    n = 0
    for mask in _blobs(5):
        region = measure.regionprops(mask.astype(np.uint8))[0]
        cy, cx, solid = _centroid_and_solidity(mask)
        assert (cy, cx) == region.centroid and solid == region.solidity
        n += 1
    assert n > 200  # nearly every random blob is non-empty


def test_h_maxima_is_scikit_images_on_distance_maps_and_plateaus():
    """The touching-cell split's markers: the same h-maxima as scikit-image's reconstruction, on
    distance maps of random blobs (several summits, plateaus, touching the edge) and on noise."""
    from skimage.morphology import h_maxima

    rng = np.random.default_rng(7)
    n = 0
    for mask in _blobs(3, 200):
        dist = ndi.distance_transform_edt(mask)
        if np.ptp(dist) == 0:
            continue
        for share in (0.1, 0.3, 0.9):
            expected = h_maxima(dist, share * dist.max())
            np.testing.assert_array_equal(rg.h_maxima(dist, share * dist.max()), expected)
            n += int(expected.sum() > 0)
    noise = rng.random((40, 30)).astype(np.float32)
    np.testing.assert_array_equal(rg.h_maxima(noise, 0.2), h_maxima(noise, 0.2))
    assert n > 300
    assert not rg.h_maxima(np.ones((5, 5)), 0.5).any()  # h above the range: nothing, as scikit-image
    with pytest.raises(ValueError, match="2-D float"):
        rg.h_maxima(np.ones((5, 5), np.uint8), 1)
