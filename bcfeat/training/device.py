"""Where a training run computes and with how many threads.

:func:`resolve_device` turns a config's ``device`` string into a ``torch.device``;
:func:`training_threads` sets the thread count (and, on request, deterministic algorithms)
for the duration of a run and restores the previous settings afterwards, also on error.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch


def resolve_device(name: str = "auto") -> torch.device:
    """``"auto"`` -> CUDA if available, else CPU; anything else -> ``torch.device(name)``.

    >>> resolve_device("cpu")
    device(type='cpu')
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@contextmanager
def training_threads(num_threads: int | None, deterministic: bool = False) -> Iterator[None]:
    """``torch.set_num_threads(num_threads)`` (None or 0: unchanged) and, with ``deterministic``,
    deterministic algorithms (``warn_only``) for the ``with`` block; both restored afterwards.

    >>> before = torch.get_num_threads()
    >>> with training_threads(1):
    ...     torch.get_num_threads()
    1
    >>> torch.get_num_threads() == before
    True
    """
    threads = torch.get_num_threads()
    det, warn_only = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    if num_threads:
        torch.set_num_threads(num_threads)
    if deterministic:
        # cuBLAS needs this to be deterministic; only effective before its first use.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(det, warn_only=warn_only)
