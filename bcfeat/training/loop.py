"""The training loop every model of the study runs, its optimiser step, and the state a run
resumes from.

:func:`run_units` is the loop itself: units (epochs, or a detector's optimiser steps) from where
a run starts or resumed to its end, a history record per unit, a checkpoint every
``checkpoint_every`` units and after the last, and an early stop (a time budget). The detector
(:mod:`bcfeat.detection.training`), the autoencoder (:mod:`bcfeat.autoencoder.training`), the
oracle (:mod:`bcfeat.evaluation.oracle`) and the self-supervised encoder
(:mod:`bcfeat.crosslab.self_supervised`) run it with their own unit (batches, loss, schedule) and
their own checkpoint (the file kind and its ``format`` entry, :mod:`bcfeat.training.checkpoint`).

:class:`OptimizerStep` is one update: float16 autocast and a GradScaler when mixed precision
is on (CUDA only), the backward pass, optional gradient-norm clipping, the optimiser step, and
one policy for non-finite losses: the update is skipped (the weights stay finite) and, after
``max_bad_steps`` skipped steps in a row, :class:`NonFiniteLossError` names where it happened
and which loss terms were not finite. ``max_bad_steps=0`` stops at the first one.

With mixed precision off the GradScaler is a pass-through, so a step is exactly
``loss.backward(); optimizer.step()``.

:func:`resume_state` and :func:`restore_resume_state` save and restore what continuing a run
needs beyond the weights: the optimiser, scheduler and scaler states, the skipped-step count
and the RNG states (global CPU, CUDA, and the run's own generator; under torchrun the global CPU
state of every rank).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, MutableSequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch import Tensor


def run_units(start: int, end: int, unit: Callable[[int], dict | None], *,
              checkpoint: Callable[[int], None] | None = None, checkpoint_every: int = 1,
              history: MutableSequence[dict] | None = None,
              callback: Callable[[dict], bool | None] | None = None) -> MutableSequence[dict]:
    """Run units ``start, ..., end - 1`` of a training run; returns the history.

    Parameters
    ----------
    start, end : int
        The first unit to run (0, or the units a resumed checkpoint holds) and the end.
    unit : callable ``u -> record or None``
        Trains unit ``u`` (an epoch, or one optimiser step) and returns its history record,
        or None when there is nothing to record (a step between two logged ones).
    checkpoint : callable ``n -> None``, optional
        Writes the run after ``n`` units; called when ``n`` is a multiple of
        ``checkpoint_every`` and after the last unit, so that a run resumed from it (starting at
        unit ``n``) repeats the uninterrupted run.
    history : list, optional
        The records so far (a resumed run's); new records are appended to this list, so a
        ``checkpoint`` that writes it sees them.
    callback : callable ``record -> bool``, optional
        Called with each record after its checkpoint; True stops the run there.

    Examples
    --------
    >>> saved = []
    >>> run_units(1, 5, lambda u: {"unit": u} if u % 2 else None, checkpoint=saved.append, checkpoint_every=3)
    [{'unit': 1}, {'unit': 3}]
    >>> saved
    [3, 5]
    >>> run_units(0, 9, lambda u: {"unit": u}, callback=lambda r: r["unit"] == 1)
    [{'unit': 0}, {'unit': 1}]
    """
    if isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, int) or checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be an int >= 1, got {checkpoint_every!r}")
    history = [] if history is None else history
    for u in range(start, end):
        record = unit(u)
        if record is not None:
            history.append(record)
        if checkpoint is not None and ((u + 1) % checkpoint_every == 0 or u + 1 == end):
            checkpoint(u + 1)
        if callback is not None and record is not None and callback(record):
            break
    return history


class NonFiniteLossError(FloatingPointError):
    """A loss term (or a weight) became NaN or infinite too often; training stopped."""


def _value(v: Any) -> float:
    return float(v.detach()) if isinstance(v, Tensor) else float(v)


class OptimizerStep:
    """One optimiser update with mixed precision, clipping and the NaN policy.

    Parameters
    ----------
    optimizer : torch.optim.Optimizer
    device : torch.device
        Mixed precision is used only when ``amp`` and this is a CUDA device.
    amp : bool
    grad_clip : float
        Clip the global gradient norm of ``params`` to this (0: no clipping).
    max_bad_steps : int
        Non-finite steps in a row that are skipped; one more raises :class:`NonFiniteLossError`.
    params : iterable of Tensor, optional
        What is clipped (default: every parameter of the optimiser, in its order).
    amp_dtype : torch.dtype
        Autocast dtype (float16, which the GradScaler is for).

    Attributes
    ----------
    scaler : torch.amp.GradScaler
        Disabled (a pass-through) without mixed precision.
    skipped : int
        Non-finite steps skipped so far (restored on resumption).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, device: torch.device, amp: bool = False, *,
                 grad_clip: float = 0.0, max_bad_steps: int = 0, params: Iterable[Tensor] | None = None,
                 amp_dtype: torch.dtype = torch.float16) -> None:
        self.optimizer = optimizer
        self.use_amp = bool(amp) and torch.device(device).type == "cuda"
        self.amp_dtype = amp_dtype
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.grad_clip = float(grad_clip)
        self.max_bad_steps = int(max_bad_steps)
        self.params = list(params) if params is not None else [p for g in optimizer.param_groups for p in g["params"]]
        self.bad = 0
        self.skipped = 0

    def autocast(self) -> AbstractContextManager:
        """The context the forward pass runs in (autocast with mixed precision, else nothing)."""
        return torch.autocast("cuda", dtype=self.amp_dtype) if self.use_amp else nullcontext()

    def __call__(self, loss: Tensor, terms: Mapping[str, Any] | None = None, *, where: str = "",
                 on_give_up: Callable[[], str] | None = None) -> bool:
        """Backward and update on ``loss`` if it and every term are finite; otherwise skip.

        Parameters
        ----------
        loss : Tensor
            The scalar that is minimised.
        terms : mapping of str to Tensor or float, optional
            The loss terms, named in the error.
        where : str
            Where the step is, for the error (``"epoch 3/4, batch 1/3"``, ``"step 17"``).
        on_give_up : callable, optional
            Called before raising; returns a sentence for the error (e.g. which checkpoint is kept).

        Returns
        -------
        bool
            True when the weights were updated, False when the step was skipped (a non-finite
            loss, or with mixed precision a non-finite gradient, which the GradScaler skips).

        Raises
        ------
        NonFiniteLossError
            After ``max_bad_steps + 1`` non-finite steps in a row.
        """
        values = {"total": _value(loss), **{k: _value(v) for k, v in (terms or {}).items()}}
        bad = {k: v for k, v in values.items() if not math.isfinite(v)}
        if _world_size() > 1 and _any_rank(bool(bad), loss.device) and not bad:
            # Under torchrun every rank skips together (one rank's backward alone would wait forever).
            bad = {"another rank's loss": math.nan}
        self.optimizer.zero_grad(set_to_none=True)
        if not bad:
            self.bad = 0
            self.scaler.scale(loss).backward()
            if self.grad_clip > 0:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
            scale = self.scaler.get_scale() if self.use_amp else None
            self.scaler.step(self.optimizer)
            self.scaler.update()
            # The GradScaler skips the update (and lowers its scale) when a gradient is not finite.
            return not (self.use_amp and self.scaler.get_scale() < scale)
        self.bad += 1
        self.skipped += 1
        if self.bad > self.max_bad_steps:
            note = on_give_up() if on_give_up is not None else ""
            raise NonFiniteLossError(
                f"non-finite loss in {where}: " + ", ".join(f"{k}={v}" for k, v in bad.items())
                + f"; {self.bad} non-finite step(s) in a row (at most {self.max_bad_steps} are skipped), stopping"
                + (f"; {note}" if note else ""))
        return False


def _world_size() -> int:
    return torch.distributed.get_world_size() if torch.distributed.is_available() and torch.distributed.is_initialized() else 1


def _any_rank(flag: bool, device: torch.device) -> bool:
    dev = device if torch.distributed.get_backend() == "nccl" else torch.device("cpu")
    t = torch.tensor([int(flag)], device=dev)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return bool(t.item())


def _cpu(obj: Any) -> Any:
    if isinstance(obj, Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cpu(v) for v in obj)
    return obj


def resume_state(step: OptimizerStep, scheduler: Any = None, generator: torch.Generator | None = None,
                 device: torch.device | None = None) -> dict[str, Any]:
    """What a checkpoint needs beyond the weights to continue the run exactly.

    Returns
    -------
    dict
        ``optimizer`` (CPU tensors), ``scaler`` (None without mixed precision), ``skipped``,
        ``rng`` (``{"torch", "cuda" when training on CUDA, "generator" when given}``) and
        ``scheduler`` when given.
    """
    rng: dict[str, Any] = {"torch": torch.get_rng_state()}
    if device is not None and torch.device(device).type == "cuda" and torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    if generator is not None:
        rng["generator"] = generator.get_state()
    if _world_size() > 1:
        # Under torchrun each rank's global generator has drawn differently (e.g. the detector's
        # samplers on its own images): every rank's state is kept (a collective: call on every rank).
        ranks: list[Any] = [None] * _world_size()
        torch.distributed.all_gather_object(ranks, torch.get_rng_state())
        rng["ranks"] = ranks
    state = {"optimizer": _cpu(step.optimizer.state_dict()),
             "scaler": step.scaler.state_dict() if step.use_amp else None,
             "skipped": step.skipped, "rng": rng}
    if scheduler is not None:
        state["scheduler"] = scheduler.state_dict()
    return state


def restore_resume_state(payload: Mapping[str, Any], step: OptimizerStep, scheduler: Any = None,
                         generator: torch.Generator | None = None) -> None:
    """Load what :func:`resume_state` saved (optimiser moments follow the parameters' device).

    Also reads detector checkpoints written before this convention (``rng`` = the generator's
    state, ``torch_rng`` = the global one).
    """
    step.optimizer.load_state_dict(payload["optimizer"])
    if step.use_amp and payload.get("scaler"):
        step.scaler.load_state_dict(payload["scaler"])
    if scheduler is not None:
        scheduler.load_state_dict(payload["scheduler"])
    rng = payload.get("rng")
    if isinstance(rng, Tensor):
        rng = {"generator": rng, "torch": payload.get("torch_rng")}
    rng = rng or {}
    if generator is not None and rng.get("generator") is not None:
        generator.set_state(rng["generator"])
    if rng.get("torch") is not None:
        torch.set_rng_state(rng["torch"].cpu())
    ranks = rng.get("ranks")
    if ranks and _world_size() == len(ranks):
        torch.set_rng_state(ranks[torch.distributed.get_rank()].cpu())
    if rng.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in rng["cuda"]])
    step.skipped = int(payload.get("skipped", 0))
