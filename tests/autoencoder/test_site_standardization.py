"""Per-site standardisation of instance features (bcfeat.autoencoder.site_standardization)."""

from __future__ import annotations

import numpy as np
import pytest

from bcfeat.autoencoder.site_standardization import MIN_SITE_IMAGES, channel_statistics, standardize, standardize_per_site


def _site(n, shift, scale, seed):
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n, 4, 3, 3)).astype(np.float32)
    return base, base * scale + shift


def test_statistics_match_numpy_over_images_and_positions():
    _, x = _site(50, 2.0, 3.0, 0)
    stats = channel_statistics(x, chunk=7)  # chunked accumulation gives the same moments
    np.testing.assert_allclose(stats.mean, x.mean(axis=(0, 2, 3)), rtol=1e-5)
    np.testing.assert_allclose(stats.std, x.std(axis=(0, 2, 3)), rtol=1e-4)
    z = standardize(x, stats)
    np.testing.assert_allclose(z.mean(axis=(0, 2, 3)), 0, atol=1e-5)
    np.testing.assert_allclose(z.std(axis=(0, 2, 3)), 1, atol=1e-4)


def test_a_site_wide_affine_shift_is_removed():
    base, shifted = _site(40, np.array([1.0, -2.0, 5.0, 0.5])[None, :, None, None], 2.5, 1)
    features = np.concatenate([base, shifted])
    sites = ["a"] * 40 + ["b"] * 40
    z = standardize_per_site(features, sites)
    # The same cells seen through two "labs" become the same features again.
    np.testing.assert_allclose(z[:40], z[40:], atol=1e-4)
    # Without it the two copies differ.
    assert np.abs(features[:40] - features[40:]).mean() > 1


def test_too_few_images_of_a_site_is_a_clear_error():
    x = np.zeros((MIN_SITE_IMAGES + 5, 2, 2, 2), np.float32)
    sites = ["big"] * MIN_SITE_IMAGES + ["tiny"] * 5
    with pytest.raises(ValueError, match="site 'tiny'.*>= 20 images.*got 5"):
        standardize_per_site(x, sites)
    with pytest.raises(ValueError, match="site labels"):
        standardize_per_site(x, sites[:-1])
