"""Label-free stain segmentation of the white cell: the pseudo-masks the detector learns from.

The paper (Sec. 2.1) trains its Mask R-CNN on expert-drawn white-cell masks. Here no expert
label may reach training, so the detector (:mod:`bcfeat.detection`) learns from masks this
module computes from colour and layout alone, with rules that hold for all four stains
(MGG/CellaVision, the JTSC rapid stain with its yellow background, the BCCD smears):

1. **Nucleus.** The nucleus takes up the basic dye and absorbs green light most, so it is
   the darkest class of a three-class Otsu split of the green channel (classes: nucleus,
   red cells/cytoplasm, background). The nucleus blob that is large and near the centre is
   kept, together with the separate lobes of a segmented nucleus lying close to it.
2. **Cell colours, centre against surround.** Single-cell crops are centred on the white
   cell, while red cells and background fill the frame. A colour (a bin of a 24^3 RGB
   histogram) belongs to the white cell when it is more frequent in a disk around the
   nucleus than in the outer frame of the crop: a per-image likelihood ratio of two
   smoothed colour histograms (the centre-surround saliency idea, and the same
   "seed from layout, then classify colours" scheme as the self-supervised WBC
   segmentation of Zheng et al., Micron 2018). No colour thresholds are fixed in advance,
   which is what lets one rule serve four very different stains.
3. **Shape.** The cell candidates and the nucleus are joined, holes are filled, an opening
   cuts thin bridges, the component that holds the nucleus is kept, and a watershed on the
   distance transform splits off touching red cells (parts without nucleus are dropped).
4. **Quality.** Size, centring, solidity, border contact and nucleus share give a soft
   ``quality`` in [0, 1] and a hard ``confident`` flag so that training can skip doubtful
   pseudo-masks (e.g. Acevedo-20 platelet images, which hold no white cell at all).

Parameters were set by looking at montages of all four datasets; the handful of numbers
that were compared by IoU against the expert masks while developing (histogram bins 12/16/
24/32, inside radius 0.2-0.4, frame width) are listed in :class:`SegmentationConfig`. The
expert masks are read only by :mod:`bcfeat.detection.mask_metrics`, never here.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
from PIL import Image
from scipy import ndimage as ndi
from skimage import filters, measure, morphology
from skimage.segmentation import watershed
from skimage.transform import resize

from bcfeat.detection.region_geometry import h_maxima, solidity


RESAMPLERS = ("skimage", "pillow")


@dataclass(frozen=True)
class SegmentationConfig:
    """Parameters of :func:`segment_white_cell`; lengths are fractions of the working size.

    Attributes
    ----------
    work_size : int
        The image is resized so its long side has this many pixels (speed; the mask is
        resized back). 128 keeps the smallest (88 px) crops at full resolution.
    smooth_sigma : float
        Gaussian smoothing before everything, in working pixels (granules, JPEG noise).
    colour_bins : int
        Bins per RGB channel of the centre/surround colour histograms. Compared during
        development: 12 and 16 merge pale cytoplasm with background in the CellaVision
        images, 32 starts to fragment the JTSC cells; 24 was kept.
    hist_sigma : float
        Gaussian smoothing of the 3-D histograms, in bins, so that a colour seen only at
        the neighbouring bin still counts.
    inside_radius : float
        Radius of the "centre" disk around the nucleus (a typical white-cell radius in
        these crops; 0.2 cuts large monocytes, 0.4 swallows red cells).
    inside_shrink : tuple of float
        Factors of ``inside_radius`` tried in turn until the shape checks pass (a smaller
        disk when background between crowded red cells leaked into the mask).
    inside_from_nucleus : float
        0: the centre disk's radius is ``inside_radius`` of the crop (the crops frame the cell
        alike). > 0: it is at most this many times the nucleus's reach (the largest distance
        from the nucleus's centroid to its pixels), so a cell that fills a sixth of its crop is
        not sampled with the red cells around it; the crop-relative radius stays the upper bound.
    frame_width : float
        Width of the outer frame used as the "surround" sample.
    log_ratio_threshold : float
        A colour is a cell colour when log(p_centre / p_frame) exceeds this (0: more
        frequent in the centre than in the frame).
    opening_radius : float
        Radius of the opening / closing that removes thin bridges and ragged edges.
    lobe_distance : float
        Nucleus blobs closer than this to the main one are lobes of the same nucleus.
    lobe_min_area : float
        ... and at least this fraction of the main blob's area (drops platelets, debris).
    split_h : float
        h of the h-maxima markers (fraction of the largest inscribed radius) for the
        watershed that splits touching red cells; 0 disables the split.
    min_area_frac, max_area_frac : float
        Plausible cell area as a fraction of the crop (quality check).
    max_centre_offset : float
        Largest plausible distance of the mask centroid from the crop centre.
    min_solidity : float
        Smallest plausible area / convex-hull area (white cells are roughly convex).
    max_border_frac : float
        Largest plausible fraction of the crop border covered by the mask (JTSC cells fill
        their ~120 px crops, so this is generous).
    min_nucleus_frac : float
        Smallest plausible nucleus share of the cell.
    resampler : {"skimage", "pillow"}
        How the image is brought to the working size and the masks back to the image's.
        ``"skimage"`` (the reproduction's pseudo-masks): scikit-image's Gaussian anti-aliasing
        and bilinear interpolation in float64. ``"pillow"``: Pillow's bilinear filter on the
        8-bit image and masks (its support widens with the reduction, so it anti-aliases too),
        the same masks up to a boundary pixel at a fraction of the cost (the cross-lab model's
        setting, :class:`bcfeat.crosslab.model.CrossLabConfig`).
    """

    work_size: int = 128
    smooth_sigma: float = 1.0
    colour_bins: int = 24
    hist_sigma: float = 1.0
    inside_radius: float = 0.3
    inside_shrink: tuple[float, ...] = (1.0, 0.75, 0.55)
    inside_from_nucleus: float = 0.0
    frame_width: float = 0.1
    log_ratio_threshold: float = 0.0
    opening_radius: float = 0.03
    lobe_distance: float = 0.15
    lobe_min_area: float = 0.05
    split_h: float = 0.1
    min_area_frac: float = 0.02
    max_area_frac: float = 0.85
    max_centre_offset: float = 0.3
    min_solidity: float = 0.8
    max_border_frac: float = 0.5
    min_nucleus_frac: float = 0.05
    resampler: str = "skimage"

    def __post_init__(self) -> None:
        if self.resampler not in RESAMPLERS:
            raise ValueError(f"SegmentationConfig.resampler must be one of {RESAMPLERS}, got {self.resampler!r}")
        if not (math.isfinite(self.inside_from_nucleus) and self.inside_from_nucleus >= 0):
            raise ValueError("SegmentationConfig.inside_from_nucleus must be >= 0 (0: the centre disk sized from the "
                             f"crop), got {self.inside_from_nucleus!r}")


def segmentation_key(cfg: SegmentationConfig) -> dict:
    """``cfg`` as a dict for cache keys: settings added after caches were written are left out
    at their default (then they change nothing), so those caches stay valid.

    >>> "inside_from_nucleus" in segmentation_key(SegmentationConfig())
    False
    >>> segmentation_key(SegmentationConfig(inside_from_nucleus=1.2))["inside_from_nucleus"]
    1.2
    """
    key = asdict(cfg)
    if key["inside_from_nucleus"] == 0:
        del key["inside_from_nucleus"]
    return key


@dataclass
class PseudoMask:
    """One white-cell pseudo-mask.

    Attributes
    ----------
    mask : np.ndarray
        ``(H, W)`` bool, the whole cell (nucleus + cytoplasm) at the input resolution.
    nucleus : np.ndarray or None
        ``(H, W)`` bool, the selected nucleus (inside ``mask``); None when the caller asked
        :func:`segment_white_cell` for the cell alone (``full_nucleus=False``).
    box : tuple of float
        ``(x0, y0, x1, y1)`` of ``mask`` in input pixels, right/bottom exclusive.
    quality : float
        Soft score in [0, 1], the product of the shape checks' margins.
    confident : bool
        True when every hard shape check passes.
    reason : str
        Comma-separated failed checks; empty when confident.
    """

    mask: np.ndarray
    nucleus: np.ndarray | None
    box: tuple[float, float, float, float]
    quality: float
    confident: bool
    reason: str = ""


def _disk_radius(radius: float) -> int:
    """The integer radius of the disk a length of ``radius`` working pixels stands for (at least 1)."""
    return max(1, int(round(radius)))


@functools.lru_cache(maxsize=64)
def _disk_half_widths(radius: int) -> np.ndarray:
    """Per row of ``morphology.disk(radius)``, top to bottom, the half-width of its run of pixels
    (read-only: shared between calls)."""
    half_widths = morphology.disk(radius).sum(axis=1) // 2
    half_widths.flags.writeable = False
    return half_widths


def _disk_morphology(mask: np.ndarray, radius: int, dilate: bool) -> np.ndarray:
    """``ndi.binary_erosion`` (or ``binary_dilation``) of a bool mask by ``morphology.disk(radius)``,
    outside the image False: the same pixels in a fraction of the time.

    Each row of the disk is a run of pixels, so the erosion is the AND, over the disk's rows, of the
    mask shifted by the row's offset and eroded along its rows by the run (the dilation: OR and
    OR); the runs' erosions are built one pixel wider at a time from slices of the padded mask.
    """
    h, w = mask.shape
    combine = np.logical_or if dilate else np.logical_and
    half_widths = _disk_half_widths(radius)
    padded = np.zeros((h + 2 * radius, w + 2 * radius), bool)
    padded[radius:radius + h, radius:radius + w] = mask
    runs = [padded[:, radius:radius + w]]  # runs[k]: combined over column offsets -k..k
    for k in range(1, int(half_widths.max()) + 1):
        runs.append(combine(combine(runs[-1], padded[:, radius - k:radius - k + w]),
                            padded[:, radius + k:radius + k + w]))
    out = runs[half_widths[0]][:h].copy()
    for dy in range(1, 2 * radius + 1):
        combine(out, runs[half_widths[dy]][dy:dy + h], out=out)
    return out


def disk_erosion(mask: np.ndarray, radius: int) -> np.ndarray:
    """``ndi.binary_erosion(mask, structure=morphology.disk(radius))`` of a bool mask, exactly
    (``radius=1``: scipy's default cross)."""
    return _disk_morphology(mask, radius, dilate=False)


def disk_dilation(mask: np.ndarray, radius: int) -> np.ndarray:
    """``ndi.binary_dilation(mask, structure=morphology.disk(radius))`` of a bool mask, exactly
    (``radius=1``: scipy's default cross)."""
    return _disk_morphology(mask, radius, dilate=True)


def disk_opening(mask: np.ndarray, radius: int) -> np.ndarray:
    """``ndi.binary_opening(mask, structure=morphology.disk(radius))`` of a bool mask, exactly.

    >>> m = np.zeros((9, 9), bool); m[2:7, 2:7] = True; m[4, 7:] = True
    >>> bool(np.array_equal(disk_opening(m, 1), ndi.binary_opening(m, morphology.disk(1))))
    True
    """
    return disk_dilation(disk_erosion(mask, radius), radius)


def disk_closing(mask: np.ndarray, radius: int) -> np.ndarray:
    """``ndi.binary_closing(mask, structure=morphology.disk(radius))`` of a bool mask, exactly (the
    erosion, too, sees False outside the image)."""
    return disk_erosion(disk_dilation(mask, radius), radius)


def central_component(labels: np.ndarray, seed: np.ndarray | None = None) -> np.ndarray:
    """The labelled component that is large, central and (if given) holds the most seed.

    Score = area x Gaussian(centroid distance from the centre, sigma = 1/4 of the side)
    x (1 + 4 x share of the seed inside): a big blob at the edge loses to the central cell.
    """
    h, w = labels.shape
    n = int(labels.max())
    if n == 0:
        return np.zeros(labels.shape, bool)
    flat = labels.ravel()
    area = np.bincount(flat, minlength=n + 1)[1:].astype(np.float64)
    rows, cols = np.indices(labels.shape)
    # sums of integer coordinates are exact in float64, so these are regionprops' centroids
    cy = np.bincount(flat, rows.ravel(), minlength=n + 1)[1:] / area
    cx = np.bincount(flat, cols.ravel(), minlength=n + 1)[1:] / area
    d2 = ((cy - (h - 1) / 2) / h) ** 2 + ((cx - (w - 1) / 2) / w) ** 2
    score = area * np.exp(-d2 / (2 * 0.25**2))
    if seed is not None:
        seed_total = max(1, int(seed.sum()))
        score *= 1.0 + 4.0 * np.bincount(labels[seed], minlength=n + 1)[1:] / seed_total
    best = int(np.argmax(score)) + 1  # the first of equal scores, as a scan in label order keeps
    return labels == best


def mask_to_box(mask: np.ndarray) -> tuple[float, float, float, float]:
    """``(x0, y0, x1, y1)`` of a non-empty boolean mask, right/bottom exclusive."""
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        raise ValueError("empty mask has no box")
    return (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))


def centred_ellipse(height: int, width: int, fraction: float = 0.5) -> np.ndarray:
    """A centred ellipse covering ``fraction`` of each side: the no-information guess.

    >>> int(centred_ellipse(8, 8).sum())
    12
    """
    yy, xx = np.mgrid[:height, :width]
    cy, cx = (height - 1) / 2, (width - 1) / 2
    ry, rx = fraction * height / 2, fraction * width / 2
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def _select_nucleus(green: np.ndarray, cfg: SegmentationConfig) -> np.ndarray:
    """Main nucleus blob (large, central) plus nearby lobes, at working resolution."""
    try:
        threshold = filters.threshold_multiotsu(green, classes=3)[0]
    except ValueError:  # fewer than 3 distinct grey levels (blank image)
        return np.zeros(green.shape, bool)
    dark = green < threshold
    r = cfg.opening_radius * cfg.work_size
    opened = disk_opening(dark, _disk_radius(r / 2))
    if opened.sum() < 10:
        opened = dark
    labels = measure.label(opened)
    main = central_component(labels)
    if not main.any():
        return main
    near_main = ndi.distance_transform_edt(~main)
    # A blob is near the main one when any of its pixels is (its closest pixel is closer than the limit).
    near = np.zeros(int(labels.max()) + 1, bool)
    near[labels[near_main < cfg.lobe_distance * cfg.work_size]] = True
    area = np.bincount(labels.ravel(), minlength=len(near))
    lobe = near & (area > cfg.lobe_min_area * main.sum())
    lobe[0] = False
    return main | lobe[labels]


def _colour_log_ratio(img: np.ndarray, inside: np.ndarray, outside: np.ndarray,
                      cfg: SegmentationConfig) -> np.ndarray:
    """Per-pixel log(p(colour | inside) / p(colour | outside)) from smoothed 3-D histograms."""
    nb = cfg.colour_bins
    q = np.clip((img * nb).astype(np.int64), 0, nb - 1)
    flat = (q[..., 0] * nb + q[..., 1]) * nb + q[..., 2]

    def density(sel: np.ndarray) -> np.ndarray:
        hist = np.bincount(flat[sel], minlength=nb**3).reshape(nb, nb, nb).astype(np.float64)
        if cfg.hist_sigma > 0:
            hist = ndi.gaussian_filter(hist, cfg.hist_sigma, mode="constant")
        return hist.ravel() / max(1, int(sel.sum()))

    # 1e-4 ~ one pixel in ten thousand: a floor so unseen colours give a finite ratio.
    return np.log((density(inside)[flat] + 1e-4) / (density(outside)[flat] + 1e-4))


def _window(mask: np.ndarray, margin: int) -> tuple[slice, slice]:
    """The bounding box of a non-empty mask, widened by ``margin`` pixels (within the image)."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return (slice(max(0, rows[0] - margin), rows[-1] + 1 + margin),
            slice(max(0, cols[0] - margin), cols[-1] + 1 + margin))


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """``ndi.binary_fill_holes`` (4-connected background) in a third of its time: the holes are the
    background's 4-connected components that do not touch the border.

    >>> ring = np.ones((5, 5), bool); ring[2, 2] = False
    >>> bool(fill_holes(ring).all())
    True
    """
    labels, n = ndi.label(~mask)
    if n == 0:
        return mask.copy()
    hole = np.ones(n + 1, bool)
    hole[0] = False
    hole[np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])] = False
    return mask | hole[labels]


def _single_summit(dist: np.ndarray) -> np.ndarray | None:
    """The plateau of a distance map's maximum when it is the map's only regional maximum, else None.

    Then it is also the only h-maximum for every ``0 < h < max`` (each other point climbs to it
    without descending, so the reconstruction takes it down by less than h), which is what the
    touching-cell split asks of ``morphology.h_maxima``, in a fraction of its time. Pixels not
    below any 8-neighbour are local maxima, and an 8-connected set of them has one value; each
    regional maximum is such a set, so one set (among the positive pixels) means one maximum.
    """
    candidates = (dist == ndi.maximum_filter(dist, size=3)) & (dist > 0)
    _, n = ndi.label(candidates, structure=np.ones((3, 3), bool))
    return candidates if n == 1 else None


def _clean_shape(candidates: np.ndarray, nucleus: np.ndarray, cfg: SegmentationConfig) -> np.ndarray:
    radius = _disk_radius(cfg.opening_radius * cfg.work_size)
    cell = fill_holes(candidates | nucleus)
    cell = disk_opening(cell, radius)
    cell = central_component(measure.label(cell), nucleus)
    if not cell.any():
        return cell
    # From here on only the cell and what the closing can reach matter: work on its box with a
    # background margin wider than the closing reaches, which gives the same pixels as the whole
    # image (every step below sees only the cell and background) at a fraction of the cost.
    window = _window(cell, 2 * radius + 1)
    cell, part_nucleus = cell[window], nucleus[window]
    if cfg.split_h > 0:
        # Touching red cells make a waist in the distance transform: split there, keep
        # the parts that hold nucleus.
        # The split sees the cell's box and one pixel of background around it: the same distances
        # (the nearest background pixel of an inside pixel is never farther out) and the same
        # markers (inside, the reconstruction climbs to the cell's summit without leaving it).
        tight = _window(cell, 1)
        part_cell, part_nuc = cell[tight], part_nucleus[tight]
        dist = ndi.distance_transform_edt(part_cell)
        n_total = nucleus.sum()
        keep = np.zeros_like(cell)
        summit = _single_summit(dist)
        if summit is not None:
            # One marker: the watershed floods the cell's parts that its 4-neighbours reach from it.
            parts, _ = ndi.label(part_cell)
            flooded = np.isin(parts, np.unique(parts[summit]))
            overlap = part_nuc[flooded].sum()
            if overlap >= 0.1 * flooded.sum() or overlap >= 0.25 * n_total:
                keep[tight] = flooded
        else:
            markers = measure.label(h_maxima(dist, cfg.split_h * dist.max()))
            parts = watershed(-dist, markers, mask=part_cell)
            kept = np.zeros_like(part_cell)
            for region in measure.regionprops(parts):
                rr, cc = region.coords[:, 0], region.coords[:, 1]
                overlap = part_nuc[rr, cc].sum()
                if overlap >= 0.1 * region.area or overlap >= 0.25 * n_total:
                    kept[rr, cc] = True
            keep[tight] = kept
        cell = keep
    out = np.zeros(candidates.shape, bool)
    out[window] = fill_holes(disk_closing(cell, radius))
    return out


def _centroid_and_solidity(cell: np.ndarray) -> tuple[float, float, float]:
    """``regionprops(cell.astype(np.uint8))[0]``'s centroid (row, column) and solidity, by the same
    arithmetic (:func:`bcfeat.detection.region_geometry.solidity` on the region's box) without
    building the region object: a fifth of :func:`_quality`'s time. ``cell`` must not be empty."""
    box = _window(cell, 0)
    image = cell[box]
    offset = np.array([box[0].start, box[1].start])
    cy, cx = (offset + np.argwhere(image)).astype(np.float64).mean(axis=0)  # regionprops' coords, unit spacing
    return float(cy), float(cx), solidity(image)


def _quality(cell: np.ndarray, nucleus: np.ndarray, cfg: SegmentationConfig) -> tuple[float, bool, str]:
    h, w = cell.shape
    area = cell.mean()
    if area == 0:
        return 0.0, False, "empty"
    cy, cx, cell_solidity = _centroid_and_solidity(cell)
    offset = float(np.hypot((cy - (h - 1) / 2) / h, (cx - (w - 1) / 2) / w))
    border = float(np.concatenate([cell[0], cell[-1], cell[:, 0], cell[:, -1]]).mean())
    nucleus_frac = nucleus.sum() / cell.sum()
    checks = {
        "area_small": area >= cfg.min_area_frac,
        "area_large": area <= cfg.max_area_frac,
        "off_centre": offset <= cfg.max_centre_offset,
        "not_convex": cell_solidity >= cfg.min_solidity,
        "on_border": border <= cfg.max_border_frac,
        "no_nucleus": nucleus_frac >= cfg.min_nucleus_frac,
    }
    # Each factor is 1 well inside its range and falls to 0 at the hard limit.
    soft = (
        np.clip(area / (2 * cfg.min_area_frac), 0, 1)
        * np.clip((1 - area) / (2 * (1 - cfg.max_area_frac)), 0, 1)
        * np.clip(2 * (1 - offset / cfg.max_centre_offset), 0, 1)
        * np.clip((cell_solidity - cfg.min_solidity) / ((1 - cfg.min_solidity) / 2), 0, 1)
        * np.clip(2 * (1 - border / cfg.max_border_frac), 0, 1)
    )
    failed = [name for name, ok in checks.items() if not ok]
    return float(soft), not failed, ",".join(failed)


def _to_work_size(image: np.ndarray, shape: tuple[int, int], resampler: str) -> np.ndarray:
    """``(H, W, 3)`` uint8 -> ``shape`` float32 RGB in [0, 1], anti-aliased."""
    if resampler == "pillow":
        small = Image.fromarray(image).resize((shape[1], shape[0]), Image.Resampling.BILINEAR)
        return np.asarray(small, dtype=np.float32) / np.float32(255)
    return resize(image, shape, anti_aliasing=True).astype(np.float32)


def _mask_to_size(mask: np.ndarray, shape: tuple[int, int], resampler: str, nearest: bool = False) -> np.ndarray:
    """A working-size bool mask brought to ``shape``: bilinear and > 1/2, or ``nearest``."""
    if resampler == "pillow":
        method = Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR
        big = Image.fromarray(mask.astype(np.uint8) * np.uint8(255)).resize((shape[1], shape[0]), method)
        return np.asarray(big) > 127
    return resize(mask.astype(np.float32), shape, order=0 if nearest else 1) > 0.5


def segment_white_cell(image: np.ndarray, cfg: SegmentationConfig | None = None,
                       full_nucleus: bool = True) -> PseudoMask:
    """Segment the central white cell of a single-cell crop, without labels.

    Parameters
    ----------
    image : np.ndarray
        ``(H, W, 3)`` uint8 RGB crop.
    cfg : SegmentationConfig, optional
    full_nucleus : bool
        False: the nucleus is not brought back to the input resolution (``PseudoMask.nucleus`` is
        None; every other field is the same), for a caller that finds the nucleus itself (the
        cross-lab features do, on the canonical crop).

    Returns
    -------
    PseudoMask
        Whole-cell mask ``(H, W)`` bool, nucleus, box and quality flag. When no nucleus is
        found (e.g. a blank image) the mask is a centred ellipse and ``confident`` is False.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> img = np.full((96, 96, 3), (235, 215, 200), np.uint8)           # beige background
    >>> yy, xx = np.mgrid[:96, :96]
    >>> img[(yy - 48) ** 2 + (xx - 48) ** 2 < 24 ** 2] = (175, 150, 205)  # lilac cytoplasm
    >>> img[(yy - 48) ** 2 + (xx - 48) ** 2 < 11 ** 2] = (90, 40, 130)   # dark nucleus
    >>> img = np.clip(img + rng.normal(0, 3, img.shape), 0, 255).astype(np.uint8)
    >>> pm = segment_white_cell(img)
    >>> pm.confident, round(float(pm.mask.sum() / (np.pi * 24 ** 2)), 1)
    (True, 1.0)
    """
    cfg = cfg or SegmentationConfig()
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got shape {image.shape} dtype {image.dtype}")
    H, W = image.shape[:2]
    if min(H, W) < 8:
        raise ValueError(f"image of {H}x{W} px is too small to segment")
    scale = cfg.work_size / max(H, W)
    h, w = max(8, round(H * scale)), max(8, round(W * scale))
    img = _to_work_size(image, (h, w), cfg.resampler)
    img = ndi.gaussian_filter(img, sigma=(cfg.smooth_sigma, cfg.smooth_sigma, 0))

    nucleus = _select_nucleus(img[..., 1], cfg)
    if nucleus.sum() < 4:
        guess = centred_ellipse(H, W)
        return PseudoMask(guess, np.zeros((H, W), bool) if full_nucleus else None, mask_to_box(guess), 0.0, False,
                          "no_nucleus")

    yy, xx = np.mgrid[:h, :w]
    cy, cx = np.argwhere(nucleus).mean(axis=0)
    centre_d2 = (yy - cy) ** 2 + (xx - cx) ** 2
    reach = float(np.sqrt(centre_d2[nucleus].max())) if cfg.inside_from_nucleus > 0 else math.inf
    fw = max(2, int(cfg.frame_width * cfg.work_size))
    outside = np.ones((h, w), bool)
    outside[fw:-fw, fw:-fw] = False
    best = None
    # Where red cells crowd the frame, the background between them is rarer in the frame
    # than in a wide centre disk and leaks into the mask (a ragged, non-convex shape):
    # shrink the centre disk until the shape is plausible, else keep the best try.
    for shrink in cfg.inside_shrink:
        radius = shrink * cfg.inside_radius * cfg.work_size
        if cfg.inside_from_nucleus > 0:
            radius = min(radius, shrink * cfg.inside_from_nucleus * reach)
        inside = centre_d2 < radius ** 2
        log_ratio = _colour_log_ratio(img, inside, outside, cfg)
        cell = _clean_shape(log_ratio > cfg.log_ratio_threshold, nucleus, cfg)
        if not cell.any():
            cell = nucleus.copy()
        quality, confident, reason = _quality(cell, nucleus & cell, cfg)
        if best is None or (confident, quality) > (best[2], best[1]):
            best = (cell, quality, confident, reason)
        if confident:
            break
    cell, quality, confident, reason = best
    nucleus &= cell
    mask = _mask_to_size(cell, (H, W), cfg.resampler)
    if not mask.any():  # a cell of a few working pixels can vanish when resized back
        mask = _mask_to_size(cell, (H, W), cfg.resampler, nearest=True)
    nuc_full = _mask_to_size(nucleus, (H, W), cfg.resampler) & mask if full_nucleus else None
    return PseudoMask(mask, nuc_full, mask_to_box(mask), quality, confident, reason)


__all__: Sequence[str] = ["RESAMPLERS", "SegmentationConfig", "segmentation_key", "PseudoMask", "segment_white_cell", "central_component",
                          "mask_to_box", "centred_ellipse", "fill_holes", "disk_erosion",
                          "disk_dilation", "disk_opening", "disk_closing"]
