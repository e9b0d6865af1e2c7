"""A self-supervised cell encoder: what stays the same when the lab changes.

A small CNN learns, without labels, to give two differently "re-stained" views of the same
canonical cell crop (:mod:`bcfeat.crosslab.cell_crop`) the same embedding, and different
cells different embeddings (SimCLR's NT-Xent loss, Chen et al. 2020; or VICReg's variance-
invariance-covariance loss, Bardes et al. 2022). The views model a lab shift: per-channel
stain gains in optical-density space, brightness, contrast, gamma, blur, rotations and flips
(a cell has no orientation), and a little scale jitter. Trained on the unlabelled crops of
every site (transductive, as the released AE-CFE code trains on all domains), or on the
source site alone.

Under ``torchrun --nproc_per_node=N`` (:mod:`bcfeat.training.distributed`, CPU/gloo) every rank draws
the same batch and views, encodes its slice of both views in one DistributedDataParallel pass and
computes the loss of the whole batch from the gathered projections (NT-Xent's negatives are the
whole batch), so the loss curve is the single-process one up to float rounding.

The encoder uses GroupNorm, so nothing site-specific hides in batch statistics; its
embeddings then go through the same per-site standardisation as the hand features
(:mod:`bcfeat.crosslab.adaptation`). The book reports it as the "objective" lever of the
ablation, alone and beside the hand features.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bcfeat.model_files import build_from_payload, load_model_file
from bcfeat.training.checkpoint import check_resumable, read_model_file, save_model_file
from bcfeat.training.distributed import context, gather
from bcfeat.training.loop import OptimizerStep, restore_resume_state, resume_state, run_units

logger = logging.getLogger(__name__)

OBJECTIVES = ("simclr", "vicreg")
MODEL_KIND = "ssl_encoder"
MODEL_VERSION = 1


@dataclass(frozen=True)
class SelfSupervisedConfig:
    """One self-supervised training run (stored with the encoder).

    Attributes
    ----------
    objective : {"simclr", "vicreg"}
    image_size : int
        Side of the crops the encoder reads (canonical crops are resized to it).
    width : int
        Channels of the first stage; the four stages have ``w, 2w, 4w, 4w``.
    projection_dim : int
        Output of the projection head the loss sees (the embedding is before it).
    epochs, batch_size : int
    lr, weight_decay : float
        AdamW, cosine decay to zero.
    temperature : float
        NT-Xent temperature.
    seed : int
    """

    objective: str = "simclr"
    image_size: int = 48
    width: int = 24
    projection_dim: int = 64
    epochs: int = 15
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 1e-4
    temperature: float = 0.2
    seed: int = 0

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        for name in ("image_size", "width", "projection_dim", "epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"SelfSupervisedConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.batch_size < 4:
            raise ValueError(f"SelfSupervisedConfig.batch_size must be >= 4 (contrastive pairs), got {self.batch_size}")


class CellEncoder(nn.Module):
    """``(n, 3, s, s)`` float in [0, 1] -> ``(n, 4 * width)`` embedding (GroupNorm CNN, strides 2, 2, 2, 1, global pool)."""

    def __init__(self, width: int = 24, projection_dim: int = 64):
        super().__init__()
        chans = [3, width, 2 * width, 4 * width, 4 * width]
        layers: list[nn.Module] = []
        for i in range(4):
            layers += [nn.Conv2d(chans[i], chans[i + 1], 3, stride=2 if i < 3 else 1, padding=1, bias=False),
                       nn.GroupNorm(math.gcd(8, chans[i + 1]), chans[i + 1]), nn.ReLU(inplace=True),
                       nn.Conv2d(chans[i + 1], chans[i + 1], 3, padding=1, bias=False),
                       nn.GroupNorm(math.gcd(8, chans[i + 1]), chans[i + 1]), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.embedding_dim = chans[-1]
        self.projector = nn.Sequential(nn.Linear(chans[-1], chans[-1]), nn.ReLU(inplace=True),
                                       nn.Linear(chans[-1], projection_dim))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(self.features(x), 1).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.embed(x))


def lab_shift_views(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """One random "other lab" view of a batch ``(n, 3, s, s)`` in [0, 1].

    Stain: each channel's optical density is scaled by a factor in [0.7, 1.4] and the total by
    [0.8, 1.25]; light: brightness +-0.1, contrast [0.75, 1.33], gamma [0.7, 1.4]; optics: a
    3x3 blur with probability 0.3; geometry: any of the 8 rotations/flips and a zoom in
    [0.9, 1.1].
    """
    n = x.shape[0]

    def u(lo: float, hi: float, *shape: int) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(n, *shape, generator=gen)

    od = -torch.log(x.clamp(1 / 255, 1.0))
    od = od * u(0.7, 1.4, 3, 1, 1) * u(0.8, 1.25, 1, 1, 1)
    x = torch.exp(-od)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * u(0.75, 1.33, 1, 1, 1) + mean + u(-0.1, 0.1, 1, 1, 1)
    x = x.clamp(0, 1) ** u(0.7, 1.4, 1, 1, 1)
    blur = torch.rand(n, generator=gen) < 0.3
    if blur.any():
        kernel = torch.tensor([1.0, 2.0, 1.0])
        kernel = (kernel[:, None] * kernel[None, :] / 16).expand(3, 1, 3, 3)
        x[blur] = F.conv2d(F.pad(x[blur], (1, 1, 1, 1), mode="replicate"), kernel, groups=3)
    k = torch.randint(0, 4, (n,), generator=gen)
    flip = torch.rand(n, generator=gen) < 0.5
    x = x.clone()
    x[flip] = x[flip].flip(-1)
    for r in (1, 2, 3):
        sel = k == r
        if sel.any():
            x[sel] = torch.rot90(x[sel], r, dims=(-2, -1))
    zoom = u(0.9, 1.1)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1 / zoom
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, padding_mode="border", align_corners=False)


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's normalised-temperature cross entropy of two views ``(n, d)`` each."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = z @ z.T / temperature
    sim.fill_diagonal_(float("-inf"))
    n = len(z1)
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
    return F.cross_entropy(sim, target)


def vicreg(z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """VICReg: invariance (MSE) + variance (hinge on the std) + covariance (off-diagonal) terms."""
    inv = F.mse_loss(z1, z2)
    std = [torch.sqrt(z.var(dim=0) + 1e-4) for z in (z1, z2)]
    var = sum(F.relu(1 - s).mean() for s in std)
    cov = 0.0
    for z in (z1, z2):
        zc = z - z.mean(dim=0)
        c = zc.T @ zc / (len(z) - 1)
        cov = cov + (c - torch.diag(torch.diag(c))).pow(2).sum() / z.shape[1]
    return 25 * inv + 25 * var + cov


def to_tensor(crops: np.ndarray, image_size: int) -> torch.Tensor:
    """``(n, S, S, 3)`` uint8 canonical crops -> ``(n, 3, s, s)`` float in [0, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(crops)).permute(0, 3, 1, 2).float().div_(255)
    if x.shape[-1] != image_size:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", antialias=True, align_corners=False)
    return x


def _data_fingerprint(crops: np.ndarray) -> dict[str, Any]:
    """What a resumed run checks it trains on the same crops, in the same order: their count and a hash."""
    import hashlib

    return {"n_crops": int(len(crops)),
            "crops_sha256": hashlib.sha256(np.ascontiguousarray(crops).tobytes()).hexdigest()}


def train_encoder(crops: np.ndarray, cfg: SelfSupervisedConfig,
                  callback: Callable[[dict], None] | None = None,
                  checkpoint_path: str | os.PathLike | None = None, resume: bool = True
                  ) -> tuple[CellEncoder, list[dict]]:
    """Train a :class:`CellEncoder` on unlabelled canonical crops ``(n, S, S, 3)`` uint8.

    The update is :class:`bcfeat.training.loop.OptimizerStep` (a non-finite loss stops the run
    with :class:`~bcfeat.training.loop.NonFiniteLossError`, naming the epoch and step). With
    ``checkpoint_path`` an encoder file with what continuing needs (optimiser, schedule, random
    states) is written after every epoch, and with ``resume`` an unfinished one is continued
    (the same weights as an uninterrupted run); a finished one returns at once. A file of other
    settings or crops is refused (:func:`bcfeat.training.checkpoint.check_resumable`).

    Returns the encoder (eval mode) and its history (one dict per epoch: loss, seconds).
    """
    if len(crops) < cfg.batch_size:
        raise ValueError(f"{len(crops)} crops are fewer than one batch of {cfg.batch_size}")
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    x = to_tensor(crops, cfg.image_size)
    model = CellEncoder(cfg.width, cfg.projection_dim)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = len(x) // cfg.batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg.lr, total_steps=cfg.epochs * steps_per_epoch,
                                                pct_start=0.1)
    step_fn = OptimizerStep(opt, torch.device("cpu"))
    history: list[dict] = []
    data = _data_fingerprint(crops)
    if resume and checkpoint_path is not None and Path(checkpoint_path).is_file():
        state = read_model_file(checkpoint_path, MODEL_KIND, required=("config", "state_dict", "history"))
        check_resumable(checkpoint_path, state, {"config": cfg}, data)
        model.load_state_dict(state["state_dict"])
        history = list(state["history"])
        if len(history) >= cfg.epochs:
            logger.info("%s is finished (%d epochs)", checkpoint_path, len(history))
            return model.eval(), history
        restore_resume_state(state["resume"], step_fn, sched, gen)
        logger.info("resuming %s at epoch %d of %d", checkpoint_path, len(history), cfg.epochs)
    dist_ctx = context("cpu")
    net = dist_ctx.wrap(model, torch.device("cpu"))
    def train_epoch(epoch: int) -> dict:
        """One epoch of two lab-shifted views per crop; its history record (mean loss, seconds)."""
        net.train()
        start, total = time.perf_counter(), 0.0
        order = torch.randperm(len(x), generator=gen)
        for step in range(steps_per_epoch):
            batch = x[order[step * cfg.batch_size:(step + 1) * cfg.batch_size]]
            if dist_ctx.active:
                v1, v2 = dist_ctx.shard(lab_shift_views(batch, gen)), dist_ctx.shard(lab_shift_views(batch, gen))
                z = net(torch.cat([v1, v2]))  # one DDP forward per backward
                z1, z2 = gather(dist_ctx, z[: len(v1)], len(batch)), gather(dist_ctx, z[len(v1):], len(batch))
            else:
                z1, z2 = model(lab_shift_views(batch, gen)), model(lab_shift_views(batch, gen))
            loss = nt_xent(z1, z2, cfg.temperature) if cfg.objective == "simclr" else vicreg(z1, z2)
            step_fn(loss, where=f"self-supervised epoch {epoch}, step {step}")
            sched.step()
            total += loss.item()
        return {"epoch": epoch, "loss": total / steps_per_epoch, "seconds": time.perf_counter() - start}

    def save(epochs: int) -> None:
        resume_entry = resume_state(step_fn, sched, gen)  # on every rank (a collective under torchrun)
        if dist_ctx.is_main:
            save_model_file(checkpoint_path, MODEL_KIND, cfg, model.state_dict(),
                            {"history": history, "resume": resume_entry, **data}, version=MODEL_VERSION)

    def report(record: dict) -> bool:
        if dist_ctx.is_main:  # under torchrun rank 0 alone logs and calls back
            logger.info("self-supervised epoch %d: loss %.4f (%.0f s)", record["epoch"], record["loss"], record["seconds"])
            if callback is not None:
                callback(record)
        return False

    run_units(len(history), cfg.epochs, train_epoch, checkpoint=save if checkpoint_path is not None else None,
              history=history, callback=report)
    return dist_ctx.unwrap(model).eval(), history


@torch.no_grad()
def embed_crops(model: CellEncoder, crops: np.ndarray, image_size: int, batch_size: int = 512) -> np.ndarray:
    """``(n, S, S, 3)`` uint8 canonical crops -> ``(n, embedding_dim)`` float32 embeddings."""
    model.eval()
    out = [model.embed(to_tensor(crops[i:i + batch_size], image_size)) for i in range(0, len(crops), batch_size)]
    return torch.cat(out).numpy() if out else np.zeros((0, model.embedding_dim), np.float32)


def encoder_from_payload(payload: dict) -> tuple[CellEncoder, SelfSupervisedConfig]:
    cfg = SelfSupervisedConfig(**payload["config"])
    model = CellEncoder(cfg.width, cfg.projection_dim)
    model.load_state_dict(payload["state_dict"])
    return model.eval(), cfg


def save_encoder(path: str | os.PathLike, model: CellEncoder, cfg: SelfSupervisedConfig,
                 history: list[dict]) -> Path:
    """Write an encoder file (atomic): its config, weights and loss history (the file
    :func:`train_encoder` checkpoints to, without the resume state)."""
    return save_model_file(path, MODEL_KIND, cfg, model.state_dict(), {"history": history}, version=MODEL_VERSION)


def load_encoder(path: str | os.PathLike) -> tuple[CellEncoder, SelfSupervisedConfig, list[dict]]:
    """The encoder (eval mode), its config and history from a file of :func:`save_encoder`,
    opened as data (:func:`bcfeat.model_files.load_model_file`); another kind of file, a damaged
    one or one whose weights do not fit is refused in one line naming it."""
    payload = load_model_file(path, MODEL_KIND, versions=(MODEL_VERSION,), required=("config", "state_dict"))
    return build_from_payload(path, "self-supervised encoder",
                              lambda: (*encoder_from_payload(payload), list(payload.get("history", []))))


__all__ = ["OBJECTIVES", "SelfSupervisedConfig", "CellEncoder", "lab_shift_views", "nt_xent", "vicreg",
           "train_encoder", "embed_crops", "encoder_from_payload", "to_tensor",
           "MODEL_KIND", "MODEL_VERSION", "save_encoder", "load_encoder"]
