"""One file convention for every trained model, one way to read its config, one resume check.

A model file is the ``torch.save`` of one dict::

    {"format": "bcfeat.<kind>/<version>", "config": asdict(cfg), "state_dict": {...}, **extra}

written atomically (:func:`bcfeat.atomic_io.atomic_torch_save`, so an interrupted write
leaves the previous file) and opened only through :func:`bcfeat.model_files.load_model_file`,
which checks the kind and version and names what is wrong. The config is plain values, the
weights are CPU tensors, and the model is rebuilt from the stored config (never a pickled
model). A config is read back with :func:`config_from_dict`, which refuses unknown keys.

A checkpoint of an unfinished run continues only when :func:`check_resumable` finds the same
model config, the same training config (except the settings that do not change what is
trained, listed in the config class's ``RESUMABLE_CHANGES``) and the same data.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, TypeVar

from bcfeat.atomic_io import atomic_torch_save
from bcfeat.model_files import format_name, load_model_file

RESERVED_KEYS = ("format", "config", "state_dict")
C = TypeVar("C")


def config_from_dict(cls: type[C], mapping: Mapping[str, Any]) -> C:
    """Rebuild a config dataclass from ``asdict(cfg)``; unknown keys are an error naming them.

    Examples
    --------
    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class Example:
    ...     size: int = 1
    >>> config_from_dict(Example, {"size": 3})
    Example(size=3)
    >>> config_from_dict(Example, {"size": 3, "colour": "red"})
    Traceback (most recent call last):
    ...
    ValueError: unknown Example keys ['colour']; known keys are ['size']
    """
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(mapping) - known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys {unknown}; known keys are {sorted(known)}")
    return cls(**mapping)


def save_model_file(path: str | os.PathLike, kind: str, config: Any, state_dict: Mapping[str, Any],
                    extra: Mapping[str, Any] | None = None, *, version: int = 1, fsync: bool = True) -> Path:
    """Write ``{"format": "bcfeat.<kind>/<version>", "config": asdict(config), "state_dict", **extra}`` atomically.

    Parameters
    ----------
    path : path-like
        Destination; parent folders are created.
    kind : str
        ``"detector"``, ``"autoencoder"``, ``"oracle"``, ...
    config : dataclass
        The config the model is rebuilt from.
    state_dict : mapping of str to Tensor
        Stored as detached CPU tensors (the file loads on any machine).
    extra : mapping, optional
        More top-level entries (training config, optimiser state, history, ...); values must
        load with ``torch.load(weights_only=True)``: tensors, numbers, strings, None and
        containers of those. ``format``, ``config`` and ``state_dict`` are reserved.
    version : int
    fsync : bool
        Flush the file to disk before it replaces ``path``.
    """
    extra = dict(extra or {})
    clash = sorted(set(extra) & set(RESERVED_KEYS))
    if clash:
        raise ValueError(f"extra keys {clash} of a {kind} file are reserved")
    payload = {
        "format": format_name(kind, version),
        "config": asdict(config),
        "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()},
        **extra,
    }
    return atomic_torch_save(payload, path, fsync=fsync)


def read_model_file(path: str | os.PathLike, kind: str, *, required: Iterable[str] = ("config", "state_dict"),
                    map_location: Any = "cpu", legacy: dict[str, Any] | None = None) -> dict[str, Any]:
    """The payload of a ``kind`` file (:func:`bcfeat.model_files.load_model_file`).

    Raises
    ------
    FileNotFoundError
        ``no <kind> checkpoint at <path>``.
    bcfeat.model_files.ModelFileError
        Damaged, of another kind or version, incomplete or holding code; one line naming the file.
    """
    if not Path(path).exists():
        raise FileNotFoundError(f"no {kind} checkpoint at {path}")
    return load_model_file(path, kind, required=required, map_location=map_location, legacy=legacy)


def config_changes(stored: Mapping[str, Any], now: Any) -> list[str]:
    """``"name: stored -> now"`` for every field of the dataclass ``now`` that differs from the
    stored ``asdict`` (read back through :func:`config_from_dict`), except the fields named in
    ``type(now).RESUMABLE_CHANGES``.
    """
    cls = type(now)
    ignore = set(getattr(cls, "RESUMABLE_CHANGES", ()))
    before, after = asdict(config_from_dict(cls, stored)), asdict(now)
    return [f"{k}: {before[k]!r} -> {after[k]!r}" for k in after if k not in ignore and before[k] != after[k]]


def check_resumable(path: str | os.PathLike, payload: Mapping[str, Any], configs: Mapping[str, Any],
                    data: Mapping[str, Any] | None = None) -> None:
    """Refuse to continue a checkpoint that was trained with other settings or data.

    Parameters
    ----------
    path : path-like
        Named in the error.
    payload : mapping
        The checkpoint's payload.
    configs : mapping of str to dataclass
        ``{payload key: config now}``, e.g. ``{"config": model_cfg, "train_config": train_cfg}``.
        A training config missing from an older file is not checked.
    data : mapping, optional
        ``{payload key: value now}`` that fingerprint the training data.

    Raises
    ------
    ValueError
        ``cannot resume <path>: its <Config> differs (lr: 0.001 -> 0.01); pass resume=False to
        start over`` (or ``...: it was trained on other data (...)``).
    """
    hint = "pass resume=False to start over"
    for key, now in configs.items():
        stored = payload.get(key)
        if stored is None and key != "config":
            continue
        name = type(now).__name__
        try:
            changes = config_changes(stored or {}, now)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"cannot resume {path}: its stored {name} does not fit this bcfeat ({exc}); {hint}") from None
        if changes:
            raise ValueError(f"cannot resume {path}: its {name} differs ({', '.join(changes)}); {hint}")
    changed = [f"{k}: {payload.get(k)!r} -> {v!r}" for k, v in (data or {}).items() if payload.get(k) != v]
    if changed:
        raise ValueError(f"cannot resume {path}: it was trained on other data ({', '.join(changed)}); {hint}")
