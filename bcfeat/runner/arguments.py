"""Argument types of the bcfeat commands: each refuses a bad value with one line naming it and the
allowed range (argparse turns the error into exit status 2, :data:`bcfeat.runner.exit_codes.USAGE`)."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse ``type`` for an integer ``>= minimum`` whose error names the value and range.

    >>> int_at_least(1)("3")
    3
    """
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is out of range: must be >= {minimum}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


def device_name(text: str) -> str:
    """An argparse ``type`` for ``--device``: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` that this
    machine has; anything else (a typo, CUDA without a GPU, a GPU index out of range) is a usage
    error naming the value.

    >>> device_name("cpu"), device_name("auto")
    ('cpu', 'auto')
    """
    import torch

    if text == "auto":
        return text
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a device: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(f"{text!r}: this machine has no CUDA GPU (use cpu or auto)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(f"{text!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    elif device.type != "cpu":
        raise argparse.ArgumentTypeError(f"{text!r}: bcfeat runs on cpu or cuda")
    return text


def float_between(low: float, high: float, inclusive: bool = False) -> Callable[[str], float]:
    """An argparse ``type`` for a float in ``(low, high)`` (``[low, high]`` with ``inclusive``)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        inside = low <= value <= high if inclusive else low < value < high
        if not inside:
            bounds = f"[{low}, {high}]" if inclusive else f"({low}, {high})"
            raise argparse.ArgumentTypeError(f"{value} is out of range: must be in {bounds}")
        return value

    parse.__name__ = "number"
    return parse
