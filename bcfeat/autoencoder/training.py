"""Training the autoencoder (paper Sec. 2.2): an epoch-based fit and the autoencoder's use of it.

:func:`fit` knows nothing about the autoencoder: it takes a model, a function
that turns a batch into :class:`bcfeat.autoencoder.losses.LossTerms`, a dataset and a rule
for the batches of each epoch. It handles the device, mixed precision (CUDA
only), determinism, the progress bar, the NaN/inf guard and atomic, resumable
checkpoints. :func:`fit_autoencoder` supplies the AE-CFE pieces: the model, the
loss composition and domain-mixing batches.

Two settings, which the paper leaves open:

``"source_only"``
    Only the source domain's samples are used; there is no alignment term.
``"transductive"``
    Unlabelled samples of the other domains are added and each domain is
    aligned to the source in every batch, as the released code does (it
    trained on all three datasets together). Batches are built by
    :func:`mixed_domain_batches` so every batch holds at least two samples of
    every domain, which the alignment estimators need.

A seed makes a CPU run repeat exactly: the model is initialised after
``torch.manual_seed(seed)``, each epoch's batches come from a NumPy generator
seeded with ``(seed, epoch)``, data is read in the main process, and
deterministic algorithms are requested. Because an epoch's batches depend only
on ``(seed, epoch)`` and every checkpoint holds the weights, the optimizer
state and the RNG states, training that resumes after an interruption gives
the same weights as training straight through.

The loop (a unit is one epoch: :func:`bcfeat.training.loop.run_units`), the device, threads,
optimiser step (mixed precision, NaN policy), resume state and checkpoint convention are
:mod:`bcfeat.training`'s, shared with the detector, the oracle and the self-supervised encoder.

Under ``torchrun --nproc_per_node=N`` (:mod:`bcfeat.training.distributed`) every rank draws the same
epoch plan, runs its slice of each batch through the DistributedDataParallel model and computes the
loss of the whole batch from the gathered outputs (the alignment term needs every domain of the
batch), so the loss curve is the single-process one up to float rounding; rank 0 writes the checkpoint.
"""

from __future__ import annotations

import logging
import math
import os
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator, Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from bcfeat.autoencoder.losses import ALIGNMENT_KINDS, LossTerms, LossWeights, autoencoder_loss
from bcfeat.autoencoder.model import AEConfig, CrossDomainAutoencoder, save_checkpoint
from bcfeat.training.checkpoint import check_resumable, config_from_dict, read_model_file
from bcfeat.training.device import resolve_device, training_threads
from bcfeat.training.distributed import GlobalBatch, context
from bcfeat.training.loop import NonFiniteLossError, OptimizerStep, restore_resume_state, resume_state, run_units

logger = logging.getLogger(__name__)

SETTINGS = ("source_only", "transductive")

@dataclass
class AutoencoderTrainingConfig:
    """How the autoencoder is trained; stored in every checkpoint.

    Attributes
    ----------
    epochs : int
        Passes over the training samples (released code: 150).
    batch_size : int
        Target samples per batch (released code: 500 per GPU). In the
        transductive setting a small domain may be topped up to
        ``min_per_domain`` samples, so a batch can be slightly larger.
    lr : float
        Adam learning rate (released code: 1e-3, no weight decay, no schedule).
    seed : int
        Seeds the model initialisation and every epoch's batches.
    weights : LossWeights
        Loss weights (image 1, features 1, alignment 5 as released).
    alignment : {"moment", "mmd"}
        :func:`bcfeat.autoencoder.losses.moment_matching_loss` (released) or
        :func:`bcfeat.autoencoder.losses.mmd_loss`.
    setting : {"transductive", "source_only"}
        See the module docstring.
    source_domain : int
        Domain id of the source (training) domain; the others are aligned to it.
    min_per_domain : int
        Samples of each domain guaranteed in a transductive batch (>= 2).
    device : str
        ``"auto"`` (CUDA if available, else CPU) or a torch device string.
    amp : bool
        Mixed precision (float16 autocast + GradScaler); used on CUDA only.
    num_threads : int or None
        ``torch.set_num_threads`` during training (restored afterwards); None
        keeps the current setting.
    checkpoint_every : int
        Write a checkpoint every this many epochs (and always after the last).
    deterministic : bool
        Request deterministic algorithms (``warn_only``) during training.
    progress : bool
        Show a tqdm progress bar with the loss terms.
    """

    epochs: int = 150
    batch_size: int = 500
    lr: float = 1e-3
    seed: int = 0
    weights: LossWeights = field(default_factory=LossWeights)
    alignment: str = "moment"
    setting: str = "transductive"
    source_domain: int = 0
    min_per_domain: int = 2
    device: str = "auto"
    amp: bool = True
    num_threads: int | None = None
    checkpoint_every: int = 1
    deterministic: bool = True
    progress: bool = True

    # Fields that may change between a run and its resumption: how long (epochs: training may be
    # extended) and where/how fast, not what is optimised. (device and amp change the rounding, so
    # resumption is then no longer bitwise.)
    RESUMABLE_CHANGES: ClassVar[tuple[str, ...]] = ("epochs", "device", "amp", "num_threads", "checkpoint_every",
                                                    "progress", "deterministic")

    def __post_init__(self) -> None:
        if isinstance(self.weights, dict):
            self.weights = LossWeights(**self.weights)
        if self.alignment not in ALIGNMENT_KINDS:
            raise ValueError(f"AutoencoderTrainingConfig.alignment must be one of {ALIGNMENT_KINDS}, got {self.alignment!r}")
        if self.setting not in SETTINGS:
            raise ValueError(f"AutoencoderTrainingConfig.setting must be one of {SETTINGS}, got {self.setting!r}")
        for name in ("epochs", "batch_size", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"AutoencoderTrainingConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.min_per_domain < 2:
            raise ValueError(f"AutoencoderTrainingConfig.min_per_domain must be >= 2, got {self.min_per_domain}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AutoencoderTrainingConfig:
        """Rebuild from ``asdict(cfg)``; unknown keys are an error naming them."""
        return config_from_dict(cls, d)


def mixed_domain_batches(index: np.ndarray, domain: np.ndarray, batch_size: int, seed: int, epoch: int,
                         min_per_domain: int = 2) -> list[np.ndarray]:
    """One epoch of batches in which every domain is represented.

    The number of batches is ``B = ceil(n / batch_size)``. Each domain's samples
    are shuffled and split into ``B`` near-equal parts, one per batch, so every
    sample is used exactly once. A domain too small to give every batch
    ``min_per_domain`` samples is instead cycled (reshuffled each time it runs
    out) so that each batch gets ``min(min_per_domain, n_domain)`` of them; its
    samples then appear more than once per epoch. With one domain this is plain
    shuffled batching with balanced batch sizes (no tiny last batch).

    Parameters
    ----------
    index : array of int, shape (n,)
        Dataset indices of the samples to use.
    domain : array of int, shape (n,)
        Domain id of each of those samples.
    batch_size : int
    seed, epoch : int
        The shuffle depends only on these two numbers.
    min_per_domain : int

    Returns
    -------
    list of arrays of int
        Dataset indices of each batch.

    Examples
    --------
    >>> b = mixed_domain_batches(np.arange(10), np.array([0] * 8 + [1] * 2), 4, seed=0, epoch=0)
    >>> len(b), [int((np.isin(x, [8, 9])).sum()) for x in b]
    (3, [2, 2, 2])
    """
    index, domain = np.asarray(index), np.asarray(domain)
    if len(index) != len(domain) or len(index) == 0:
        raise ValueError("mixed_domain_batches: need matching, non-empty index/domain; "
                         f"got {len(index)} and {len(domain)}")
    rng = np.random.default_rng([seed, epoch])
    n_batches = max(1, math.ceil(len(index) / batch_size))
    parts: list[list[np.ndarray]] = []
    for d in np.unique(domain):
        members = index[domain == d]
        if n_batches == 1 or len(members) >= n_batches * min_per_domain:
            parts.append(np.array_split(rng.permutation(members), n_batches))
        else:
            k = min(min_per_domain, len(members))
            reps = math.ceil(n_batches * k / len(members))
            stream = np.concatenate([rng.permutation(members) for _ in range(reps)])
            parts.append(list(stream[: n_batches * k].reshape(n_batches, k)))
    return [np.concatenate([p[b] for p in parts]) for b in range(n_batches)]


# ----------------------------------------------------------------- generic loop
LossFn = Callable[[nn.Module, Any], LossTerms]
BatchPlan = Callable[[int], Sequence[np.ndarray]]


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


def _iter_batches(dataset: Dataset, plan: Sequence[np.ndarray]) -> Iterator[Any]:
    if isinstance(dataset, TensorDataset):
        # Fancy indexing beats collating hundreds of single items.
        for idx in plan:
            t = torch.as_tensor(idx, dtype=torch.long)
            yield tuple(x[t] for x in dataset.tensors)
    else:
        # num_workers=0: reading in the main process keeps the run repeatable.
        yield from DataLoader(dataset, batch_sampler=[list(map(int, b)) for b in plan], num_workers=0)


def fit(model: nn.Module, model_config: Any, loss_fn: LossFn, dataset: Dataset, batch_plan: BatchPlan,
        cfg: AutoencoderTrainingConfig, checkpoint_path: str | os.PathLike, resume: bool = True,
        data_info: dict | None = None) -> tuple[nn.Module, pd.DataFrame]:
    """Train ``model`` with Adam on ``loss_fn``, checkpointing so that it can resume.

    Parameters
    ----------
    model : nn.Module
        Freshly initialised; on resumption its weights are replaced.
    model_config : dataclass
        Stored as the checkpoint's ``"config"``; resuming checks it is unchanged.
    loss_fn : callable ``(model, batch) -> LossTerms``
        Runs the model on a batch (already on the device, inside autocast when
        mixed precision is on) and returns the loss.
    dataset : Dataset
        Indexed by the batch plan. A ``TensorDataset`` is sliced directly.
    batch_plan : callable ``epoch (0-based) -> sequence of index arrays``
        Must depend only on its argument (and fixed seeds) for resumption to
        repeat the uninterrupted run.
    cfg : AutoencoderTrainingConfig
        Uses ``epochs, lr, device, amp, num_threads, deterministic,
        checkpoint_every, progress``; stored in the checkpoint.
    checkpoint_path : path-like
        Written atomically after every ``checkpoint_every`` epochs and after the last.
    resume : bool
        Continue from ``checkpoint_path`` if it exists (the configs and
        ``data_info`` must match, except the fields that cannot change the
        result, such as ``epochs``); otherwise start over and overwrite it.
    data_info : dict, optional
        A fingerprint of the training data (sizes, domain counts) checked on resumption.

    Returns
    -------
    model : nn.Module
        Trained, in eval mode, on the training device.
    history : DataFrame
        One row per epoch: ``epoch`` (1-based), ``total`` and the mean of each
        loss term over the epoch's batches, the summed counters, ``batches``,
        ``samples``, ``seconds``.

    Raises
    ------
    NonFiniteLossError
        When a loss term or a weight becomes NaN/inf; names the epoch, the batch
        and the term. The checkpoint from the last good epoch is left as it was.
    """
    from tqdm import tqdm

    path = Path(checkpoint_path)
    data_info = data_info or {}
    device = resolve_device(cfg.device)
    # Under torchrun each rank runs its slice of every global batch through the DDP model and the
    # loss sees the gathered outputs of the whole batch (bcfeat.training.distributed).
    dist_ctx = context(device)
    device = dist_ctx.device(device)
    model.to(device)
    forward = GlobalBatch(dist_ctx.wrap(model, device), dist_ctx) if dist_ctx.active else model
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    # The autoencoder stops at the first non-finite loss (max_bad_steps=0): nothing is skipped.
    step = OptimizerStep(optimizer, device, cfg.amp, max_bad_steps=0)
    history: list[dict[str, Any]] = []
    start = 0
    last_saved: int | None = None

    if resume and path.exists():
        payload = read_model_file(path, "autoencoder", required=("config", "state_dict", "optimizer", "epoch"),
                                  map_location=device)
        check_resumable(path, payload, {"config": model_config, "train_config": cfg}, {"data": data_info})
        model.load_state_dict(payload["state_dict"])
        start = last_saved = int(payload["epoch"])
        if start > cfg.epochs:
            raise ValueError(f"checkpoint {path} has already trained {start} epochs, more than the {cfg.epochs} "
                             "requested; raise epochs or pass resume=False to start over")
        restore_resume_state(payload, step)
        logger.info("resuming %s after epoch %d of %d", path, start, cfg.epochs)
        hist = payload.get("history") or {}
        history = pd.DataFrame(hist).to_dict("records") if hist else []

    def checkpoint(epoch: int) -> None:
        nonlocal last_saved
        bad = [n for n, p in model.named_parameters() if not torch.isfinite(p).all()]
        if bad:
            raise NonFiniteLossError(f"after epoch {epoch}/{cfg.epochs} the weights {bad[:5]} are not finite; "
                                     f"not saving (the last good checkpoint {path}, epoch {last_saved}, is kept)")
        state = resume_state(step, device=device)  # on every rank (a collective under torchrun)
        with dist_ctx.main_first() as main:
            if main:
                save_checkpoint(path, model, model_config, {
                    "train_config": asdict(cfg),
                    **state,
                    "epoch": epoch,
                    "history": pd.DataFrame(history).to_dict("list"),
                    "data": data_info,
                })
        last_saved = epoch

    def kept() -> str:
        return (f"the last good checkpoint {path} (epoch {last_saved}) is kept" if last_saved is not None
                else f"no checkpoint was written to {path}")

    # One bar over the epochs (kept, showing the latest epoch means), one per epoch over its batches.
    show = cfg.progress and dist_ctx.is_main
    epochs_bar = tqdm(total=cfg.epochs, initial=start, desc="training", unit="epoch", disable=not show)

    def train_epoch(epoch: int) -> dict[str, Any]:
        """One epoch over the batch plan; its row of the history (means of the loss terms)."""
        model.train()
        plan = batch_plan(epoch)
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        n_samples = 0
        updates = 0
        t0 = time.perf_counter()
        with tqdm(total=len(plan), desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not show,
                  leave=False) as bar:
            for b, batch in enumerate(_iter_batches(dataset, plan)):
                batch = _to_device(batch, device)
                with step.autocast():
                    loss = loss_fn(forward, batch)
                values = {"total": float(loss.total.detach()), **{k: float(v) for k, v in loss.terms.items()}}
                updates += step(loss.total, loss.terms, where=f"epoch {epoch + 1}/{cfg.epochs}, "
                                f"batch {b + 1}/{len(plan)}", on_give_up=kept)
                for k, v in values.items():
                    sums[k] = sums.get(k, 0.0) + v
                for k, v in loss.counts.items():
                    counts[k] = counts.get(k, 0) + int(v)
                n_samples += len(plan[b])
                bar.set_postfix({k: f"{v:.4f}" for k, v in values.items()}, refresh=False)
                bar.update()
        seconds = time.perf_counter() - t0
        if updates == 0 and plan and epoch > start:
            raise NonFiniteLossError(
                f"epoch {epoch + 1}/{cfg.epochs}: none of its {len(plan)} updates was applied (non-finite "
                f"gradients{', which mixed precision skips' if step.use_amp else ''}): the model is not "
                f"learning{'; train with amp=False' if step.use_amp else ''}; {kept()}")
        row: dict[str, Any] = {"epoch": epoch + 1}
        row.update({k: v / len(plan) for k, v in sums.items()})
        row.update(counts)
        row.update({"batches": len(plan), "samples": n_samples, "seconds": seconds})
        logger.debug("epoch %d/%d: %s", epoch + 1, cfg.epochs, {k: round(row[k], 5) for k in sums})
        epochs_bar.set_postfix({k: f"{row[k]:.4f}" for k in sums}, refresh=False)
        epochs_bar.update()
        return row

    with training_threads(cfg.num_threads, cfg.deterministic), epochs_bar:
        run_units(start, cfg.epochs, train_epoch, checkpoint=checkpoint, checkpoint_every=cfg.checkpoint_every,
                  history=history)

    model = dist_ctx.unwrap(model)
    model.eval()
    return model, pd.DataFrame(history)


# --------------------------------------------------------------- autoencoder
def _unpack(batch: Any) -> tuple[Tensor, Tensor, Tensor]:
    """(features, crop, domain) from a tuple batch or a mapping batch."""
    if isinstance(batch, dict):
        crop_key = "crop" if "crop" in batch else "image"
        missing = [k for k in ("features", crop_key, "domain") if k not in batch]
        if missing:
            raise ValueError("dataset items must have keys 'features', 'crop' (or 'image') and 'domain'; "
                             f"missing {missing}")
        return batch["features"], batch[crop_key], batch["domain"]
    if isinstance(batch, (list, tuple)) and len(batch) >= 3:
        return batch[0], batch[1], batch[2]
    raise ValueError("dataset items must be (features, crop, domain, ...) tuples or mappings with those keys")


def _as_dataset(data: Dataset | Sequence[Tensor]) -> tuple[Dataset, np.ndarray]:
    """The training Dataset and every sample's domain id."""
    if isinstance(data, (tuple, list)) and not isinstance(data, Dataset):
        if len(data) != 3:
            raise ValueError(f"pass training data as (features, crops, domain) tensors; got {len(data)} items")
        features, crops, domain = (torch.as_tensor(x) for x in data)
        if not (len(features) == len(crops) == len(domain)):
            raise ValueError("features, crops and domain differ in length: "
                             f"{len(features)}, {len(crops)}, {len(domain)}")
        data = TensorDataset(features, crops, domain.long().reshape(-1))
    if isinstance(data, TensorDataset):
        return data, data.tensors[2].cpu().numpy().astype(np.int64)
    for attr in ("domain", "domains"):
        if hasattr(data, attr):
            return data, np.asarray(getattr(data, attr), dtype=np.int64).reshape(-1)
    # No domain array on the dataset: read every item once (slow for large sets).
    return data, np.array([int(_unpack(data[i])[2]) for i in range(len(data))], dtype=np.int64)


def _check_sample(dataset: Dataset, index: int, ae_cfg: AEConfig) -> None:
    x, crop, _ = _unpack(dataset[index])
    want_x = (ae_cfg.in_channels, ae_cfg.roi_size, ae_cfg.roi_size)
    want_c = (3, ae_cfg.image_size, ae_cfg.image_size)
    if tuple(x.shape) != want_x:
        raise ValueError(f"sample {index}: instance features have shape {tuple(x.shape)}, "
                         f"the AEConfig expects {want_x}")
    if tuple(crop.shape) != want_c:
        raise ValueError(f"sample {index}: crop has shape {tuple(crop.shape)}, the AEConfig expects {want_c}")
    if not torch.is_floating_point(crop):
        raise ValueError(f"sample {index}: crop has dtype {crop.dtype}; pass float values in [0, 1]")


def fit_autoencoder(data: Dataset | Sequence[Tensor], ae_cfg: AEConfig, train_cfg: AutoencoderTrainingConfig,
                    checkpoint_path: str | os.PathLike, resume: bool = True
                    ) -> tuple[CrossDomainAutoencoder, pd.DataFrame]:
    """Train the AE-CFE autoencoder without labels.

    Parameters
    ----------
    data : Dataset or (features, crops, domain)
        Tensors ``features (n, C, 14, 14)``, ``crops (n, 3, S, S)`` float in
        ``[0, 1]`` and ``domain (n,)`` int; or a Dataset whose items are
        ``(features, crop, domain, ...)`` tuples or mappings with those keys
        (a ``domain``/``domains`` attribute avoids reading every item once to
        find the domains).
    ae_cfg : AEConfig
    train_cfg : AutoencoderTrainingConfig
    checkpoint_path : path-like
        Where the checkpoint goes (see :func:`fit`); loads with
        :func:`bcfeat.autoencoder.model.load_checkpoint`.
    resume : bool
        Continue an interrupted run from ``checkpoint_path``.

    Returns
    -------
    model : CrossDomainAutoencoder
        In eval mode, on the training device.
    history : DataFrame
        Per epoch: ``total, image, features, alignment`` (means over batches of
        the unweighted terms; ``total`` is weighted), ``alignment_pairs`` and
        ``alignment_skipped`` (domain terms formed / domains that could not be
        aligned, summed over batches), ``batches, samples, seconds``.

    Notes
    -----
    Calls ``torch.manual_seed(train_cfg.seed)`` before building the model, so the
    global torch RNG is reseeded as a side effect.
    """
    cfg = train_cfg
    dataset, domain = _as_dataset(data)
    index = np.arange(len(domain))
    present = sorted(np.unique(domain).tolist())
    if cfg.source_domain not in present:
        raise ValueError(f"source_domain {cfg.source_domain} has no samples; domains present are {present}")
    if cfg.setting == "source_only":
        keep = domain == cfg.source_domain
        index, domain = index[keep], domain[keep]
    _check_sample(dataset, int(index[0]), ae_cfg)
    domain_counts = {int(d): int((domain == d).sum()) for d in np.unique(domain)}
    lonely = [d for d, c in domain_counts.items() if c < 2]
    if cfg.setting == "transductive" and lonely:
        warnings.warn(f"domains {lonely} have a single sample; they cannot be aligned and are counted "
                      f"in history['alignment_skipped']", stacklevel=2)
    data_info = {"n_samples": int(len(index)), "domains": [[d, c] for d, c in domain_counts.items()]}

    torch.manual_seed(cfg.seed)
    model = CrossDomainAutoencoder(ae_cfg)
    alignment = cfg.alignment if cfg.setting == "transductive" else None

    def loss_fn(m: nn.Module, batch: Any) -> LossTerms:
        x, crops, dom = _unpack(batch)
        x = x.float()
        out = m(x)
        return autoencoder_loss(out.latent, out.features, out.image, x, crops.float(), dom,
                                weights=cfg.weights, alignment=alignment, source_domain=cfg.source_domain)

    def batch_plan(epoch: int) -> list[np.ndarray]:
        return mixed_domain_batches(index, domain, cfg.batch_size, cfg.seed, epoch, cfg.min_per_domain)

    return fit(model, ae_cfg, loss_fn, dataset, batch_plan, cfg, checkpoint_path, resume=resume, data_info=data_info)
