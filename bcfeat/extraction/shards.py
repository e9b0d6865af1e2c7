"""Sharded extraction: `bcfeat extract` over a folder split across processes or machines, then merged.

The sorted file list of a folder (:func:`bcfeat.data.image_folders.folder_images`) is cut
into ``N`` contiguous shards whose boundaries fall on whole batches, and a batch is the
readable images of ``batch_size`` consecutive files, as in the single-process run: every
batch a shard runs is a batch the single-process run runs too (a batch is padded to its
largest image, so batch-mates change a cell's features), and the merged table is identical,
row order and values, to ``bcfeat extract`` without shards, on the same hardware and thread
settings. (A cross-lab model whose masks come from the detector batches the readable images
of the whole call, so an unreadable file can move its later batches; its merged table is
then identical in rows, not necessarily in values. Stain masks are per image: identical.)

Each shard is one ``.npz`` file written atomically into ``<output>.shards/``, tagged with
what made it (model file sha256, layout, batch size, file list, ``N``). A shard also saves
its progress every few batches (``*.partial.npz``), so a killed shard restarts where it
stopped; a finished shard is never recomputed. :func:`merge_shards` checks that all ``N``
shards are present and of the same making before writing the table; the last shard to
finish merges on its own.

Under ``torchrun`` (``RANK`` / ``WORLD_SIZE`` in the environment), ``bcfeat extract`` picks
shard ``RANK + 1`` of ``WORLD_SIZE`` itself.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from bcfeat.data.manifest import sha256_of
from bcfeat.atomic_io import atomic_path
from bcfeat.extraction.table import ROW_COLUMNS, with_latent

log = logging.getLogger(__name__)

SHARD_FORMAT = "bcfeat.extract-shard/1"
_NAME = re.compile(r"^shard-(\d+)-of-(\d+)\.npz$")
# Settings that must agree between shards (the folder's path may differ between machines).
IDENTITY_KEYS = ("format", "model_kind", "model_sha256", "layout", "batch_size", "n_shards", "n_files",
                 "files_sha256")


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` (1-based) of ``count``.

    >>> Shard.parse("2/4")
    Shard(index=2, count=4)
    """

    index: int
    count: int

    def __post_init__(self) -> None:
        if not 1 <= self.index <= self.count:
            raise ValueError(f"shard {self.index}/{self.count}: need 1 <= K <= N")

    @classmethod
    def parse(cls, text: str) -> "Shard":
        """``"K/N"`` -> Shard; a ValueError names the text and the rule."""
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
        if not match:
            raise ValueError(f"--shard {text!r}: expected K/N with whole numbers, e.g. 1/4")
        index, count = int(match.group(1)), int(match.group(2))
        if not 1 <= index <= count:
            raise ValueError(f"--shard {text}: need 1 <= K <= N")
        return cls(index, count)

    @classmethod
    def from_env(cls, env: dict | None = None) -> "Shard | None":
        """The shard of this process under ``torchrun`` (``RANK + 1`` of ``WORLD_SIZE``), or None.

        torchrun is recognised by ``TORCHELASTIC_RUN_ID``, which it sets for every process it
        starts; ``RANK`` and ``WORLD_SIZE`` left in a shell by something else are ignored.
        """
        env = os.environ if env is None else env
        if "TORCHELASTIC_RUN_ID" not in env or "RANK" not in env or "WORLD_SIZE" not in env:
            return None
        world, rank = int(env["WORLD_SIZE"]), int(env["RANK"])
        return cls(rank + 1, world) if world > 1 else None

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def shard_range(n_files: int, unit: int, shard: Shard) -> tuple[int, int]:
    """``[start, stop)`` of shard ``shard`` over ``n_files`` sorted files, on multiples of ``unit``.

    The ``ceil(n_files / unit)`` batches are split into ``count`` contiguous runs as equal as
    possible; a shard may be empty when there are fewer batches than shards.

    >>> [shard_range(10, 2, Shard(k, 3)) for k in (1, 2, 3)]
    [(0, 2), (2, 6), (6, 10)]
    """
    n_batches = -(-n_files // unit)
    first = (shard.index - 1) * n_batches // shard.count
    last = shard.index * n_batches // shard.count
    return min(first * unit, n_files), min(last * unit, n_files)


def shard_folder(output: str | os.PathLike) -> Path:
    """Where the shards of ``output`` live: ``<output>.shards/`` beside it."""
    output = Path(output)
    return output.with_name(output.name + ".shards")


def shard_path(output: str | os.PathLike, shard: Shard) -> Path:
    return shard_folder(output) / f"shard-{shard.index}-of-{shard.count}.npz"


def _partial_path(output: str | os.PathLike, shard: Shard) -> Path:
    return shard_folder(output) / f"shard-{shard.index}-of-{shard.count}.partial.npz"



def _files_digest(files: pd.DataFrame) -> str:
    """sha256 over the relative path and the *content* (sha256) of every file: the same folder on
    any machine, and a different one as soon as any image is replaced, even by one of its size."""
    h = hashlib.sha256()
    for path, rel in zip(files["path"], files["relpath"]):
        h.update(f"{rel}\t{sha256_of(Path(path))}\n".encode())
    return h.hexdigest()


def _arrays_digest(arrays: dict[str, np.ndarray]) -> str:
    """sha256 over every array's name, dtype, shape and bytes (a shard's own checksum)."""
    h = hashlib.sha256()
    for key in sorted(arrays):
        a = np.ascontiguousarray(arrays[key])
        h.update(f"{key}\t{a.dtype.str}\t{a.shape}\n".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _save(path: Path, meta: dict, arrays: dict[str, np.ndarray]) -> None:
    meta = {**meta, "arrays_sha256": _arrays_digest(arrays)}
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, meta=np.asarray(json.dumps(meta, sort_keys=True)), **arrays)


def _load(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """A shard file's metadata and arrays; a damaged file is a ValueError naming it."""
    try:
        with np.load(path, allow_pickle=False) as stored:  # data only: nothing in a shard is executed
            arrays = {key: stored[key] for key in stored.files}
        meta = json.loads(str(arrays.pop("meta")[()]))
    except Exception as error:  # noqa: BLE001 - numpy and zipfile raise many types for a damaged file
        raise ValueError(f"shard file {path} is damaged ({type(error).__name__}: {str(error)[:200]}); "
                         "delete it and run its shard again") from None
    if not isinstance(meta, dict) or meta.get("arrays_sha256") != _arrays_digest(arrays):
        raise ValueError(f"shard file {path} is damaged or was altered: its contents do not match its "
                         "checksum; delete it and run its shard again")
    return meta, arrays


def _strings(values) -> np.ndarray:
    return np.asarray([str(v) for v in values], dtype=str)


@dataclass
class _Job:
    """One shard's inputs: the model, the folder's files, the range to run and the identity tags."""

    kind: str  # "aecfe" or "crosslab"
    model: object
    folder: Path
    files: pd.DataFrame
    dropped: list[tuple[str, str]]
    start: int
    stop: int
    meta: dict


def _prepare(model_path: Path, folder: Path, shard: Shard, layout: str, batch_size: int) -> _Job:
    from bcfeat.data.image_folders import folder_images
    from bcfeat.extractors import open_extractor

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    extractor = open_extractor(model_path)  # read once: the model and its checksum come from the same bytes
    kind, model = extractor.kind, extractor.model
    extractor.check_layout(layout)
    if kind == "crosslab":
        # the detector's batches are the unit a shard must not cut (the stain segmentation is per image)
        unit = model.config.detector_batch_size if model.config.mask_source != "stain" else 1
    else:
        unit = batch_size
    files, dropped = folder_images(folder, layout)
    n_batches = max(1, -(-len(files) // unit))
    if shard.count > n_batches:
        raise ValueError(f"--shard {shard}: {folder} holds {len(files)} images, {n_batches} batch(es) of {unit}; "
                         f"use at most {n_batches} shards")
    start, stop = shard_range(len(files), unit, shard)
    meta = {"format": SHARD_FORMAT, "model_kind": kind, "model_sha256": extractor.sha256,
            "layout": layout, "batch_size": batch_size if kind == "aecfe" else unit, "n_shards": shard.count,
            "n_files": len(files), "files_sha256": _files_digest(files), "shard": shard.index,
            "start": start, "stop": stop, "folder": str(folder), "model": str(model_path)}
    return _Job(kind, model, folder, files, dropped, start, stop, meta)


def _identity(meta: dict) -> dict:
    return {k: meta.get(k) for k in IDENTITY_KEYS}


def extract_shard(model_path: str | os.PathLike, folder: str | os.PathLike, output: str | os.PathLike,
                  shard: Shard, layout: str = "files", batch_size: int = 64, progress: bool = True,
                  checkpoint_every: int = 20, device: str | None = None) -> Path:
    """Extract shard ``shard`` of ``folder`` into ``<output>.shards/shard-K-of-N.npz`` (resumable).

    Parameters
    ----------
    model_path, folder, layout, batch_size
        As for :meth:`bcfeat.extractors.Extractor.extract_folder` (the AE-CFE
        :func:`bcfeat.extraction.folder.extract_with`, or the cross-lab
        :func:`bcfeat.crosslab.folders.measure_folder_table`).
    output : path-like
        The merged table's path; the shard goes into ``<output>.shards/``.
    shard : Shard
    checkpoint_every : int
        Batches between two saves of the shard's progress.
    device : str, optional
        Where an AE-CFE model runs (as :func:`bcfeat.extraction.folder.extract_with`); None: as before.

    Returns
    -------
    Path
        The shard file. An existing shard of the same making is kept, not recomputed.
    """
    folder = Path(folder)
    job = _prepare(Path(model_path), folder, shard, layout, batch_size)
    target, partial = shard_path(output, shard), _partial_path(output, shard)
    if target.is_file():
        meta, _ = _load(target)
        if _identity(meta) == _identity(job.meta):
            log.info("shard %s already complete: %s", shard, target)
            return target
        log.warning("shard file %s was made with other settings; extracting it again", target)
    resume = None
    if partial.is_file():
        meta, arrays = _load(partial)
        if _identity(meta) == _identity(job.meta) and meta.get("shard") == shard.index:
            resume = (meta["position"], arrays)
            log.info("shard %s resumes after %d of %d files", shard, meta["position"], job.stop - job.start)

    def save_partial(position: int, arrays: dict[str, np.ndarray]) -> None:
        _save(partial, {**job.meta, "position": position}, arrays)

    if job.kind == "aecfe":
        arrays = _run_aecfe(job, batch_size, resume, save_partial, checkpoint_every, progress, device)
    else:
        arrays = _run_crosslab(job, batch_size, resume, save_partial, checkpoint_every, progress)
    # the shard's own file range, so that a merge can check every row against it
    arrays["range_relpath"] = _strings(job.files["relpath"].iloc[job.start:job.stop])
    _save(target, job.meta, arrays)
    partial.unlink(missing_ok=True)
    log.info("shard %s written: %s (%d rows)", shard, target, len(arrays["relpath"]))
    return target


def _skipped_arrays(entries: list[tuple[str, str]], prefix: str) -> dict[str, np.ndarray]:
    return {f"{prefix}_path": _strings(p for p, _ in entries), f"{prefix}_reason": _strings(r for _, r in entries)}


def _run_aecfe(job: _Job, batch_size: int, resume, save_partial: Callable, checkpoint_every: int,
               progress: bool, device: str | None = None) -> dict[str, np.ndarray]:
    """The single-process loop of ``extract_folder`` over the shard's files (same batches, same calls)."""
    from tqdm import tqdm

    from bcfeat.data.images import SkippedImages, iter_images
    from bcfeat.extraction.folder import extract_batch, runtime_on

    model, folder = job.model, job.folder
    runtime = runtime_on(model, device, batch_size)
    files = job.files.iloc[job.start:job.stop]
    label_of = dict(zip(files["path"], files["label"]))
    index_of = {str(p): i for i, p in enumerate(files["path"])}  # within the shard, which starts on a batch
    kept = {"relpath": [], "label": [], "fallback": [], "score": []}
    encoded: list[np.ndarray] = []
    undecodable: list[tuple[str, str]] = []
    position = 0
    if resume is not None:
        position, done = resume
        for key in kept:
            kept[key] = list(done[key])
        if len(done["relpath"]):
            encoded.append(done["encoded"])
        undecodable = list(zip(done["undecodable_path"].tolist(), done["undecodable_reason"].tolist()))
    skipped = SkippedImages()
    batch: list[tuple[str, np.ndarray]] = []
    n_flushes = 0

    def arrays_so_far() -> dict[str, np.ndarray]:
        undec = undecodable + [(str(Path(p).relative_to(folder)), reason) for p, reason in skipped]
        out = {"relpath": _strings(kept["relpath"]), "label": _strings(kept["label"]),
               "fallback": np.asarray(kept["fallback"], dtype=bool),
               "score": np.asarray(kept["score"], dtype=np.float64), **_skipped_arrays(undec, "undecodable"),
               **_skipped_arrays(job.dropped, "dropped")}
        if encoded:
            out["encoded"] = np.concatenate(encoded)
        return out

    def flush() -> None:
        # a site-standardised model's features stay raw: the merge encodes them all at once
        rows, features = extract_batch(model, batch, folder, label_of, runtime)
        for row in rows:
            for key in ROW_COLUMNS:
                kept[key].append(row[key])
        encoded.append(features)
        batch.clear()

    paths = files["path"].tolist()[position:]
    for path, image in tqdm(iter_images(paths, skipped), total=len(paths), disable=not progress,
                            desc=f"extracting shard {job.meta['shard']}/{job.meta['n_shards']}", unit="img"):
        # batches of batch_size consecutive files, as extract_folder (the shard starts on a batch)
        here = index_of[str(path)]
        if batch and here // batch_size != index_of[batch[0][0]] // batch_size:
            flush()
            n_flushes += 1
            if n_flushes % checkpoint_every == 0:  # every file before this one is done (or skipped)
                save_partial(here, arrays_so_far())
        batch.append((str(path), image))
    if batch:
        flush()
    return arrays_so_far()


def _run_crosslab(job: _Job, batch_size: int, resume, save_partial: Callable, checkpoint_every: int,
                  progress: bool) -> dict[str, np.ndarray]:
    """``CrossLabModel.measure`` over the shard's files in whole detector batches."""
    from bcfeat.data.images import SkippedImages

    model, folder = job.model, job.folder
    files = job.files.iloc[job.start:job.stop].reset_index(drop=True)
    unit = job.meta["batch_size"]
    chunk = max(unit, 256 // unit * unit)
    relpaths: list[str] = []
    features: list[np.ndarray] = []
    undecodable: list[tuple[str, str]] = []
    found: list[bool] = []  # per row: a cell was found (False: the centred fallback mask)
    position = 0
    if resume is not None:
        position, done = resume
        relpaths = done["relpath"].tolist()
        features = [done["encoded"]] if len(relpaths) else []
        undecodable = list(zip(done["undecodable_path"].tolist(), done["undecodable_reason"].tolist()))
        found = done["cell_found"].tolist() if "cell_found" in done else [True] * len(relpaths)

    def arrays_so_far() -> dict[str, np.ndarray]:
        out = {"relpath": _strings(relpaths), **_skipped_arrays(undecodable, "undecodable"),
               **_skipped_arrays(job.dropped, "dropped"), "feature_names": _strings(model.feature_names),
               "cell_found": np.asarray(found, bool)}
        if features:
            out["encoded"] = np.concatenate(features)
        return out

    for n, begin in enumerate(range(position, len(files), chunk), start=1):
        part = files.iloc[begin:begin + chunk]
        skipped = SkippedImages()
        feats, kept = model.measure(part["path"].tolist(), skipped, found=found)
        relpaths += part["relpath"].iloc[kept].tolist()
        if len(kept):
            features.append(feats)
        undecodable += [(str(Path(p).relative_to(folder)) if Path(p).is_absolute() else str(p), reason)
                        for p, reason in skipped]
        if progress:
            log.info("shard %s: %d/%d files", job.meta["shard"], min(begin + chunk, len(files)), len(files))
        if n % checkpoint_every == 0 and begin + chunk < len(files):
            save_partial(begin + chunk, arrays_so_far())
    return arrays_so_far()


def shard_status(output: str | os.PathLike) -> tuple[dict[int, tuple[Path, dict]], set[int]]:
    """The finished shards of ``output`` (``{K: (path, meta)}``) and their common ``N`` values."""
    folder = shard_folder(output)
    if not folder.is_dir():
        raise FileNotFoundError(f"no shards of {output}: {folder} does not exist "
                                f"(run `bcfeat extract ... --output {output} --shard K/N` first)")
    found: dict[int, tuple[Path, dict]] = {}
    counts: set[int] = set()
    for path in sorted(folder.iterdir()):
        match = _NAME.match(path.name)
        if not match:
            continue
        meta, _ = _load(path)
        index, count = int(match.group(1)), int(match.group(2))
        if meta.get("format") != SHARD_FORMAT or meta.get("shard") != index or meta.get("n_shards") != count:
            raise ValueError(f"{path} is not a shard file of this name (format {meta.get('format')!r}, "
                             f"shard {meta.get('shard')}/{meta.get('n_shards')})")
        found[index] = (path, meta)
        counts.add(count)
    return found, counts


def _check_part(path: Path, meta: dict, part: dict[str, np.ndarray], start: int) -> int:
    """Check one shard's rows against its own file range and the previous shard's end; return its end.

    Every row must be a file of the shard's range, in order, once; rows and unreadable files
    together must be the whole range; every per-row array must have one entry per row."""
    where = f"shard file {path}"
    if "range_relpath" not in part:
        raise ValueError(f"{where} has no file range (written by an older bcfeat); run its shard again")
    expected = [str(r) for r in part["range_relpath"]]
    if meta.get("start") != start or meta.get("stop") != start + len(expected):
        raise ValueError(f"{where} covers files {meta.get('start')}..{meta.get('stop')}, expected to start at "
                         f"{start} with {len(expected)} files; the shards do not fit together")
    rows = [str(r) for r in part["relpath"]]
    position = {rel: i for i, rel in enumerate(expected)}
    order = [position.get(rel, -1) for rel in rows]
    if -1 in order:
        raise ValueError(f"{where} holds a row for {rows[order.index(-1)]!r}, which is not one of its files")
    if order != sorted(set(order)):
        raise ValueError(f"{where} holds its rows out of order or twice")
    unreadable = {str(p) for p in part["undecodable_path"]}
    if len(rows) + len(unreadable) != len(expected) or unreadable & set(rows):
        raise ValueError(f"{where}: {len(rows)} rows and {len(unreadable)} unreadable files do not make up its "
                         f"{len(expected)} files")
    lengths = {key: len(part[key]) for key in ("encoded", "label", "fallback", "score", "cell_found") if key in part}
    if ("encoded" not in part and rows) or any(n != len(rows) for n in lengths.values()):
        raise ValueError(f"{where} has {len(rows)} rows but arrays of lengths {lengths}")
    return start + len(expected)


def all_shards_present(output: str | os.PathLike) -> bool:
    """True when ``<output>.shards/`` holds shards 1..N of one N (nothing else is checked)."""
    try:
        found, counts = shard_status(output)
    except (FileNotFoundError, ValueError):
        return False
    return len(counts) == 1 and set(found) == set(range(1, next(iter(counts)) + 1))


def merge_shards(output: str | os.PathLike, n_shards: int | None = None,
                 model_path: str | os.PathLike | None = None, cell_found: bool = False
                 ) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    """The merged table of ``<output>.shards/``, identical to a single-process ``extract_folder``.

    Parameters
    ----------
    output : path-like
        The table the shards were made for.
    n_shards : int, optional
        The ``N`` expected (default: the one the shard files carry).
    model_path : path-like, optional
        The model file, needed only for a site-standardised AE-CFE model (the merge encodes the
        whole folder at once); default: the path the shards recorded. Its sha256 must match.
    cell_found : bool
        For a cross-lab model's shards: add the column ``cell_found`` (whether a cell was found
        in the image, as :func:`bcfeat.crosslab.folders.classify_folder` needs it).

    Returns
    -------
    (pd.DataFrame, list of (str, str))
        The table and the ``(relpath, reason)`` of every file without a row, sorted.

    Raises
    ------
    ValueError
        Shards missing (named), of different ``N``, or made from another model, folder,
        layout or batch size (named).
    """
    found, counts = shard_status(output)
    if not found:
        raise FileNotFoundError(f"no shard files in {shard_folder(output)}")
    if len(counts) > 1:
        raise ValueError(f"{shard_folder(output)} mixes shards of different counts N = "
                         f"{', '.join(map(str, sorted(counts)))}; remove the stale ones")
    count = next(iter(counts))
    if n_shards is not None and n_shards != count:
        raise ValueError(f"expected {n_shards} shards, the shard files say N = {count}")
    missing = [k for k in range(1, count + 1) if k not in found]
    if missing:
        unfinished = [k for k in missing if _partial_path(output, Shard(k, count)).is_file()]
        raise ValueError(f"missing shard(s) {', '.join(f'{k}/{count}' for k in missing)} in {shard_folder(output)}"
                         + (f" ({', '.join(f'{k}/{count}' for k in unfinished)} unfinished)" if unfinished else "")
                         + "; run them before merging")
    reference = _identity(found[1][1])
    for k in range(2, count + 1):
        differs = [key for key, value in _identity(found[k][1]).items() if reference[key] != value]
        if differs:
            raise ValueError(f"shard {k}/{count} was made differently from shard 1/{count} "
                             f"({', '.join(differs)} differ{'s' if len(differs) == 1 else ''}); "
                             "extract every shard with the same model, folder and settings")
    parts = [_load(found[k][0])[1] for k in range(1, count + 1)]
    previous_stop = 0
    for k, part in enumerate(parts, start=1):
        previous_stop = _check_part(found[k][0], found[k][1], part, previous_stop)
    if previous_stop != reference["n_files"]:
        raise ValueError(f"the shards in {shard_folder(output)} cover {previous_stop} of the folder's "
                         f"{reference['n_files']} files; extract them again")
    meta = found[1][1]
    skipped = [(str(p), str(r)) for p, r in zip(parts[0]["dropped_path"], parts[0]["dropped_reason"])]
    for part in parts:
        skipped += [(str(p), str(r)) for p, r in zip(part["undecodable_path"], part["undecodable_reason"])]
    relpaths = [str(r) for part in parts for r in part["relpath"]]
    encoded = [part["encoded"] for part in parts if "encoded" in part]
    if meta["model_kind"] == "crosslab":
        names = [str(n) for n in parts[0]["feature_names"]]
        feats = np.concatenate(encoded) if encoded else np.zeros((0, len(names)))
        table = pd.concat([pd.DataFrame({"relpath": relpaths}), pd.DataFrame(feats, columns=names)], axis=1)
        if cell_found:
            table.insert(1, "cell_found", np.concatenate(
                [part["cell_found"] if "cell_found" in part else np.ones(len(part["relpath"]), bool)
                 for part in parts]).astype(bool))
        return table, sorted(skipped)
    if not relpaths:
        return pd.DataFrame([], columns=ROW_COLUMNS), sorted(skipped)
    table = pd.DataFrame({"relpath": relpaths, "label": [str(x) for part in parts for x in part["label"]],
                          "fallback": [bool(x) for part in parts for x in part["fallback"]],
                          "score": [float(x) for part in parts for x in part["score"]]}, columns=ROW_COLUMNS)
    latent = np.concatenate(encoded)
    if latent.ndim > 2:  # site-standardised: the single-process run encodes the whole folder at once
        model_path = Path(meta["model"] if model_path is None else model_path)
        if not model_path.is_file():
            raise FileNotFoundError(f"the merge of a site-standardised model's shards needs its model file: "
                                    f"{model_path} does not exist (give it with --model)")
        from bcfeat.extractors import open_extractor

        extractor = open_extractor(model_path)
        if extractor.sha256 != meta["model_sha256"]:
            raise ValueError(f"{model_path} is not the model file the shards were made with (sha256 differs)")
        latent = extractor.model.encode(latent)
    return with_latent(table, latent), sorted(skipped)
