"""Stain-normalised colour spaces of a cell crop, relative to the slide's own white point.

A lab's stain, lamp and camera change the recorded RGB in two ways that these spaces take
out per image, without labels:

- **Optical density** (Beer-Lambert): ``OD_c = -log10(I_c / I0_c)`` with ``I0`` the image's
  background colour (:func:`bcfeat.crosslab.cell_crop.background_colour`). A yellow
  background (Zheng-18 set 1) or a dim lamp becomes OD 0; the dye amounts are additive.
- **OD chromaticity**: ``OD_c / sum(OD)``, the hue of the absorbed light, independent of
  how much dye a cell took up.
- **CIE Lab of the white-balanced image** (``I / I0``), the perceptual colour space
  haematologists describe cells in.

What stays different between labs (the dye mix itself) is left to the per-site
standardisation of the features (:mod:`bcfeat.crosslab.adaptation`).
"""

from __future__ import annotations

import numpy as np
from skimage.color import rgb2lab

# OD of a pixel that lets through 1/255 of the white point: the largest value 8-bit images hold.
MAX_OD = float(np.log10(255.0))


def optical_density(image: np.ndarray, background: np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB and ``(3,)`` white point -> ``(H, W, 3)`` float32 optical density in [0, 2.4].

    Examples
    --------
    >>> od = optical_density(np.array([[[255, 128, 26]]], np.uint8), np.array([255.0, 255.0, 255.0]))
    >>> [round(float(v), 2) for v in od[0, 0]]
    [0.0, 0.3, 0.98]
    """
    ratio = (image.astype(np.float32) + 1.0) / (np.asarray(background, np.float32) + 1.0)
    return np.clip(-np.log10(ratio), 0.0, MAX_OD) + 0.0  # + 0.0: no negative zeros


def od_chromaticity(od: np.ndarray, eps: float = 0.02) -> np.ndarray:
    """``(..., 3)`` optical density -> ``(..., 3)`` share of each channel in the total (sums to ~1)."""
    return od / (od.sum(axis=-1, keepdims=True) + eps)


def white_balanced_lab(image: np.ndarray, background: np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB -> ``(H, W, 3)`` CIE Lab after dividing by the white point."""
    balanced = np.clip(image.astype(np.float32) / np.asarray(background, np.float32), 0.0, 1.0)
    return rgb2lab(balanced).astype(np.float32)


def dye_directions(od: np.ndarray, tissue_od: float = 0.15, percentile: float = 1.0) -> tuple[np.ndarray, np.ndarray] | None:
    """The two dyes of a Romanowsky-stained image as unit optical-density directions (Macenko et al. 2009).

    The stained pixels' optical densities (total above ``tissue_od``) span mostly a plane; the
    two dyes are the directions at the ``percentile`` and ``100 - percentile`` extremes of the
    pixels' angle in that plane. The **nuclear** dye (azure, methylene blue) is the one that
    absorbs red relatively more; the other is the **cytoplasmic** dye (eosin).

    Parameters
    ----------
    od : np.ndarray
        ``(H, W, 3)`` or ``(n, 3)`` optical density.

    Returns
    -------
    (nuclear, cytoplasmic) : tuple of two ``(3,)`` float64 unit vectors, or None
        None when fewer than 50 pixels are stained or their angles do not spread (one dye only).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> nuc, cyt = np.array([0.6, 0.7, 0.3]), np.array([0.1, 0.8, 0.4])
    >>> conc = rng.uniform(0, 1, (500, 2))
    >>> n, c = dye_directions(conc[:, :1] * nuc + conc[:, 1:] * cyt)
    >>> bool(n[0] / n.sum() > c[0] / c.sum())
    True
    """
    flat = np.asarray(od, np.float64).reshape(-1, 3)
    tissue = flat[flat.sum(axis=1) > tissue_od]
    if len(tissue) < 50:
        return None
    _, vectors = np.linalg.eigh(np.cov(tissue.T))
    plane = vectors[:, [2, 1]]
    plane = plane * np.where(plane.sum(axis=0) < 0, -1.0, 1.0)
    projected = tissue @ plane
    angle = np.arctan2(projected[:, 1], projected[:, 0])
    low, high = np.percentile(angle, [percentile, 100 - percentile])
    if high - low < 0.05:
        return None
    dyes = [np.abs(plane @ np.array([np.cos(a), np.sin(a)])) for a in (low, high)]
    dyes = [d / np.linalg.norm(d) for d in dyes]
    a, b = dyes
    return (a, b) if a[0] / a.sum() > b[0] / b.sum() else (b, a)


__all__ = ["MAX_OD", "dye_directions", "optical_density", "od_chromaticity", "white_balanced_lab"]
