"""Features a haematologist would name, measured on a canonical cell crop.

Given a :class:`bcfeat.crosslab.cell_crop.CellCrop` (every cell at the same diameter, with
its mask and the slide's white point), :func:`cell_features` returns one vector of named
measurements in five groups:

- ``size``: the cell's diameter in the image's own pixels and relative to the red cells of
  the same image (lymphocytes are small, monocytes large);
- ``shape``: cell and nucleus outline (solidity, circularity, eccentricity), nucleus share of
  the cell, lobes (segmented neutrophils, eosinophils), indentation (band, monocyte kidney
  shape), thinness of the nuclear strands, nucleus offset;
- ``colour``: optical density, OD chromaticity and Lab of nucleus and cytoplasm (basophilic
  blue cytoplasm, orange eosinophil granules, pale monocyte cytoplasm) and their contrast;
- ``texture``: chromatin and granule texture (grey-level co-occurrence, local binary
  patterns, difference-of-Gaussian energy at three scales, granule density);
- ``profile``: optical density in rings from the cell's edge to its centre.

The nucleus is found inside the cell mask as the darker class of an Otsu split of the total
optical density (the nucleus takes up most dye in every stain here). No labels are used
anywhere; how each feature is then made comparable between labs is the job of
:mod:`bcfeat.crosslab.adaptation`.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial import ConvexHull, QhullError
from skimage import filters, measure
from skimage.feature import graycomatrix, graycoprops

from bcfeat.crosslab.cell_crop import CellCrop
from bcfeat.crosslab.stain import MAX_OD, od_chromaticity, optical_density, white_balanced_lab
from bcfeat.detection.pseudo_masks import disk_dilation, disk_erosion, disk_opening, fill_holes

GROUPS: tuple[str, ...] = ("size", "shape", "colour", "texture", "profile")
_GLCM_LEVELS = 16
_GLCM_DISTANCES = (1, 2, 4)
_GLCM_PROPS = ("contrast", "homogeneity", "energy", "correlation")
_LBP_RADII = (1, 2)
_DOG_SIGMAS = (1.0, 2.0, 4.0)
_N_RINGS = 6
# How the texture group reads the optical density (``CrossLabConfig.texture_od``):
# "raw": as measured; "nucleus": scaled per cell so that the nucleus's median total optical density
# is NUCLEUS_OD_REFERENCE, so that a lab that stains or illuminates darker or lighter gives the same
# grey levels to the same chromatin pattern (GLCM and LBP read quantised grey levels, which no
# per-lab standardisation of their outputs can undo).
TEXTURE_OD = ("raw", "nucleus")
# Acevedo-20's median nucleus OD sum over its cells (measured: 1.39; Zheng-18 set 1 1.67, set 2 1.26,
# BCCD 0.46): scaling to it leaves the training lab's grey levels about where they were.
NUCLEUS_OD_REFERENCE = 1.39
# Which optical density the nucleus is found in (``CrossLabConfig.nucleus_od``): "total", the sum of
# the three channels' (every dye), or "red", the red channel's alone: the nuclear dye (azure,
# haematoxylin) absorbs red light and eosin hardly does, so orange eosinophil granules that a
# darker stain brings near the nucleus's total density stay out of a nucleus found in red.
NUCLEUS_OD = ("total", "red")


def _hull_area(mask: np.ndarray) -> float:
    """Area of the convex hull of a mask's pixel squares (corners of the boundary pixels)."""
    edge = mask & ~disk_erosion(mask, 1)
    ys, xs = np.nonzero(edge)
    corners = np.concatenate([np.stack([ys + dy, xs + dx], axis=1) for dy in (0, 1) for dx in (0, 1)])
    try:
        return float(ConvexHull(corners).volume)
    except QhullError:  # a line of pixels
        return float(mask.sum())


def _eccentricity(mask: np.ndarray) -> float:
    """Eccentricity of the ellipse with the same second moments as the mask."""
    ys, xs = np.nonzero(mask)
    if len(ys) < 3:
        return 0.0
    cov = np.cov(np.stack([ys, xs]).astype(np.float64))
    small, large = np.linalg.eigvalsh(cov)
    return float(np.sqrt(max(0.0, 1.0 - small / large))) if large > 0 else 0.0


def _region_shape(mask: np.ndarray) -> list[float]:
    """Solidity, circularity and eccentricity of a mask (zeros when empty)."""
    area = int(mask.sum())
    if area < 4:
        return [0.0, 0.0, 0.0]
    perimeter = max(float(measure.perimeter(mask)), 1.0)
    return [area / max(_hull_area(mask), 1.0), float(min(4 * np.pi * area / perimeter ** 2, 1.5)),
            _eccentricity(mask)]


def _nucleus_mask(od_total: np.ndarray, cell: np.ndarray) -> np.ndarray:
    """The darker Otsu class of an optical density inside the cell, lightly cleaned."""
    values = od_total[cell]
    if values.size < 16 or np.ptp(values) < 1e-4:
        return np.zeros_like(cell)
    nucleus = (od_total > filters.threshold_otsu(values)) & cell
    nucleus = disk_opening(nucleus, 1)
    return fill_holes(nucleus)


def nucleus_density(od: np.ndarray, nucleus_od: str = "total") -> np.ndarray:
    """The optical density the nucleus is found in (:data:`NUCLEUS_OD`): ``(H, W, 3)`` -> ``(H, W)``.

    >>> od = np.array([[[0.4, 0.7, 0.3], [0.05, 0.6, 0.5]]])  # a nucleus pixel, an eosinophil granule
    >>> [round(float(v), 2) for v in nucleus_density(od)[0]], [round(float(v), 2) for v in nucleus_density(od, "red")[0]]
    ([1.4, 1.15], [0.4, 0.05])
    """
    if nucleus_od not in NUCLEUS_OD:
        raise ValueError(f"nucleus_od must be one of {NUCLEUS_OD}, got {nucleus_od!r}")
    return od.sum(axis=-1) if nucleus_od == "total" else od[..., 0]


def nucleus_mask(crop: CellCrop, nucleus_od: str = "total") -> np.ndarray:
    """The nucleus that :func:`cell_features` reads: the darker Otsu class, inside the crop's cell
    mask, of the optical density that ``nucleus_od`` names (:func:`nucleus_density`), opened by one
    pixel and with its holes filled. ``(size, size)`` bool; empty when the cell is (nearly) flat."""
    return _nucleus_mask(nucleus_density(optical_density(crop.image, crop.background), nucleus_od), crop.mask)


def _shape_features(cell: np.ndarray, nucleus: np.ndarray) -> list[float]:
    cell_area = max(int(cell.sum()), 1)
    nuc_area = int(nucleus.sum())
    feats = _region_shape(cell)
    feats += _region_shape(nucleus)
    feats.append(nuc_area / cell_area)
    # lobes: components of the nucleus, and of its thick parts (strands between lobes removed)
    labels, n_parts = ndi.label(nucleus)
    big_parts = int(np.sum(np.bincount(labels.ravel())[1:] >= 0.05 * max(nuc_area, 1))) if n_parts else 0
    depth = ndi.distance_transform_edt(nucleus)
    max_depth = float(depth.max()) if nuc_area else 0.0
    equivalent_radius = np.sqrt(nuc_area / np.pi) if nuc_area else 1.0
    thick = depth > 0.5 * max_depth if nuc_area else nucleus
    _, n_thick = ndi.label(thick)
    feats += [float(big_parts), float(n_thick), max_depth / equivalent_radius,
              float(depth[nucleus].mean() / equivalent_radius) if nuc_area else 0.0]
    if nuc_area >= 4:
        cy, cx = ndi.center_of_mass(cell)
        ny, nx = ndi.center_of_mass(nucleus)
        feats.append(float(np.hypot(cy - ny, cx - nx) / np.sqrt(cell_area / np.pi)))
    else:
        feats.append(0.0)
    return feats


_SHAPE_NAMES = ["cell_solidity", "cell_circularity", "cell_eccentricity", "nucleus_solidity",
                "nucleus_circularity", "nucleus_eccentricity", "nucleus_share", "nucleus_parts",
                "nucleus_thick_parts", "nucleus_max_depth", "nucleus_mean_depth", "nucleus_offset"]


def _colour_stats(region: np.ndarray, colours: np.ndarray) -> list[float]:
    """Mean OD (3), OD std (3), OD-sum quantiles (3), chromaticity mean (3), Lab mean (3) and Lab std (3).

    ``colours``: ``(H, W, 9)`` optical density, OD chromaticity and Lab per pixel, stacked so that
    one selection and one mean serve all three (the same numbers as three separate ones: each
    column is summed row by row either way)."""
    if region.sum() < 4:
        return [0.0] * 18
    values = colours[region]
    mean, std = values.mean(axis=0), values.std(axis=0)
    total = values[:, :3].sum(axis=1)
    return [*mean[:3], *std[:3], *np.quantile(total, (0.1, 0.5, 0.9)), *mean[3:6], *mean[6:], *std[6:]]


_COLOUR_STAT_NAMES = ["od_r", "od_g", "od_b", "od_r_std", "od_g_std", "od_b_std", "od_sum_q10", "od_sum_q50",
                      "od_sum_q90", "chroma_r", "chroma_g", "chroma_b", "lab_l", "lab_a", "lab_b", "lab_l_std",
                      "lab_a_std", "lab_b_std"]


def _glcm_features(grey: np.ndarray, region: np.ndarray) -> list[float]:
    """Co-occurrence statistics of the region's grey levels (outside the region ignored)."""
    if region.sum() < 16:
        return [0.0] * (len(_GLCM_PROPS) * len(_GLCM_DISTANCES))
    levels = np.zeros(grey.shape, np.uint8)
    levels[region] = 1 + np.minimum((grey[region] / MAX_OD * 3.0 * (_GLCM_LEVELS - 1)).astype(int),
                                    _GLCM_LEVELS - 2)
    m = graycomatrix(levels, _GLCM_DISTANCES, (0, np.pi / 4, np.pi / 2, 3 * np.pi / 4), levels=_GLCM_LEVELS)
    m = m[1:, 1:].astype(np.float64)  # pairs touching the outside (level 0) are dropped
    m = m.sum(axis=3, keepdims=True)  # rotation-invariant: a cell has no orientation
    m /= np.maximum(m.sum(axis=(0, 1), keepdims=True), 1)
    return [float(v) for prop in _GLCM_PROPS for v in np.nan_to_num(graycoprops(m, prop)[:, 0])]


def uniform_lbp(grey: np.ndarray, radius: int) -> np.ndarray:
    """Rotation-invariant uniform local binary patterns with 8 neighbours at ``radius`` pixels.

    The neighbours are taken at the nearest pixel (diagonals at ``round(radius / sqrt 2)``).
    Codes 0-8 count the neighbours at least as bright as the centre for patterns with at most
    two 0/1 transitions around the circle; every other pattern is code 9 (the "uniform"
    mapping of Ojala et al. 2002). ``(H, W)`` -> ``(H, W)`` int64; edges are replicated.
    """
    d = int(round(radius / np.sqrt(2)))
    offsets = [(0, radius), (-d, d), (-radius, 0), (-d, -d), (0, -radius), (d, -d), (radius, 0), (d, d)]
    padded = np.pad(grey, radius, mode="edge")
    h, w = grey.shape
    bits = np.stack([padded[radius + dy:radius + dy + h, radius + dx:radius + dx + w] >= grey for dy, dx in offsets])
    ones = bits.sum(axis=0)
    transitions = (bits != np.roll(bits, 1, axis=0)).sum(axis=0)
    return np.where(transitions <= 2, ones, 9).astype(np.int64)


def _texture_features(od_total: np.ndarray, nucleus: np.ndarray, cytoplasm: np.ndarray,
                      fine: bool = True) -> list[float]:
    """GLCM, LBP histograms (rotation-invariant uniform, 8 points), difference-of-Gaussian energy
    and granule density, for the nucleus and then the cytoplasm. ``fine=False``: only the
    difference-of-Gaussian energies are measured, the pixel-scale measures are NaN."""
    # 8-bit grey levels for the LBP (it compares neighbours; float noise would flip codes)
    grey = np.clip(od_total / (3 * MAX_OD) * 255 * 3, 0, 255).astype(np.uint8)
    codes = [uniform_lbp(grey, radius) for radius in _LBP_RADII] if fine else []
    blurred = {s: ndi.gaussian_filter(od_total, s) for s in sorted({*_DOG_SIGMAS, *(2 * s for s in _DOG_SIGMAS)})}
    dogs = [np.abs(blurred[s] - blurred[2 * s]) for s in _DOG_SIGMAS]
    smooth = blurred[1.0]
    peaks_all = smooth == ndi.maximum_filter(smooth, size=3) if fine else None
    missing = [float("nan")]
    feats: list[float] = []
    for region in (nucleus, cytoplasm):
        n = int(region.sum())
        feats += _glcm_features(od_total, region) if fine else missing * (len(_GLCM_PROPS) * len(_GLCM_DISTANCES))
        for code in codes:
            hist = np.bincount(code[region], minlength=10)[:10].astype(np.float64)
            feats += list(hist / max(hist.sum(), 1))
        if not fine:
            feats += missing * (10 * len(_LBP_RADII))
        feats += [float(d[region].mean()) if n >= 4 else 0.0 for d in dogs]
        if not fine:
            feats += missing
        elif n >= 16:  # granules: local maxima of the optical density per 100 px of region
            peaks = peaks_all & region & (smooth > np.median(smooth[region]))
            feats.append(100.0 * peaks.sum() / n)
        else:
            feats.append(0.0)
    return feats


@lru_cache(maxsize=4)
def _texture_names() -> list[str]:
    names = []
    for part in ("nucleus", "cytoplasm"):
        names += [f"{part}_glcm_{p}_d{d}" for p in _GLCM_PROPS for d in _GLCM_DISTANCES]
        names += [f"{part}_lbp_r{r}_{k}" for r in _LBP_RADII for k in range(10)]
        names += [f"{part}_dog_s{s:g}" for s in _DOG_SIGMAS]
        names.append(f"{part}_granules_per_100px")
    return names


def _profile_features(od_total: np.ndarray, chroma: np.ndarray, cell: np.ndarray) -> list[float]:
    """Mean OD sum and blue chromaticity in rings from the cell's edge (ring 0) to its centre."""
    depth = ndi.distance_transform_edt(cell)
    if depth.max() <= 0:
        return [0.0] * (2 * _N_RINGS)
    ring = np.minimum((depth / depth.max() * _N_RINGS).astype(int), _N_RINGS - 1)
    counts = np.bincount(ring[cell], minlength=_N_RINGS).astype(np.float64)
    od_sum = np.bincount(ring[cell], weights=od_total[cell], minlength=_N_RINGS)
    blue = np.bincount(ring[cell], weights=chroma[..., 2][cell], minlength=_N_RINGS)
    counts = np.maximum(counts, 1)
    return [*(od_sum / counts), *(blue / counts)]


def feature_names() -> list[str]:
    """Names of :func:`cell_features`' values, in order."""
    names = ["log_cell_diameter_px", "log_cell_over_red_cell"]
    names += _SHAPE_NAMES
    for part in ("nucleus", "cytoplasm", "cell"):
        names += [f"{part}_{n}" for n in _COLOUR_STAT_NAMES]
    names += ["contrast_od_sum", "contrast_chroma_b", "contrast_lab_l", "contrast_lab_a", "contrast_lab_b"]
    names += _texture_names()
    names += [f"ring{k}_od_sum" for k in range(_N_RINGS)] + [f"ring{k}_chroma_b" for k in range(_N_RINGS)]
    return names


def feature_groups() -> dict[str, list[int]]:
    """Indices of :func:`feature_names` per group of :data:`GROUPS`."""
    names = feature_names()
    groups: dict[str, list[int]] = {g: [] for g in GROUPS}
    for i, name in enumerate(names):
        if name.startswith(("log_cell",)):
            groups["size"].append(i)
        elif name in _SHAPE_NAMES:
            groups["shape"].append(i)
        elif name.startswith("ring"):
            groups["profile"].append(i)
        elif name in _texture_names():
            groups["texture"].append(i)
        else:
            groups["colour"].append(i)
    return groups


# Named subsets of the features that the study's selection compares. "no_fine_texture" drops the
# pixel-scale texture measures (co-occurrence, local binary patterns, granule counts), which follow
# each lab's resolution and blur as much as the cell, and keeps the difference-of-Gaussian energies.
# "no_ruler" drops the cell's size against the red cells of the same crop: it depends on what a
# lab's crops happen to contain (a tightly framed crop holds few whole red cells).
FEATURE_SETS: tuple[str, ...] = ("all", "no_texture", "no_fine_texture", "no_ruler")


FINE_TEXTURE = ("_glcm_", "_lbp_", "_granules_")
"""Name parts of the pixel-scale texture measures (co-occurrence, local binary patterns, granules)."""


def fine_texture_columns() -> tuple[int, ...]:
    """Column indices of the pixel-scale texture measures (names containing :data:`FINE_TEXTURE`)."""
    return tuple(i for i, n in enumerate(feature_names()) if any(f in n for f in FINE_TEXTURE))


def ruler_column() -> int:
    """Column index of the red-cell ruler's feature (``log_cell_over_red_cell``)."""
    return feature_names().index("log_cell_over_red_cell")


def feature_set_columns(name: str, drop: Sequence[int] = ()) -> tuple[int, ...] | None:
    """Column indices of a named feature set (``None``: every column), less the columns ``drop``
    (the study's order-stable lever: features whose class order reversed on a development lab).

    ``"all"``, ``"no_fine_texture"``, ``"no_ruler"``, or ``"no_<group>"`` for a group of :data:`GROUPS`.

    >>> len(feature_set_columns("no_texture")) == len(feature_names()) - len(feature_groups()["texture"])
    True
    >>> feature_set_columns("all", drop=[1, 2])[:3], len(feature_set_columns("all", drop=[1, 2]))
    ((0, 3, 4), 155)
    """
    columns = _named_feature_set(name)
    if not len(drop):
        return columns
    n = len(feature_names())
    bad = [c for c in drop if not 0 <= int(c) < n]
    if bad:
        raise ValueError(f"dropped feature column(s) {bad} out of range: the features have {n} columns")
    gone = {int(c) for c in drop}
    kept = tuple(i for i in (range(n) if columns is None else columns) if i not in gone)
    if not kept:
        raise ValueError(f"feature set {name!r} less the dropped columns {sorted(gone)} keeps no feature")
    return kept


def _named_feature_set(name: str) -> tuple[int, ...] | None:
    names = feature_names()
    if name == "all":
        return None
    if name == "no_ruler":
        ruler = ruler_column()
        return tuple(i for i in range(len(names)) if i != ruler)
    if name == "no_fine_texture":
        fine = set(fine_texture_columns())
        return tuple(i for i in range(len(names)) if i not in fine)
    if name.startswith("no_") and name[3:] in GROUPS:
        drop = set(feature_groups()[name[3:]])
        return tuple(i for i in range(len(names)) if i not in drop)
    raise ValueError(f"unknown feature set {name!r}: one of {FEATURE_SETS} or 'no_<group>' with group in {GROUPS}")


def texture_density(od_total: np.ndarray, nucleus: np.ndarray, texture_od: str = "raw") -> np.ndarray:
    """The optical density the texture group reads: as measured (``"raw"``), or scaled so that the
    nucleus's median is :data:`NUCLEUS_OD_REFERENCE` (``"nucleus"``; unchanged when the nucleus has
    fewer than 4 pixels).

    >>> od = np.full((4, 4), 0.5); nucleus = np.zeros((4, 4), bool); nucleus[:2] = True; od[:2] = 2.78
    >>> float(texture_density(od, nucleus, "nucleus")[0, 0]), float(texture_density(od, nucleus, "nucleus")[3, 3])
    (1.39, 0.25)
    """
    if texture_od not in TEXTURE_OD:
        raise ValueError(f"texture_od must be one of {TEXTURE_OD}, got {texture_od!r}")
    if texture_od == "raw" or nucleus.sum() < 4:
        return od_total
    return od_total * (NUCLEUS_OD_REFERENCE / max(float(np.median(od_total[nucleus])), 1e-3))


def cell_features(crop: CellCrop, texture_od: str = "raw", fine_texture: bool = True,
                  nucleus_od: str = "total") -> np.ndarray:
    """One canonical cell crop -> ``(len(feature_names()),)`` float64 features.

    ``texture_od`` (:data:`TEXTURE_OD`): how the texture group reads the optical density
    (:func:`texture_density`); every other feature is the same either way. ``fine_texture=False``
    leaves the pixel-scale texture measures (:func:`fine_texture_columns`) out, NaN: for a
    classifier that does not read them, the same values elsewhere in less time. ``nucleus_od``
    (:data:`NUCLEUS_OD`): the optical density whose darker Otsu class is the nucleus
    (:func:`nucleus_density`); every feature that reads the nucleus or the cytoplasm follows it.

    ``log_cell_over_red_cell`` is NaN when the image shows no single red cell; the
    adaptation step fills it with the site's median.

    Examples
    --------
    >>> from bcfeat.crosslab.cell_crop import canonical_crop
    >>> img = np.full((90, 90, 3), 235, np.uint8)
    >>> yy, xx = np.mgrid[:90, :90]
    >>> cell = (yy - 45) ** 2 + (xx - 45) ** 2 < 30 ** 2
    >>> img[cell] = (200, 170, 210); img[(yy - 45) ** 2 + (xx - 45) ** 2 < 12 ** 2] = (90, 40, 130)
    >>> f = dict(zip(feature_names(), cell_features(canonical_crop(img, cell))))
    >>> round(float(f["nucleus_share"]), 1), float(f["nucleus_parts"])
    (0.2, 1.0)
    """
    od = optical_density(crop.image, crop.background)
    od_total = od.sum(axis=-1)
    chroma = od_chromaticity(od)
    lab = white_balanced_lab(crop.image, crop.background)
    cell = crop.mask
    nucleus = _nucleus_mask(nucleus_density(od, nucleus_od), cell)
    cytoplasm = cell & ~disk_dilation(nucleus, 1)
    feats = [np.log(crop.cell_diameter_px), np.log(crop.cell_diameter_px / crop.red_cell_diameter_px)]
    feats += _shape_features(cell, nucleus)
    stats = {}
    colours = np.concatenate([od, chroma, lab], axis=-1)
    for name, region in (("nucleus", nucleus), ("cytoplasm", cytoplasm), ("cell", cell)):
        stats[name] = _colour_stats(region, colours)
        feats += stats[name]
    n, c = np.array(stats["nucleus"]), np.array(stats["cytoplasm"])
    feats += [n[7] - c[7], n[11] - c[11], n[12] - c[12], n[13] - c[13], n[14] - c[14]]
    feats += _texture_features(texture_density(od_total, nucleus, texture_od), nucleus, cytoplasm, fine_texture)
    feats += _profile_features(od_total, chroma, cell)
    return np.asarray(feats, dtype=np.float64)


def red_cell_referenced_columns() -> dict[int, int | None]:
    """The feature columns that are an optical density's level, each with the channel of the red
    cells' optical density it is read against (0, 1, 2; ``None``: their sum): the nucleus's,
    cytoplasm's and cell's mean per channel and the quantiles of their summed density, and the
    radial rings' summed density. Spreads, chromaticities, Lab, contrasts and texture are left."""
    out: dict[int, int | None] = {}
    for j, name in enumerate(feature_names()):
        part, _, stat = name.partition("_")
        if part in ("nucleus", "cytoplasm", "cell") and stat in ("od_r", "od_g", "od_b"):
            out[j] = "rgb".index(stat[-1])
        elif part in ("nucleus", "cytoplasm", "cell") and stat.startswith("od_sum_q"):
            out[j] = None
        elif part.startswith("ring") and stat == "od_sum":
            out[j] = None
    return out


def relative_to_red_cells(features: np.ndarray, red_od: np.ndarray) -> np.ndarray:
    """Cell features ``(n, d)`` with every optical-density level read against the red cells of the
    same photograph (:func:`bcfeat.crosslab.cell_crop.red_cell_od`, ``(n, 3)``): the red cells'
    density (per channel, or summed) subtracted, so that a photograph stained or lit more strongly
    than the next does not move them. Rows whose reference is NaN give NaN there.

    >>> names = feature_names(); X = np.zeros((1, len(names))); X[0, names.index("nucleus_od_g")] = 0.9
    >>> Y = relative_to_red_cells(X, np.array([[0.1, 0.3, 0.2]]))
    >>> round(float(Y[0, names.index("nucleus_od_g")]), 2), round(float(Y[0, names.index("ring0_od_sum")]), 2)
    (0.6, -0.6)
    """
    features = np.array(features, dtype=np.float64)
    red_od = np.asarray(red_od, dtype=np.float64)
    if features.ndim != 2 or features.shape[1] != len(feature_names()):
        raise ValueError(f"expected (n, {len(feature_names())}) cell features, got {features.shape}")
    if red_od.shape != (len(features), 3):
        raise ValueError(f"expected ({len(features)}, 3) red-cell optical densities, got {red_od.shape}")
    total = red_od.sum(axis=1)
    for column, channel in red_cell_referenced_columns().items():
        features[:, column] -= total if channel is None else red_od[:, channel]
    return features


__all__ = ["GROUPS", "TEXTURE_OD", "NUCLEUS_OD_REFERENCE", "NUCLEUS_OD", "nucleus_density", "nucleus_mask", "texture_density", "FEATURE_SETS", "feature_names", "feature_groups", "feature_set_columns", "FINE_TEXTURE", "fine_texture_columns", "ruler_column", "cell_features",
           "red_cell_referenced_columns", "relative_to_red_cells"]
