"""``bcfeat extract``: the features of every image below a folder, one row per image, every other file named."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from bcfeat.autoencoder.aecfe_model import instance_arrays
from bcfeat.data.image_folders import folder_images
from bcfeat.extraction.table import ROW_COLUMNS, with_latent


def runtime_on(model, device: str | None, batch_size: int):
    """Where an AE-CFE ``model`` extracts (moved there): None keeps the model file's reference path on the
    CPU; on a device the batched path takes ``batch_size`` images per pass, the reference path keeps the
    model file's batch size."""
    if device is None:
        return None
    from bcfeat.detection.batched_inference import ExtractionRuntime

    runtime = ExtractionRuntime(device=device, batch_size=batch_size).resolved()
    if not runtime.fast:
        runtime = ExtractionRuntime(device=device)
    model.to(runtime.torch_device())
    return runtime


def extract_batch(model, batch: list[tuple[str, np.ndarray]], folder: Path, label_of: dict, runtime):
    """One batch of ``(path, image)``: its rows (``ROW_COLUMNS``) and its features, encoded, or raw for a
    site-standardised model (which needs the whole folder's statistics, so it encodes at the end)."""
    with torch.inference_mode():
        arrays = instance_arrays(model.detector, [image for _, image in batch], model.extraction, runtime)
    rows = [{"relpath": str(Path(path).relative_to(folder)), "label": label_of.get(str(path), ""),
             "fallback": bool(fb), "score": float(score)}
            for (path, _), fb, score in zip(batch, arrays["fallback"], arrays["scores"])]
    return rows, arrays["features"] if model.site_standardize else model.encode(arrays["features"])


def extract_with(model, folder: str | os.PathLike, layout: str = "files", batch_size: int = 64,
                 progress: bool = True, device: str | None = None):
    """The features of every image below ``folder`` with a loaded
    :class:`~bcfeat.autoencoder.aecfe_model.AECFEModel` (what ``open_extractor(path).extract_folder``
    gives for an AE-CFE file): one row per image, every other file named.

    ``device`` (``"auto"``, ``"cpu"``, ``"cuda"``...): where detector and encoder run; on CUDA the
    batched path of :mod:`bcfeat.detection.batched_inference` extracts each block of ``batch_size`` files in
    one pass (give a large ``batch_size``, e.g. 512). None: the model file's reference path on the CPU.

    Returns
    -------
    table : pd.DataFrame
        ``relpath, label, fallback, score, aecfe0 .. aecfe49``.
    skipped : list of (str, str)
        ``(relpath, reason)`` for every file below ``folder`` without a row: not an image
        type, a broken or looping link, or not decodable (named, counted, never fatal).
    """
    from tqdm import tqdm

    from bcfeat.data.images import SkippedImages, iter_images

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    runtime = runtime_on(model, device, batch_size)
    files, dropped = folder_images(folder, layout)
    label_of = dict(zip(files["path"], files["label"]))
    skipped = SkippedImages()
    rows, batch, encoded = [], [], []

    def flush() -> None:
        batch_rows, features = extract_batch(model, batch, folder, label_of, runtime)
        rows.extend(batch_rows)
        encoded.append(features)
        batch.clear()

    block_of = {p: i // batch_size for i, p in enumerate(files["path"])}
    for path, image in tqdm(iter_images(files["path"], skipped), total=len(files),
                            disable=not progress, desc="extracting", unit="img"):
        # A batch is the readable images of batch_size consecutive files (batch-mates shift results
        # slightly), so an unreadable file never moves later batches: a shard gives the same rows.
        if batch and block_of[str(path)] != block_of[batch[0][0]]:
            flush()
        batch.append((str(path), image))
    if batch:
        flush()
    table = pd.DataFrame(rows, columns=ROW_COLUMNS)
    if rows:
        latent = model.encode(np.concatenate(encoded)) if model.site_standardize else np.concatenate(encoded)
        table = with_latent(table, latent)
    undecodable = [(str(Path(p).relative_to(folder)), reason) for p, reason in skipped]
    return table, sorted(dropped + undecodable)
