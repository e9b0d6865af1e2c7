"""The white-cell detector: a one-class Mask R-CNN trained from scratch on pseudo-masks.

Paper Sec. 2.1: a Mask R-CNN (ResNet-101-FPN, 1024 px) finds the white cell, and the
RoIAlign features of its box (256 x 14 x 14) feed the autoencoder. Here:

* the same torchvision ``MaskRCNN`` meta-architecture (RPN, RoIAlign box and mask heads)
  with ONE class, "white cell", on a small ResNet-like backbone with GroupNorm and an FPN
  (:class:`DetectorConfig`; the ``cpu`` preset is sized for a 2-core CPU at 256 px);
* no pretrained weights (no internet, and no expert labels): it is trained from scratch
  on the label-free pseudo-masks of :mod:`bcfeat.segmentation`, skipping the ones flagged
  not confident (:func:`train_detector`);
* :func:`detect` keeps exactly one cell per image: the best-scoring detection, or, when
  there is none, a centred box and ellipse flagged ``fallback`` (both cases counted by
  :func:`summarize_detections`).

Checkpoints store ``{"format", "config": asdict(cfg), "state_dict", ...}`` and
:func:`load_detector` rebuilds the model from the stored config; never a pickled model.
"""

from __future__ import annotations

import math
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops import MultiScaleRoIAlign, roi_align
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from bcfeat.atomic_io import atomic_torch_save
from bcfeat.data import scan_dataset
from bcfeat.data.images import read_image
from bcfeat.model_files import build_from_payload, load_model_file
from bcfeat.segmentation import SegmentationConfig, centred_ellipse, segment_white_cell
from bcfeat.train import resolve_device
from bcfeat.validation import require_int, require_positive

if TYPE_CHECKING:
    import pandas as pd

CHECKPOINT_FORMAT = "bcfeat.detector/1"
_RESERVED_KEYS = ("format", "config", "state_dict")


# ----------------------------------------------------------------------------- config
@dataclass
class DetectorConfig:
    """Architecture of the one-class Mask R-CNN; the defaults are a ResNet-18-like GN-FPN.

    Attributes
    ----------
    image_size : int
        Images are resized so their long side is ``image_size`` (torchvision's
        ``min_size = max_size = image_size``). The paper used 1024; cells fill a good part
        of our single-cell crops, so 256 keeps them 40-250 px wide.
    stem_width : int
        Channels of the two stride-2 3x3 stem convolutions (output stride 4).
    backbone_widths : tuple of int
        Channels of the four residual stages (strides 4, 8, 16, 32).
    backbone_blocks : tuple of int
        Basic residual blocks per stage (ResNet-18: 2, 2, 2, 2).
    fpn_first_stage : int
        First stage (1-4) that feeds the FPN. 1 gives the usual P2-P5 (+ pool) pyramid;
        2 drops the stride-4 level, the most expensive one at 256 px, where even the
        smallest cells (~40 px) are 5 cells of stride 8 wide.
    fpn_channels : int
        FPN width = channels of the instance features (256 in the paper).
    norm : {"group", "batch", "none"}
        Normalisation in the backbone and mask head. GroupNorm is the default because the
        batches are small (4-8 images) and training starts from scratch.
    gn_groups : int
        Groups of GroupNorm (reduced where it does not divide the channel count).
    anchor_sizes : tuple of int
        One anchor size (px at ``image_size``) per pyramid level, finest first; the pool
        level is the last entry.
    aspect_ratios : tuple of float
        Anchor aspect ratios (height / width) at every level.
    rpn_pre_nms_top_n_train, rpn_post_nms_top_n_train, rpn_pre_nms_top_n_test, rpn_post_nms_top_n_test : int
        RPN proposals kept (per level before NMS / in all after NMS). One cell per crop
        needs few proposals; fewer at test time is the main speed lever of the heads.
    rpn_batch_size_per_image : int
        Anchors sampled per image for the RPN loss.
    box_batch_size_per_image : int
        Proposals sampled per image for the box/mask heads in training.
    box_detections_per_img : int
        Detections kept per image at test time (only the best is used).
    box_score_thresh : float
        Detections scoring below this are dropped; with none left, :func:`detect` falls
        back to a centred box.
    representation_size : int
        Width of the two fully connected layers of the box head (1024 in the paper).
    mask_head_width, mask_head_layers : int
        The mask head's 3x3 convolutions (paper: 4 x 256).
    mask_upsample : int
        Transposed-convolution x2 stages of the mask predictor: 1 gives Mask R-CNN's 28 x 28
        masks (from 14 x 14 RoI features), 2 gives 56 x 56 (sharper outlines of large cells
        at a small input size).
    mask_image_guidance : bool
        Also give the mask predictor the input image itself, RoIAligned at the mask's
        resolution (28 x 28 or 56 x 56), fused with the upsampled mask-head features by a
        few 3x3 convolutions. The FPN starts at stride 8 in the cpu preset, so without it
        the mask outline comes from features 8 input pixels apart; the stain edge that
        the pseudo-masks follow is in the pixels. It does not change the instance
        features (they are read from the FPN).
    image_mean, image_std : tuple of float
        Input normalisation (RGB in [0, 1]).
    mask_thresh : float
        Probability above which a pixel of the pasted mask belongs to the cell. An
        inference setting, not architecture: :func:`calibrate_mask_threshold` sets it after
        training from the pseudo-masks (no expert labels), and a finished run may resume
        with another value.
    mask_paste : {"torchvision", "subpixel"}
        How the kept M x M mask is put back on the input image (an inference setting).
        ``"torchvision"`` is torchvision's ``paste_masks_in_image``: the box is rounded
        out to whole pixels of the input image and widened by one mask cell, which
        fattens the outline by up to a pixel; that is invisible on a 1024 px image and
        costs 0.011 mean IoU on the 120 px JTSC images even for a perfect mask (see
        :func:`paste_mask_subpixel`). ``"subpixel"`` samples the mask at every pixel
        centre with the box-to-bin mapping that RoIAlign used to make the training
        targets.
    """

    image_size: int = 256
    stem_width: int = 32
    backbone_widths: tuple[int, ...] = (64, 128, 256, 512)
    backbone_blocks: tuple[int, ...] = (2, 2, 2, 2)
    fpn_first_stage: int = 1
    fpn_channels: int = 256
    norm: str = "group"
    gn_groups: int = 16
    anchor_sizes: tuple[int, ...] = (16, 32, 64, 128, 256)
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    rpn_pre_nms_top_n_train: int = 1000
    rpn_post_nms_top_n_train: int = 500
    rpn_pre_nms_top_n_test: int = 300
    rpn_post_nms_top_n_test: int = 100
    rpn_batch_size_per_image: int = 256
    box_batch_size_per_image: int = 128
    box_detections_per_img: int = 5
    box_score_thresh: float = 0.05
    representation_size: int = 1024
    mask_head_width: int = 256
    mask_head_layers: int = 4
    mask_upsample: int = 1
    mask_image_guidance: bool = False
    image_mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    image_std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    mask_thresh: float = 0.5
    mask_paste: str = "subpixel"

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, list):  # configs read back from checkpoints / JSON
                setattr(self, f.name, tuple(value))
        if len(self.backbone_widths) != 4 or len(self.backbone_blocks) != 4:
            raise ValueError(f"backbone_widths and backbone_blocks need 4 stages, got "
                             f"{self.backbone_widths} and {self.backbone_blocks}")
        if not 1 <= self.fpn_first_stage <= 4:
            raise ValueError(f"fpn_first_stage must be 1-4, got {self.fpn_first_stage}")
        if len(self.anchor_sizes) != self.n_levels:
            raise ValueError(f"anchor_sizes needs one size per pyramid level ({self.n_levels}: stages "
                             f"{self.fpn_first_stage}-4 + pool), got {self.anchor_sizes}")
        if self.mask_upsample < 1:
            raise ValueError(f"mask_upsample must be >= 1, got {self.mask_upsample}")
        if not 0.0 < self.mask_thresh < 1.0:
            raise ValueError(f"mask_thresh must lie in (0, 1), got {self.mask_thresh}")
        if self.mask_paste not in ("torchvision", "subpixel"):
            raise ValueError(f"mask_paste must be 'torchvision' or 'subpixel', got {self.mask_paste!r}")
        if self.norm not in ("group", "batch", "none"):
            raise ValueError(f"norm must be 'group', 'batch' or 'none', got {self.norm!r}")

    @property
    def n_levels(self) -> int:
        """Pyramid levels, the extra max-pool level included."""
        return 4 - self.fpn_first_stage + 1 + 1

    @property
    def feature_names(self) -> list[str]:
        """FPN levels that RoIAlign reads (all but the pool level)."""
        return [str(i) for i in range(self.n_levels - 1)]

    @classmethod
    def cpu(cls, **overrides: Any) -> "DetectorConfig":
        """The 2-core-CPU preset: 256 px, a narrow 1-block-per-stage GN ResNet, 64-channel FPN
        from stride 8, small heads and few test-time proposals (64 x 14 x 14 features, the
        input of ``AEConfig.cpu``)."""
        base: dict[str, Any] = dict(
            stem_width=16, backbone_widths=(24, 48, 96, 160), backbone_blocks=(1, 1, 1, 1),
            fpn_first_stage=2, fpn_channels=64, gn_groups=8,
            anchor_sizes=(32, 64, 128, 256), aspect_ratios=(0.67, 1.0, 1.5),
            rpn_pre_nms_top_n_train=300, rpn_post_nms_top_n_train=150,
            rpn_pre_nms_top_n_test=100, rpn_post_nms_top_n_test=50,
            rpn_batch_size_per_image=128, box_batch_size_per_image=64, box_detections_per_img=3,
            representation_size=256, mask_head_width=64, mask_head_layers=4,
        )
        base.update(overrides)
        return cls(**base)

    @classmethod
    def tiny(cls, **overrides: Any) -> "DetectorConfig":
        """A toy model for tests: 128 px, 16-channel FPN."""
        base: dict[str, Any] = dict(
            image_size=128, stem_width=8, backbone_widths=(8, 16, 24, 32), backbone_blocks=(1, 1, 1, 1),
            fpn_first_stage=2, fpn_channels=16, gn_groups=4,
            anchor_sizes=(16, 32, 64, 128), aspect_ratios=(1.0,),
            rpn_pre_nms_top_n_train=100, rpn_post_nms_top_n_train=50,
            rpn_pre_nms_top_n_test=50, rpn_post_nms_top_n_test=20,
            rpn_batch_size_per_image=64, box_batch_size_per_image=32, box_detections_per_img=3,
            representation_size=64, mask_head_width=16, mask_head_layers=2,
        )
        base.update(overrides)
        return cls(**base)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DetectorConfig":
        """Rebuild from ``asdict(cfg)``; unknown keys are an error naming them."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown DetectorConfig keys {unknown}; known keys are {sorted(known)}")
        return cls(**d)


@dataclass
class TrainConfig:
    """How :func:`train_detector` trains.

    Attributes
    ----------
    steps : int
        Optimiser steps (a fixed number, not a time budget, so runs are reproducible).
    batch_size : int
        Images per step.
    optimizer : {"adamw", "sgd"}
    lr : float
        Peak learning rate (after linear warm-up; cosine decay to ``lr * final_lr_frac``).
    weight_decay : float
    momentum : float
        SGD momentum (ignored by AdamW).
    warmup_steps : int
    final_lr_frac : float
    grad_clip : float
        Clip the global gradient norm (0 disables); guards the from-scratch start.
    seed : int
        Seeds weights, data order and augmentation.
    num_threads : int
        ``torch.set_num_threads`` while training. 1 by default: on the shared 2-core
        machines, two OpenMP threads stall each other whenever another process runs
        (measured 0.23 s/step with 1 thread against 5.2 s/step with 2 under load).
    confident_only : bool
        Train only on pseudo-masks flagged confident by :mod:`bcfeat.segmentation`.
    augment : bool
        Random flips, 90-degree rotations and colour jitter (brightness, contrast,
        saturation, hue) so one detector serves four stains.
    scale_jitter : tuple of float
        Range of a random zoom-out: the image is shrunk by this factor and padded with
        its border colour, so cells of every size are seen (1, 1 disables).
    checkpoint_every : int
        Steps between checkpoints (the last step always writes one).
    max_bad_steps : int
        Consecutive non-finite losses tolerated (each skipped) before training stops with
        an error.
    log_every : int
        Steps between history records.
    device : str
        ``"auto"`` (CUDA if available, else CPU) or a torch device string. The checkpoint
        always holds CPU tensors, so a GPU-trained detector loads anywhere.
    amp : bool
        Mixed precision (float16 autocast + GradScaler); used on CUDA only.
    balance_groups : bool
        Draw every training image with probability 1 / (number of usable images of its
        group), so each group (site) fills the same share of the batches, however few images
        it has. Needs ``groups`` in :func:`train_detector`. False: every usable image equally.
    """

    steps: int = 2500
    batch_size: int = 6
    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1e-4
    momentum: float = 0.9
    warmup_steps: int = 100
    final_lr_frac: float = 0.05
    grad_clip: float = 10.0
    seed: int = 0
    num_threads: int = 1
    confident_only: bool = True
    augment: bool = True
    scale_jitter: tuple[float, float] = (0.6, 1.0)
    checkpoint_every: int = 250
    max_bad_steps: int = 10
    log_every: int = 10
    device: str = "auto"
    amp: bool = True
    balance_groups: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.scale_jitter, list):
            self.scale_jitter = tuple(self.scale_jitter)
        if self.optimizer not in ("adamw", "sgd"):
            raise ValueError(f"optimizer must be 'adamw' or 'sgd', got {self.optimizer!r}")
        for name in ("steps", "batch_size", "checkpoint_every", "log_every", "num_threads"):
            require_int(f"detector TrainConfig.{name}", getattr(self, name), 1)
        for name in ("warmup_steps", "max_bad_steps"):
            require_int(f"detector TrainConfig.{name}", getattr(self, name), 0)
        require_positive("detector TrainConfig.lr", self.lr)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig keys {unknown}; known keys are {sorted(known)}")
        return cls(**d)


# ----------------------------------------------------------------------------- model
def _norm(kind: str, channels: int, groups: int) -> nn.Module:
    if kind == "group":
        g = math.gcd(groups, channels)
        return nn.GroupNorm(g, channels)
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    return nn.Identity()


class _BasicBlock(nn.Module):
    """ResNet basic block (two 3x3 convolutions) with a projected shortcut when needed."""

    def __init__(self, c_in: int, c_out: int, stride: int, norm: str, groups: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.norm1 = _norm(norm, c_out, groups)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.norm2 = _norm(norm, c_out, groups)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), _norm(norm, c_out, groups))

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu(self.norm1(self.conv1(x)))
        y = self.norm2(self.conv2(y))
        return F.relu(y + self.shortcut(x))


class SmallResNet(nn.Module):
    """A ResNet-18-like trunk of configurable width: stem (stride 4) and four stages.

    ``(B, 3, H, W)`` -> stage outputs at strides 4, 8, 16, 32 (read by the FPN through
    ``IntermediateLayerGetter``, hence the named children ``stem, layer1..layer4``).
    """

    def __init__(self, cfg: DetectorConfig) -> None:
        super().__init__()
        g = cfg.gn_groups
        self.stem = nn.Sequential(
            nn.Conv2d(3, cfg.stem_width, 3, 2, 1, bias=False), _norm(cfg.norm, cfg.stem_width, g), nn.ReLU(inplace=True),
            nn.Conv2d(cfg.stem_width, cfg.stem_width, 3, 2, 1, bias=False), _norm(cfg.norm, cfg.stem_width, g),
            nn.ReLU(inplace=True),
        )
        c_in = cfg.stem_width
        for i, (width, n_blocks) in enumerate(zip(cfg.backbone_widths, cfg.backbone_blocks)):
            stride = 1 if i == 0 else 2
            blocks = [_BasicBlock(c_in if b == 0 else width, width, stride if b == 0 else 1, cfg.norm, g)
                      for b in range(n_blocks)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            c_in = width
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        # Zero-init the last norm of each residual branch: every block starts as identity,
        # which keeps a from-scratch start stable.
        for m in self.modules():
            if isinstance(m, _BasicBlock) and isinstance(m.norm2, (nn.GroupNorm, nn.BatchNorm2d)):
                nn.init.zeros_(m.norm2.weight)

    def forward(self, x: Tensor) -> Tensor:  # pragma: no cover - the FPN getter calls the children
        x = self.stem(x)
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
        return x


def _mask_predictor(cfg: DetectorConfig) -> nn.Module:
    if cfg.mask_upsample == 1:
        return MaskRCNNPredictor(cfg.mask_head_width, cfg.mask_head_width, 2)
    layers: list[nn.Module] = []
    c_in, c = cfg.mask_head_width, cfg.mask_head_width
    for _ in range(cfg.mask_upsample):
        layers += [nn.ConvTranspose2d(c_in, c, 2, 2), nn.ReLU(inplace=True)]
        c_in, c = c, max(8, c // 2)
    layers.append(nn.Conv2d(c_in, 2, 1))
    head = nn.Sequential(*layers)
    for m in head.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)
    return head


class _ImageKeepingFPN(BackboneWithFPN):
    """``BackboneWithFPN`` that also leaves its input batch in ``image_stash["image"]``.

    torchvision's ``MaskRCNN`` hands the RoI heads only the FPN maps; the image-guided mask
    branch (:class:`_ImageGuidedRoIPool`) reads the normalised input batch from this
    shared dict. Same parameters and state-dict keys as ``BackboneWithFPN``.
    """

    def __init__(self, *args: Any, image_stash: dict[str, Tensor], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.image_stash = image_stash

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        self.image_stash["image"] = x
        return super().forward(x)


class _ImageGuidedRoIPool(MultiScaleRoIAlign):
    """The mask branch's RoI pooling: FPN features as usual, plus the input image's RoI.

    Returns ``(features (N, C, 14, 14), image crops (N, 3, M, M))`` for the N boxes, the
    crops at the mask resolution M, sampled like torchvision samples the mask targets.
    """

    def __init__(self, featmap_names: list[str], output_size: int, sampling_ratio: int, image_output_size: int,
                 image_stash: dict[str, Tensor]) -> None:
        super().__init__(featmap_names, output_size, sampling_ratio)
        self.image_output_size = image_output_size
        self.image_stash = image_stash

    def forward(self, features: dict[str, Tensor], proposals: list[Tensor],
                image_shapes: list[tuple[int, int]]) -> tuple[Tensor, Tensor]:
        if "image" not in self.image_stash:
            raise RuntimeError("the image-guided mask branch needs the backbone to run first on the same batch")
        image = self.image_stash["image"]
        crops = roi_align(image, [p.to(image.dtype) for p in proposals], output_size=self.image_output_size,
                          spatial_scale=1.0, sampling_ratio=2)
        return super().forward(features, proposals, image_shapes), crops


class _ImageGuidedMaskHead(nn.Module):
    """Mask R-CNN's convolution stack on the pooled features; the image crops pass through."""

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.head = head

    def forward(self, pooled: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        features, crops = pooled
        return self.head(features), crops


class _ImageGuidedMaskPredictor(nn.Module):
    """Upsample the head's features to the mask size, fuse them with the image crop, predict logits."""

    def __init__(self, cfg: DetectorConfig, image_width: int = 16, fuse_width: int = 32) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = cfg.mask_head_width
        for _ in range(cfg.mask_upsample):
            layers += [nn.ConvTranspose2d(c, c, 2, 2), nn.ReLU(inplace=True)]
        self.upsample = nn.Sequential(*layers)
        self.image_conv = nn.Sequential(nn.Conv2d(3, image_width, 3, 1, 1), nn.ReLU(inplace=True),
                                        nn.Conv2d(image_width, image_width, 3, 1, 1), nn.ReLU(inplace=True))
        self.fuse = nn.Sequential(nn.Conv2d(c + image_width, fuse_width, 3, 1, 1), nn.ReLU(inplace=True),
                                  nn.Conv2d(fuse_width, fuse_width, 3, 1, 1), nn.ReLU(inplace=True),
                                  nn.Conv2d(fuse_width, 2, 1))
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, x: tuple[Tensor, Tensor]) -> Tensor:
        features, crops = x
        return self.fuse(torch.cat([self.upsample(features), self.image_conv(crops)], dim=1))


def build_detector(cfg: DetectorConfig | None = None) -> MaskRCNN:
    """Build the one-class Mask R-CNN of ``cfg`` with random weights.

    Parameters
    ----------
    cfg : DetectorConfig, optional
        Default: ``DetectorConfig()``.

    Returns
    -------
    torchvision.models.detection.MaskRCNN
        ``num_classes = 2`` (background, white cell); ``model.bcfeat_config`` holds ``cfg``.

    Examples
    --------
    >>> m = build_detector(DetectorConfig.tiny()).eval()
    >>> out = m([torch.rand(3, 100, 90)])[0]
    >>> sorted(out), out["masks"].shape[-2:]
    (['boxes', 'labels', 'masks', 'scores'], torch.Size([100, 90]))
    """
    cfg = cfg or DetectorConfig()
    body = SmallResNet(cfg)
    stages = range(cfg.fpn_first_stage, 5)
    fpn_args = dict(
        return_layers={f"layer{s}": str(i) for i, s in enumerate(stages)},
        in_channels_list=[cfg.backbone_widths[s - 1] for s in stages],
        out_channels=cfg.fpn_channels,
        extra_blocks=LastLevelMaxPool(),
    )
    stash: dict[str, Tensor] = {}  # the image-guided mask branch reads the input batch from here
    backbone = (_ImageKeepingFPN(body, image_stash=stash, **fpn_args) if cfg.mask_image_guidance
                else BackboneWithFPN(body, **fpn_args))
    anchors = AnchorGenerator(sizes=tuple((s,) for s in cfg.anchor_sizes),
                              aspect_ratios=(tuple(cfg.aspect_ratios),) * cfg.n_levels)
    c = cfg.fpn_channels
    # The heads are built in the order of the arguments below, so that a seed gives the same
    # initial weights as in earlier versions of this function.
    rpn_head = RPNHead(c, anchors.num_anchors_per_location()[0])
    box_head = TwoMLPHead(c * 7 * 7, cfg.representation_size)
    box_predictor = FastRCNNPredictor(cfg.representation_size, 2)
    mask_norm = (lambda ch: _norm(cfg.norm, ch, cfg.gn_groups)) if cfg.norm != "none" else None
    mask_head = MaskRCNNHeads(c, [cfg.mask_head_width] * cfg.mask_head_layers, 1, norm_layer=mask_norm)
    if cfg.mask_image_guidance:
        mask_size = 28 * 2 ** (cfg.mask_upsample - 1)
        mask_branch = dict(mask_roi_pool=_ImageGuidedRoIPool(cfg.feature_names, 14, 2, mask_size, stash),
                           mask_head=_ImageGuidedMaskHead(mask_head), mask_predictor=_ImageGuidedMaskPredictor(cfg))
    else:
        mask_branch = dict(mask_roi_pool=MultiScaleRoIAlign(cfg.feature_names, 14, 2), mask_head=mask_head,
                           mask_predictor=_mask_predictor(cfg))
    model = MaskRCNN(
        backbone,
        num_classes=None,  # given by the predictors below: 2 = background + white cell
        min_size=cfg.image_size,
        max_size=cfg.image_size,
        image_mean=list(cfg.image_mean),
        image_std=list(cfg.image_std),
        rpn_anchor_generator=anchors,
        rpn_head=rpn_head,
        rpn_pre_nms_top_n_train=cfg.rpn_pre_nms_top_n_train,
        rpn_post_nms_top_n_train=cfg.rpn_post_nms_top_n_train,
        rpn_pre_nms_top_n_test=cfg.rpn_pre_nms_top_n_test,
        rpn_post_nms_top_n_test=cfg.rpn_post_nms_top_n_test,
        rpn_batch_size_per_image=cfg.rpn_batch_size_per_image,
        box_roi_pool=MultiScaleRoIAlign(cfg.feature_names, 7, 2),
        box_head=box_head,
        box_predictor=box_predictor,
        box_batch_size_per_image=cfg.box_batch_size_per_image,
        box_detections_per_img=cfg.box_detections_per_img,
        box_score_thresh=cfg.box_score_thresh,
        **mask_branch,
    )
    model.bcfeat_config = cfg
    return model


def build_reference_maskrcnn(image_size: int = 1024) -> MaskRCNN:
    """The paper's configuration, for cost comparisons only: ResNet-101-FPN Mask R-CNN at
    ``image_size`` px (1024 in the paper), random weights, one class (+ background), torchvision
    defaults otherwise (1000 test proposals, 100 detections, 1024-d box head, 4x256 mask head).
    """
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

    backbone = resnet_fpn_backbone(backbone_name="resnet101", weights=None, trainable_layers=5)
    return MaskRCNN(backbone, num_classes=2, min_size=image_size, max_size=image_size)


def config_of(model: MaskRCNN) -> DetectorConfig:
    """The :class:`DetectorConfig` a model was built from."""
    cfg = getattr(model, "bcfeat_config", None)
    if not isinstance(cfg, DetectorConfig):
        raise ValueError("model was not built by bcfeat.detector.build_detector (no bcfeat_config)")
    return cfg


# ----------------------------------------------------------------------------- checkpoints
def save_detector(path: str | os.PathLike, model: MaskRCNN, extra: dict[str, Any] | None = None) -> Path:
    """Write ``{"format", "config": asdict(cfg), "state_dict", **extra}`` atomically.

    Written to a temporary file beside ``path`` and moved over it with ``os.replace``, so an
    interrupted write leaves the previous checkpoint intact. ``extra`` values must load
    with ``torch.load(weights_only=True)`` (tensors, numbers, strings, containers).
    """
    path = Path(path)
    extra = dict(extra or {})
    clash = sorted(set(extra) & set(_RESERVED_KEYS))
    if clash:
        raise ValueError(f"save_detector: extra keys {clash} are reserved")
    payload = {
        "format": CHECKPOINT_FORMAT,
        "config": asdict(config_of(model)),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        **extra,
    }
    return atomic_torch_save(payload, path)


def _read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The payload of a detector file, opened safely (:func:`bcfeat.model_files.load_model_file`)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no detector checkpoint at {path}")
    return load_model_file(path, "detector")


def detector_from_payload(payload: dict[str, Any], source: str | os.PathLike = "<payload>") -> MaskRCNN:
    """Rebuild a detector from a checkpoint payload (eval mode, CPU); ``source`` names it in errors."""
    def build() -> MaskRCNN:
        model = build_detector(DetectorConfig.from_dict(payload["config"]))
        model.load_state_dict(payload["state_dict"])
        return model

    model = build_from_payload(source, "detector configuration or weights", build)
    model.bcfeat_extra = {k: v for k, v in payload.items()
                          if k not in _RESERVED_KEYS and k not in ("optimizer", "scheduler", "rng", "torch_rng", "scaler")}
    return model.eval()


def load_detector(path: str | os.PathLike) -> MaskRCNN:
    """Rebuild a detector from a checkpoint's stored config and weights (eval mode, CPU).

    The other stored entries (training config, history, ...) are in ``model.bcfeat_extra``.
    """
    return detector_from_payload(_read_checkpoint(path), path)


# ----------------------------------------------------------------------------- training data
def _as_image(item: Any) -> np.ndarray:
    return read_image(item)


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
        ``(h, w)`` bool pseudo-masks from :func:`bcfeat.segmentation.segment_white_cell`.
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
    key = {"sources": sources, "image_size": image_size, "seg_config": asdict(seg_cfg)}
    if cache_path is not None and Path(cache_path).is_file():
        cached = torch.load(cache_path, map_location="cpu", weights_only=True)
        if cached.get("key") == key:
            return PseudoLabelledSet(
                [t.numpy() for t in cached["images"]], [t.numpy() for t in cached["masks"]],
                cached["confident"].numpy(), cached["quality"].numpy(), sources)
        print(f"pseudo-mask cache {cache_path} was made from other inputs; recomputing")
    from tqdm import tqdm

    images, masks, confident, quality = [], [], [], []
    for it in tqdm(items, desc="pseudo-masks", disable=not progress, leave=False):
        img = resize_long_side(_as_image(it), image_size)
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


def training_images(datasets: Sequence[str] = ("pbc_acevedo20", "jtsc_zheng18", "cellavision_zheng18", "bccd_crops"),
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
        that :attr:`TrainConfig.balance_groups` balances).
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


def training_image_paths(datasets: Sequence[str] = ("pbc_acevedo20", "jtsc_zheng18", "cellavision_zheng18", "bccd_crops"),
                         per_dataset: int | dict[str, int] = 400, **kwargs: Any) -> list[str]:
    """The paths of :func:`training_images` (same arguments)."""
    return training_images(datasets, per_dataset, **kwargs).path.tolist()


def holdout_paths(dataset: str, holdout_every: int, *, root: str | os.PathLike | None = None,
                  exclude_class_folders: Sequence[str] = ("platelet",)) -> list[str]:
    """The images :func:`training_image_paths` never draws for the same ``holdout_every``."""
    samples = scan_dataset(dataset, root, label_space=None).samples
    samples = samples[~samples.class_folder.isin(list(exclude_class_folders))].reset_index(drop=True)
    return samples[samples.index % holdout_every == 0].path.astype(str).tolist()


# ----------------------------------------------------------------------------- augmentation
def _augment(img: Tensor, mask: Tensor, cfg: TrainConfig, g: torch.Generator) -> tuple[Tensor, Tensor]:
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


def _to_target(mask: Tensor) -> dict[str, Tensor]:
    ys, xs = torch.nonzero(mask, as_tuple=True)
    box = torch.tensor([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], dtype=torch.float32)
    return {"boxes": box, "labels": torch.ones(1, dtype=torch.int64), "masks": mask[None].to(torch.uint8)}


# ----------------------------------------------------------------------------- training
def _lr_factor(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    t = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.final_lr_frac + (1 - cfg.final_lr_frac) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def train_detector(
    images: Sequence[Any] | PseudoLabelledSet,
    cfg: DetectorConfig | None = None,
    train_cfg: TrainConfig | None = None,
    checkpoint_path: str | os.PathLike | None = None,
    resume: bool = True,
    *,
    seg_cfg: SegmentationConfig | None = None,
    cache_path: str | os.PathLike | None = None,
    progress: bool = True,
    stop_after: int | None = None,
    groups: Sequence[str] | None = None,
) -> tuple[MaskRCNN, list[dict[str, float]]]:
    """Train the one-class Mask R-CNN from scratch on label-free pseudo-masks.

    Parameters
    ----------
    images : sequence of path or np.ndarray, or PseudoLabelledSet
        Unlabelled training images (their pseudo-masks are computed here, see
        :func:`pseudo_label`), or an already pseudo-labelled set.
    cfg : DetectorConfig, optional
        Architecture (default ``DetectorConfig.cpu()``). On resume the stored one is used and
        must equal ``cfg`` if given.
    train_cfg : TrainConfig, optional
    checkpoint_path : path, optional
        Written atomically every ``checkpoint_every`` steps and at the end, with the
        config, optimiser, scheduler, RNG state, step and history inside.
    resume : bool
        Continue from ``checkpoint_path`` when it exists (a finished run returns at once).
    seg_cfg, cache_path : optional
        Passed to :func:`pseudo_label`.
    progress : bool
        Show a progress bar with the loss.
    stop_after : int, optional
        Stop once this many steps are done (a checkpoint is written there), e.g. to train
        in time slices; calling again with ``resume=True`` continues to ``train_cfg.steps``.
    groups : sequence of str, optional
        The group (site) of each training image, in the order of ``images``; required by
        ``train_cfg.balance_groups``.

    Returns
    -------
    model : MaskRCNN
        In eval mode.
    history : list of dict
        ``{"step", "loss", "loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness",
        "loss_rpn_box_reg", "lr", "seconds"}`` every ``log_every`` steps.
    """
    train_cfg = train_cfg or TrainConfig()
    state: dict[str, Any] | None = None
    if resume and checkpoint_path is not None and Path(checkpoint_path).is_file():
        state = _read_checkpoint(checkpoint_path)
        stored = DetectorConfig.from_dict(state["config"])
        if cfg is not None and _architecture(asdict(cfg)) != _architecture(asdict(stored)):
            raise ValueError(f"checkpoint {checkpoint_path} was trained with another DetectorConfig; "
                             "pass the same config or resume=False")
        cfg = stored
        stored_train = state.get("train_config")
        if stored_train is not None and _training_identity(stored_train) != _training_identity(asdict(train_cfg)):
            raise ValueError(f"checkpoint {checkpoint_path} was trained with another TrainConfig: "
                             f"{state['train_config']} (got {asdict(train_cfg)}); pass the same or resume=False")
    cfg = cfg or DetectorConfig.cpu()

    old_threads = torch.get_num_threads()
    torch.set_num_threads(train_cfg.num_threads)
    try:
        return _train(images, cfg, train_cfg, checkpoint_path, state, seg_cfg, cache_path, progress, stop_after, groups)
    finally:
        torch.set_num_threads(old_threads)


# Inference settings of a DetectorConfig: not what is trained, so they may differ on resume.
_INFERENCE_SETTINGS = ("mask_thresh", "mask_paste")


def _architecture(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k not in _INFERENCE_SETTINGS}


# Settings that change where and how fast a run computes, not what it trains: a run may resume
# under other values (on another device the rounding differs, so the result is then not bitwise).
_DEVICE_SETTINGS = ("device", "amp", "num_threads")


def _training_identity(train_config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in train_config.items() if k not in _DEVICE_SETTINGS}


def _model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _sampling_weights(keep: np.ndarray, groups: Sequence[str] | None, n_images: int, balance: bool) -> Tensor | None:
    """Per-image draw probabilities over ``keep`` (None: uniform)."""
    if not balance:
        return None
    if groups is None:
        raise ValueError("TrainConfig.balance_groups needs the group of every training image (groups=...)")
    if len(groups) != n_images:
        raise ValueError(f"groups has {len(groups)} entries for {n_images} training images")
    _, inverse, counts = np.unique(np.asarray(groups, dtype=str)[keep], return_inverse=True, return_counts=True)
    return torch.from_numpy(1.0 / counts[inverse]).double()


def _train(images, cfg, train_cfg, checkpoint_path, state, seg_cfg, cache_path, progress, stop_after, groups=None):
    from tqdm import tqdm

    data = images if isinstance(images, PseudoLabelledSet) else pseudo_label(
        images, cfg.image_size, seg_cfg, cache_path, progress)
    keep = np.flatnonzero(data.confident) if train_cfg.confident_only else np.arange(len(data))
    keep = np.array([i for i in keep if data.masks[i].any()], dtype=np.int64)
    if len(keep) == 0:
        raise ValueError(f"no usable pseudo-masks among {len(data)} training images "
                         f"({int(data.confident.sum())} confident)")
    weights = _sampling_weights(keep, groups, len(data), train_cfg.balance_groups)

    torch.manual_seed(train_cfg.seed)
    model = build_detector(cfg)
    device = resolve_device(train_cfg.device)
    use_amp = bool(train_cfg.amp) and device.type == "cuda"
    model.to(device)
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    params = [p for p in model.parameters() if p.requires_grad]
    if train_cfg.optimizer == "adamw":
        opt: torch.optim.Optimizer = torch.optim.AdamW(params, lr=train_cfg.lr, weight_decay=train_cfg.weight_decay)
    else:
        opt = torch.optim.SGD(params, lr=train_cfg.lr, momentum=train_cfg.momentum, weight_decay=train_cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, train_cfg))
    g = torch.Generator().manual_seed(train_cfg.seed)
    history: list[dict[str, float]] = []
    start, elapsed = 0, 0.0
    if state is not None:
        model.load_state_dict(state["state_dict"])
        opt.load_state_dict(state["optimizer"])  # moves the moments to the parameters' device
        if use_amp and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        sched.load_state_dict(state["scheduler"])
        g.set_state(state["rng"])
        # The RPN / RoI samplers draw from the global generator.
        torch.set_rng_state(state["torch_rng"])
        history = list(state.get("history", []))
        start = int(state["step"])
        elapsed = float(state.get("seconds", 0.0))

    def save(step: int) -> None:
        if checkpoint_path is None:
            return
        save_detector(checkpoint_path, model, {
            "train_config": asdict(train_cfg), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
            "rng": g.get_state(), "torch_rng": torch.get_rng_state(), "step": step,
            "scaler": scaler.state_dict() if use_amp else {}, "history": history, "seconds": elapsed, "skipped": skipped,
            "n_train_images": len(data), "n_used_images": int(len(keep)),
            "seg_config": asdict(seg_cfg or SegmentationConfig()),
        })

    model.train()
    bad = 0
    skipped = int(state.get("skipped", 0)) if state is not None else 0
    t_last = time.perf_counter()
    end = train_cfg.steps if stop_after is None else max(start, min(train_cfg.steps, stop_after))
    bar = tqdm(range(start, end), desc="detector", disable=not progress, initial=start,
               total=train_cfg.steps, leave=False)
    for step in bar:
        draw = (torch.randint(0, len(keep), (train_cfg.batch_size,), generator=g) if weights is None
                else torch.multinomial(weights, train_cfg.batch_size, replacement=True, generator=g))
        idx = keep[draw.numpy()]
        batch, targets = [], []
        for i in idx:
            img = torch.from_numpy(data.images[i]).permute(2, 0, 1).float() / 255
            mask = torch.from_numpy(data.masks[i])
            if train_cfg.augment:
                aug_img, aug_mask = _augment(img, mask, train_cfg, g)
                if aug_mask.any():  # a zoom-out can shrink a tiny cell to nothing
                    img, mask = aug_img, aug_mask
            batch.append(img.to(device, non_blocking=True))
            targets.append({k: v.to(device, non_blocking=True) for k, v in _to_target(mask).items()})
        with torch.autocast("cuda", dtype=torch.float16) if use_amp else nullcontext():
            losses = model(batch, targets)
        losses = {k: v.float() for k, v in losses.items()}
        loss = sum(losses.values())
        finite = bool(torch.isfinite(loss))
        opt.zero_grad(set_to_none=True)
        if finite:
            bad = 0
            scaler.scale(loss).backward()
            if train_cfg.grad_clip > 0:
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(params, train_cfg.grad_clip)
            scaler.step(opt)
            scaler.update()
        else:
            # Skip the update (weights stay finite); give up after too many in a row.
            bad += 1
            skipped += 1
            if bad > train_cfg.max_bad_steps:
                save(step)
                raise FloatingPointError(f"{bad} consecutive non-finite losses up to step {step}: "
                                         f"{ {k: v.item() for k, v in losses.items()} }")
        sched.step()
        now = time.perf_counter()
        elapsed += now - t_last
        t_last = now
        if finite and (step % train_cfg.log_every == 0 or step == end - 1):
            rec = {"step": step, "loss": loss.item(), "lr": float(sched.get_last_lr()[0]), "seconds": elapsed,
                   "skipped": skipped}
            rec.update({k: v.item() for k, v in losses.items()})
            history.append(rec)
            bar.set_postfix(loss=f"{rec['loss']:.3f}", mask=f"{rec['loss_mask']:.3f}")
        if (step + 1) % train_cfg.checkpoint_every == 0 or step == end - 1:
            save(step + 1)
    bar.close()
    model.eval()
    model.bcfeat_extra = {"history": history, "seconds": elapsed, "skipped": skipped,
                          "train_config": asdict(train_cfg)}
    return model, history


# ----------------------------------------------------------------------------- inference
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
class _RawRun:
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
def _run_batch(model: MaskRCNN, images: list[np.ndarray], score_thresh: float | None = None) -> _RawRun:
    """Transform -> backbone+FPN -> RPN -> RoI heads once; choose one cell per image.

    Works for any torchvision ``MaskRCNN`` (also the paper-size reference of the benchmark).
    """
    thresh = model.roi_heads.score_thresh if score_thresh is None else score_thresh
    cfg = getattr(model, "bcfeat_config", None)  # the paper-size reference has none
    mask_thresh = cfg.mask_thresh if cfg is not None else 0.5
    was_training = model.training
    model.eval()
    device = _model_device(model)
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
    return _RawRun(detections, features, boxes_t, [tuple(s) for s in image_list.image_sizes], probabilities)


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

    from bcfeat.mask_metrics import mask_iou

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
        run = _run_batch(model, [np.asarray(data.images[i]) for i in chunk])
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
        batch.append(_as_image(item))
        if len(batch) == batch_size:
            out.extend(_run_batch(model, batch, score_thresh).detections)
            batch = []
    if batch:
        out.extend(_run_batch(model, batch, score_thresh).detections)
    return out


def summarize_detections(detections: Sequence[Detection]) -> dict[str, float]:
    """Counts of the two special cases: ``n_fallback`` (nothing found) and ``n_multiple``
    (several candidates, best kept), with the mean score of real detections."""
    scores = [d.score for d in detections if not d.fallback]
    return {
        "n_images": len(detections),
        "n_fallback": sum(d.fallback for d in detections),
        "n_multiple": sum(d.n_candidates > 1 for d in detections),
        "mean_score": float(np.mean(scores)) if scores else float("nan"),
    }


# ----------------------------------------------------------------------------- command line
def _per_dataset(item: str) -> tuple[str, int]:
    """``"name=count"`` of ``--per-dataset`` (count >= 1)."""
    import argparse

    name, sep, count = item.partition("=")
    if not sep or not name or not count.isdigit() or int(count) < 1:
        raise argparse.ArgumentTypeError(f"{item!r} is not name=count with a count >= 1")
    return name, int(count)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bcfeat.detector``: train (or resume) the detector, then score it and the
    pseudo-masks against the expert masks. See ``--help``. Exit status as
    :mod:`bcfeat.exit_codes` (0 ok, 1 unexpected error, 2 a bad value or input)."""
    import argparse

    from bcfeat import paths
    from bcfeat.exit_codes import int_at_least, run_command

    ap = argparse.ArgumentParser(prog="python -m bcfeat.detector", description=main.__doc__)
    ap.add_argument("--preset", choices=("cpu", "default", "tiny"), default="cpu")
    ap.add_argument("--steps", type=int_at_least(1), default=TrainConfig.steps)
    ap.add_argument("--batch-size", type=int_at_least(1), default=TrainConfig.batch_size)
    ap.add_argument("--seed", type=int_at_least(0), default=0)
    ap.add_argument("--per-dataset", nargs="+", type=_per_dataset,
                    default=[("pbc_acevedo20", 900), ("jtsc_zheng18", 300), ("cellavision_zheng18", 100),
                             ("bccd_crops", 351)],
                    help="training images drawn per dataset, as name=count")
    ap.add_argument("--holdout-every", type=int_at_least(0), default=4,
                    help="every n-th image of each dataset is never trained on (0: use all)")
    ap.add_argument("--checkpoint", type=Path, default=paths.CHECKPOINTS / "detector_cpu.pt")
    ap.add_argument("--cache", type=Path, default=paths.CACHE / "detector_pseudo_masks.pt")
    ap.add_argument("--eval-dir", type=Path, default=paths.ARTIFACTS / "detector_eval")
    ap.add_argument("--no-resume", action="store_true")
    ap.add_argument("--no-balance-sites", action="store_true",
                    help="draw every training image equally often instead of every site equally often")
    ap.add_argument("--mask-image-guidance", action="store_true",
                    help="give the mask predictor the box's pixels as well (DetectorConfig.mask_image_guidance)")
    ap.add_argument("--mask-paste", choices=("subpixel", "torchvision"), default=None,
                    help="how the kept mask is put back on the image (default: the preset's)")
    ap.add_argument("-v", "--verbose", action="store_true", help="show the traceback of an unexpected error")
    args = ap.parse_args(argv)
    return run_command("python -m bcfeat.detector", lambda: _train_and_evaluate(args), verbose=args.verbose)


def _train_and_evaluate(args: Any) -> int:
    """The work of :func:`main` on parsed arguments."""
    import pandas as pd

    per = dict(args.per_dataset)
    cfg = {"cpu": DetectorConfig.cpu, "default": DetectorConfig, "tiny": DetectorConfig.tiny}[args.preset]()
    if args.mask_image_guidance:
        cfg = replace(cfg, mask_image_guidance=True)
    train_cfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, seed=args.seed,
                            balance_groups=not args.no_balance_sites)
    sample = training_images(tuple(per), per, holdout_every=args.holdout_every, seed=args.seed)
    files = sample.path.tolist()
    print(f"{len(files)} unlabelled training images: {per} (holdout_every={args.holdout_every})")
    t0 = time.perf_counter()
    data = pseudo_label(files, cfg.image_size, cache_path=args.cache)
    model, history = train_detector(data, cfg, train_cfg, args.checkpoint, resume=not args.no_resume,
                                    groups=sample.dataset.tolist())
    print(f"trained {train_cfg.steps} steps: {model.bcfeat_extra['seconds'] / 60:.1f} min in the training loop, "
          f"{(time.perf_counter() - t0) / 60:.1f} min in this call; checkpoint {args.checkpoint}")
    torch.set_num_threads(train_cfg.num_threads)
    if args.mask_paste is not None:
        model.bcfeat_config = replace(model.bcfeat_config, mask_paste=args.mask_paste)
    # As the study does: the mask threshold that best reproduces the training pseudo-masks.
    threshold, _ = calibrate_mask_threshold(model, data, seed=args.seed)
    model.bcfeat_config = replace(model.bcfeat_config, mask_thresh=threshold)
    print(f"mask threshold calibrated on the pseudo-masks ({model.bcfeat_config.mask_paste} paste): {threshold:.2f}")
    from bcfeat.detector_study import detector_gain, evaluate_against_experts

    evaluation = evaluate_against_experts(model, holdout_every=args.holdout_every)
    args.eval_dir.mkdir(parents=True, exist_ok=True)
    evaluation.per_image.to_csv(args.eval_dir / "detector_vs_experts_per_image.csv", index=False)
    evaluation.table.to_csv(args.eval_dir / "detector_vs_experts_summary.csv")
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(evaluation.table.round(3).to_string())
        print("detector minus pseudo-mask mean IoU:", detector_gain(evaluation.table).round(4).to_dict())
    print(f"tables in {args.eval_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["DetectorConfig", "TrainConfig", "SmallResNet", "build_detector", "build_reference_maskrcnn",
           "config_of", "save_detector", "load_detector", "PseudoLabelledSet", "pseudo_label",
           "resize_long_side", "training_image_paths", "holdout_paths", "train_detector", "Detection",
           "centred_box", "select_detection", "detect", "summarize_detections", "paste_mask_subpixel"]
