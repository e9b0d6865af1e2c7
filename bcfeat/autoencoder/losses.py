"""Losses of the AE-CFE autoencoder (paper Sec. 2.2, Eq. 1-3).

* :func:`ssim` / :func:`ssim_loss`: structural similarity of the reconstructed
  crop (Wang et al. 2004), the image-reconstruction term ``1 - SSIM``.
* :func:`feature_mse`: mean squared error of the reconstructed instance features.
* Domain alignment of the latent vectors, two interchangeable forms:
  :func:`moment_matching_loss` (what the authors' released code computes,
  there called "MMD") and :func:`mmd_loss` (a kernel maximum mean discrepancy).
  :func:`domain_alignment` applies either to the domains in a batch.
* :func:`autoencoder_loss`: the weighted sum used for training,
  ``w_img (1 - SSIM) + w_feat MSE + w_align alignment`` with the released
  weights 1, 1, 5 (:class:`LossWeights`).

Every loss is computed in float32 (or the input's wider float type) even under
mixed precision: SSIM's variances are differences of nearly equal moments and
covariances of tanh latents lose most digits in float16.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import combinations
from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

ALIGNMENT_KINDS = ("moment", "mmd")


def _as_float(x: Tensor) -> Tensor:
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


# --------------------------------------------------------------------------- SSIM
def gaussian_window(window: int = 11, sigma: float = 1.5, dtype: torch.dtype = torch.float32,
                    device: torch.device | str | None = None) -> Tensor:
    """Normalised 1-D Gaussian taps, shape ``(window,)``, centred on the middle tap."""
    if window < 1 or window % 2 == 0:
        raise ValueError(f"SSIM window must be a positive odd number of pixels, got {window}")
    x = torch.arange(window, dtype=dtype, device=device) - (window - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(x: Tensor, y: Tensor, window: int = 11, sigma: float = 1.5, data_range: float = 1.0,
         reduction: str = "mean") -> Tensor:
    """Structural similarity with a Gaussian window (Wang et al. 2004).

    For each channel, local means ``mu``, variances ``s2`` and covariance ``sxy``
    are Gaussian-weighted averages (population form, weights sum to 1) over a
    ``window`` x ``window`` neighbourhood, and

    ``SSIM = (2 mu_x mu_y + C1)(2 sxy + C2) / ((mu_x^2 + mu_y^2 + C1)(s2_x + s2_y + C2))``

    with ``C1 = (0.01 L)^2``, ``C2 = (0.03 L)^2``, ``L = data_range``. The map is
    averaged over the *valid* positions only (no padding: the ``(window-1)/2``
    border is not scored) and over channels. This equals
    ``skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=1, channel_axis=...)``. (The
    released AE-CFE code zero-padded the border instead, which scores the border
    against a darkened neighbourhood.)

    Parameters
    ----------
    x, y : Tensor, shape (n, c, h, w)
        Images with values in ``[0, data_range]``; ``h, w >= window``.
    window : int
        Odd window side in pixels.
    sigma : float
        Standard deviation of the Gaussian weights in pixels.
    data_range : float
        ``L`` above.
    reduction : {"mean", "none"}
        Mean over the batch (a scalar) or one value per image, shape ``(n,)``.

    Returns
    -------
    Tensor
        Scalar or shape ``(n,)``; 1 for identical images.

    Examples
    --------
    >>> x = torch.rand(2, 3, 16, 16)
    >>> float(ssim(x, x))
    1.0
    """
    if x.shape != y.shape or x.ndim != 4:
        raise ValueError("ssim needs two (n, c, h, w) tensors of the same shape; "
                         f"got {tuple(x.shape)} and {tuple(y.shape)}")
    if min(x.shape[-2:]) < window:
        raise ValueError(f"ssim: image side {tuple(x.shape[-2:])} is smaller than the window ({window})")
    if reduction not in ("mean", "none"):
        raise ValueError(f"ssim: reduction must be 'mean' or 'none', got {reduction!r}")
    dtype = torch.promote_types(_as_float(x).dtype, _as_float(y).dtype)
    x, y = x.to(dtype), y.to(dtype)
    n, c = x.shape[:2]
    g = gaussian_window(window, sigma, dtype=dtype, device=x.device)
    # Five maps per channel, filtered by one separable depthwise convolution.
    maps = torch.cat([x, y, x * x, y * y, x * y], dim=1)
    k = maps.shape[1]
    maps = F.conv2d(maps, g.view(1, 1, window, 1).expand(k, 1, window, 1), groups=k)
    maps = F.conv2d(maps, g.view(1, 1, 1, window).expand(k, 1, 1, window), groups=k)
    mu_x, mu_y, xx, yy, xy = maps.split(c, dim=1)
    s2_x = xx - mu_x * mu_x
    s2_y = yy - mu_y * mu_y
    s_xy = xy - mu_x * mu_y
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    smap = ((2 * mu_x * mu_y + c1) * (2 * s_xy + c2)) / ((mu_x * mu_x + mu_y * mu_y + c1) * (s2_x + s2_y + c2))
    per_image = smap.flatten(1).mean(1)
    return per_image.mean() if reduction == "mean" else per_image


def ssim_loss(x: Tensor, y: Tensor, **kwargs) -> Tensor:
    """``1 - ssim(x, y)``: 0 for a perfect reconstruction, up to 2. See :func:`ssim`."""
    return 1 - ssim(x, y, **kwargs)


def feature_mse(reconstructed: Tensor, features: Tensor) -> Tensor:
    """Mean over all elements of ``(reconstructed - features)^2``; both ``(n, C, h, w)``."""
    if reconstructed.shape != features.shape:
        raise ValueError(f"feature_mse: shapes differ, {tuple(reconstructed.shape)} vs {tuple(features.shape)}")
    return F.mse_loss(_as_float(reconstructed), _as_float(features))


# ---------------------------------------------------------------- domain alignment
def _check_pair(a: Tensor, b: Tensor, name: str, min_samples: int = 2) -> None:
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"{name}: needs two (n, d) sample matrices with the same d; "
                         f"got {tuple(a.shape)}, {tuple(b.shape)}")
    if len(a) < min_samples or len(b) < min_samples:
        raise ValueError(f"{name}: needs at least {min_samples} samples per set; got {len(a)} and {len(b)}")


def moment_matching_loss(source: Tensor, target: Tensor) -> Tensor:
    """Mean and covariance matching, as in the authors' released ``MMD_Loss.py``.

    With ``d`` latent dimensions, sample means ``m_s, m_t`` and unbiased
    covariance matrices ``S_s, S_t`` (``d x d``, ``torch.cov``), and
    ``P = softmax(S, dim=0)`` (each *column* turned into a distribution)::

        loss = (1/d) sum_j (m_s[j] - m_t[j])^2
             + 0.5/d^2 * sum_ij [ P_t log(P_t/P_s) + P_s log(P_s/P_t) ]_ij

    The first term is ``nn.MSELoss()(m_s, m_t)``; the second is the released
    ``0.5 * (KLDivLoss()(log P_s, P_t) + KLDivLoss()(log P_t, P_s))`` with
    KLDivLoss's default element-wise mean, i.e. the symmetric KL divergence
    of each column pair, averaged over columns and divided by ``d`` once more.
    It matches first and (softmaxed) second moments only, so it is not a
    maximum mean discrepancy despite the released file name. Symmetric in its
    arguments; 0 for identical sets.

    Parameters
    ----------
    source, target : Tensor, shapes (n_s, d) and (n_t, d)
        At least 2 rows each (a covariance needs two samples).

    Returns
    -------
    Tensor
        Scalar.

    Examples
    --------
    >>> z = torch.randn(8, 5)
    >>> float(moment_matching_loss(z, z))
    0.0
    """
    _check_pair(source, target, "moment_matching_loss")
    source, target = _as_float(source), _as_float(target)
    mean_term = (source.mean(0) - target.mean(0)).pow(2).mean()
    log_ps = torch.log_softmax(torch.cov(source.T), dim=0)
    log_pt = torch.log_softmax(torch.cov(target.T), dim=0)
    # P_t(log P_t - log P_s) + P_s(log P_s - log P_t) = (P_t - P_s)(log P_t - log P_s)
    cov_term = 0.5 * ((log_pt.exp() - log_ps.exp()) * (log_pt - log_ps)).mean()
    return mean_term + cov_term


def median_sq_distance(x: Tensor) -> Tensor:
    """Median of the squared Euclidean distances between distinct rows of ``x`` (n, d)."""
    d2 = torch.cdist(x, x).pow(2)
    iu = torch.triu_indices(len(x), len(x), offset=1, device=x.device)
    return d2[iu[0], iu[1]].median()


def mmd_loss(x: Tensor, y: Tensor, sigmas: Sequence[float] | None = None,
             multipliers: Sequence[float] = (0.25, 0.5, 1.0, 2.0, 4.0)) -> Tensor:
    """Unbiased estimate of the squared kernel MMD between two samples.

    Kernel: a sum of Gaussians ``k(a, b) = sum_m exp(-|a - b|^2 / (2 sigma_m^2))``.
    Estimator (Gretton et al. 2012, Lemma 6, the U-statistic)::

        MMD_u^2 = 1/(n(n-1)) sum_{i!=j} k(x_i, x_j) + 1/(m(m-1)) sum_{i!=j} k(y_i, y_j)
                - 2/(n m) sum_{i,j} k(x_i, y_j)

    It is 0 in expectation when both samples come from one distribution, so a
    single value may be slightly negative.

    Parameters
    ----------
    x, y : Tensor, shapes (n, d) and (m, d)
        At least 2 rows each.
    sigmas : sequence of float, optional
        Fixed kernel widths. If None (default), the median heuristic:
        ``2 sigma_m^2 = multiplier_m * h`` with ``h`` the median squared distance
        between distinct rows of the pooled sample (detached, so training cannot
        move the bandwidth; floored at 1e-12).
    multipliers : sequence of float
        Scales of ``h``, used only when ``sigmas`` is None.

    Returns
    -------
    Tensor
        Scalar; at most ``2 * len(kernels)``.

    Examples
    --------
    >>> g = torch.Generator().manual_seed(0)
    >>> a, b = torch.randn(200, 3, generator=g), torch.randn(200, 3, generator=g)
    >>> abs(float(mmd_loss(a, b))) < 0.05 < float(mmd_loss(a, b + 1))
    True
    """
    _check_pair(x, y, "mmd_loss")
    x, y = _as_float(x), _as_float(y)
    n, m = len(x), len(y)
    z = torch.cat([x, y])
    d2 = torch.cdist(z, z).pow(2)
    if sigmas is None:
        h = median_sq_distance(z.detach()).clamp_min(1e-12)
        denominators = [mult * h for mult in multipliers]
    else:
        denominators = [2.0 * float(s) ** 2 for s in sigmas]
    k = sum(torch.exp(-d2 / den) for den in denominators)
    kxx, kyy, kxy = k[:n, :n], k[n:, n:], k[:n, n:]
    # The diagonal of a Gaussian kernel sum is exactly len(kernels); dropping it makes the estimate unbiased.
    nk = len(denominators)
    sxx = (kxx.sum() - nk * n) / (n * (n - 1))
    syy = (kyy.sum() - nk * m) / (m * (m - 1))
    return sxx + syy - 2 * kxy.mean()


class AlignmentResult(NamedTuple):
    """What :func:`domain_alignment` computed.

    Attributes
    ----------
    loss : Tensor
        Scalar; the sum over the pairs formed, 0 if none.
    n_pairs : int
        Domain pairs that entered ``loss``.
    skipped : tuple of int
        Domains present in the batch that entered no term (fewer than
        ``min_samples`` samples, or no usable partner such as the source);
        empty when only one domain is present.
    """

    loss: Tensor
    n_pairs: int
    skipped: tuple[int, ...]


def domain_alignment(latent: Tensor, domain: Tensor, source_domain: int | None = 0, kind: str = "moment",
                     min_samples: int = 2, **kwargs) -> AlignmentResult:
    """Align the latent vectors of the domains present in a batch.

    With ``source_domain`` given, each other domain ``t`` present is aligned to
    it and the terms are summed: ``sum_t D(z[source], z[t])`` (the released code
    summed its two target terms the same way). With ``source_domain=None``,
    every unordered pair of present domains is summed. ``D`` is
    :func:`moment_matching_loss` (``kind="moment"``) or :func:`mmd_loss`
    (``kind="mmd"``). A domain with fewer than ``min_samples`` samples in the
    batch cannot form a term; it is left out and listed in ``skipped``. When no
    term can be formed the loss is 0.

    Parameters
    ----------
    latent : Tensor, shape (n, d)
    domain : Tensor, shape (n,)
        Integer domain id of each row.
    source_domain : int or None
    kind : {"moment", "mmd"}
    min_samples : int
        At least 2 (both estimators need two samples per domain).
    **kwargs
        Passed to :func:`mmd_loss` (``sigmas``, ``multipliers``).

    Returns
    -------
    AlignmentResult

    Examples
    --------
    >>> z = torch.randn(6, 4)
    >>> r = domain_alignment(z, torch.tensor([0, 0, 1, 1, 1, 2]), source_domain=0)
    >>> r.n_pairs, r.skipped
    (1, (2,))
    """
    if kind not in ALIGNMENT_KINDS:
        raise ValueError(f"alignment kind must be one of {ALIGNMENT_KINDS}, got {kind!r}")
    if min_samples < 2:
        raise ValueError(f"domain_alignment: min_samples must be >= 2, got {min_samples}")
    domain = torch.as_tensor(domain, device=latent.device).reshape(-1)
    if latent.ndim != 2 or len(domain) != len(latent):
        raise ValueError("domain_alignment: latent must be (n, d) and domain (n,); "
                         f"got {tuple(latent.shape)}, {tuple(domain.shape)}")
    distance = moment_matching_loss if kind == "moment" else (lambda a, b: mmd_loss(a, b, **kwargs))
    ids, counts = torch.unique(domain, return_counts=True)
    present = {int(i): int(c) for i, c in zip(ids.tolist(), counts.tolist())}
    usable = sorted(d for d, c in present.items() if c >= min_samples)
    if source_domain is None:
        pairs = list(combinations(usable, 2))
    elif source_domain in usable:
        pairs = [(source_domain, d) for d in usable if d != source_domain]
    else:
        pairs = []
    covered = {d for p in pairs for d in p}
    # A lone domain has nothing to be aligned with; that is not a skip.
    skipped = tuple(sorted(set(present) - covered)) if len(present) > 1 else ()
    loss = latent.new_zeros((), dtype=_as_float(latent).dtype)
    for a, b in pairs:
        loss = loss + distance(latent[domain == a], latent[domain == b])
    return AlignmentResult(loss, len(pairs), skipped)


# ------------------------------------------------------------------ composition
@dataclass
class LossWeights:
    """Weights of the training loss terms (released ``train.py``: 1, 1, 5).

    Attributes
    ----------
    image : float
        Weight of ``1 - SSIM`` between the reconstructed and the real crop.
    features : float
        Weight of the feature MSE.
    alignment : float
        Weight of the domain-alignment term.
    """

    image: float = 1.0
    features: float = 1.0
    alignment: float = 5.0


@dataclass
class LossTerms:
    """One batch's loss: ``total`` to backpropagate, unweighted ``terms`` to log.

    Attributes
    ----------
    total : Tensor
        Scalar, the weighted sum.
    terms : dict of str to Tensor
        Unweighted scalar terms (``image``, ``features``, ``alignment``).
    counts : dict of str to int
        Counters summed over an epoch (``alignment_pairs``, ``alignment_skipped``).
    """

    total: Tensor
    terms: dict[str, Tensor] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)


def autoencoder_loss(latent: Tensor, features_hat: Tensor, image_hat: Tensor, features: Tensor, crops: Tensor,
                     domain: Tensor | None = None, weights: LossWeights | None = None,
                     alignment: str | None = "moment", source_domain: int | None = 0,
                     min_samples: int = 2) -> LossTerms:
    """``w_img (1 - SSIM(image_hat, crops)) + w_feat MSE(features_hat, features) + w_align A``.

    ``A`` is :func:`domain_alignment` of ``latent`` by ``domain``; it is left out
    (and 0) when ``alignment`` is None, ``domain`` is None or its weight is 0.

    Parameters
    ----------
    latent : Tensor, shape (n, d)
    features_hat, features : Tensor, shape (n, C, r, r)
    image_hat, crops : Tensor, shape (n, 3, S, S), values in [0, 1]
    domain : Tensor, shape (n,), optional
    weights : LossWeights, optional
    alignment : {"moment", "mmd"} or None
    source_domain : int or None
        See :func:`domain_alignment`.
    min_samples : int
        See :func:`domain_alignment`.

    Returns
    -------
    LossTerms
    """
    w = weights or LossWeights()
    if image_hat.shape != crops.shape:
        raise ValueError(f"reconstructed image {tuple(image_hat.shape)} and target crop {tuple(crops.shape)} "
                         "differ in shape")
    # In float32 with autocast off: under float16 autocast the SSIM's local variances (differences of
    # small means) give non-finite gradients in every step, so a GradScaler skipped every update and
    # the model never trained on CUDA (measured on an H200, fixed here).
    with torch.autocast(device_type=latent.device.type, enabled=False):
        return _autoencoder_loss(latent.float(), features_hat.float(), image_hat.float(), features.float(),
                                 crops.float(), domain, w, alignment, source_domain, min_samples)


def _autoencoder_loss(latent: Tensor, features_hat: Tensor, image_hat: Tensor, features: Tensor, crops: Tensor,
                      domain: Tensor | None, w: LossWeights, alignment: str | None, source_domain: int | None,
                      min_samples: int) -> LossTerms:
    image = ssim_loss(image_hat, crops)
    feat = feature_mse(features_hat, features)
    total = w.image * image + w.features * feat
    terms = {"image": image.detach(), "features": feat.detach()}
    counts = {"alignment_pairs": 0, "alignment_skipped": 0}
    if alignment is not None and domain is not None and w.alignment != 0:
        res = domain_alignment(latent, domain, source_domain, kind=alignment, min_samples=min_samples)
        total = total + w.alignment * res.loss
        terms["alignment"] = res.loss.detach()
        counts = {"alignment_pairs": res.n_pairs, "alignment_skipped": len(res.skipped)}
    else:
        terms["alignment"] = total.new_zeros(())
    return LossTerms(total, terms, counts)
