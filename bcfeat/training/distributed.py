"""Distributed data parallel training under ``torchrun`` (one process per device, any number of machines).

A run launched by ``torchrun --nproc_per_node=N [--nnodes=M ...]`` has ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` in its environment. :func:`context` then joins
the process group (``nccl`` on CUDA, ``gloo`` on the CPU), pins the process to the device
``cuda:LOCAL_RANK`` and returns a :class:`Distributed` that the training loops use to

* take this rank's slice of a globally drawn batch (:meth:`Distributed.shard`): every rank draws
  the same global batch plan from the same seeded generator, so the data seen per step, the
  augmentation draws and resumption are those of a single-process run;
* wrap the model in :class:`~torch.nn.parallel.DistributedDataParallel` (:meth:`Distributed.wrap`),
  which averages the gradients over the ranks;
* weight a per-rank mean loss (:meth:`Distributed.loss_weight`) so that the averaged gradient is
  the gradient of the global batch's mean, also when the slices are unequal;
* gather outputs with gradients (:func:`gather`) for losses that are not means over samples
  (the autoencoder's domain alignment, SimCLR's negatives): every rank computes the loss of the
  whole batch, and the gradient reaching each rank's outputs is summed over the ranks;
* write files on rank 0 only, the other ranks waiting at a barrier (:meth:`Distributed.main_first`).

Without ``torchrun`` (or with ``WORLD_SIZE=1``) :func:`context` returns a context whose methods
do nothing: the single-process path draws the same random numbers and computes the same
arithmetic as before this module existed.

BatchNorm: on CUDA, BatchNorm layers are converted to :class:`~torch.nn.SyncBatchNorm` while
training (statistics of the global batch, as in the single-process run) and converted back
afterwards; on the CPU (gloo) PyTorch has no SyncBatchNorm, so each rank normalises with the
statistics of its own slice and DDP broadcasts rank 0's running statistics at each forward pass.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn


def launched() -> bool:
    """True inside a ``torchrun`` launch of more than one process (``WORLD_SIZE`` > 1)."""
    return "RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1


@dataclass
class Distributed:
    """This process's place in a run; ``world_size == 1`` (the default) is a plain single process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes checkpoints, logs and progress bars."""
        return self.rank == 0

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def device(self, device: torch.device) -> torch.device:
        """``cuda:LOCAL_RANK`` for a CUDA run under torchrun, else ``device`` unchanged."""
        if self.active and device.type == "cuda":
            torch.cuda.set_device(self.local_rank)
            return torch.device("cuda", self.local_rank)
        return device

    def bounds(self, n: int) -> tuple[int, int]:
        """``[start, stop)`` of this rank's contiguous slice of ``n`` items (sizes differ by at most one).

        >>> [Distributed(r, 3).bounds(8) for r in range(3)]
        [(0, 3), (3, 6), (6, 8)]
        """
        base, extra = divmod(n, self.world_size)
        start = self.rank * base + min(self.rank, extra)
        return start, start + base + (1 if self.rank < extra else 0)

    def shard(self, items: Any) -> Any:
        """This rank's contiguous slice of a global batch (array, tensor or list); itself in one process."""
        if not self.active:
            return items
        start, stop = self.bounds(len(items))
        return items[start:stop]

    def loss_weight(self, n_local: int, n_global: int) -> float:
        """Factor for a rank's mean loss so that DDP's gradient average is the global mean's gradient:
        ``world_size * n_local / n_global`` (1 in one process)."""
        return self.world_size * n_local / n_global if self.active else 1.0

    def sum(self, values: Sequence[float], device: torch.device | None = None) -> list[float]:
        """Sum of ``values`` over the ranks (float64), as floats; unchanged in one process."""
        if not self.active:
            return [float(v) for v in values]
        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self._comm_device(device))
        dist.all_reduce(t)
        return t.cpu().tolist()

    def any(self, flag: bool, device: torch.device | None = None) -> bool:
        """True when ``flag`` is true on any rank (the same answer on every rank)."""
        if not self.active:
            return bool(flag)
        t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=self._comm_device(device))
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def gather_objects(self, obj: Any) -> list[Any]:
        """``[obj of rank 0, obj of rank 1, ...]`` on every rank; ``[obj]`` in one process."""
        if not self.active:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """``DistributedDataParallel(model)`` under torchrun (BatchNorm synchronised on CUDA), else ``model``."""
        if not self.active:
            return model
        if device.type == "cuda" and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        ids = [device.index] if device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def unwrap(self, model: nn.Module) -> nn.Module:
        """The trained module without its DDP wrapper (SyncBatchNorm back to BatchNorm2d)."""
        module = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
        return _revert_sync_batchnorm(module) if self.active else module

    @contextmanager
    def main_first(self) -> Iterator[bool]:
        """``with ctx.main_first() as main: if main: write()`` - the other ranks wait until rank 0 is done."""
        try:
            yield self.is_main
        finally:
            self.barrier()

    def _comm_device(self, device: torch.device | None) -> torch.device:
        if dist.get_backend() == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")


_SINGLE = Distributed()


def context(device: torch.device | str = "cpu", timeout_s: float = 1800.0) -> Distributed:
    """This process's :class:`Distributed`: joins the process group once under torchrun.

    Parameters
    ----------
    device : torch.device or str
        The training device; its type picks the backend (``nccl`` for CUDA, ``gloo`` otherwise).
    timeout_s : float
        How long a collective waits for the other ranks.
    """
    if not launched():
        return _SINGLE
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        cuda = torch.device(device).type == "cuda"
        if cuda:
            torch.cuda.set_device(local)
        dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(seconds=timeout_s))
        atexit.register(teardown)
    return Distributed(rank, world, local)


def teardown() -> None:
    """Leave the process group (safe to call twice, or when none was joined)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


class _Gather(torch.autograd.Function):
    """All-gather along dim 0 of slices that may differ in length; the backward sums the gradient
    of the gathered tensor over the ranks and returns this rank's rows."""

    @staticmethod
    def forward(ctx: Any, local: Tensor, sizes: tuple[int, ...], rank: int) -> Tensor:
        ctx.start, ctx.stop = sum(sizes[:rank]), sum(sizes[: rank + 1])
        width = max(sizes)
        padded = local.new_zeros((width, *local.shape[1:]))
        padded[: len(local)] = local
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded.contiguous())
        return torch.cat([p[:n] for p, n in zip(parts, sizes)])

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad[ctx.start : ctx.stop], None, None


def gather(ctx: Distributed, local: Tensor, n_global: int) -> Tensor:
    """The global batch's ``(n_global, ...)`` tensor from each rank's slice (:meth:`Distributed.shard`
    order), differentiable; ``local`` itself in one process.

    A loss computed on the gathered tensor on every rank and back-propagated gives each rank the
    gradient summed over the ranks, which DDP's average turns into the global loss's gradient.
    """
    if not ctx.active:
        return local
    sizes = tuple(stop - start for start, stop in (Distributed(r, ctx.world_size).bounds(n_global)
                                                   for r in range(ctx.world_size)))
    return _Gather.apply(local, sizes, ctx.rank)


def _revert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every SyncBatchNorm by a BatchNorm2d sharing its parameters and buffers."""
    if isinstance(module, nn.SyncBatchNorm):
        bn = nn.BatchNorm2d(module.num_features, module.eps, module.momentum, module.affine,
                            module.track_running_stats)
        if module.affine:
            bn.weight, bn.bias = module.weight, module.bias
        bn.running_mean, bn.running_var = module.running_mean, module.running_var
        bn.num_batches_tracked = module.num_batches_tracked
        bn.train(module.training)
        return bn
    for name, child in module.named_children():
        setattr(module, name, _revert_sync_batchnorm(child))
    return module


class GlobalBatch(nn.Module):
    """A model that takes the global batch, runs this rank's slice through the DDP model and returns
    the global batch's outputs (gathered with gradients): a loss written for one process then works
    unchanged, and every rank computes the same loss value.

    Outputs may be a tensor, or a tuple / NamedTuple / list / dict of tensors (each gathered along dim 0).
    """

    def __init__(self, model: nn.Module, ctx: Distributed) -> None:
        super().__init__()
        self.model, self.ctx = model, ctx

    def forward(self, x: Tensor) -> Any:
        return _gather_all(self.ctx, self.model(self.ctx.shard(x)), len(x))


def _gather_all(ctx: Distributed, out: Any, n: int) -> Any:
    if isinstance(out, Tensor):
        return gather(ctx, out, n)
    if isinstance(out, dict):
        return {k: _gather_all(ctx, v, n) for k, v in out.items()}
    if isinstance(out, tuple) and hasattr(out, "_fields"):
        return type(out)(*(_gather_all(ctx, v, n) for v in out))
    if isinstance(out, (list, tuple)):
        return type(out)(_gather_all(ctx, v, n) for v in out)
    return out
