"""A supervised GroupNorm CNN trained to not notice the lab: the source's labels under lab-shift augmentation.

The issue's candidate for invariance learned from shifts: the published cross-lab results on
white cells (a ResNet with GroupNorm trained on one lab, stain augmentation) rely on it. Here a
small :class:`~bcfeat.crosslab.self_supervised.CellEncoder` (GroupNorm, nothing site-specific in
batch statistics) reads the canonical crops of the source site and learns its labels while every
batch is pushed through strong, random lab shifts (:func:`strong_lab_shift`):

- stain: a random 3x3 mixing of the optical-density channels near the identity and a gain per
  channel (other dyes, other staining times), then white balance and gamma;
- optics: Gaussian defocus (sigma up to ``blur_sigma_max`` canvas pixels) and loss of resolution
  (down to ``resolution_min`` of the canvas and back up), sensor noise;
- colour removed altogether on a share of the cells (grey), so shape and texture must carry;
- geometry: any rotation, flips, zoom and a small shift (framing).

The book reports it in the ablation's "objective" lever: its embedding alone and beside the hand
features, both through per-site standardisation and the headline's linear model. It is not part
of the deployed model.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bcfeat.crosslab.self_supervised import CellEncoder, to_tensor
from bcfeat.training.loop import OptimizerStep

logger = logging.getLogger(__name__)

_BLUR_SIGMAS = (0.75, 1.25, 1.75, 2.25)
_RESOLUTIONS = (0.75, 0.5, 0.35)


@dataclass(frozen=True)
class LabShiftAugmentation:
    """How strong the random lab shifts of training are (all at the network's input size).

    Attributes
    ----------
    stain_mixing : float
        Standard deviation of the off-identity entries of the optical-density mixing matrix.
    stain_gain : float
        Standard deviation of the log gain of each optical-density channel.
    white_balance, gamma : float
        Standard deviations of the log per-channel light gain and of the log gamma.
    blur_probability : float
        Share of cells defocused; their sigma is drawn from 0.75-2.25 pixels (scaled to
        ``blur_sigma_max``).
    blur_sigma_max : float
        Largest defocus sigma in pixels.
    resolution_probability : float
        Share of cells brought down to 0.75, 0.5 or ``resolution_min`` of the canvas and back.
    resolution_min : float
    grayscale_probability : float
    noise_max : float
        Largest standard deviation of the added sensor noise (intensity in [0, 1]).
    """

    stain_mixing: float = 0.25
    stain_gain: float = 0.25
    white_balance: float = 0.08
    gamma: float = 0.2
    blur_probability: float = 0.7
    blur_sigma_max: float = 2.25
    resolution_probability: float = 0.7
    resolution_min: float = 0.35
    grayscale_probability: float = 0.3
    noise_max: float = 0.03

    def __post_init__(self) -> None:
        for name in ("stain_mixing", "stain_gain", "white_balance", "gamma", "blur_sigma_max", "noise_max"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"LabShiftAugmentation.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("blur_probability", "resolution_probability", "grayscale_probability"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"LabShiftAugmentation.{name} must lie in [0, 1], got {getattr(self, name)}")
        if not 0 < self.resolution_min <= 1:
            raise ValueError(f"LabShiftAugmentation.resolution_min must lie in (0, 1], got {self.resolution_min}")


@dataclass(frozen=True)
class SupervisedEncoderConfig:
    """One supervised training run.

    Attributes
    ----------
    image_size : int
        Side of the crops the network reads (canonical crops are resized to it).
    width : int
        Channels of the encoder's first stage (its embedding has ``4 * width``).
    epochs, batch_size : int
    lr, weight_decay : float
        AdamW with a one-cycle schedule peaking at ``lr``.
    label_smoothing, dropout : float
    augmentation : LabShiftAugmentation
    seed : int
    """

    image_size: int = 64
    width: int = 16
    epochs: int = 30
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    dropout: float = 0.3
    augmentation: LabShiftAugmentation = field(default_factory=LabShiftAugmentation)
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("image_size", "width", "epochs", "batch_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"SupervisedEncoderConfig.{name} must be an integer >= 1, got {getattr(self, name)!r}")
        if self.image_size < 16:
            raise ValueError(f"SupervisedEncoderConfig.image_size must be >= 16, got {self.image_size}")
        if not 0 <= self.label_smoothing < 1 or not 0 <= self.dropout < 1:
            raise ValueError("SupervisedEncoderConfig.label_smoothing and dropout must lie in [0, 1), "
                             f"got {self.label_smoothing}, {self.dropout}")


class SupervisedCellNet(nn.Module):
    """:class:`CellEncoder` and a linear head over the classes."""

    def __init__(self, n_classes: int, width: int = 16, dropout: float = 0.3):
        super().__init__()
        self.encoder = CellEncoder(width)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(self.encoder.embedding_dim, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder.embed(x))


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = int(math.ceil(2.5 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    k = torch.exp(-t ** 2 / (2 * sigma ** 2))
    k = k / k.sum()
    c = x.shape[1]
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="replicate"), k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(F.pad(x, (0, 0, radius, radius), mode="replicate"), k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def strong_lab_shift(x: torch.Tensor, aug: LabShiftAugmentation, gen: torch.Generator) -> torch.Tensor:
    """One random "other lab" rendering of a batch ``(n, 3, s, s)`` in [0, 1] (same shape, in [0, 1]).

    Examples
    --------
    >>> x = torch.rand(4, 3, 32, 32)
    >>> y = strong_lab_shift(x, LabShiftAugmentation(), torch.Generator().manual_seed(0))
    >>> tuple(y.shape), bool(y.min() >= 0), bool(y.max() <= 1)
    ((4, 3, 32, 32), True, True)
    """
    n, _, s, _ = x.shape

    def normal(*shape: int) -> torch.Tensor:
        return torch.randn(n, *shape, generator=gen)

    # geometry: any rotation, a flip, zoom and shift
    angle = torch.rand(n, generator=gen) * 2 * math.pi
    zoom = torch.exp(normal() * 0.08)
    flip = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0)
    shift = (torch.rand(n, 2, generator=gen) - 0.5) * 0.1
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack([torch.stack([cos * flip, -sin, shift[:, 0]], 1),
                         torch.stack([sin * flip, cos, shift[:, 1]], 1)], 1)
    x = F.grid_sample(x, F.affine_grid(theta, [n, 3, s, s], align_corners=False), padding_mode="border",
                      align_corners=False)
    # optics: loss of resolution, then defocus, per group of cells drawn to the same level
    level = torch.randint(0, len(_RESOLUTIONS), (n,), generator=gen)
    level[torch.rand(n, generator=gen) >= aug.resolution_probability] = -1
    for i, f in enumerate(_RESOLUTIONS):
        sel = level == i
        if sel.any():
            small = max(4, round(s * max(f, aug.resolution_min)))
            x[sel] = F.interpolate(F.interpolate(x[sel], size=(small, small), mode="area"), size=(s, s),
                                   mode="bilinear", align_corners=False)
    if aug.blur_sigma_max > 0:
        level = torch.randint(0, len(_BLUR_SIGMAS), (n,), generator=gen)
        level[torch.rand(n, generator=gen) >= aug.blur_probability] = -1
        for i, sigma in enumerate(_BLUR_SIGMAS):
            sel = level == i
            if sel.any():
                x[sel] = _gaussian_blur(x[sel], sigma * aug.blur_sigma_max / _BLUR_SIGMAS[-1])
    # stain: mix and scale the optical-density channels, then white balance and gamma
    od = -torch.log(x.clamp(1 / 255, 1.0))
    mixing = torch.eye(3) + normal(3, 3) * aug.stain_mixing
    mixing = mixing * torch.exp(normal(1, 3) * aug.stain_gain)
    x = torch.exp(-torch.einsum("bchw,bcd->bdhw", od, mixing).clamp(min=0))
    x = (x * torch.exp(normal(3, 1, 1) * aug.white_balance)).clamp(0, 1) ** torch.exp(normal(1, 1, 1) * aug.gamma)
    grey = torch.rand(n, generator=gen) < aug.grayscale_probability
    if grey.any():
        x[grey] = x[grey].mean(1, keepdim=True).expand(-1, 3, -1, -1)
    x = x + torch.randn(x.shape, generator=gen) * torch.rand(n, 1, 1, 1, generator=gen) * aug.noise_max
    return x.clamp(0, 1)


def _standardize_input(x: torch.Tensor) -> torch.Tensor:
    return (x - 0.5) / 0.25


def train_supervised_encoder(crops: np.ndarray, labels: np.ndarray, cfg: SupervisedEncoderConfig
                             ) -> tuple[SupervisedCellNet, np.ndarray, list[dict]]:
    """Train on canonical crops ``(n, S, S, 3)`` uint8 and their labels ``(n,)``, class-balanced.

    Returns the network (eval mode), its classes (sorted) and the history (one dict per epoch:
    loss, seconds).
    """
    labels = np.asarray(labels)
    if len(crops) != len(labels):
        raise ValueError(f"{len(crops)} crops but {len(labels)} labels")
    classes, y = np.unique(labels, return_inverse=True)
    if len(classes) < 2:
        raise ValueError(f"need at least two classes to train on, got {list(classes)}")
    if len(crops) < cfg.batch_size:
        raise ValueError(f"{len(crops)} crops are fewer than one batch of {cfg.batch_size}")
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    x = to_tensor(crops, cfg.image_size)
    target = torch.from_numpy(y.astype(np.int64))
    weight = torch.tensor(len(y) / (len(classes) * np.bincount(y)), dtype=torch.float32)
    net = SupervisedCellNet(len(classes), cfg.width, cfg.dropout)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = len(x) // cfg.batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg.lr, total_steps=cfg.epochs * steps, pct_start=0.15)
    update = OptimizerStep(opt, torch.device("cpu"), max_bad_steps=0)
    history = []
    for epoch in range(cfg.epochs):
        net.train()
        start, total = time.perf_counter(), 0.0
        order = torch.randperm(len(x), generator=gen)
        for step in range(steps):
            idx = order[step * cfg.batch_size:(step + 1) * cfg.batch_size]
            logits = net(_standardize_input(strong_lab_shift(x[idx], cfg.augmentation, gen)))
            loss = F.cross_entropy(logits, target[idx], weight=weight, label_smoothing=cfg.label_smoothing)
            update(loss, where=f"supervised encoder, epoch {epoch + 1}/{cfg.epochs}, batch {step + 1}/{steps}")
            sched.step()
            total += loss.item()
        history.append({"epoch": epoch, "loss": total / steps, "seconds": time.perf_counter() - start})
        logger.info("supervised encoder epoch %d: loss %.4f (%.0f s)", epoch, history[-1]["loss"],
                    history[-1]["seconds"])
    return net.eval(), classes, history


@torch.no_grad()
def predict_crops(net: SupervisedCellNet, crops: np.ndarray, image_size: int, batch_size: int = 256,
                  flips: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities ``(n, k)`` and embeddings ``(n, 4 * width)`` of canonical crops, each
    averaged over four flips and transpositions of the crop when ``flips`` (a cell has no orientation)."""
    net.eval()
    probs, embs = [], []
    for i in range(0, len(crops), batch_size):
        x = _standardize_input(to_tensor(crops[i:i + batch_size], image_size))
        views = (x, x.flip(-1), x.transpose(-2, -1), x.flip(-2).flip(-1)) if flips else (x,)
        e = torch.stack([net.encoder.embed(v) for v in views])
        p = torch.stack([F.softmax(net.head(ev), 1) for ev in e])
        probs.append(p.mean(0))
        embs.append(e.mean(0))
    if not probs:
        return np.zeros((0, net.head[-1].out_features), np.float32), np.zeros((0, net.encoder.embedding_dim), np.float32)
    return torch.cat(probs).numpy(), torch.cat(embs).numpy()
