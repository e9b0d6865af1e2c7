"""Instance features of the white cell: what the autoencoder encodes and reconstructs.

Paper Sec. 2.1-2.2: the Mask R-CNN's box of the white cell is pooled with RoIAlign over the
FPN levels into a ``(256, 14, 14)`` tensor (the input of the autoencoder's encoder), and the
autoencoder's image decoder reconstructs the segmented cell. For every image this module
returns both:

* ``features`` ``(N, C, 14, 14)``: ``torchvision.ops.MultiScaleRoIAlign`` over the FPN
  levels (as the Mask R-CNN mask head pools, level chosen by box size) at the one box that
  :mod:`bcfeat.detection` keeps; ``C = fpn_channels`` (256 as in the paper, 64 in the cpu
  preset). The backbone, FPN, RPN and heads run once per image; RoIAlign reads the very
  FPN maps the detection used.
* ``crops`` ``(N, 3, S, S)``: the cell cut out of the original image, float in [0, 1]. The
  crop is the square around the detected box (side = the box's long side, so the cell is
  not distorted), pixels outside the detected cell mask set to ``background`` (0 = black by
  default; 1 gives white), resampled to ``S x S`` by bilinear RoIAlign on the image.

When the detector finds nothing, the centred fallback box and ellipse of
:func:`bcfeat.detection.inference.detect` are used and flagged in ``fallback``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from torch import Tensor
from torchvision.models.detection import MaskRCNN
from torchvision.ops import MultiScaleRoIAlign, roi_align

from bcfeat.detection.inference import Detection, run_batch
from bcfeat.detection.training_data import read_image

#: Spatial side of the instance features (Mask R-CNN's mask-head RoIAlign size).
ROI_SIZE = 14


@dataclass
class InstanceBatch:
    """Per-image instance features and masked crops (one cell per image).

    Attributes
    ----------
    features : Tensor
        ``(N, C, 14, 14)`` float32 RoIAlign features, ``C = fpn_channels``.
    crops : Tensor
        ``(N, 3, S, S)`` float32 in [0, 1], the masked cell.
    boxes : Tensor
        ``(N, 4)`` float32 ``(x0, y0, x1, y1)`` in original image pixels.
    scores : Tensor
        ``(N,)`` float32 detection scores (0 for fallbacks).
    fallback : Tensor
        ``(N,)`` bool, True where the centred fallback was used.
    n_candidates : Tensor
        ``(N,)`` int64 detections above the score threshold (> 1: the best was kept).
    """

    features: Tensor
    crops: Tensor
    boxes: Tensor
    scores: Tensor
    fallback: Tensor
    n_candidates: Tensor

    def __len__(self) -> int:
        return int(self.features.shape[0])


def masked_crop(image: np.ndarray | Tensor, mask: np.ndarray | Tensor, box: Sequence[float], crop_size: int,
                background: float = 0.0) -> Tensor:
    """The masked cell resampled into a square ``(3, S, S)`` float crop.

    Parameters
    ----------
    image : np.ndarray or Tensor
        ``(H, W, 3)`` uint8 RGB, or ``(3, H, W)`` float in [0, 1].
    mask : np.ndarray or Tensor
        ``(H, W)`` bool cell mask.
    box : sequence of 4 float
        ``(x0, y0, x1, y1)``; the crop is the square with the same centre and side =
        ``max(x1 - x0, y1 - y0)`` (parts outside the image count as background).
    crop_size : int
        Output side ``S``.
    background : float
        Value of every pixel outside the mask (0 black, 1 white).

    Returns
    -------
    Tensor
        ``(3, S, S)`` float32 in [0, 1].

    Examples
    --------
    >>> img = np.full((40, 40, 3), 200, np.uint8)
    >>> m = np.zeros((40, 40), bool); m[10:30, 10:30] = True
    >>> c = masked_crop(img, m, (10, 10, 30, 30), 8)
    >>> tuple(c.shape), round(float(c.mean()), 3)
    ((3, 8, 8), 0.784)
    """
    if isinstance(image, np.ndarray):
        img = torch.tensor(image).permute(2, 0, 1).float() / 255
    else:
        img = image.float()
    m = torch.as_tensor(np.asarray(mask) if isinstance(mask, np.ndarray) else mask).to(img.dtype)
    if m.shape != img.shape[-2:]:
        raise ValueError(f"mask {tuple(m.shape)} does not match image {tuple(img.shape[-2:])}")
    x0, y0, x1, y1 = (float(v) for v in box)
    side = max(x1 - x0, y1 - y0, 1.0)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    square = torch.tensor([[0.0, cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2]])
    # Shift so that the background is 0: RoIAlign samples outside the image as 0 too.
    shifted = ((img - background) * m)[None]
    out = roi_align(shifted, square, output_size=crop_size, spatial_scale=1.0, sampling_ratio=2, aligned=True)[0]
    return (out + background).clamp_(0, 1)


@torch.no_grad()
def extract_instances(detector: MaskRCNN, images: Iterable[Any], crop_size: int = 64, batch_size: int = 16,
                      background: float = 0.0, score_thresh: float | None = None,
                      progress: bool = False) -> InstanceBatch:
    """Detect the white cell in each image and return its instance features and masked crop.

    Parameters
    ----------
    detector : MaskRCNN
        From :func:`bcfeat.detection.architecture.build_detector` / ``train_detector`` / ``load_detector``
        (any torchvision ``MaskRCNN`` works).
    images : iterable of np.ndarray or path
        ``(H, W, 3)`` uint8 RGB images or image files, any size.
    crop_size : int
        Side ``S`` of the crops (the autoencoder's ``image_size``: 128 paper, 64 cpu preset).
    batch_size : int
        Images per forward pass (batching amortises the Python overhead of the heads).
    background : float
        Value outside the cell mask in the crops (0 black, 1 white).
    score_thresh : float, optional
        Minimum detection score (default: the detector config's ``box_score_thresh``).
    progress : bool
        Show a progress bar.

    Returns
    -------
    InstanceBatch
        ``features (N, C, 14, 14)``, ``crops (N, 3, S, S)``, boxes, scores, fallback flags.
    """
    # The mask head's pooler names the FPN levels RoIAlign reads (all but the pool level).
    names = list(detector.roi_heads.mask_roi_pool.featmap_names)
    pool = MultiScaleRoIAlign(names, ROI_SIZE, sampling_ratio=2)
    feats, crops, boxes, scores, fallback, n_cand = [], [], [], [], [], []

    def flush(batch: list[np.ndarray]) -> None:
        run = run_batch(detector, batch, score_thresh)
        # The same FPN maps the heads just used: no second backbone pass.
        feats.append(pool(run.features, run.boxes_transformed, run.image_sizes).cpu())
        for img, det in zip(batch, run.detections):
            crops.append(masked_crop(img, det.mask, det.box, crop_size, background))
            boxes.append(det.box)
            scores.append(det.score)
            fallback.append(det.fallback)
            n_cand.append(det.n_candidates)

    from tqdm import tqdm

    batch: list[np.ndarray] = []
    for item in tqdm(images, desc="instances", disable=not progress, leave=False):
        batch.append(read_image(item))
        if len(batch) == batch_size:
            flush(batch)
            batch = []
    if batch:
        flush(batch)
    c = detector.backbone.out_channels
    return InstanceBatch(
        features=torch.cat(feats).float() if feats else torch.zeros(0, c, ROI_SIZE, ROI_SIZE),
        crops=torch.stack(crops) if crops else torch.zeros(0, 3, crop_size, crop_size),
        boxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        scores=torch.tensor(scores, dtype=torch.float32),
        fallback=torch.tensor(fallback, dtype=torch.bool),
        n_candidates=torch.tensor(n_cand, dtype=torch.int64),
    )


__all__ = ["ROI_SIZE", "InstanceBatch", "masked_crop", "extract_instances", "Detection"]
