"""The compact data pack: the study's images at the detector's resolution, re-encoded, with a sha256 per file.

A pack is what travels to a machine that cannot reach the shared data (a GPU machine takes
at most 64 MiB of a working tree). It keeps the shared data's layout so that every reader
in :mod:`bcfeat.data` reads it unchanged::

    <pack>/pack.json                       settings, per-site scale, totals, sha256 of manifest.csv
    <pack>/manifest.csv                    path, sha256, bytes, kind, width, height, source
    <pack>/README.md                       what the pack is and what it changes
    <pack>/datasets/<dataset>/<class>/<stem>.jpg
    <pack>/masks/<dataset>/<stem>.png      expert masks, at the size of their image

``<pack>`` itself is accepted as a data root (:func:`bcfeat.data.root.resolve_data_root`
reads ``<pack>/datasets``), and the expert masks are found beside the data root as in the
shared folder (``datasets/`` and ``masks/`` side by side).

What a pack changes, and why (issue 13):

- **Which images**: those of the label space (coarse5 by default) on the study's four
  sites. Acevedo-20's other classes (immature granulocytes, erythroblasts, platelets) are
  left out; the study's label-free steps and its common13 benchmark see fewer source images.
- **Resolution**: each site is scaled by one factor, ``min(1, long_side / median long
  side)``, so the typical image's long side is the detector's input size
  (``DetectorConfig.image_size``, 256 px) and no image is enlarged. One factor per site keeps
  the site's magnification uniform: a cell's size in pixels (a cross-lab feature, standardised
  per site) is only rescaled, never distorted image by image. The later stages read less:
  the oracle 64 px (224 px for ``gpu``), the colour/shape baseline 128 px, the cross-lab
  canonical crop puts cells at 56 px.
- **Encoding**: JPEG at ``quality`` with full-resolution colour (4:4:4). Colour edges between
  nucleus and cytoplasm are what the features read; at the same size, 4:2:0 chroma
  subsampling loses more (about 2 dB PSNR on Acevedo-20 crops) than a lower quality does.

Stored JPEG bytes depend on the Pillow/libjpeg version: a pack is verified by its own
sha256s (:func:`verify_pack`), not rebuilt bit for bit elsewhere.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd
from PIL import Image

from bcfeat.data.manifest import sha256_of
from bcfeat import paths
from bcfeat.atomic_io import atomic_folder
from bcfeat.data.images import load_image
from bcfeat.data.labels import check_label_space
from bcfeat.data.registry import locate_dataset, scan_dataset
from bcfeat.data.root import DATASETS_DIR, PACK_INFO, resolve_data_root
from bcfeat.data.sites import SITES

log = logging.getLogger(__name__)

PACK_FORMAT = "bcfeat.pack/1"
PACK_MANIFEST = "manifest.csv"
PACK_README = "README.md"
MASKS_DIR = "masks"
MANIFEST_COLUMNS = ("path", "sha256", "bytes", "kind", "width", "height", "source")
MIB = 1 << 20
# The study's sites (bcfeat.study.common.SITES); the study module is not imported by the data layer.
SUBSAMPLING = {"4:4:4": 0, "4:2:2": 1, "4:2:0": 2}


@dataclass(frozen=True)
class PackConfig:
    """What goes into a pack and how it is encoded.

    Attributes
    ----------
    sites : tuple of str
        Datasets to pack (default: the study's four sites).
    label_space : str
        Only images with a label in this space ("coarse5", "common13"); the study's benchmark
        space by default.
    long_side : int
        Pixels: each site is scaled so its median image's long side is this (never enlarged);
        the detector's input size by default.
    quality : int
        JPEG quality, 1-95. 68 keeps the coarse5 pack of the four shared sites under 48 MiB
        (measured: see ``README.md``, "Data pack").
    subsampling : {"4:4:4", "4:2:2", "4:2:0"}
        JPEG chroma subsampling; 4:4:4 keeps full colour resolution.
    max_mib : float
        The pack's total size limit in MiB; a larger pack is refused, nothing is written.
    """

    sites: tuple[str, ...] = SITES
    label_space: str = "coarse5"
    long_side: int = 256  # the detector's input size (DetectorConfig.image_size; a test checks they agree)
    quality: int = 68
    subsampling: str = "4:4:4"
    max_mib: float = 48.0

    def __post_init__(self) -> None:
        check_label_space(self.label_space)
        if self.label_space is None:
            raise ValueError("a pack needs a label space (coarse5 or common13)")
        if not self.sites:
            raise ValueError("a pack needs at least one site")
        if len(set(self.sites)) != len(self.sites):
            raise ValueError(f"sites named twice: {list(self.sites)}")
        if not 16 <= self.long_side <= 4096:
            raise ValueError(f"long_side must lie in [16, 4096] pixels, got {self.long_side}")
        if not 1 <= self.quality <= 95:
            raise ValueError(f"JPEG quality must lie in [1, 95], got {self.quality}")
        if self.subsampling not in SUBSAMPLING:
            raise ValueError(f"subsampling must be one of {sorted(SUBSAMPLING)}, got {self.subsampling!r}")
        if not self.max_mib > 0:
            raise ValueError(f"max_mib must be > 0, got {self.max_mib}")


@dataclass
class PackSummary:
    """What :func:`write_pack` wrote: the folder, its total size and per-site counts."""

    path: Path
    total_bytes: int
    n_files: int
    sites: dict[str, dict]

    def summary(self) -> str:
        lines = [f"pack {self.path}: {self.n_files} files, {self.total_bytes / MIB:.2f} MiB"]
        lines += [f"  {site}: {info['images']} images (scale {info['scale']:.4f}, "
                  f"{info['image_bytes'] / MIB:.2f} MiB), {info['masks']} masks" for site, info in self.sites.items()]
        return "\n".join(lines)


@dataclass
class PackVerification:
    """Result of :func:`verify_pack`: every file that differs from the pack's manifest, by name."""

    path: Path
    n_expected: int
    n_checked: int
    missing: list[str] = field(default_factory=list)
    altered: list[tuple[str, str]] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.altered or self.unexpected)

    def summary(self) -> str:
        head = "OK" if self.ok else "PROBLEMS"
        lines = [f"pack {self.path}: {head} - {self.n_checked}/{self.n_expected} files present, checked by sha256"]
        for name, items in (("missing", self.missing), ("altered", self.altered), ("unexpected", self.unexpected)):
            lines += [f"  {name}: {i if isinstance(i, str) else f'{i[0]} ({i[1]})'}" for i in items]
        return "\n".join(lines)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()



def site_scale(long_sides: Sequence[int], long_side: int) -> float:
    """One scale factor for a whole site: its median image's long side becomes ``long_side``, never enlarged.

    >>> site_scale([360, 363, 369], 256) == 256 / 363
    True
    >>> site_scale([120, 88], 256)
    1.0
    """
    if not len(long_sides):
        raise ValueError("a site without images has no scale")
    return min(1.0, long_side / float(np.median(long_sides)))


def scaled_size(width: int, height: int, scale: float) -> tuple[int, int]:
    """``(width, height)`` times ``scale``, rounded, at least 1 px.

    >>> scaled_size(360, 363, 256 / 363)
    (254, 256)
    """
    return max(1, round(width * scale)), max(1, round(height * scale))


def encode_image(image: np.ndarray, scale: float, quality: int, subsampling: str) -> bytes:
    """An ``(H, W, 3) uint8`` image, resized by ``scale`` (Lanczos) and JPEG-encoded."""
    picture = Image.fromarray(image)
    if scale < 1.0:
        picture = picture.resize(scaled_size(picture.width, picture.height, scale), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    picture.save(buffer, "JPEG", quality=quality, subsampling=SUBSAMPLING[subsampling], optimize=True)
    return buffer.getvalue()


def _encode_mask(path: Path, scale: float) -> tuple[bytes, tuple[int, int]]:
    """An expert mask at its image's new size: nearest neighbour keeps its three labels (0/128/255)."""
    if scale >= 1.0:
        with Image.open(path) as mask:
            return path.read_bytes(), mask.size
    with Image.open(path) as mask:
        mask.load()
        small = mask.resize(scaled_size(mask.width, mask.height, scale), Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    small.save(buffer, "PNG", optimize=True)
    return buffer.getvalue(), small.size


def default_masks_root(data_root: Path) -> Path:
    """The expert masks beside a data root (``<shared>/datasets`` -> ``<shared>/masks``), else the shared ones."""
    beside = Path(data_root).parent / MASKS_DIR
    return beside if beside.is_dir() else Path(paths.SHARED_MASKS)


def _check_output(output: Path, root: Path) -> None:
    output_abs, root_abs = output.resolve(), root.resolve()
    if output_abs == root_abs or output_abs.is_relative_to(root_abs):
        raise ValueError(f"pack output {output} lies inside the data root {root}; the source data is never written to")
    if root_abs.is_relative_to(output_abs):
        raise ValueError(f"pack output {output} holds the data root {root}; choose another folder")
    if output.exists() and not output.is_dir():
        raise ValueError(f"pack output {output} is a file, not a folder")


def write_pack(output: str | os.PathLike | None = None, root: str | os.PathLike | None = None,
               config: PackConfig = PackConfig(), masks_root: str | os.PathLike | None = None,
               overwrite: bool = False, progress: bool = False) -> PackSummary:
    """Write a pack of ``config.sites`` from the data root ``root`` into the folder ``output``.

    The pack is written into a temporary folder beside ``output`` and renamed when complete
    and within ``config.max_mib``; on any error nothing is left behind.

    Parameters
    ----------
    output : path-like, optional
        The pack folder (default ``bcfeat.paths.PACK``, beside the checkout, never inside it).
    root : path-like, optional
        Data root (resolved as usual when None).
    config : PackConfig
    masks_root : path-like, optional
        Folder of expert masks (default: ``masks/`` beside the data root, else the shared one).
    overwrite : bool
        Replace an existing pack (only once the new one is complete).
    progress : bool
        Show a progress bar.

    Returns
    -------
    PackSummary

    Raises
    ------
    DataRootNotFound, DatasetNotFound
        The data root, or a site in it, is missing (named; checked before any work).
    FileExistsError
        ``output`` exists and ``overwrite`` is False.
    ValueError
        Output inside the data root, or a pack larger than ``config.max_mib``.
    """
    from tqdm import tqdm

    root = resolve_data_root(root)
    output = Path(paths.PACK if output is None else output).expanduser()
    _check_output(output, root)
    if output.exists() and not overwrite:
        raise FileExistsError(f"pack output {output} already exists; pass --overwrite to replace it")
    for site in config.sites:  # every site present before minutes of encoding
        locate_dataset(site, root)
    masks_root = Path(masks_root) if masks_root is not None else default_masks_root(root)
    samples = {site: scan_dataset(site, root, config.label_space).samples for site in config.sites}
    empty = [site for site, table in samples.items() if table.empty]
    if empty:
        raise ValueError(f"no {config.label_space} images in {', '.join(empty)} under {root}")
    total_images = sum(len(t) for t in samples.values())
    rows: list[dict] = []
    sites: dict[str, dict] = {}
    with atomic_folder(output, overwrite=overwrite) as tmp, \
            tqdm(total=total_images, disable=not progress, desc="packing", unit="img") as bar:
        for site, table in samples.items():
            rows_before = len(rows)
            sizes = []
            for path in table["path"]:
                with Image.open(path) as picture:
                    sizes.append(picture.size)
            scale = site_scale([max(w, h) for w, h in sizes], config.long_side)
            new_stem: dict[str, str] = {}
            for (path, rel), (w, h) in zip(zip(table["path"], table["relpath"]), sizes):
                target = PurePosixPath(DATASETS_DIR, site, rel).with_suffix(".jpg")
                if target.as_posix() in new_stem:
                    raise ValueError(f"{site}: two images would both become {target} (same name, other suffix)")
                new_stem[target.as_posix()] = rel
                data = encode_image(load_image(path), scale, config.quality, config.subsampling)
                rows.append(_write_entry(tmp, target, data, "image", scaled_size(w, h, scale), f"{site}/{rel}"))
                bar.update()
            image_bytes = sum(r["bytes"] for r in rows[rows_before:])
            n_masks = 0
            mask_dir = masks_root / site
            if mask_dir.is_dir():
                for rel in table["relpath"]:
                    mask = mask_dir / f"{PurePosixPath(rel).stem}.png"
                    if mask.is_file():
                        data, size = _encode_mask(mask, scale)
                        rows.append(_write_entry(tmp, PurePosixPath(MASKS_DIR, site, mask.name), data, "mask", size,
                                                 f"{MASKS_DIR}/{site}/{mask.name}"))
                        n_masks += 1
            sites[site] = {"images": len(table), "scale": scale, "median_long_side": float(np.median(
                [max(s) for s in sizes])), "image_bytes": image_bytes, "masks": n_masks,
                "classes": {str(k): int(v) for k, v in table["label"].value_counts().sort_index().items()}}
            log.info("%s: %d images at scale %.4f, %d masks", site, len(table), scale, n_masks)
        readme = _readme(config, sites).encode()
        rows.append(_write_entry(tmp, PurePosixPath(PACK_README), readme, "readme", (0, 0), ""))
        manifest = _manifest_bytes(rows)
        (tmp / PACK_MANIFEST).write_bytes(manifest)
        info = {
            "format": PACK_FORMAT,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "bcfeat_version": _version("bcfeat"), "pillow_version": _version("PIL"),
            "settings": asdict(config), "source_data_root": str(root), "sites": sites,
            "n_entries": len(rows), "manifest_sha256": sha256_bytes(manifest),
        }
        (tmp / PACK_INFO).write_text(json.dumps(info, indent=1) + "\n")
        total = sum(p.stat().st_size for p in tmp.rglob("*") if p.is_file())
        if total > config.max_mib * MIB:
            raise ValueError(f"the pack would be {total / MIB:.2f} MiB, over the limit of {config.max_mib:g} MiB "
                             f"(JPEG quality {config.quality}); lower --quality or raise --max-mib. Nothing written.")
    log.info("pack written to %s: %d files, %.2f MiB", output, len(rows) + 2, total / MIB)
    return PackSummary(output, total, len(rows) + 2, sites)


def _write_entry(folder: Path, rel: PurePosixPath, data: bytes, kind: str, size: tuple[int, int],
                 source: str) -> dict:
    path = folder / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return {"path": rel.as_posix(), "sha256": sha256_bytes(data), "bytes": len(data), "kind": kind,
            "width": size[0], "height": size[1], "source": source}


def _manifest_bytes(rows: list[dict]) -> bytes:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(MANIFEST_COLUMNS), lineterminator="\n")
    writer.writeheader()
    writer.writerows(sorted(rows, key=lambda r: r["path"]))
    return buffer.getvalue().encode()


def _version(module: str) -> str:
    import importlib

    return str(getattr(importlib.import_module(module), "__version__", "unknown"))


def _readme(config: PackConfig, sites: dict[str, dict]) -> str:
    lines = [
        "# bcfeat data pack", "",
        f"The {config.label_space} images of {', '.join(sites)}, written by `bcfeat pack`.",
        "Use this folder as a data root (`--root`, `BCFEAT_DATA_ROOT` or a notebook's `data_root`);",
        "check it with `bcfeat verify --root <this folder>` (sha256 of every file, against `manifest.csv`).", "",
        f"What it changes: each site is scaled by one factor so its median image's long side is "
        f"{config.long_side} px (never enlarged), and every image is re-encoded as JPEG quality "
        f"{config.quality}, {config.subsampling}. Expert masks are scaled with their images "
        "(nearest neighbour). File names keep their stem; the suffix becomes `.jpg`.", "",
        "| site | images | scale | masks |", "|---|---|---|---|",
    ]
    lines += [f"| {s} | {i['images']} | {i['scale']:.4f} | {i['masks']} |" for s, i in sites.items()]
    return "\n".join(lines) + "\n"


def read_pack_info(pack: str | os.PathLike) -> dict:
    """The ``pack.json`` of a pack.

    Raises
    ------
    FileNotFoundError
        ``pack`` holds no ``pack.json`` (not a pack).
    ValueError
        A ``pack.json`` of another format.
    """
    path = Path(pack) / PACK_INFO
    if not path.is_file():
        raise FileNotFoundError(f"{pack} is not a bcfeat data pack: no {PACK_INFO}")
    try:
        info = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is damaged: not readable JSON ({error})") from None
    if not isinstance(info, dict):
        raise ValueError(f"{path} is damaged: not a JSON object")
    if info.get("format") != PACK_FORMAT:
        raise ValueError(f"{path}: format {info.get('format')!r}, expected {PACK_FORMAT!r}")
    return info


def verify_pack(pack: str | os.PathLike) -> PackVerification:
    """Recompute the sha256 of every file of a pack and name every file that differs from its manifest.

    ``manifest.csv`` itself is checked against the sha256 recorded in ``pack.json``; files
    the manifest does not list are reported as unexpected.
    """
    pack = Path(pack)
    info = read_pack_info(pack)
    manifest_path = pack / PACK_MANIFEST
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{pack} is a damaged pack: no {PACK_MANIFEST}")
    manifest = manifest_path.read_bytes()
    report = PackVerification(pack, 0, 0)
    if sha256_bytes(manifest) != info.get("manifest_sha256"):
        report.altered.append((PACK_MANIFEST, "sha256 differs from the one in pack.json"))
    try:
        entries = list(csv.DictReader(io.StringIO(manifest.decode())))
        if entries and not {"path", "bytes", "sha256"} <= set(entries[0]):
            raise ValueError(f"columns {sorted(entries[0])} lack path, bytes or sha256")
    except (ValueError, UnicodeDecodeError, csv.Error) as error:
        raise ValueError(f"{manifest_path} is damaged: {error}") from None
    report.n_expected = len(entries)
    listed = {PACK_INFO, PACK_MANIFEST}
    root = pack.resolve()
    for entry in entries:
        rel = str(entry["path"])
        listed.add(rel)
        path = pack / rel
        # an entry must name a file inside the pack: no absolute path, no "..", no link leading out
        if Path(rel).is_absolute() or ".." in Path(rel).parts or not path.resolve().is_relative_to(root):
            report.altered.append((rel, "leaves the pack (absolute path, '..' or a link out of it)"))
            continue
        if not path.is_file():
            report.missing.append(rel)
            continue
        report.n_checked += 1
        size = path.stat().st_size
        if not str(entry["bytes"]).isdigit() or size != int(entry["bytes"]):
            report.altered.append((rel, f"size {size} != {entry['bytes']}"))
        elif sha256_of(path) != entry["sha256"]:
            report.altered.append((rel, "sha256 differs"))
    for path in sorted(pack.rglob("*")):
        rel = path.relative_to(pack).as_posix()
        if not path.is_dir() and rel not in listed:
            report.unexpected.append(rel)
    return report


def pack_effect(per_seed: pd.DataFrame) -> pd.DataFrame:
    """What the pack changes, from ``benchmarks/bench_pack.py``'s per-seed scores.

    ``per_seed`` has ``data`` (``original`` or ``pack``), ``seed``, ``feature_set``, ``test_site``
    and ``balanced_accuracy``. One row per feature set and test site: the mean over seeds on the
    original data and on the pack, the paired pack-minus-original difference (mean and largest),
    the spread between seeds (std over the seeds' scores) and whether the mean difference is
    within the original's spread.

    >>> import pandas as pd
    >>> t = pd.DataFrame({"data": ["original"] * 2 + ["pack"] * 2, "seed": [0, 1, 0, 1],
    ...                   "feature_set": "f", "test_site": "s", "balanced_accuracy": [0.5, 0.7, 0.55, 0.7]})
    >>> pack_effect(t)[["diff_mean", "within_seed_spread"]].round(3).to_dict("records")
    [{'diff_mean': 0.025, 'within_seed_spread': True}]
    """
    wide = per_seed.pivot_table(index=["feature_set", "test_site", "seed"], columns="data",
                                values="balanced_accuracy")
    wide["pack_minus_original"] = wide["pack"] - wide["original"]
    out = wide.groupby(level=[0, 1], sort=False).agg(
        original=("original", "mean"), pack=("pack", "mean"), diff_mean=("pack_minus_original", "mean"),
        diff_max_abs=("pack_minus_original", lambda d: d.abs().max()), seed_std_original=("original", "std"),
        seed_std_pack=("pack", "std"))
    out["within_seed_spread"] = out["diff_mean"].abs() <= out["seed_std_original"]
    return out
