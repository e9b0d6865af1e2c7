"""Inference: one white cell per image (the best detection, or a centred fallback), its mask
pasted back at sub-pixel accuracy, and the threshold calibrated on the pseudo-masks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.models.detection import MaskRCNN

from bcfeat.detection.pseudo_masks import centred_ellipse
from bcfeat.detection.training import model_device
from bcfeat.detection.training_data import PseudoLabelledSet
from bcfeat.data.images import read_image



@dataclass
class Detection:
    """The one white cell kept for an image.

    Attributes
    ----------
    box : tuple of float
        ``(x0, y0, x1, y1)`` in input-image pixels.
    mask : np.ndarray
        ``(H, W)`` bool at the input image's size.
    score : float
        The detector's score (0 for a fallback).
    n_candidates : int
        Detections above ``box_score_thresh`` (0: fallback; > 1: the best-scoring one kept).
    fallback : bool
        True when the detector found nothing and the centred box/ellipse was used.
    """

    box: tuple[float, float, float, float]
    mask: np.ndarray
    score: float
    n_candidates: int
    fallback: bool


def centred_box(height: float, width: float, fraction: float = 0.5) -> tuple[float, float, float, float]:
    """The box of the central ``fraction`` of each side: ``(x0, y0, x1, y1)``.

    >>> centred_box(100, 200)
    (50.0, 25.0, 150.0, 75.0)
    """
    mx, my = width * (1 - fraction) / 2, height * (1 - fraction) / 2
    return (float(mx), float(my), float(width - mx), float(height - my))


def select_detection(boxes: Tensor, scores: Tensor, score_thresh: float = 0.0) -> tuple[int | None, int]:
    """Index of the best-scoring candidate at or above ``score_thresh`` and the candidate count.

    >>> select_detection(torch.zeros(3, 4), torch.tensor([0.2, 0.9, 0.5]))
    (1, 3)
    >>> select_detection(torch.zeros(0, 4), torch.zeros(0))
    (None, 0)
    """
    ok = scores >= score_thresh
    n = int(ok.sum())
    if n == 0:
        return None, 0
    masked = torch.where(ok, scores, torch.full_like(scores, -1.0))
    return int(masked.argmax()), n


@dataclass
class RawRun:
    """What one batched forward pass keeps for :func:`detect` and instance features."""

    detections: list[Detection]
    features: dict[str, Tensor]            # FPN maps of the batch (transformed images)
    boxes_transformed: list[Tensor]        # (1, 4) chosen box per image, transformed coords
    image_sizes: list[tuple[int, int]]     # sizes after resizing (before padding)
    mask_probabilities: list[Tensor | None]  # the kept mask before thresholding (None: fallback)


def paste_mask_subpixel(probabilities: Tensor, box: Sequence[float], resized_size: tuple[int, int],
                        original_size: tuple[int, int]) -> Tensor:
    """Put an ``(M, M)`` mask of a box back on the original image, to the sub-pixel.

    ``box = (x0, y0, x1, y1)`` is in the coordinates of the resized image the detector saw
    (``resized_size = (h, w)``), in RoIAlign's convention (``aligned=False``: pixel k is
    centred at k), which is how the training targets were cut. Every pixel of the
    ``original_size = (H, W)`` image is mapped to its centre in the resized image (the
    model's bilinear resize) and then to the mask's bins; the mask is sampled bilinearly
    there, zero beyond its border.

    Returns
    -------
    Tensor
        ``(H, W)`` probabilities.

    Examples
    --------
    >>> m = torch.zeros(4, 4); m[1:3, 1:3] = 1
    >>> p = paste_mask_subpixel(m, (2.0, 2.0, 10.0, 10.0), (16, 16), (16, 16))
    >>> (p > 0.5).nonzero()[:, 0].unique().tolist()   # the central half of the box
    [4, 5, 6, 7]
    """
    m = probabilities.shape[-1]
    h, w = resized_size
    height, width = original_size
    x0, y0, x1, y1 = (float(v) for v in box)
    dev = probabilities.device
    # centre of each original pixel in resized-image coordinates, then in mask-bin units
    xs = (torch.arange(width, device=dev, dtype=torch.float32) + 0.5) * (w / width) - 0.5
    ys = (torch.arange(height, device=dev, dtype=torch.float32) + 0.5) * (h / height) - 0.5
    u = (xs - x0) / max((x1 - x0) / m, 1e-6) - 0.5
    v = (ys - y0) / max((y1 - y0) / m, 1e-6) - 0.5
    gx, gy = 2 * u / (m - 1) - 1, 2 * v / (m - 1) - 1
    grid = torch.stack([gx[None, :].expand(height, width), gy[:, None].expand(height, width)], dim=-1)
    return F.grid_sample(probabilities.reshape(1, 1, m, m).float(), grid[None], mode="bilinear",
                         padding_mode="zeros", align_corners=True)[0, 0]


@torch.no_grad()
def run_batch(model: MaskRCNN, images: list[np.ndarray], score_thresh: float | None = None) -> RawRun:
    """Transform -> backbone+FPN -> RPN -> RoI heads once; choose one cell per image.

    Works for any torchvision ``MaskRCNN`` (also the paper-size reference of the benchmark).
    """
    thresh = model.roi_heads.score_thresh if score_thresh is None else score_thresh
    cfg = getattr(model, "bcfeat_config", None)  # the paper-size reference has none
    mask_thresh = cfg.mask_thresh if cfg is not None else 0.5
    was_training = model.training
    model.eval()
    device = model_device(model)
    tensors = [torch.tensor(im).permute(2, 0, 1).to(device).float().div_(255) for im in images]
    original_sizes = [tuple(t.shape[-2:]) for t in tensors]
    image_list, _ = model.transform(tensors)
    features = model.backbone(image_list.tensors)
    proposals, _ = model.rpn(image_list, features)
    raw, _ = model.roi_heads(features, proposals, image_list.image_sizes)

    chosen, boxes_t, n_cands = [], [], []
    for r, (h, w) in zip(raw, image_list.image_sizes):
        best, n = select_detection(r["boxes"], r["scores"], thresh)
        n_cands.append(n)
        if best is None:
            chosen.append(None)
            boxes_t.append(torch.tensor([centred_box(h, w)], dtype=torch.float32, device=device))
        else:
            chosen.append({k: v[best:best + 1] for k, v in r.items()})
            boxes_t.append(r["boxes"][best:best + 1])
    # Paste only the kept mask back to the original resolution.
    found = [i for i, c in enumerate(chosen) if c is not None]
    subpixel = cfg is not None and cfg.mask_paste == "subpixel"
    kept = [{k: v for k, v in chosen[i].items() if not (subpixel and k == "masks")} for i in found]
    pasted = model.transform.postprocess(kept, [image_list.image_sizes[i] for i in found],
                                         [original_sizes[i] for i in found]) if found else []
    if subpixel:
        for i, p in zip(found, pasted):
            prob = paste_mask_subpixel(chosen[i]["masks"][0, 0], chosen[i]["boxes"][0].tolist(),
                                       tuple(image_list.image_sizes[i]), original_sizes[i])
            p["masks"] = prob[None, None]
    by_index = dict(zip(found, pasted))
    detections, probabilities = [], []
    for i, (h, w) in enumerate(original_sizes):
        if i in by_index:
            p = by_index[i]
            probabilities.append(p["masks"][0, 0])
            detections.append(Detection(tuple(float(v) for v in p["boxes"][0]), (p["masks"][0, 0] > mask_thresh).cpu().numpy(),
                                        float(p["scores"][0]), n_cands[i], False))
        else:
            probabilities.append(None)
            detections.append(Detection(centred_box(h, w), centred_ellipse(h, w), 0.0, 0, True))
    model.train(was_training)
    return RawRun(detections, features, boxes_t, [tuple(s) for s in image_list.image_sizes], probabilities)


def calibrate_mask_threshold(model: MaskRCNN, data: PseudoLabelledSet, thresholds: Sequence[float] | None = None,
                             max_images: int = 240, seed: int = 0, batch_size: int = 8):
    """Choose the mask probability threshold that best reproduces the pseudo-masks.

    The detector is run once on a seeded sample of the confident pseudo-labelled training
    images; for each threshold the mean IoU of its kept mask with the pseudo-mask is computed
    (a fallback scores 0). No expert mask is used. Set the result with
    ``model.bcfeat_config = dataclasses.replace(cfg, mask_thresh=best)``.

    Returns
    -------
    best : float
        The threshold of the highest mean IoU (the lower one on a tie).
    table : pandas.DataFrame
        ``threshold, mean_iou, median_area_ratio`` (area of the mask / area of the pseudo-mask).
    """
    import pandas as pd

    from bcfeat.detection.mask_metrics import mask_iou

    grid = [round(float(t), 3) for t in (thresholds if thresholds is not None else np.arange(0.2, 0.651, 0.05))]
    pool = np.flatnonzero(np.asarray(data.confident, bool))
    pool = np.array([i for i in pool if np.asarray(data.masks[i]).any()], dtype=np.int64)
    if len(pool) == 0:
        raise ValueError("no confident, non-empty pseudo-masks to calibrate the mask threshold on")
    pick = np.sort(np.random.default_rng(seed).choice(pool, size=min(max_images, len(pool)), replace=False))
    ious = np.zeros((len(grid), len(pick)))
    ratios = np.zeros_like(ious)
    for start in range(0, len(pick), batch_size):
        chunk = pick[start:start + batch_size]
        run = run_batch(model, [np.asarray(data.images[i]) for i in chunk])
        for j, (i, prob) in enumerate(zip(chunk, run.mask_probabilities)):
            if prob is None:
                continue
            target = np.asarray(data.masks[i]).astype(bool)
            prob = prob.float().cpu().numpy()
            for k, t in enumerate(grid):
                pred = prob > t
                ious[k, start + j] = mask_iou(pred, target)
                ratios[k, start + j] = pred.sum() / max(1, target.sum())
    table = pd.DataFrame({"threshold": grid, "mean_iou": ious.mean(axis=1), "median_area_ratio": np.median(ratios, axis=1)})
    best = float(table["threshold"].iloc[int(np.argmax(table["mean_iou"].to_numpy()))])
    return best, table


def detect(model: MaskRCNN, images: Iterable[Any], batch_size: int = 8,
           score_thresh: float | None = None) -> list[Detection]:
    """Find the white cell in each image: the best-scoring detection, else a centred fallback.

    Parameters
    ----------
    model : MaskRCNN
        From :func:`build_detector`, :func:`train_detector` or :func:`load_detector`.
    images : iterable of np.ndarray or path
        ``(H, W, 3)`` uint8 RGB images (any size; resized internally) or image files.
    batch_size : int
        Images per forward pass.
    score_thresh : float, optional
        Minimum score of a candidate (default: the model's ``box_score_thresh``).

    Returns
    -------
    list of Detection
        One per image, box and mask at the image's own resolution.

    Notes
    -----
    A batch is zero-padded to its largest (resized) image, and GroupNorm statistics see
    that padding, so an image's result can shift slightly with the other images of its
    batch when their aspect ratios differ; images of one size give identical results for
    any ``batch_size``.
    """
    out: list[Detection] = []
    batch: list[np.ndarray] = []
    for item in images:
        batch.append(read_image(item))
        if len(batch) == batch_size:
            out.extend(run_batch(model, batch, score_thresh).detections)
            batch = []
    if batch:
        out.extend(run_batch(model, batch, score_thresh).detections)
    return out

