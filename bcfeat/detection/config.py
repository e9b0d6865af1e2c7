"""What a detector is and how it is trained: :class:`DetectorConfig` (architecture, input size,
inference settings) and :class:`DetectorTrainingConfig` (schedule, sampling, augmentation)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, ClassVar

from bcfeat.training.checkpoint import config_from_dict
from bcfeat.validation import require_int, require_positive


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

    # Inference settings, not what is trained: a run may resume (or a finished one return) under others.
    RESUMABLE_CHANGES: ClassVar[tuple[str, ...]] = ("mask_thresh", "mask_paste")

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
        return config_from_dict(cls, d)


@dataclass
class DetectorTrainingConfig:
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
        Train only on pseudo-masks flagged confident by :mod:`bcfeat.detection.pseudo_masks`.
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

    # Where and how fast a run computes, not what it trains: a run may resume under other values
    # (on another device the rounding differs, so the result is then not bitwise).
    RESUMABLE_CHANGES: ClassVar[tuple[str, ...]] = ("device", "amp", "num_threads")

    def __post_init__(self) -> None:
        if isinstance(self.scale_jitter, list):
            self.scale_jitter = tuple(self.scale_jitter)
        if self.optimizer not in ("adamw", "sgd"):
            raise ValueError(f"optimizer must be 'adamw' or 'sgd', got {self.optimizer!r}")
        for name in ("steps", "batch_size", "checkpoint_every", "log_every", "num_threads"):
            require_int(f"DetectorTrainingConfig.{name}", getattr(self, name), 1)
        for name in ("warmup_steps", "max_bad_steps"):
            require_int(f"DetectorTrainingConfig.{name}", getattr(self, name), 0)
        require_positive("DetectorTrainingConfig.lr", self.lr)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DetectorTrainingConfig":
        """Rebuild from ``asdict(cfg)``; unknown keys are an error naming them."""
        return config_from_dict(cls, d)
