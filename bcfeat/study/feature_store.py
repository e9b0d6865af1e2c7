"""Where each feature set is stored, and what every feature set is called (the benchmark's
tables, the figures and the profiles refer to feature sets by these names)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from bcfeat.atomic_io import save_npz
from bcfeat.study.samples import sample_keys


def save_feature_set(path: str | os.PathLike, keys: Sequence[str], X: np.ndarray, **info) -> Path:
    """Write one feature set (rows keyed by ``dataset/relpath``) as ``.npz``, atomically."""
    return save_npz(path, keys=np.asarray(list(keys)), X=np.asarray(X), info=np.asarray(repr(info)))

def load_feature_set(path: str | os.PathLike, samples: pd.DataFrame) -> np.ndarray:
    """The rows of a saved feature set for ``samples``, in their order.

    Raises
    ------
    KeyError
        Naming the missing images when the feature set does not cover every sample.
    """
    with np.load(path) as stored:
        index = pd.Index(stored["keys"])
        X = stored["X"]
    positions = index.get_indexer(sample_keys(samples))
    missing = sample_keys(samples)[positions < 0]
    if len(missing):
        raise KeyError(f"{path}: no features for {len(missing)} samples, e.g. {list(missing[:3])}")
    return X[positions]

def feature_path(features_dir: str | os.PathLike, name: str) -> Path:
    """Where feature set ``name`` is stored in ``features_dir`` (the folder ``03_features`` makes)."""
    return Path(features_dir) / f"{name}.npz"

RAW_PIXELS, COLOUR_SHAPE = "raw_pixels", "colour_shape"

BASELINE_FEATURE_SETS: tuple[str, ...] = (RAW_PIXELS, COLOUR_SHAPE)

def aecfe_feature_set(variant: str) -> str:
    """The feature set of one autoencoder variant's latent code.

    >>> aecfe_feature_set("moment")
    'aecfe_moment'
    """
    return f"aecfe_{variant}"

def oracle_feature_set(arch: str, norm: str) -> str:
    """The oracle's feature-set name in the tables, from its architecture and normalisation.

    >>> oracle_feature_set("narrow_resnet", "batch")
    'oracle (narrow_resnet, batch norm)'
    """
    return f"oracle ({arch}, {norm} norm)"

def oracle_short_name(norm: str) -> str:
    """The name a parameter list uses for the oracle of one normalisation, whatever its
    architecture (a full name holds a comma, which a comma-separated list cannot).

    >>> oracle_short_name("batch")
    'oracle_batch'
    """
    return f"oracle_{norm}"

def feature_set_names(features_dir: str | os.PathLike) -> list[str]:
    """The feature sets stored in ``features_dir``, sorted."""
    return sorted(p.stem for p in Path(features_dir).glob("*.npz"))

def stored_feature_sets(features_dir: str | os.PathLike, first: Sequence[str] = ()) -> list[str]:
    """The feature sets stored in ``features_dir``: those named in ``first`` in that order, then
    any other, sorted. An empty folder is an error naming it and the stage that fills it."""
    stored = feature_set_names(features_dir)
    if not stored:
        raise FileNotFoundError(f"no feature set in {features_dir}: it is filled by the stage 03_features")
    return [n for n in first if n in stored] + [n for n in stored if n not in first]


def resolve_feature_sets(requested: Sequence[str], available: Sequence[str],
                         aliases: dict[str, str] | None = None) -> list[str]:
    """``requested`` names (or short names in ``aliases``) as feature-set names, in their order.

    Raises
    ------
    ValueError
        Naming the unknown names and listing the valid ones.

    Examples
    --------
    >>> resolve_feature_sets(["a", "oracle_batch"], ["a", "oracle (x, batch norm)"],
    ...                      {"oracle_batch": "oracle (x, batch norm)"})
    ['a', 'oracle (x, batch norm)']
    """
    aliases = {k: v for k, v in (aliases or {}).items() if v in set(available)}
    names = [aliases.get(name, name) for name in requested]
    unknown = [r for r, n in zip(requested, names) if n not in set(available)]
    if unknown:
        valid = list(dict.fromkeys([*available, *aliases]))
        raise ValueError(f"unknown feature set(s) {unknown}; valid names are {valid}")
    return names

def load_feature_sets(features_dir: str | os.PathLike, names: Sequence[str],
                      samples: pd.DataFrame) -> dict[str, np.ndarray]:
    """The named feature sets of ``features_dir`` for ``samples`` (an unknown name is an error
    listing the feature sets the folder holds)."""
    resolve_feature_sets(names, feature_set_names(features_dir))
    return {name: load_feature_set(feature_path(features_dir, name), samples) for name in names}


__all__ = ["save_feature_set", "load_feature_set", "feature_path", "RAW_PIXELS", "COLOUR_SHAPE", "BASELINE_FEATURE_SETS", "aecfe_feature_set", "oracle_feature_set", "oracle_short_name", "feature_set_names", "stored_feature_sets", "resolve_feature_sets", "load_feature_sets"]
