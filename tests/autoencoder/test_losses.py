"""Tests of bcfeat.autoencoder.losses against hand computations and reference implementations."""

from __future__ import annotations

import doctest
import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter
from skimage.metrics import structural_similarity

import bcfeat.autoencoder.losses as losses_mod
from bcfeat.autoencoder.losses import LossWeights, autoencoder_loss, domain_alignment, feature_mse, mmd_loss, moment_matching_loss, ssim, ssim_loss


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # the CPU is shared


def _pairs():
    """(name, x, y) image pairs (c, h, w) in [0, 1]: noise, and smooth images."""
    rng = np.random.default_rng(0)
    a = rng.random((3, 40, 52))
    b = np.clip(a + 0.2 * rng.standard_normal(a.shape), 0, 1)
    s = gaussian_filter(rng.random((3, 64, 64)), (0, 3, 3))
    s = (s - s.min()) / (s.max() - s.min())
    t = np.clip(0.8 * gaussian_filter(s, (0, 2, 2)) + 0.1, 0, 1)
    return [("random", a, b), ("smooth", s, t), ("unrelated", a, rng.random(a.shape))]


def _skimage_ssim(x: np.ndarray, y: np.ndarray) -> float:
    return structural_similarity(x, y, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                 data_range=1.0, channel_axis=0)


# ------------------------------------------------------------------------ SSIM
def test_ssim_of_an_image_with_itself_is_one():
    x = torch.rand(4, 3, 32, 32)
    assert torch.allclose(ssim(x, x, reduction="none"), torch.ones(4))
    assert float(ssim_loss(x, x)) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
@pytest.mark.parametrize("name, a, b", _pairs(), ids=lambda v: v if isinstance(v, str) else "")
def test_ssim_agrees_with_skimage(name, a, b, dtype, tol):
    ours = ssim(torch.tensor(a, dtype=dtype)[None], torch.tensor(b, dtype=dtype)[None])
    assert float(ours) == pytest.approx(_skimage_ssim(a, b), abs=tol)


def test_ssim_per_image_reduction_and_loss():
    (_, a, b), (_, s, t) = _pairs()[0], _pairs()[1]
    x = torch.tensor(np.stack([a[:, :40, :40], s[:, :40, :40]]))
    y = torch.tensor(np.stack([b[:, :40, :40], t[:, :40, :40]]))
    per = ssim(x, y, reduction="none")
    ref = [_skimage_ssim(x[i].numpy(), y[i].numpy()) for i in range(2)]
    assert np.allclose(per.numpy(), ref, atol=1e-10)
    assert float(ssim(x, y)) == pytest.approx(np.mean(ref), abs=1e-10)
    assert float(ssim_loss(x, y)) == pytest.approx(1 - np.mean(ref), abs=1e-10)


def test_ssim_drops_as_noise_grows_and_has_finite_gradients():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 32, 32, generator=g)
    noise = torch.randn(x.shape, generator=g)
    values = [float(ssim(x, (x + s * noise).clamp(0, 1))) for s in (0.0, 0.05, 0.1, 0.3)]
    assert values == sorted(values, reverse=True) and values[0] == pytest.approx(1.0)
    y = torch.rand(2, 3, 32, 32, generator=g, requires_grad=True)
    ssim_loss(y, x).backward()
    assert torch.isfinite(y.grad).all() and y.grad.abs().sum() > 0


def test_ssim_rejects_bad_shapes():
    with pytest.raises(ValueError, match="smaller than the window"):
        ssim(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8))
    with pytest.raises(ValueError, match="same shape"):
        ssim(torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 17))
    with pytest.raises(ValueError, match="odd"):
        ssim(torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16), window=10)


def test_feature_mse_is_the_mean_squared_difference():
    a = torch.zeros(2, 4, 3, 3)
    b = torch.full((2, 4, 3, 3), 0.5)
    b[0, 0, 0, 0] = 2.0
    expected = ((b - a) ** 2).sum() / a.numel()
    assert float(feature_mse(a, b)) == pytest.approx(float(expected))
    with pytest.raises(ValueError, match="shapes differ"):
        feature_mse(a, b[:1])


# ------------------------------------------------------------ moment matching
def _released_moment_matching(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Transcription of the released code's formula with torch.nn losses (defaults)."""
    kl = torch.nn.KLDivLoss()  # reduction="mean": element-wise mean
    mse = torch.nn.MSELoss()
    cs, ct = torch.cov(s.T), torch.cov(t.T)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        cov = 0.5 * (kl(F.log_softmax(cs, dim=0), F.softmax(ct, dim=0))
                     + kl(F.log_softmax(ct, dim=0), F.softmax(cs, dim=0)))
    return mse(s.mean(0), t.mean(0)) + cov


def test_moment_matching_equals_the_released_formula():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(30, 6, generator=g, dtype=torch.float64)
    t = 1.7 * torch.randn(20, 6, generator=g, dtype=torch.float64) + 0.3
    assert float(moment_matching_loss(s, t)) == pytest.approx(float(_released_moment_matching(s, t)), rel=1e-12)


def test_moment_matching_by_hand():
    # d = 1: softmax of a 1x1 covariance is 1, so only the mean term remains.
    s = torch.tensor([[0.0], [2.0]])
    t = torch.tensor([[3.0], [5.0], [4.0]])
    assert float(moment_matching_loss(s, t)) == pytest.approx((1.0 - 4.0) ** 2)


def test_moment_matching_is_zero_for_identical_sets_symmetric_and_grows_with_shift():
    g = torch.Generator().manual_seed(1)
    s = torch.randn(40, 5, generator=g)
    t = torch.randn(25, 5, generator=g) * 2
    assert float(moment_matching_loss(s, s.clone())) == 0.0
    assert float(moment_matching_loss(s, t)) == pytest.approx(float(moment_matching_loss(t, s)), rel=1e-6)
    values = [float(moment_matching_loss(s, s + shift)) for shift in (0.0, 0.5, 1.0, 2.0)]
    assert values == sorted(values) and values[0] == 0.0
    # Covariance term alone: same means, different spread.
    assert float(moment_matching_loss(s - s.mean(0), 3 * (s - s.mean(0)))) > 0


# ----------------------------------------------------------------------- MMD
def test_mmd_by_hand_with_fixed_bandwidth():
    x = torch.tensor([[0.0], [1.0]])
    y = torch.tensor([[0.0], [2.0]])
    k = lambda a, b: math.exp(-((a - b) ** 2) / 2)  # sigma = 1
    kxx = 2 * k(0, 1) / 2
    kyy = 2 * k(0, 2) / 2
    kxy = (k(0, 0) + k(0, 2) + k(1, 0) + k(1, 2)) / 4
    assert float(mmd_loss(x, y, sigmas=[1.0])) == pytest.approx(kxx + kyy - 2 * kxy, rel=1e-6)
    # A sum of kernels is the sum of the single-kernel estimates.
    both = float(mmd_loss(x, y, sigmas=[1.0, 3.0]))
    assert both == pytest.approx(float(mmd_loss(x, y, sigmas=[1.0])) + float(mmd_loss(x, y, sigmas=[3.0])), rel=1e-6)


@pytest.mark.parametrize("sigmas", [None, (1.0, 2.0)])
def test_mmd_same_distribution_is_near_zero(sigmas):
    g = torch.Generator().manual_seed(0)
    p, q = torch.randn(500, 5, generator=g), torch.randn(500, 5, generator=g)
    assert abs(float(mmd_loss(p, q, sigmas=sigmas))) < 0.01


def test_mmd_is_unbiased_on_average():
    # The biased (V-statistic) estimate is positive in expectation (~ 2 k(x,x) / n);
    # the unbiased one averages to ~0 over repeated draws and some draws are negative.
    g = torch.Generator().manual_seed(3)
    vals = torch.tensor([float(mmd_loss(torch.randn(30, 4, generator=g), torch.randn(30, 4, generator=g), sigmas=[1.5]))
                         for _ in range(60)])
    assert (vals < 0).any()
    assert abs(float(vals.mean())) < 3 * float(vals.std()) / math.sqrt(len(vals))
    assert float(vals.mean()) < 0.5 * (2 / 30)  # well below the V-statistic's bias


@pytest.mark.parametrize("sigmas", [None, (1.0, 2.0)])
def test_mmd_grows_with_mean_shift_and_is_symmetric(sigmas):
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(200, 5, generator=g), torch.randn(200, 5, generator=g)
    values = [float(mmd_loss(x, y + s, sigmas=sigmas)) for s in (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)]
    assert all(b > a for a, b in zip(values, values[1:])), values
    assert float(mmd_loss(x, y + 1)) == pytest.approx(float(mmd_loss(y + 1, x)), rel=1e-5)


def test_estimators_need_two_samples():
    with pytest.raises(ValueError, match="at least 2 samples"):
        mmd_loss(torch.randn(1, 3), torch.randn(5, 3))
    with pytest.raises(ValueError, match="at least 2 samples"):
        moment_matching_loss(torch.randn(5, 3), torch.randn(1, 3))


# ------------------------------------------------------------ domain alignment
@pytest.mark.parametrize("kind", ["moment", "mmd"])
def test_alignment_is_symmetric_in_the_two_domains(kind):
    g = torch.Generator().manual_seed(0)
    z = torch.cat([torch.randn(12, 6, generator=g), 0.5 + 2 * torch.randn(9, 6, generator=g)]).tanh()
    dom = torch.tensor([0] * 12 + [1] * 9)
    a = domain_alignment(z, dom, source_domain=0, kind=kind)
    b = domain_alignment(z, dom, source_domain=1, kind=kind)
    swapped = domain_alignment(z, 1 - dom, source_domain=0, kind=kind)
    assert a.n_pairs == b.n_pairs == 1 and a.skipped == ()
    assert float(a.loss) == pytest.approx(float(b.loss), rel=1e-5)
    assert float(a.loss) == pytest.approx(float(swapped.loss), rel=1e-5)
    assert float(a.loss) > 0


def test_alignment_sums_each_target_against_the_source_or_all_pairs():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(15, 4, generator=g)
    dom = torch.tensor([5] * 5 + [7] * 5 + [9] * 5)
    part = lambda a, b: float(moment_matching_loss(z[dom == a], z[dom == b]))
    to_source = domain_alignment(z, dom, source_domain=5)
    assert to_source.n_pairs == 2
    assert float(to_source.loss) == pytest.approx(part(5, 7) + part(5, 9), rel=1e-6)
    pairwise = domain_alignment(z, dom, source_domain=None)
    assert pairwise.n_pairs == 3
    assert float(pairwise.loss) == pytest.approx(part(5, 7) + part(5, 9) + part(7, 9), rel=1e-6)


def test_alignment_with_too_few_samples_of_a_domain_is_reported_not_nan():
    z = torch.randn(6, 4, requires_grad=True)
    r = domain_alignment(z, torch.tensor([0, 0, 0, 1, 1, 2]), source_domain=0)
    assert r.n_pairs == 1 and r.skipped == (2,) and torch.isfinite(r.loss)
    lone = domain_alignment(z, torch.tensor([0, 1, 1, 1, 1, 1]), source_domain=0, kind="mmd")
    assert lone.n_pairs == 0 and lone.skipped == (0, 1) and float(lone.loss) == 0.0
    only_source = domain_alignment(z, torch.zeros(6, dtype=torch.long), source_domain=0)
    assert only_source.n_pairs == 0 and only_source.skipped == () and float(only_source.loss) == 0.0
    no_source = domain_alignment(z, torch.tensor([1, 1, 1, 2, 2, 2]), source_domain=0)
    assert no_source.n_pairs == 0 and no_source.skipped == (1, 2)
    # The zero still backpropagates (as nothing).
    (no_source.loss + z.sum()).backward()
    with pytest.raises(ValueError, match="alignment kind"):
        domain_alignment(z, torch.zeros(6), kind="coral")


def test_autoencoder_loss_weights_the_terms():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(8, 5, generator=g)
    f_hat, f = torch.randn(8, 4, 14, 14, generator=g), torch.randn(8, 4, 14, 14, generator=g)
    i_hat, crops = torch.rand(8, 3, 16, 16, generator=g), torch.rand(8, 3, 16, 16, generator=g)
    dom = torch.tensor([0] * 4 + [1] * 4)
    w = LossWeights(image=2.0, features=0.5, alignment=3.0)
    out = autoencoder_loss(z, f_hat, i_hat, f, crops, dom, weights=w, alignment="mmd", source_domain=0)
    img, feat = 1 - float(ssim(i_hat, crops)), float(F.mse_loss(f_hat, f))
    align = float(domain_alignment(z, dom, 0, kind="mmd").loss)
    assert float(out.terms["image"]) == pytest.approx(img, rel=1e-6)
    assert float(out.terms["features"]) == pytest.approx(feat, rel=1e-6)
    assert float(out.terms["alignment"]) == pytest.approx(align, rel=1e-6)
    assert float(out.total) == pytest.approx(2 * img + 0.5 * feat + 3 * align, rel=1e-6)
    assert out.counts == {"alignment_pairs": 1, "alignment_skipped": 0}
    plain = autoencoder_loss(z, f_hat, i_hat, f, crops, dom, alignment=None)
    assert float(plain.total) == pytest.approx(img + feat, rel=1e-6) and float(plain.terms["alignment"]) == 0
    assert LossWeights() == LossWeights(image=1.0, features=1.0, alignment=5.0)
    with pytest.raises(ValueError, match="differ in shape"):
        autoencoder_loss(z, f_hat, i_hat[:, :, :8], f, crops, dom)


def test_docstring_examples():
    assert doctest.testmod(losses_mod).failed == 0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_the_loss_has_finite_gradients_under_half_precision_autocast(dtype):
    """Under float16 autocast the SSIM gave non-finite gradients in every step, so a GradScaler on
    CUDA skipped every update and nothing was learned; the loss now runs in float32 (CPU autocast
    stands in for CUDA's here)."""
    from bcfeat.autoencoder.model import AEConfig, CrossDomainAutoencoder

    g = torch.Generator().manual_seed(0)
    x = torch.rand(32, 16, 14, 14, generator=g) * 2 - 1
    crops = torch.rand(32, 3, 32, 32, generator=g)
    domain = torch.arange(32) % 2
    torch.manual_seed(0)
    model = CrossDomainAutoencoder(AEConfig.tiny())
    with torch.autocast("cpu", dtype=dtype):
        out = model(x)
        loss = autoencoder_loss(out.latent, out.features, out.image, x, crops, domain)
    assert loss.total.dtype == torch.float32
    (loss.total * 2.0 ** 16).backward()  # a GradScaler's starting scale
    grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    assert torch.isfinite(grads).all()
    reference = autoencoder_loss(out.latent.float(), out.features.float(), out.image.float(), x, crops, domain)
    assert float(loss.total.detach()) == pytest.approx(float(reference.total.detach()), rel=1e-6)
