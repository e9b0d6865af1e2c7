"""Canonical cell crops: every white cell at the same size, whatever the lab's magnification.

Cell size in pixels differs two- to three-fold between the study's sites (the white cell
covers about 9 % of an Acevedo-20 crop, 19 % of a Zheng-18 set 1 crop, 27 % of a BCCD
crop), so texture and shape measured in pixels mean different things in each lab. A
:class:`CellCrop` cuts the cell out around its mask (from the detector or the label-free
stain segmentation) and rescales it so that the cell's equivalent diameter is always
``cell_diameter`` pixels, centred in a ``size`` x ``size`` canvas.

The rescaling throws away the cell's absolute size, which tells lymphocytes from monocytes.
Two rulers keep it: the cell's diameter in the image's own pixels (standardised per site
later, which removes the site's magnification) and the median diameter of the red cells
of the same image (a physical ruler: red cells are about 7.5 um everywhere), estimated by
:func:`red_cell_diameter` without labels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from skimage import filters, measure

from bcfeat.detection.pseudo_masks import disk_dilation, disk_opening
from bcfeat.detection.region_geometry import equivalent_diameter, labelled_regions, resize_float, solidity_at_least


@dataclass(frozen=True)
class CropConfig:
    """Geometry of the canonical crop.

    Attributes
    ----------
    size : int
        Side of the square canvas, in pixels.
    cell_diameter : float
        Equivalent diameter (``2 sqrt(area / pi)``) of the cell in the canvas, in pixels;
        ``size / cell_diameter`` is the margin of context kept around the cell.
    ruler_work_size : int
        Long side, in pixels, of the downscaled copy the red-cell ruler is measured on.
    rescale : bool
        True: every cell is brought to ``cell_diameter``. False (the ablation's "no
        rescaling"): one zoom for every image, ``cell_diameter / reference_diameter_px``, so
        cells keep their pixel size.
    reference_diameter_px : float
        The cell diameter, in image pixels, that the fixed zoom maps to ``cell_diameter``.
    """

    size: int = 80
    cell_diameter: float = 56.0
    ruler_work_size: int = 160
    rescale: bool = True
    reference_diameter_px: float = 140.0

    def __post_init__(self) -> None:
        if not isinstance(self.size, (int, np.integer)) or not 16 <= self.size <= 1024:
            raise ValueError(f"CropConfig.size must be an integer in [16, 1024] pixels, got {self.size!r}")
        if not 4 <= self.cell_diameter <= self.size:
            raise ValueError(f"CropConfig.cell_diameter must lie in [4, size={self.size}], got {self.cell_diameter}")
        if not isinstance(self.ruler_work_size, (int, np.integer)) or not 32 <= self.ruler_work_size <= 4096:
            raise ValueError(f"CropConfig.ruler_work_size must be an integer in [32, 4096], got {self.ruler_work_size!r}")
        if not self.reference_diameter_px > 0:
            raise ValueError(f"CropConfig.reference_diameter_px must be > 0, got {self.reference_diameter_px}")


@dataclass
class CellCrop:
    """One white cell, cut out and rescaled to the canonical size.

    Attributes
    ----------
    image : np.ndarray
        ``(size, size, 3)`` uint8 RGB, the cell centred at the canonical diameter.
    mask : np.ndarray
        ``(size, size)`` bool, the cell's mask in the canvas.
    background : np.ndarray
        ``(3,)`` float, the image's background (white point) RGB in [0, 255].
    cell_diameter_px : float
        The cell's equivalent diameter in the original image's pixels.
    red_cell_diameter_px : float
        Median equivalent diameter of the image's single red cells, original pixels; NaN
        when the image shows none (e.g. a tight crop).
    """

    image: np.ndarray
    mask: np.ndarray
    background: np.ndarray
    cell_diameter_px: float
    red_cell_diameter_px: float


def background_colour(image: np.ndarray, cell_mask: np.ndarray | None = None) -> np.ndarray:
    """The white point of a smear image: the per-channel median of its brightest pixels.

    The brightest 10 % of the pixels outside the cell (by the sum of the channels) are the
    slide's empty background in every lab here; their median colour is the light that reaches
    the camera through no stain, the reference of :func:`bcfeat.crosslab.stain.optical_density`.

    ``(H, W, 3)`` uint8 (and an optional ``(H, W)`` bool cell mask) -> ``(3,)`` float64.
    """
    pixels = image.reshape(-1, 3)
    brightness = pixels[:, 0].astype(np.int32)
    brightness += pixels[:, 1]
    brightness += pixels[:, 2]
    use = None
    if cell_mask is not None:
        use = ~cell_mask.reshape(-1)
        if np.count_nonzero(use) < 16:
            use = None
    threshold = _quantile_threshold(brightness if use is None else brightness[use], 0.9)
    bright = brightness >= threshold
    bright = pixels[bright if use is None else bright & use]
    return np.maximum(_uint8_median(bright).astype(np.float64), 1.0)


def _order_statistics(counts: np.ndarray, ranks: np.ndarray) -> np.ndarray:
    """The values of 0-based ``ranks`` in the sorted data whose histogram of integers is ``counts``."""
    return np.searchsorted(np.cumsum(counts), np.asarray(ranks) + 1)


def _quantile_threshold(values: np.ndarray, q: float) -> float:
    """A threshold ``t`` with ``values >= t`` exactly where ``values >= np.quantile(values, q)``,
    for non-negative integers, from a histogram (linear time; the same cells as the sort).

    ``np.quantile`` (linear) is ``v[lo] + (v[hi] - v[lo]) * f`` at position ``q (n - 1)``: for
    integers it lies strictly between ``v[lo]`` and ``v[hi]`` when they differ and ``f > 0``, so
    the integers at or above it are those at or above ``v[hi]``; else those at or above ``v[lo]``.
    """
    position = q * (len(values) - 1)
    lo = int(np.floor(position))
    hi = min(lo + 1, len(values) - 1)
    v_lo, v_hi = _order_statistics(np.bincount(values), [lo, hi])
    return float(v_hi if position > lo and v_hi > v_lo else v_lo)


def _uint8_median(pixels: np.ndarray) -> np.ndarray:
    """``np.median(pixels, axis=0)`` of ``(n, 3)`` uint8 pixels, from per-channel histograms."""
    n = len(pixels)
    ranks = [(n - 1) // 2, n // 2]
    return np.array([_order_statistics(np.bincount(pixels[:, c], minlength=256), ranks).mean()
                     for c in range(pixels.shape[1])])


def red_cell_diameter(image: np.ndarray, cell_mask: np.ndarray, background: np.ndarray,
                      work_size: int = 160) -> float:
    """Median equivalent diameter of the single red cells around the white cell, in pixels.

    Red cells absorb green light (haemoglobin) but are paler than the white cell's nucleus:
    outside the (dilated) white cell, pixels whose green optical density is above an Otsu
    threshold are red cells. Single red cells are the compact blobs (solidity >= 0.9) that do
    not touch the border; clumps and cut cells are dropped. Returns NaN when fewer than two
    such cells are found.
    """
    H, W = cell_mask.shape
    scale = min(1.0, work_size / max(H, W))
    h, w = max(8, round(H * scale)), max(8, round(W * scale))
    # resize_float: scikit-image's resize (anti-aliased when shrinking), without its per-call checks
    green = resize_float(image[..., 1].astype(np.float32), (h, w))
    od = -np.log10(np.clip(green, 1.0, None) / background[1])
    cell = resize_float(cell_mask.astype(np.float32), (h, w)) > 0.5
    cell = disk_dilation(disk_dilation(cell, 1), 1)  # ndi.binary_dilation(cell, iterations=2)
    outside = od[~cell]
    if outside.size < 64 or np.ptp(outside) < 1e-3:
        return float("nan")
    red = (od > filters.threshold_otsu(outside)) & ~cell
    red = disk_opening(red, 1)  # ndi.binary_opening(red, iterations=1)
    diameters = []
    for (rows, cols), region, area in labelled_regions(measure.label(red)):
        if rows.start == 0 or cols.start == 0 or rows.stop == h or cols.stop == w or area < 12:
            continue
        if solidity_at_least(region, 0.9):
            diameters.append(equivalent_diameter(area))
    if len(diameters) < 2:
        return float("nan")
    return float(np.median(diameters) / scale)


def red_cell_od(image: np.ndarray, cell_mask: np.ndarray, background: np.ndarray,
                min_pixels: int = 32) -> np.ndarray:
    """The red cells' colour in the same photograph: the per-channel median optical density
    ``(R, G, B)`` of the pixels outside the white cell (dilated by three pixels) whose green optical
    density is above Otsu's threshold there (red cells absorb green light; the slide between them
    does not). NaN where fewer than 64 pixels lie outside the cell or fewer than ``min_pixels`` pass.

    Red cells take the same eosin in every photograph of a smear, so this is a colour reference
    within the photograph (the red-cell ruler, :func:`red_cell_diameter`, is one for size).

    >>> img = np.full((60, 60, 3), 240, np.uint8); img[:, :20] = (200, 120, 150)   # red cells on the left
    >>> cell = np.zeros((60, 60), bool); cell[25:35, 40:50] = True
    >>> od = red_cell_od(img, cell, np.array([240.0, 240.0, 240.0]))
    >>> [round(float(v), 2) for v in od]
    [0.08, 0.3, 0.2]
    """
    od = -np.log10(np.clip(image.astype(np.float64), 1.0, None) / background)
    outside = od[~ndi.binary_dilation(cell_mask, iterations=3)]
    if len(outside) < 64 or np.ptp(outside[:, 1]) < 1e-6:
        return np.full(3, np.nan)
    red = outside[outside[:, 1] > filters.threshold_otsu(outside[:, 1])]
    if len(red) < min_pixels:
        return np.full(3, np.nan)
    return np.median(red, axis=0)


def _smoothed_window(image: np.ndarray, rows: np.ndarray, cols: np.ndarray, sigma: float
                     ) -> tuple[np.ndarray, int, int]:
    """``ndi.gaussian_filter(image, (sigma, sigma, 0))`` (float32) on the part of the image that
    linear sampling at ``rows, cols`` reads, and the part's top-left corner.

    The Gaussian reaches ``int(4 sigma + 0.5)`` pixels (scipy's truncation); the part extends that
    far (and one more pixel) beyond the sampled area, or to the image's edge, so every sampled
    value is the same number as on the whole smoothed image, at a fraction of the cost."""
    H, W = image.shape[:2]
    reach = int(4.0 * sigma + 0.5) + 2
    r0 = int(np.clip(np.floor(rows.min()) - reach, 0, H))
    r1 = int(np.clip(np.ceil(rows.max()) + reach + 1, 0, H))
    c0 = int(np.clip(np.floor(cols.min()) - reach, 0, W))
    c1 = int(np.clip(np.ceil(cols.max()) + reach + 1, 0, W))
    if r1 - r0 < 2 or c1 - c0 < 2:  # the canvas lies (almost) wholly outside the image
        r0, r1, c0, c1 = 0, H, 0, W
    part = ndi.gaussian_filter(image[r0:r1, c0:c1].astype(np.float32), sigma=(sigma, sigma, 0))
    return part, r0, c0


def _canvas_geometry(cell_mask: np.ndarray, cfg: CropConfig) -> tuple[float, float, np.ndarray, np.ndarray]:
    """Where each canvas pixel samples the image: the cell's equivalent diameter (image pixels), the
    zoom (canvas pixels per image pixel) and the ``(size, size)`` sampled rows and columns, the
    canvas centred on the mask's centroid."""
    diameter = 2.0 * np.sqrt(int(cell_mask.sum()) / np.pi)
    zoom = cfg.cell_diameter / (diameter if cfg.rescale else cfg.reference_diameter_px)
    cy, cx = ndi.center_of_mass(cell_mask)
    # canvas pixel (i, j) samples the image at centre + (index - canvas centre) / zoom
    offsets = (np.arange(cfg.size, dtype=np.float64) - (cfg.size - 1) / 2) / zoom
    rows, cols = np.meshgrid(cy + offsets, cx + offsets, indexing="ij")
    return float(diameter), float(zoom), rows, cols


def _sample_mask(mask: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """A bool mask sampled (linearly, then > 0.5) at ``rows, cols``; outside the image is False."""
    return ndi.map_coordinates(mask.astype(np.float32), np.stack([rows, cols]), order=1, mode="constant",
                               cval=0.0) > 0.5


def canvas_mask(mask: np.ndarray, cell_mask: np.ndarray, cfg: CropConfig | None = None) -> np.ndarray:
    """Another mask of the same image (an expert's nucleus, say) on the canvas that
    :func:`canonical_crop` cuts around ``cell_mask``: ``(H, W)`` bool -> ``(size, size)`` bool,
    pixel for pixel where the crop's own mask and image lie.

    >>> cell = np.zeros((60, 60), bool); cell[10:50, 10:50] = True
    >>> bool((canvas_mask(cell, cell, CropConfig(size=32, cell_diameter=20)) ==
    ...       canonical_crop(np.full((60, 60, 3), 200, np.uint8), cell, CropConfig(size=32, cell_diameter=20),
    ...                      ruler=False).mask).all())
    True
    """
    cfg = cfg or CropConfig()
    cell_mask = np.asarray(cell_mask, bool)
    if mask.shape != cell_mask.shape:
        raise ValueError(f"mask of shape {mask.shape} does not match the cell mask's {cell_mask.shape}")
    if not cell_mask.any():
        raise ValueError("the cell mask is empty")
    _, _, rows, cols = _canvas_geometry(cell_mask, cfg)
    return _sample_mask(np.asarray(mask, bool), rows, cols)


def canonical_crop(image: np.ndarray, cell_mask: np.ndarray, cfg: CropConfig | None = None,
                   ruler: bool = True) -> CellCrop:
    """Cut the cell out around its mask and rescale it to the canonical diameter.

    Parameters
    ----------
    image : np.ndarray
        ``(H, W, 3)`` uint8 RGB.
    cell_mask : np.ndarray
        ``(H, W)`` bool, the white cell (nucleus + cytoplasm). An empty mask is an error.
    cfg : CropConfig, optional

    Returns
    -------
    CellCrop
        Image ``(size, size, 3)`` and mask ``(size, size)`` centred on the mask's centroid.
        Canvas pixels that fall outside the image take the background colour.
        ``red_cell_diameter_px`` is NaN with ``ruler=False`` (a classifier that does not use the
        cell's size against the red cells need not measure them).

    Examples
    --------
    >>> img = np.full((100, 100, 3), 230, np.uint8)
    >>> yy, xx = np.mgrid[:100, :100]
    >>> disk = (yy - 40) ** 2 + (xx - 60) ** 2 < 20 ** 2
    >>> img[disk] = (120, 60, 160)
    >>> crop = canonical_crop(img, disk, CropConfig(size=64, cell_diameter=32))
    >>> crop.image.shape, round(float(crop.cell_diameter_px)), round(float(crop.mask.sum() / (np.pi * 16 ** 2)), 1)
    ((64, 64, 3), 40, 1.0)
    """
    cfg = cfg or CropConfig()
    image = np.asarray(image)
    cell_mask = np.asarray(cell_mask, bool)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got shape {image.shape} dtype {image.dtype}")
    if cell_mask.shape != image.shape[:2]:
        raise ValueError(f"mask of shape {cell_mask.shape} does not match the image's {image.shape[:2]}")
    area = int(cell_mask.sum())
    if area == 0:
        raise ValueError("the cell mask is empty")
    background = background_colour(image, cell_mask)
    diameter, zoom, rows, cols = _canvas_geometry(cell_mask, cfg)
    coords = np.stack([rows, cols])
    if zoom < 1:  # shrinking: smooth first so the canvas does not alias the granules
        source, r0, c0 = _smoothed_window(image, rows, cols, 0.5 / zoom)
        coords = np.stack([rows - r0, cols - c0])
    else:
        source = image.astype(np.float32)
    channels = [ndi.map_coordinates(source[..., c], coords, order=1, mode="constant", cval=float(background[c]))
                for c in range(3)]
    crop = np.clip(np.rint(np.stack(channels, axis=-1)), 0, 255).astype(np.uint8)
    mask = _sample_mask(cell_mask, rows, cols)
    red = red_cell_diameter(image, cell_mask, background, cfg.ruler_work_size) if ruler else float("nan")
    return CellCrop(image=crop, mask=mask, background=background, cell_diameter_px=float(diameter),
                    red_cell_diameter_px=red)


__all__ = ["CropConfig", "CellCrop", "background_colour", "red_cell_diameter", "red_cell_od", "canvas_mask", "canonical_crop"]
