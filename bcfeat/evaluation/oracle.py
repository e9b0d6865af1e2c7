"""The supervised "oracle": a CNN trained on the source site's labels.

The paper's reference point (Sec. 3, Table 1) is a classifier that *did* see
labels: the ResNeXt-50 of Matek et al. (Nat. Mach. Intell. 2019), trained on the
source dataset. Its in-domain accuracy is what unsupervised features aim for;
its cross-domain accuracy shows how much a supervised network overfits its lab.

Everything here is trained in this project from random weights
(``weights=None``; no ImageNet download), seeded and resumable:

* :class:`OracleConfig` - architecture, normalisation, input size, schedule.
  ``norm="group"`` swaps every BatchNorm for GroupNorm (no batch statistics, so
  nothing site-specific is stored in running means).
* :func:`train_oracle` - AdamW with cosine decay, flips and 90° rotations,
  an atomic checkpoint after every epoch; a run that finds its complete
  checkpoint restores instead of training.
* :class:`OracleClassifier` - the same as an sklearn classifier, so it plugs
  into :func:`bcfeat.evaluation.benchmark.domain_matrix` like the random forest.

Under ``torchrun`` every rank draws the same batch order and augmentation and trains on its slice
(:mod:`bcfeat.training.distributed`); BatchNorm is synchronised on GPUs, per-rank on CPUs.

Images are decoded and resized once into a ``(n, 3, s, s)`` uint8 tensor; the
model standardises them itself (per-channel mean/std of the training images,
kept as buffers in its ``state_dict``).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted
from torch import nn

from bcfeat.evaluation.baselines import resize_images
from bcfeat.evaluation.oracle_model import OracleConfig, build_oracle, oracle_config
from bcfeat.model_files import build_from_payload
from bcfeat.training.checkpoint import check_resumable, read_model_file, save_model_file
from bcfeat.training.device import resolve_device, training_threads
from bcfeat.training.distributed import context
from bcfeat.training.loop import OptimizerStep, restore_resume_state, resume_state, run_units

logger = logging.getLogger(__name__)

# Non-finite steps in a row that are skipped before training stops (the detector's default).
MAX_BAD_STEPS = 10


@dataclass
class TrainedOracle:
    """A trained oracle and what it was trained on.

    Attributes
    ----------
    model : nn.Module
        In eval mode, on the CPU after training or loading.
    classes : list of str
        Output index -> label.
    config : OracleConfig
    history : list of dict
        Per epoch: ``epoch, loss, train_accuracy, seconds``.
    """

    model: nn.Module
    classes: list
    config: OracleConfig
    history: list[dict] = field(default_factory=list)

    def predict_proba(self, images: Any, batch_size: int = 256) -> np.ndarray:
        """Class probabilities, ``(n, len(classes))`` float32; images as in :func:`prepare_images`.

        Runs on the config's device (the model stays there afterwards).
        """
        x = prepare_images(images, self.config.image_size)
        device = resolve_device(self.config.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            device = torch.device("cpu")  # a GPU-trained checkpoint loaded on a CPU machine
        self.model.to(device)
        return predict_proba(self.model, x, batch_size=batch_size)


def prepare_images(images: Any, image_size: int) -> torch.Tensor:
    """Decode (paths) and resize images once: -> ``(n, 3, image_size, image_size)`` uint8 tensor.

    Parameters
    ----------
    images : (n, H, W, 3) uint8 array, list of (H, W, 3) arrays or paths, or a
        uint8 tensor ``(n, 3, image_size, image_size)`` (returned as is).
    image_size : int
    """
    if isinstance(images, torch.Tensor):
        if images.dtype != torch.uint8 or images.ndim != 4 or tuple(images.shape[1:]) != (3, image_size, image_size):
            raise ValueError(
                f"a tensor input must be uint8 (n, 3, {image_size}, {image_size}), got {images.dtype} {tuple(images.shape)}"
            )
        return images
    arr = resize_images(images, image_size)  # (n, s, s, 3) uint8
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(0, 3, 1, 2)))


def _fingerprint(x: torch.Tensor, y: np.ndarray) -> str:
    """SHA-1 of the training tensor and labels: a checkpoint only resumes on the same data."""
    h = hashlib.sha1()
    h.update(x.contiguous().numpy().tobytes())
    h.update(np.ascontiguousarray(y, dtype=np.int64).tobytes())
    return h.hexdigest()


def _channel_stats(x: torch.Tensor, chunk: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of ``(n, 3, s, s)`` uint8 images in [0, 1] units, in chunks (a float
    copy of 5k images at 224 px would take 3 GB)."""
    total = torch.zeros(3, dtype=torch.float64)
    total_sq = torch.zeros(3, dtype=torch.float64)
    for i in range(0, len(x), chunk):
        xb = x[i : i + chunk].to(torch.float64) / 255.0
        total += xb.sum(dim=(0, 2, 3))
        total_sq += (xb * xb).sum(dim=(0, 2, 3))
    count = len(x) * x.shape[2] * x.shape[3]
    mean = total / count
    var = (total_sq / count - mean * mean).clamp_min(0.0)
    return mean.float(), var.sqrt().float()


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random flips and 90° rotations of a batch ``(b, 3, s, s)`` (square images)."""
    n = x.shape[0]
    flip_h = torch.rand(n, generator=gen) < 0.5
    flip_v = torch.rand(n, generator=gen) < 0.5
    k = torch.randint(0, 4, (n,), generator=gen)
    x = x.clone()
    x[flip_h] = x[flip_h].flip(-1)
    x[flip_v] = x[flip_v].flip(-2)
    for r in (1, 2, 3):
        sel = k == r
        if sel.any():
            x[sel] = torch.rot90(x[sel], r, dims=(-2, -1))
    return x


def read_oracle_file(path: str | os.PathLike) -> dict:
    """An oracle file's payload, opened safely (files from before the ``format`` entry included)."""
    return read_model_file(path, "oracle", required=("config", "classes", "state_dict"), legacy={"kind": "oracle"})


def load_checkpoint(path: str | os.PathLike) -> TrainedOracle:
    """Rebuild a trained oracle from its checkpoint (config, classes, state_dict).

    Raises
    ------
    FileNotFoundError, ValueError
        Missing file, or a file that is not an oracle checkpoint.
    """
    path = Path(path)
    ckpt = read_oracle_file(path)

    def build() -> tuple[OracleConfig, nn.Module]:
        cfg = OracleConfig.from_dict(ckpt["config"])
        model = build_oracle(cfg, len(ckpt["classes"]))
        model.load_state_dict(ckpt["state_dict"])
        return cfg, model

    cfg, model = build_from_payload(path, "oracle configuration or weights", build)
    model.eval()
    return TrainedOracle(model, list(ckpt["classes"]), cfg, list(ckpt.get("history", [])))


def train_oracle(
    images: Any,
    labels: Sequence,
    cfg: OracleConfig,
    checkpoint_path: str | os.PathLike | None = None,
    resume: bool = True,
    *,
    classes: Sequence | None = None,
    callback: Callable[[dict], bool | None] | None = None,
) -> TrainedOracle:
    """Train the oracle from scratch (or resume it), seeded and checkpointed every epoch.

    Parameters
    ----------
    images : (n, H, W, 3) uint8 array, list of images or paths, or (n, 3, s, s) uint8 tensor
        Decoded and resized once (:func:`prepare_images`).
    labels : array-like, shape (n,)
    cfg : OracleConfig
    checkpoint_path : path-like or None
        Where the checkpoint ``{"format", "config", "classes", "state_dict",
        "optimizer", "scaler", "skipped", "rng", "epoch", "history", "data_fingerprint"}``
        (:mod:`bcfeat.training.checkpoint`) is written after every epoch (atomically).
        ``None``: no checkpoint.
    resume : bool
        Continue from an existing checkpoint (a complete one is just loaded).
        Its config (but for ``device`` and ``num_threads``), classes and training data
        must match, else ValueError naming what differs.
        ``False`` starts over and overwrites it.
    classes : sequence or None
        Output order of the labels (default: sorted unique labels).
    callback : callable or None
        Called with each epoch's history record after its checkpoint is
        written; returning True stops training there (e.g. a time budget).

    Returns
    -------
    TrainedOracle
        Model in eval mode on the CPU. Resuming after an interruption gives the
        same weights as an uninterrupted run: the batch order and augmentation
        of epoch e are drawn from a generator seeded with ``(seed, e)``, and the
        learning rate is a pure function of the step.
    """
    y_raw = np.asarray(labels)
    classes = sorted(np.unique(y_raw).tolist()) if classes is None else list(classes)
    unknown = set(np.unique(y_raw).tolist()) - set(classes)
    if unknown:
        raise ValueError(f"labels not in classes: {sorted(unknown)}")
    index = {c: i for i, c in enumerate(classes)}
    y = np.asarray([index[v] for v in y_raw.tolist()], dtype=np.int64)
    x = prepare_images(images, cfg.image_size)
    if len(x) != len(y):
        raise ValueError(f"{len(x)} images but {len(y)} labels")
    fingerprint = _fingerprint(x, y)

    with training_threads(cfg.num_threads):
        torch.manual_seed(cfg.seed)
        model = build_oracle(cfg, len(classes))
        mean, std = _channel_stats(x)
        model[0].mean.copy_(mean.view(1, 3, 1, 1))
        model[0].std.copy_(std.clamp_min(1e-3).view(1, 3, 1, 1))
        device = resolve_device(cfg.device)
        dist_ctx = context(device)  # under torchrun: this rank's slice of every batch (see below)
        device = dist_ctx.device(device)
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        # No mixed precision for the oracle: the step is loss.backward(); opt.step().
        step_fn = OptimizerStep(opt, device, amp=False, max_bad_steps=MAX_BAD_STEPS)
        start_epoch, history = 0, []
        if checkpoint_path is not None and resume and Path(checkpoint_path).exists():
            ckpt = read_oracle_file(checkpoint_path)
            check_resumable(checkpoint_path, ckpt, {"config": cfg},
                            {"classes": classes, "data_fingerprint": fingerprint})
            model.load_state_dict(ckpt["state_dict"])
            model.to(device)
            restore_resume_state(ckpt, step_fn)  # the optimizer moments follow the model to its device
            start_epoch, history = int(ckpt["epoch"]), list(ckpt["history"])
            logger.info("resuming %s after epoch %d of %d", checkpoint_path, start_epoch, cfg.epochs)

        model.to(device)
        net = dist_ctx.wrap(model, device)
        y_t = torch.from_numpy(y)
        n = len(y)
        steps_per_epoch = math.ceil(n / cfg.batch_size)
        total_steps = cfg.epochs * steps_per_epoch
        smallest = n - (steps_per_epoch - 1) * cfg.batch_size
        if dist_ctx.active and smallest < dist_ctx.world_size:
            raise ValueError(f"the last batch of an epoch holds {smallest} image(s), fewer than the "
                             f"{dist_ctx.world_size} processes; change batch_size")
        def train_epoch(epoch: int) -> dict[str, float]:
            """One epoch in a seeded order with a cosine learning rate per step; its history record."""
            t0 = time.perf_counter()
            gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
            order = torch.randperm(n, generator=gen)
            net.train()
            loss_sum, correct = 0.0, 0
            for b in range(steps_per_epoch):
                step = epoch * steps_per_epoch + b
                for group in opt.param_groups:
                    group["lr"] = cfg.lr * 0.5 * (1 + math.cos(math.pi * step / total_steps))
                idx = order[b * cfg.batch_size : (b + 1) * cfg.batch_size]
                xb = x[idx]
                if cfg.augment:
                    xb = _augment(xb, gen)
                # Every rank draws the whole batch and its augmentation (the generator stays that of one
                # process) and trains on its slice; the weighted slice means average to the batch mean.
                n_batch, idx = len(idx), dist_ctx.shard(idx)
                xb = dist_ctx.shard(xb)
                xb, yb = xb.to(device, non_blocking=True), y_t[idx].to(device)
                with step_fn.autocast():
                    logits = net(xb)
                    loss = F.cross_entropy(logits, yb)
                scaled = loss * dist_ctx.loss_weight(len(idx), n_batch) if dist_ctx.active else loss
                step_fn(scaled, where=f"epoch {epoch + 1}/{cfg.epochs}, batch {b + 1}/{steps_per_epoch}")
                loss_sum += float(loss.detach()) * len(idx)
                correct += int((logits.argmax(1) == yb).sum())
            if dist_ctx.active:
                loss_sum, correct = dist_ctx.sum([loss_sum, correct], device)
                correct = int(correct)
            record = {
                "epoch": epoch + 1,
                "loss": loss_sum / n,
                "train_accuracy": correct / n,
                "seconds": time.perf_counter() - t0,
            }
            logger.debug("oracle epoch %d/%d: loss %.4f, train accuracy %.3f", epoch + 1, cfg.epochs,
                         record["loss"], record["train_accuracy"])
            return record

        def save(epoch: int) -> None:
            state = resume_state(step_fn, device=device)  # on every rank (a collective under torchrun)
            with dist_ctx.main_first() as main:
                if main:
                    save_model_file(checkpoint_path, "oracle", cfg, model.state_dict(), {
                        "classes": classes,
                        **state,
                        "epoch": epoch,
                        "history": history,
                        "data_fingerprint": fingerprint,
                    }, fsync=False)

        def stop(record: dict) -> bool:
            # Under torchrun rank 0 runs the callback and every rank follows its decision.
            return dist_ctx.any(callback is not None and dist_ctx.is_main and bool(callback(record)), device)

        run_units(start_epoch, cfg.epochs, train_epoch, checkpoint=save if checkpoint_path is not None else None,
                  history=history, callback=stop)
    model = dist_ctx.unwrap(model)
    model.cpu().eval()
    return TrainedOracle(model, classes, cfg, history)


@torch.no_grad()
def predict_proba(model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> np.ndarray:
    """Softmax outputs of an oracle: ``(n, 3, s, s)`` uint8 -> ``(n, n_classes)`` float32."""
    model.eval()
    device = next(model.parameters()).device
    out = [
        torch.softmax(model(x[i : i + batch_size].to(device)).float(), dim=1).cpu()
        for i in range(0, len(x), batch_size)
    ]
    return torch.cat(out).numpy()


@torch.no_grad()
def adapt_batch_norm(model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> nn.Module:
    """AdaBN (Li et al., 2018): a copy of ``model`` whose BatchNorm statistics are re-estimated on ``x``.

    The images of one site, without labels, ``(n, 3, s, s)`` uint8, pass through the network in
    training mode with cumulative averaging (``momentum=None``), so every BatchNorm layer ends
    with the mean and variance of that site's activations in place of the training site's.
    Weights are unchanged. A model without BatchNorm is returned as an unchanged copy.
    """
    import copy

    adapted = copy.deepcopy(model)
    norms = [m for m in adapted.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return adapted.eval()
    if len(x) < 2:
        raise ValueError(f"AdaBN needs at least 2 images of the site, got {len(x)}")
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    adapted.eval()
    for m in norms:
        m.train()
    device = next(adapted.parameters()).device
    for i in range(0, len(x), batch_size):
        chunk = x[i:i + batch_size]
        if len(chunk) < 2:  # BatchNorm cannot take a batch of one; fold it into the previous one
            chunk = x[max(0, i - 1):i + 1]
        adapted(chunk.to(device))
    return adapted.eval()


@torch.no_grad()
def embed(model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> np.ndarray:
    """The pooled features the oracle's last linear layer reads: ``(n, 3, s, s)`` -> ``(n, d)`` float32."""
    head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    captured: list[torch.Tensor] = []
    handle = head.register_forward_hook(lambda _m, inputs, _out: captured.append(inputs[0].float().cpu()))
    try:
        model.eval()
        device = next(model.parameters()).device
        for i in range(0, len(x), batch_size):
            model(x[i:i + batch_size].to(device))
    finally:
        handle.remove()
    return torch.cat(captured).numpy()


class OracleClassifier(ClassifierMixin, BaseEstimator):
    """The oracle CNN as an sklearn classifier (for :func:`bcfeat.evaluation.benchmark.domain_matrix`).

    Parameters
    ----------
    config : OracleConfig or None, default=None
        Training configuration (``None``: ``oracle_config("cpu")``).
    random_state : int or None, default=None
        Replaces ``config.seed`` when given (domain_matrix passes one per repetition).
    checkpoint_path : path-like or None, default=None
        Resumable checkpoint of :func:`train_oracle`. A ``{seed}`` in it is
        replaced by the seed used, so the repetitions of a domain matrix
        (one seed each) get one checkpoint each.
    adapt_batch_norm : bool, default=False
        AdaBN: each call of ``predict``/``predict_proba`` takes its images as one
        unlabelled site and re-estimates the BatchNorm statistics on them first
        (:func:`adapt_batch_norm`); the trained weights are never changed.

    Attributes
    ----------
    classes_ : np.ndarray
    oracle_ : TrainedOracle
    config_ : OracleConfig
        The configuration actually used (seed included).

    Examples
    --------
    >>> from sklearn.base import clone
    >>> clone(OracleClassifier(random_state=3)).get_params()["random_state"]
    3
    """

    def __init__(self, config: OracleConfig | None = None, random_state: int | None = None,
                 checkpoint_path: str | os.PathLike | None = None, adapt_batch_norm: bool = False):
        self.config = config
        self.random_state = random_state
        self.checkpoint_path = checkpoint_path
        self.adapt_batch_norm = adapt_batch_norm

    def fit(self, X: Any, y: Sequence) -> OracleClassifier:
        """Train on images ``X`` (see :func:`prepare_images`) with labels ``y``."""
        check_classification_targets(y)
        cfg = self.config if self.config is not None else oracle_config("cpu")
        if self.random_state is not None:
            cfg = OracleConfig(**{**asdict(cfg), "seed": int(self.random_state)})
        self.classes_ = np.unique(np.asarray(y))
        path = None if self.checkpoint_path is None else str(self.checkpoint_path).replace("{seed}", str(cfg.seed))
        self.oracle_ = train_oracle(X, y, cfg, checkpoint_path=path, classes=self.classes_.tolist())
        self.config_ = cfg
        return self

    def predict_proba(self, X: Any) -> np.ndarray:
        """``(n, n_classes)`` probabilities, columns in the order of ``classes_``."""
        check_is_fitted(self, "oracle_")
        if not self.adapt_batch_norm:
            return self.oracle_.predict_proba(X)
        x = prepare_images(X, self.oracle_.config.image_size)
        return predict_proba(adapt_batch_norm(self.oracle_.model, x), x)

    def predict(self, X: Any) -> np.ndarray:
        """``(n,)`` labels."""
        check_is_fitted(self, "oracle_")
        return self.classes_[self.predict_proba(X).argmax(axis=1)]
