"""The oracle's architecture: :class:`OracleConfig`, its named profiles, and the networks
(a narrow ResNet for the CPU, torchvision's ResNeXt-50 at the paper's scale) built from random weights."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torchvision import models
from torchvision.models.resnet import BasicBlock

from bcfeat.training.checkpoint import config_from_dict
from bcfeat.validation import require_int

ARCHS = ("narrow_resnet", "resnet18", "resnext50_32x4d")
NORMS = ("batch", "group")


@dataclass
class OracleConfig:
    """Everything that defines one oracle training run (stored in its checkpoint).

    Attributes
    ----------
    arch : {"narrow_resnet", "resnet18", "resnext50_32x4d"}
        ``resnext50_32x4d``: Matek et al. 2019 (the ``gpu`` profile).
        ``resnet18``: torchvision's ResNet-18. ``narrow_resnet``: a ResNet of
        torchvision ``BasicBlock``s with ``width`` base channels and a 3x3 stem,
        for CPU budgets and tests.
    norm : {"batch", "group"}
        Normalisation layer in every block.
    group_norm_groups : int
        Groups of GroupNorm (fewer when a layer has fewer channels).
    width : int
        Base channels of ``narrow_resnet`` (stages: w, 2w, 4w, 8w); ignored otherwise.
    blocks : tuple of int
        Blocks per stage of ``narrow_resnet``.
    image_size : int
        Side of the square input in pixels (the whole crop is resized to it).
    epochs, batch_size : int
    lr : float
        Peak AdamW learning rate, decayed by a cosine to 0 over all steps.
    weight_decay : float
        AdamW decoupled weight decay.
    augment : bool
        Random horizontal/vertical flips and 90° rotations (a cell has no up).
    seed : int
        Initial weights, batch order and augmentation all derive from it.
    device : str
        ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``.
    num_threads : int
        torch CPU threads while training (the project's machine has 2 cores).
    """

    arch: str = "resnet18"
    norm: str = "batch"
    group_norm_groups: int = 32
    width: int = 32
    blocks: tuple[int, ...] = (1, 1, 1, 1)
    image_size: int = 64
    epochs: int = 10
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    augment: bool = True
    seed: int = 0
    device: str = "auto"
    num_threads: int = 2

    # Where and how fast a run computes, not what it trains: a run may resume under other values.
    # (epochs stays: the cosine schedule spans all of them.)
    RESUMABLE_CHANGES: ClassVar[tuple[str, ...]] = ("device", "num_threads")

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"arch must be one of {ARCHS}, got {self.arch!r}")
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {self.norm!r}")
        self.blocks = tuple(int(b) for b in self.blocks)  # a list after a JSON/asdict round-trip
        for name in ("epochs", "batch_size", "image_size", "num_threads"):
            require_int(f"OracleConfig.{name}", getattr(self, name), 1)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> OracleConfig:
        """Rebuild from ``asdict(cfg)``; unknown keys are an error naming them."""
        return config_from_dict(cls, d)


# Profiles of the study (bcfeat.runner.profiles passes the name). "cpu": 8 epochs over the 5,149 coarse5
# source images take ~15 s/epoch on 2 free cores (measured: 293 s in all, prediction included, on a
# shared machine); "gpu": Matek et al. 2019 (ResNeXt-50; 224 px as torchvision expects).
ORACLE_PROFILES: dict[str, dict[str, Any]] = {
    "smoke": dict(arch="narrow_resnet", width=8, image_size=32, epochs=2, batch_size=32),
    # a ResNet of one basic block per stage, half ResNet-18's widths: ~1/8 of its compute, so the
    # BatchNorm and GroupNorm oracles both fit the cpu profile's budget on 2 cores
    "cpu": dict(arch="narrow_resnet", width=32, blocks=(1, 1, 1, 1), image_size=64, epochs=8, batch_size=64, lr=2e-3),
    "gpu": dict(arch="resnext50_32x4d", image_size=224, epochs=30, batch_size=64, lr=1e-3, num_threads=8),
}


def oracle_config(profile: str = "cpu", **overrides: Any) -> OracleConfig:
    """The oracle configuration of a run profile, with optional overrides.

    Examples
    --------
    >>> oracle_config("gpu", norm="group").arch
    'resnext50_32x4d'
    """
    try:
        base = ORACLE_PROFILES[profile]
    except KeyError:
        raise ValueError(f"unknown profile {profile!r}; choose one of {sorted(ORACLE_PROFILES)}") from None
    return OracleConfig(**{**base, **overrides})


class Standardize(nn.Module):
    """uint8 or [0, 1] images ``(n, 3, s, s)`` -> per-channel standardised floats.

    The mean and std are buffers (saved in the ``state_dict``), set once from
    the training images by :func:`train_oracle`.
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.full((1, 3, 1, 1), 0.5))
        self.register_buffer("std", torch.full((1, 3, 1, 1), 0.25))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.uint8:
            x = x.float() / 255.0
        return (x - self.mean) / self.std


def _norm_layer(cfg: OracleConfig) -> Callable[[int], nn.Module]:
    if cfg.norm == "batch":
        return nn.BatchNorm2d

    def group_norm(channels: int) -> nn.Module:
        return nn.GroupNorm(math.gcd(cfg.group_norm_groups, channels), channels)

    return group_norm


class NarrowResNet(nn.Module):
    """A small ResNet of torchvision ``BasicBlock``s: 3x3 stem (stride 2), 4 stages, global pool.

    ``(n, 3, s, s)`` -> ``(n, num_classes)``; the stages have ``w, 2w, 4w, 8w``
    channels and strides 1, 2, 2, 2 (a 64 px input ends at 4x4).
    """

    def __init__(self, num_classes: int, width: int, blocks: Sequence[int], norm_layer: Callable[[int], nn.Module]):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, width, 3, stride=2, padding=1, bias=False), norm_layer(width), nn.ReLU(inplace=True)
        )
        layers, cin = [], width
        for i, n_blocks in enumerate(blocks):
            cout, stride = width * 2**i, 1 if i == 0 else 2
            for b in range(n_blocks):
                s = stride if b == 0 else 1
                down = None
                if s != 1 or cin != cout:
                    down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=s, bias=False), norm_layer(cout))
                layers.append(BasicBlock(cin, cout, stride=s, downsample=down, norm_layer=norm_layer))
                cin = cout
        self.stages = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def build_oracle(cfg: OracleConfig, num_classes: int) -> nn.Module:
    """The untrained network of a config: ``(n, 3, s, s)`` uint8/float -> ``(n, num_classes)`` logits.

    Examples
    --------
    >>> m = build_oracle(OracleConfig(arch="narrow_resnet", width=4, norm="group"), 5)
    >>> m(torch.zeros(2, 3, 32, 32, dtype=torch.uint8)).shape
    torch.Size([2, 5])
    """
    norm = _norm_layer(cfg)
    if cfg.arch == "narrow_resnet":
        net = NarrowResNet(num_classes, cfg.width, cfg.blocks, norm)
    else:
        net = getattr(models, cfg.arch)(weights=None, num_classes=num_classes, norm_layer=norm)
    return nn.Sequential(Standardize(), net)
