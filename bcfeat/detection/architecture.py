"""The white-cell detector: a one-class Mask R-CNN trained from scratch on pseudo-masks.

Paper Sec. 2.1: a Mask R-CNN (ResNet-101-FPN, 1024 px) finds the white cell, and the
RoIAlign features of its box (256 x 14 x 14) feed the autoencoder. Here:

* the same torchvision ``MaskRCNN`` meta-architecture (RPN, RoIAlign box and mask heads)
  with ONE class, "white cell", on a small ResNet-like backbone with GroupNorm and an FPN
  (:class:`DetectorConfig`; the ``cpu`` preset is sized for a 2-core CPU at 256 px);
* no pretrained weights (no internet, and no expert labels): it is trained from scratch
  on the label-free pseudo-masks of :mod:`bcfeat.detection.pseudo_masks`, skipping the ones flagged
  not confident (:func:`train_detector`);
* :func:`detect` keeps exactly one cell per image: the best-scoring detection, or, when
  there is none, a centred box and ellipse flagged ``fallback`` (with the number of
  candidates, so that both cases can be counted).

Checkpoints store ``{"format", "config": asdict(cfg), "state_dict", ...}`` and
:func:`load_detector` rebuilds the model from the stored config; never a pickled model.
"""

from __future__ import annotations

import math
from typing import Any

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

from bcfeat.detection.config import DetectorConfig



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
        raise ValueError("model was not built by bcfeat.detection.architecture.build_detector (no bcfeat_config)")
    return cfg
