"""A disk cache of per-image arrays (instance features, crops, boxes), keyed by data and model.

The detector is the expensive part of feature extraction, and the autoencoder trains for many
epochs on the same instance features; so they are computed once per dataset and detector
checkpoint and read back afterwards. The key hashes the *content* of every image file and of
the checkpoint file plus the extraction settings, and the instruction-set cap the libraries started
under (:func:`bcfeat.instruction_set.kernels_in_effect`: the arrays' last bits depend on it), so
changing any of them gives a new entry instead of stale features.

Arrays are written in chunks (atomically, one ``.npz`` per chunk), so an interrupted
extraction resumes at the first missing chunk instead of starting over.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from bcfeat.atomic_io import save_npz, write_text
from bcfeat.data.manifest import sha256_of
from bcfeat.instruction_set import kernels_in_effect


def cache_key(paths: Sequence[str | os.PathLike], model_file: str | os.PathLike | None,
              settings: dict) -> str:
    """A hex key that changes when any image's bytes, their order, the model file, a setting or the
    instruction-set cap in effect change (with no cap, the key is the one of the caches written
    before the cap existed)."""
    digest = hashlib.sha256()
    digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    kernels = kernels_in_effect()
    if kernels:
        digest.update(b"kernels:" + kernels.encode())
    digest.update(b"model:" + (sha256_of(model_file).encode() if model_file else b"none"))
    for path in paths:
        digest.update(Path(path).name.encode() + b":" + sha256_of(path).encode())
    return digest.hexdigest()[:20]


def cached_arrays(paths: Sequence[str | os.PathLike], compute: Callable[[list[str]], dict[str, np.ndarray]],
                  cache_dir: str | os.PathLike, *, key: str, chunk_size: int = 256,
                  progress: bool = True, description: str = "extracting") -> dict[str, np.ndarray]:
    """Arrays for every path, computed by ``compute`` in chunks or read back from the cache.

    Parameters
    ----------
    paths : sequence of paths
        The images, in the order the returned arrays follow.
    compute : callable
        ``compute(list of paths) -> {name: array with len(paths) rows}``.
    cache_dir : path
        Parent folder; the entry is ``cache_dir/<key>/``.
    key : str
        From :func:`cache_key`.
    chunk_size : int
        Images per chunk file (the unit of resumption).

    Returns
    -------
    dict of str to np.ndarray
        The chunks concatenated along the first axis.
    """
    from tqdm import tqdm

    paths = [str(p) for p in paths]
    entry = Path(cache_dir) / key
    entry.mkdir(parents=True, exist_ok=True)
    write_text("\n".join(paths), entry / "paths.txt")
    starts = list(range(0, len(paths), chunk_size))
    chunks = []
    bar = tqdm(total=len(paths), desc=description, disable=not progress, unit="img")
    for number, start in enumerate(starts):
        chunk_file = entry / f"chunk_{number:05d}.npz"
        batch = paths[start:start + chunk_size]
        if chunk_file.exists():
            with np.load(chunk_file) as stored:
                arrays = {name: stored[name] for name in stored.files}
        else:
            arrays = compute(batch)
            bad = {name: len(a) for name, a in arrays.items() if len(a) != len(batch)}
            if bad:
                raise ValueError(f"compute returned arrays with the wrong number of rows {bad} "
                                 f"for a chunk of {len(batch)} images")
            save_npz(chunk_file, **arrays)
        chunks.append(arrays)
        bar.update(len(batch))
    bar.close()
    if not chunks:
        raise ValueError("no images to extract")
    return {name: np.concatenate([c[name] for c in chunks]) for name in chunks[0]}
