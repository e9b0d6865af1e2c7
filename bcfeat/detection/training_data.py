"""The detector's training data: images at its input size with their label-free pseudo-masks,
the per-site sample of training images, and the augmentation drawn for each step."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from bcfeat.atomic_io import atomic_torch_save
from bcfeat.data import scan_dataset
from bcfeat.data.sites import SITES
from bcfeat.data.images import read_image
from bcfeat.detection.pseudo_masks import SegmentationConfig, segment_white_cell, segmentation_key
from bcfeat.detection.config import DetectorTrainingConfig

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)


def resize_long_side(image: np.ndarray, size: int) -> np.ndarray:
    """Resize an ``(H, W, 3)`` uint8 image so its long side is ``size`` (bilinear, antialiased)."""
    h, w = image.shape[:2]
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    if (nh, nw) == (h, w):
        return image
    t = torch.tensor(image).permute(2, 0, 1)[None].float()
    t = F.interpolate(t, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
    return t[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


@dataclass
class PseudoLabelledSet:
    """Images at the detector's input size with their pseudo-masks.

    Attributes
    ----------
    images : list of np.ndarray
        ``(h, w, 3)`` uint8, long side = ``image_size``.
    masks : list of np.ndarray
        ``(h, w)`` bool pseudo-masks from :func:`bcfeat.detection.pseudo_masks.segment_white_cell`.
    confident, quality : np.ndarray
        ``(N,)`` the segmentation's flags.
    sources : list of str
        The path (or ``"array:<i>"``) of each image.
    """

    images: list[np.ndarray]
    masks: list[np.ndarray]
    confident: np.ndarray
    quality: np.ndarray
    sources: list[str]

    def __len__(self) -> int:
        return len(self.images)


def pseudo_label(items: Sequence[Any], image_size: int, seg_cfg: SegmentationConfig | None = None,
                 cache_path: str | os.PathLike | None = None, progress: bool = True) -> PseudoLabelledSet:
    """Resize images to the detector's input size and compute their pseudo-masks.

    Parameters
    ----------
    items : sequence of path or np.ndarray
        Image files (read with :func:`bcfeat.data.load_image`) or ``(H, W, 3)`` uint8 arrays.
    image_size : int
        Long side after resizing.
    seg_cfg : SegmentationConfig, optional
    cache_path : path, optional
        A ``.pt`` file. It is reused only when it was made from the same sources, size and
        segmentation config; otherwise it is recomputed and overwritten (and says so).
    progress : bool
        Show a progress bar.

    Returns
    -------
    PseudoLabelledSet
    """
    seg_cfg = seg_cfg or SegmentationConfig()
    sources = [str(it) if not isinstance(it, np.ndarray) else f"array:{i}" for i, it in enumerate(items)]
    key = {"sources": sources, "image_size": image_size, "seg_config": segmentation_key(seg_cfg)}
    if cache_path is not None and Path(cache_path).is_file():
        cached = torch.load(cache_path, map_location="cpu", weights_only=True)
        if cached.get("key") == key:
            return PseudoLabelledSet(
                [t.numpy() for t in cached["images"]], [t.numpy() for t in cached["masks"]],
                cached["confident"].numpy(), cached["quality"].numpy(), sources)
        logger.info("pseudo-mask cache %s was made from other inputs; recomputing", cache_path)
    from tqdm import tqdm

    images, masks, confident, quality = [], [], [], []
    for it in tqdm(items, desc="pseudo-masks", disable=not progress, leave=False):
        img = resize_long_side(read_image(it), image_size)
        pm = segment_white_cell(img, seg_cfg)
        images.append(img)
        masks.append(pm.mask)
        confident.append(pm.confident)
        quality.append(pm.quality)
    out = PseudoLabelledSet(images, masks, np.array(confident, bool), np.array(quality, np.float32), sources)
    if cache_path is not None:
        atomic_torch_save({"key": key, "images": [torch.from_numpy(i) for i in images],
                            "masks": [torch.from_numpy(m) for m in masks],
                            "confident": torch.from_numpy(out.confident), "quality": torch.from_numpy(out.quality)},
                           Path(cache_path))
    return out


def training_images(datasets: Sequence[str] = SITES,
                    per_dataset: int | dict[str, int] = 400, *, root: str | os.PathLike | None = None,
                    exclude_class_folders: Sequence[str] = ("platelet",), holdout_every: int = 0,
                    seed: int = 0) -> pd.DataFrame:
    """A seeded sample of unlabelled images from several datasets (labels are not used).

    Parameters
    ----------
    datasets : sequence of str
    per_dataset : int or dict
        Images drawn per dataset (all when the dataset has fewer).
    exclude_class_folders : sequence of str
        Folders left out: Acevedo-20 ``platelet`` images hold no white cell.
    holdout_every : int
        When > 1, every ``holdout_every``-th image (in sorted order) is never drawn, so
        that it can serve as held-out evaluation (see :func:`holdout_paths`).
    seed : int

    Returns
    -------
    pandas.DataFrame
        ``dataset, path``, one row per image, datasets in the given order (the ``groups``
        that :attr:`DetectorTrainingConfig.balance_groups` balances).
    """
    import pandas as pd

    rng = np.random.default_rng(seed)
    frames = []
    for ds in datasets:
        samples = scan_dataset(ds, root, label_space=None).samples
        samples = samples[~samples.class_folder.isin(list(exclude_class_folders))].reset_index(drop=True)
        if holdout_every > 1:
            samples = samples[samples.index % holdout_every != 0]
        n = per_dataset.get(ds, 0) if isinstance(per_dataset, dict) else per_dataset
        pick = rng.permutation(len(samples))[: min(n, len(samples))]
        frames.append(pd.DataFrame({"dataset": ds, "path": samples.path.iloc[np.sort(pick)].astype(str).tolist()}))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["dataset", "path"])


def holdout_paths(dataset: str, holdout_every: int, *, root: str | os.PathLike | None = None,
                  exclude_class_folders: Sequence[str] = ("platelet",)) -> list[str]:
    """The images :func:`training_images` never draws for the same ``holdout_every``."""
    samples = scan_dataset(dataset, root, label_space=None).samples
    samples = samples[~samples.class_folder.isin(list(exclude_class_folders))].reset_index(drop=True)
    return samples[samples.index % holdout_every == 0].path.astype(str).tolist()


def augment(img: Tensor, mask: Tensor, cfg: DetectorTrainingConfig, g: torch.Generator) -> tuple[Tensor, Tensor]:
    """Random dihedral transform, zoom-out and colour jitter. ``img`` (3, H, W) float [0, 1]."""
    def u(lo: float, hi: float) -> float:
        return lo + (hi - lo) * float(torch.rand((), generator=g))

    if torch.rand((), generator=g) < 0.5:
        img, mask = img.flip(-1), mask.flip(-1)
    if torch.rand((), generator=g) < 0.5:
        img, mask = img.flip(-2), mask.flip(-2)
    if torch.rand((), generator=g) < 0.5:
        img, mask = img.transpose(-1, -2), mask.transpose(-1, -2)
    lo, hi = cfg.scale_jitter
    s = u(lo, hi)
    if s < 0.999:
        _, h, w = img.shape
        nh, nw = max(8, round(h * s)), max(8, round(w * s))
        small = F.interpolate(img[None], (nh, nw), mode="bilinear", align_corners=False, antialias=True)[0]
        small_m = F.interpolate(mask[None, None].float(), (nh, nw), mode="bilinear", align_corners=False)[0, 0] > 0.5
        # Pad with the median border colour: looks like more background / smear.
        border = torch.cat([img[:, 0], img[:, -1], img[:, :, 0], img[:, :, -1]], dim=1)
        fill = border.median(dim=1).values
        canvas = fill[:, None, None].expand(3, h, w).clone()
        canvas_m = torch.zeros((h, w), dtype=torch.bool)
        y0 = int(torch.randint(0, h - nh + 1, (), generator=g))
        x0 = int(torch.randint(0, w - nw + 1, (), generator=g))
        canvas[:, y0:y0 + nh, x0:x0 + nw] = small
        canvas_m[y0:y0 + nh, x0:x0 + nw] = small_m
        img, mask = canvas, canvas_m
    # Colour jitter in a cheap, differentiable-free form: per-channel gain (a stain shift),
    # brightness, contrast and saturation.
    gain = torch.tensor([u(0.9, 1.1) for _ in range(3)])
    img = img * gain[:, None, None] * u(0.85, 1.15)
    mean = img.mean()
    img = (img - mean) * u(0.8, 1.2) + mean
    grey = img.mean(0, keepdim=True)
    img = (img - grey) * u(0.7, 1.3) + grey
    return img.clamp(0, 1), mask


def to_target(mask: Tensor) -> dict[str, Tensor]:
    ys, xs = torch.nonzero(mask, as_tuple=True)
    box = torch.tensor([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], dtype=torch.float32)
    return {"boxes": box, "labels": torch.ones(1, dtype=torch.int64), "masks": mask[None].to(torch.uint8)}
