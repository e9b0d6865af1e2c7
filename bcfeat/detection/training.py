"""Training the one-class Mask R-CNN from scratch on pseudo-masks (resumable, seeded).

What is specific to the detector lives here: its batches (images drawn with replacement, uniformly or
balanced per site, then augmented), its loss (the sum of Mask R-CNN's five terms) and its schedule
(linear warm-up, cosine decay). The loop (a unit is one optimiser step), the device, threads,
optimiser step (mixed precision, clipping, the NaN policy: skip a non-finite step, stop after
``max_bad_steps`` in a row), resume state and the checkpoint convention are :mod:`bcfeat.training`'s.

Under ``torchrun --nproc_per_node=N`` (:mod:`bcfeat.training.distributed`) every rank draws the same
global batch and augmentation from the seeded generator and trains on its slice of the images;
DistributedDataParallel averages the gradients and rank 0 writes the checkpoint. The RPN and RoI
samplers draw from each rank's global generator over its own images, so a distributed run cannot
repeat a single-process run bitwise: it matches it within a tolerance (tests/test_distributed.py).
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torchvision.models.detection import MaskRCNN

from bcfeat.detection.architecture import build_detector
from bcfeat.detection.checkpoint import read_detector_file, save_detector
from bcfeat.detection.config import DetectorConfig, DetectorTrainingConfig
from bcfeat.detection.pseudo_masks import SegmentationConfig, segmentation_key
from bcfeat.detection.training_data import PseudoLabelledSet, augment, pseudo_label, to_target
from bcfeat.training.checkpoint import check_resumable
from bcfeat.training.device import resolve_device, training_threads
from bcfeat.training.distributed import context
from bcfeat.training.loop import OptimizerStep, restore_resume_state, resume_state, run_units

logger = logging.getLogger(__name__)


def _lr_factor(step: int, cfg: DetectorTrainingConfig) -> float:
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    t = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.final_lr_frac + (1 - cfg.final_lr_frac) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def train_detector(
    images: Sequence[Any] | PseudoLabelledSet,
    cfg: DetectorConfig | None = None,
    train_cfg: DetectorTrainingConfig | None = None,
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
    train_cfg : DetectorTrainingConfig, optional
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
    train_cfg = train_cfg or DetectorTrainingConfig()
    state: dict[str, Any] | None = None
    if resume and checkpoint_path is not None and Path(checkpoint_path).is_file():
        state = read_detector_file(checkpoint_path)
        stored = DetectorConfig.from_dict(state["config"])
        # The stored architecture is used; a config given must agree with it (but for the
        # inference settings, DetectorConfig.RESUMABLE_CHANGES).
        check_resumable(checkpoint_path, state, {"config": cfg or stored, "train_config": train_cfg})
        cfg = stored
    cfg = cfg or DetectorConfig.cpu()

    with training_threads(train_cfg.num_threads):
        return _train(images, cfg, train_cfg, checkpoint_path, state, seg_cfg, cache_path, progress, stop_after, groups)


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _sampling_weights(keep: np.ndarray, groups: Sequence[str] | None, n_images: int, balance: bool) -> Tensor | None:
    """Per-image draw probabilities over ``keep`` (None: uniform)."""
    if not balance:
        return None
    if groups is None:
        raise ValueError("DetectorTrainingConfig.balance_groups needs the group of every training image (groups=...)")
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

    data_info = {"n_train_images": len(data), "n_used_images": int(len(keep))}
    if state is not None:
        check_resumable(checkpoint_path, state, {}, data_info)

    torch.manual_seed(train_cfg.seed)
    model = build_detector(cfg)
    device = resolve_device(train_cfg.device)
    dist_ctx = context(device)
    device = dist_ctx.device(device)
    if dist_ctx.active and train_cfg.batch_size < dist_ctx.world_size:
        raise ValueError(f"batch_size {train_cfg.batch_size} is smaller than the {dist_ctx.world_size} processes")
    model.to(device)
    net = dist_ctx.wrap(model, device)
    params = [p for p in model.parameters() if p.requires_grad]
    if train_cfg.optimizer == "adamw":
        opt: torch.optim.Optimizer = torch.optim.AdamW(params, lr=train_cfg.lr, weight_decay=train_cfg.weight_decay)
    else:
        opt = torch.optim.SGD(params, lr=train_cfg.lr, momentum=train_cfg.momentum, weight_decay=train_cfg.weight_decay)
    step_fn = OptimizerStep(opt, device, train_cfg.amp, grad_clip=train_cfg.grad_clip,
                            max_bad_steps=train_cfg.max_bad_steps, params=params)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, train_cfg))
    g = torch.Generator().manual_seed(train_cfg.seed)
    history: list[dict[str, float]] = []
    start, elapsed = 0, 0.0
    if state is not None:
        model.load_state_dict(state["state_dict"])
        # The RPN / RoI samplers draw from the global generators: their states are restored too.
        restore_resume_state(state, step_fn, sched, g)
        history = list(state.get("history", []))
        start = int(state["step"])
        logger.info("resuming %s at step %d of %d", checkpoint_path, start, train_cfg.steps)
        elapsed = float(state.get("seconds", 0.0))

    def save(step: int) -> None:
        if checkpoint_path is None:
            return
        state = resume_state(step_fn, sched, g, device)  # on every rank (a collective under torchrun)
        with dist_ctx.main_first() as main:
            if main:
                save_detector(checkpoint_path, model, {
                    "train_config": asdict(train_cfg), **state, "step": step,
                    "history": history, "seconds": elapsed, **data_info,
                    "seg_config": segmentation_key(seg_cfg or SegmentationConfig()),
                })

    net.train()
    t_last = time.perf_counter()
    end = train_cfg.steps if stop_after is None else max(start, min(train_cfg.steps, stop_after))
    bar = tqdm(total=train_cfg.steps, desc="detector", disable=not (progress and dist_ctx.is_main), initial=start,
               leave=False)

    def train_step(step: int) -> dict[str, float] | None:
        """One optimiser step on a drawn, augmented batch; its record every ``log_every`` steps."""
        nonlocal elapsed, t_last
        draw = (torch.randint(0, len(keep), (train_cfg.batch_size,), generator=g) if weights is None
                else torch.multinomial(weights, train_cfg.batch_size, replacement=True, generator=g))
        idx = keep[draw.numpy()]
        # Under torchrun every rank augments the whole batch (the generator's draws stay those of one
        # process) and keeps its own slice of the images.
        lo, hi = dist_ctx.bounds(len(idx))
        batch, targets = [], []
        for j, i in enumerate(idx):
            img = torch.from_numpy(data.images[i]).permute(2, 0, 1).float() / 255
            mask = torch.from_numpy(data.masks[i])
            if train_cfg.augment:
                aug_img, aug_mask = augment(img, mask, train_cfg, g)
                if aug_mask.any():  # a zoom-out can shrink a tiny cell to nothing
                    img, mask = aug_img, aug_mask
            if not lo <= j < hi:
                continue
            batch.append(img.to(device, non_blocking=True))
            targets.append({k: v.to(device, non_blocking=True) for k, v in to_target(mask).items()})
        with step_fn.autocast():
            losses = net(batch, targets)
        losses = {k: v.float() for k, v in losses.items()}
        loss = sum(losses.values())
        # A rank's losses are means over its images; weighted so that DDP's average is the batch's.
        weight = dist_ctx.loss_weight(len(batch), len(idx))

        def give_up(step: int = step) -> str:
            save(step)  # the skipped steps are counted in it; its weights are finite
            return f"checkpoint {checkpoint_path} holds step {step}" if checkpoint_path is not None else ""

        # A non-finite step is skipped (the weights stay finite); max_bad_steps in a row stop training.
        finite = step_fn(loss * weight if dist_ctx.active else loss, losses, where=f"step {step + 1}/{train_cfg.steps}", on_give_up=give_up)
        sched.step()
        now = time.perf_counter()
        elapsed += now - t_last
        t_last = now
        bar.update()
        if not (finite and (step % train_cfg.log_every == 0 or step == end - 1)):
            return None
        rec = {"step": step, "loss": loss.item(), "lr": float(sched.get_last_lr()[0]), "seconds": elapsed,
               "skipped": step_fn.skipped}
        rec.update({k: v.item() for k, v in losses.items()})
        if dist_ctx.active:  # the batch's value: the slices' means weighted by their sizes
            names = ["loss", *losses]
            rec.update(zip(names, dist_ctx.sum([rec[k] * len(batch) / len(idx) for k in names], device)))
        bar.set_postfix(loss=f"{rec['loss']:.3f}", mask=f"{rec['loss_mask']:.3f}")
        return rec

    run_units(start, end, train_step, checkpoint=save, checkpoint_every=train_cfg.checkpoint_every, history=history)
    bar.close()
    model = dist_ctx.unwrap(model)
    model.eval()
    model.bcfeat_extra = {"history": history, "seconds": elapsed, "skipped": step_fn.skipped,
                          "train_config": asdict(train_cfg)}
    return model, history
