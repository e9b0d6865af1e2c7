"""Hand-crafted baseline features for the cross-domain benchmark.

The paper compares its autoencoder features with an ImageNet/supervised CNN
(Sec. 3, Table 1). Two label-free, training-free baselines set the floor that
any learned feature must beat:

* raw pixels: the image itself, downsized (:func:`bcfeat.study.common.decoded_images`)
  and compressed to 50 principal components fitted on each training split
  (:func:`bcfeat.study.common.pca_forest_factory`);
* :class:`ColorShapeFeatures` (here): what a haematologist looks at, as numbers:
  colour histograms of the nucleus and of the cytoplasm, and the shape of the
  nucleus (area, perimeter, eccentricity, solidity, lobes) and its share of the
  cell.

:class:`ColorShapeFeatures` is an sklearn transformer (params in ``__init__``, learned state
in ``*_`` attributes, ``fit`` returns ``self``), so ``make_pipeline(ColorShapeFeatures(),
RandomForestClassifier())`` plugs straight into
:func:`bcfeat.evaluation.benchmark.domain_matrix`. Its input is a list of ``(H, W, 3)``
uint8 RGB images of any size, an ``(n, H, W, 3)`` uint8 array, or a list of
image paths (read with :func:`bcfeat.data.load_image`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage as ndi
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted
from skimage import color, filters, measure

from bcfeat.detection.pseudo_masks import central_component


def check_images(X: Any) -> list[np.ndarray]:
    """Validate a batch of images and return it as a list of ``(H, W, 3)`` uint8 arrays.

    Parameters
    ----------
    X : array of shape (n, H, W, 3), or sequence of (H, W, 3) / (H, W) arrays or paths
        uint8 RGB images. Greyscale images are repeated to 3 channels, an alpha
        channel is dropped; paths are read with :func:`bcfeat.data.load_image`.

    Returns
    -------
    list of np.ndarray
        ``n`` arrays ``(H_i, W_i, 3)`` uint8.

    Examples
    --------
    >>> [im.shape for im in check_images(np.zeros((2, 5, 4, 3), np.uint8))]
    [(5, 4, 3), (5, 4, 3)]
    """
    if isinstance(X, np.ndarray) and X.dtype != object:
        if X.ndim != 4:
            raise ValueError(
                f"expected images as an (n, H, W, 3) array or a list of (H, W, 3) arrays, got shape {X.shape}"
            )
        items: Sequence = list(X)
    elif isinstance(X, (str, os.PathLike)):
        raise ValueError(f"expected a sequence of images or paths, got a single path {X!r}")
    else:
        items = list(X)
    if len(items) == 0:
        raise ValueError("got an empty list of images")
    out = []
    for i, item in enumerate(items):
        if isinstance(item, (str, os.PathLike)):
            from bcfeat.data import load_image  # imported late: the data layer pulls in pandas & co.

            item = load_image(item)
        img = np.asarray(item)
        if img.dtype != np.uint8:
            raise ValueError(f"image {i}: expected dtype uint8, got {img.dtype}")
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=2)
        elif img.ndim == 3 and img.shape[2] == 4:
            img = img[..., :3]
        if img.ndim != 3 or img.shape[2] != 3 or min(img.shape[:2]) < 2:
            raise ValueError(f"image {i}: expected (H, W, 3) RGB with H, W >= 2, got shape {img.shape}")
        out.append(img)
    return out


def resize_images(images: Any, size: int) -> np.ndarray:
    """Resize every image to ``size x size`` (PIL bilinear, antialiased when shrinking).

    Non-square crops (a few jtsc_zheng18 images, 88-120 px) are stretched, not
    padded: the cell is centred in every dataset and the stretch is at most ~25 %.

    Parameters
    ----------
    images : see :func:`check_images`
    size : int
        Output side in pixels.

    Returns
    -------
    np.ndarray
        ``(n, size, size, 3)`` uint8.

    Examples
    --------
    >>> resize_images([np.zeros((10, 7, 3), np.uint8)], 4).shape
    (1, 4, 4, 3)
    """
    imgs = check_images(images)
    out = np.empty((len(imgs), size, size, 3), dtype=np.uint8)
    for i, img in enumerate(imgs):
        if img.shape[:2] == (size, size):
            out[i] = img
        else:
            out[i] = np.asarray(Image.fromarray(img).resize((size, size), Image.Resampling.BILINEAR))
    return out


# Why these channels: the nucleus takes up the basic (blue/purple) dye in all four stains, so it
# is bluer than green (B - G > 0) and darkest in green; red cells (pink) and the beige, yellow or
# grey backgrounds are not. Same reasoning as bcfeat.detection.pseudo_masks, in a self-contained fallback.
_SHAPE_FEATURES = (
    "cell_area_frac",
    "nucleus_area_frac",
    "nucleus_cell_ratio",
    "nucleus_eccentricity",
    "nucleus_solidity",
    "nucleus_compactness",
    "nucleus_lobes",
    "cell_eccentricity",
    "cell_solidity",
)
_CHANNELS = {"rgb": ("r", "g", "b"), "hsv": ("h", "s", "v")}
_REGIONS = ("nucleus", "cytoplasm")


def threshold_masks(image: np.ndarray, smooth_sigma: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Whole-cell and nucleus masks of the central white cell, by two Otsu thresholds.

    Cell candidates are pixels with more blue than green (Otsu on smoothed
    ``B - G``); the nucleus is the dark-green Otsu class inside them. The
    component that is large and near the centre is kept as the cell.

    Parameters
    ----------
    image : np.ndarray
        ``(H, W, 3)`` uint8 RGB.
    smooth_sigma : float
        Gaussian smoothing in pixels (suppresses granules).

    Returns
    -------
    cell, nucleus : np.ndarray
        ``(H, W)`` bool each; ``nucleus`` lies inside ``cell``.

    Examples
    --------
    >>> img = np.full((48, 48, 3), 230, np.uint8)
    >>> yy, xx = np.mgrid[:48, :48]
    >>> img[(yy - 24) ** 2 + (xx - 24) ** 2 < 14 ** 2] = (160, 120, 200)
    >>> img[(yy - 24) ** 2 + (xx - 24) ** 2 < 6 ** 2] = (70, 30, 120)
    >>> cell, nuc = threshold_masks(img)
    >>> bool(cell[24, 24] and nuc[24, 24] and not nuc[24, 34] and cell[24, 34] and not cell[2, 2])
    True
    """
    img = ndi.gaussian_filter(image.astype(np.float32) / 255.0, sigma=(smooth_sigma, smooth_sigma, 0))
    blue_excess = img[..., 2] - img[..., 1]
    green = img[..., 1]
    if np.ptp(blue_excess) < 1e-6:
        empty = np.zeros(image.shape[:2], bool)
        return empty, empty
    cell = blue_excess > filters.threshold_otsu(blue_excess)
    inside = green[cell]
    if inside.size < 16 or np.ptp(inside) < 1e-6:
        nucleus = cell.copy()
    else:
        nucleus = (green < filters.threshold_otsu(inside)) & cell
    cell = ndi.binary_fill_holes(cell)
    # A big blob at the border (a neighbouring cell) loses to the central one.
    cell = central_component(measure.label(cell))
    return cell, nucleus & cell


def _pseudo_masks(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from bcfeat.detection.pseudo_masks import segment_white_cell

    pm = segment_white_cell(image)
    return np.asarray(pm.mask, bool), np.asarray(pm.nucleus, bool)


def _resolve_segmenter(segmenter: Any) -> str:
    if segmenter == "threshold":
        return "threshold"
    if segmenter in ("auto", "pseudo_mask"):
        try:
            from bcfeat.detection.pseudo_masks import segment_white_cell  # noqa: F401
        except ImportError:
            if segmenter == "pseudo_mask":
                raise
            return "threshold"
        return "pseudo_mask"
    raise ValueError(f"segmenter must be 'auto', 'threshold' or 'pseudo_mask', got {segmenter!r}")


class ColorShapeFeatures(TransformerMixin, BaseEstimator):
    """Colour histograms of nucleus and cytoplasm plus nucleus shape, per image.

    Each image is resized so its long side is ``work_size`` (speed, and a
    common scale for the four sites), the cell and nucleus are segmented, and
    the features are computed on the masks. All shape features are scale-free
    (fractions, ratios, counts); a missing region gives zeros.

    Parameters
    ----------
    n_bins : int, default=8
        Histogram bins per channel over [0, 1].
    color_spaces : tuple of {"rgb", "hsv"}, default=("rgb", "hsv")
    work_size : int, default=128
        Long side, in pixels, of the image the features are computed on.
    segmenter : {"auto", "pseudo_mask", "threshold"}, default="auto"
        ``"pseudo_mask"``: :func:`bcfeat.detection.pseudo_masks.segment_white_cell`;
        ``"threshold"``: :func:`threshold_masks` (self-contained); ``"auto"``:
        the former when that module is importable, else the latter.
    min_lobe_frac : float, default=0.05
        A nucleus component counts as a lobe if it has at least this share of
        the nucleus area (ignores specks).

    Attributes
    ----------
    segmenter_ : str
        The segmenter actually used.
    feature_names_out_ : np.ndarray of str
    n_features_out_ : int
        ``9 + 2 * len(color_spaces) * 3 * (n_bins + 1)``: shape features, then per
        region, space and channel ``n_bins`` histogram bins and the mean.

    Examples
    --------
    >>> imgs = np.full((2, 40, 40, 3), 220, np.uint8); imgs[:, 12:28, 12:28] = (90, 40, 150)
    >>> ColorShapeFeatures(segmenter="threshold").fit_transform(imgs).shape
    (2, 117)
    """

    def __init__(self, n_bins: int = 8, color_spaces: tuple[str, ...] = ("rgb", "hsv"),
                 work_size: int = 128, segmenter: str = "auto", min_lobe_frac: float = 0.05):
        self.n_bins = n_bins
        self.color_spaces = color_spaces
        self.work_size = work_size
        self.segmenter = segmenter
        self.min_lobe_frac = min_lobe_frac

    def fit(self, X: Any, y: Any = None) -> ColorShapeFeatures:
        """Check the parameters and the images; nothing is learned from the data."""
        for space in self.color_spaces:
            if space not in _CHANNELS:
                raise ValueError(f"unknown colour space {space!r}; choose from {sorted(_CHANNELS)}")
        if self.n_bins < 1 or self.work_size < 8:
            raise ValueError(f"need n_bins >= 1 and work_size >= 8, got {self.n_bins}, {self.work_size}")
        check_images(X)
        self.segmenter_ = _resolve_segmenter(self.segmenter)
        names = list(_SHAPE_FEATURES)
        for region in _REGIONS:
            for space in self.color_spaces:
                for ch in _CHANNELS[space]:
                    names += [f"{region}_{space}_{ch}_bin{k}" for k in range(self.n_bins)]
                    names.append(f"{region}_{space}_{ch}_mean")
        self.feature_names_out_ = np.asarray(names, dtype=object)
        self.n_features_out_ = len(names)
        return self

    def transform(self, X: Any) -> np.ndarray:
        """Images -> ``(n, n_features_out_)`` float64 features."""
        check_is_fitted(self, "feature_names_out_")
        imgs = check_images(X)
        return np.stack([self._features(img) for img in imgs])

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        check_is_fitted(self, "feature_names_out_")
        return self.feature_names_out_.copy()

    def _features(self, image: np.ndarray) -> np.ndarray:
        H, W = image.shape[:2]
        scale = self.work_size / max(H, W)
        if scale < 1:
            size = (max(8, round(W * scale)), max(8, round(H * scale)))
            image = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))
        if self.segmenter_ == "pseudo_mask":
            cell, nucleus = _pseudo_masks(image)
        else:
            cell, nucleus = threshold_masks(image)
        cytoplasm = cell & ~nucleus
        feats = _shape_features(cell, nucleus, self.min_lobe_frac)
        rgb = image.astype(np.float32) / 255.0
        spaces = {"rgb": rgb, "hsv": color.rgb2hsv(rgb) if "hsv" in self.color_spaces else None}
        for region_mask in (nucleus, cytoplasm):
            n_px = region_mask.sum()
            for space in self.color_spaces:
                pix = spaces[space][region_mask]  # (n_px, 3)
                for c in range(3):
                    if n_px == 0:
                        feats.extend([0.0] * (self.n_bins + 1))
                        continue
                    hist, _ = np.histogram(pix[:, c], bins=self.n_bins, range=(0.0, 1.0))
                    feats.extend((hist / n_px).tolist())
                    feats.append(float(pix[:, c].mean()))
        return np.asarray(feats, dtype=np.float64)


def _shape_features(cell: np.ndarray, nucleus: np.ndarray, min_lobe_frac: float) -> list[float]:
    """The 9 scale-free shape features, in the order of ``_SHAPE_FEATURES``."""
    area_img = cell.size
    a_cell, a_nuc = float(cell.sum()), float(nucleus.sum())
    feats = [a_cell / area_img, a_nuc / area_img, a_nuc / a_cell if a_cell else 0.0]
    if a_nuc > 0:
        # The nucleus as one region, lobes together: a segmented neutrophil's solidity is low.
        nuc = measure.regionprops(nucleus.astype(np.uint8))[0]
        lobe_areas = np.bincount(measure.label(nucleus).ravel())[1:]
        lobes = int((lobe_areas >= min_lobe_frac * a_nuc).sum())
        compact = nuc.perimeter**2 / (4 * np.pi * a_nuc) if nuc.perimeter > 0 else 1.0
        feats += [float(nuc.eccentricity), float(nuc.solidity), float(compact), float(lobes)]
    else:
        feats += [0.0, 0.0, 0.0, 0.0]
    if a_cell > 0:
        c = measure.regionprops(cell.astype(np.uint8))[0]
        feats += [float(c.eccentricity), float(c.solidity)]
    else:
        feats += [0.0, 0.0]
    return feats
