"""Downloading the public dataset archives (standard library HTTP only).

For users with internet access: ``bcfeat download pbc_acevedo20`` fetches the
public archive into ``bcfeat.paths.DOWNLOADED_DATA`` (``<repo>/data``, which
:func:`bcfeat.data.resolve_data_root` then finds). Transfers resume from a
``.part`` file with HTTP Range requests, are checked against a sha256 when one
is known, and are renamed into place only when complete; archives are
extracted into a temporary folder beside the target and renamed into place
only when extraction finished, so a half-written dataset is never left where
the scanner would find it.

Checksums: none of the providers publishes a sha256 for these archives
(GitHub even regenerates its zip archives), so ``sha256`` is None for all of
them and the archive's digest is logged after download for you to record.
The staged subsets are verified file by file with ``bcfeat verify`` instead.

The cache heals itself: an archive in ``<data_dir>/.downloads`` is reused only when it
came from the same URL, it is discarded as soon as it fails a check (not an archive,
unsafe member paths, no release folder inside), and ``force=True`` always fetches anew.

Why not ``pooch``: pooch does hash-checked, cached downloads with archive processors,
but it restarts an interrupted transfer from zero (no HTTP ``Range`` resume), which is
what matters for the multi-hundred-megabyte archives here on a flaky link, and its
processors unpack in place rather than into a temporary folder renamed into place when
complete. This module is kept for those two things; it uses only the standard library.
"""

from __future__ import annotations

import http.client
import logging
import os
import re
import shutil
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from bcfeat.data.manifest import sha256_of
from bcfeat import paths
from bcfeat.atomic_io import write_text

logger = logging.getLogger(__name__)

USER_AGENT = "bcfeat-download/0.1 (+https://github.com; python-urllib)"


class DownloadError(RuntimeError):
    """A transfer failed for good (after retries) or the server refused it."""


class ChecksumMismatch(DownloadError, ValueError):
    """The downloaded bytes do not have the expected sha256; nothing was kept."""


class DownloadUnavailable(DownloadError):
    """The dataset has no direct download; the message says how to get it."""


class _ShortTransfer(OSError):
    """The connection ended before Content-Length bytes arrived."""


@dataclass(frozen=True)
class DatasetSource:
    """Where a dataset's public archive lives.

    Attributes
    ----------
    url : str or None
        Direct archive URL; None when the provider needs its own client.
    sha256 : str or None
        Published digest of the archive; None when the provider publishes none.
    archive_name : str
        File name of the downloaded archive.
    release_folder : str
        Top folder inside the archive, moved to ``<data_dir>/<release_folder>``.
    note : str
        What the archive holds and how it relates to the staged dataset.
    """

    url: str | None
    sha256: str | None
    archive_name: str
    release_folder: str
    note: str = ""


_ZHENG = DatasetSource(
    url="https://github.com/zxaoyou/segmentation_WBC/archive/refs/heads/master.zip",
    sha256=None,  # GitHub archives have no stable published digest
    archive_name="segmentation_WBC-master.zip",
    release_folder="segmentation_WBC-master",
    note=(
        "Zheng et al. 2018 (GitHub zxaoyou/segmentation_WBC): 'Dataset 1' (300, Jiangxi Tecom) and "
        "'Dataset 2' (100, CellaVision blog) BMPs with expert masks and 'Class Labels of Dataset N.csv'; "
        "read directly by the zheng18_release layout."
    ),
)

SOURCES: dict[str, DatasetSource] = {
    "pbc_acevedo20": DatasetSource(
        url=(
            "https://data.mendeley.com/public-files/datasets/snkd93bnjr/files/"
            "2fc38728-2ae7-4a62-a857-032af82334c3/file_downloaded"
        ),
        sha256=None,  # Mendeley Data publishes no digest for PBC_dataset_normal_DIB.zip
        archive_name="PBC_dataset_normal_DIB.zip",
        release_folder="PBC_dataset_normal_DIB",
        note=(
            "Acevedo et al. 2020, Mendeley Data doi:10.17632/snkd93bnjr.1, CC BY 4.0: all 17,092 images "
            "(the staged pbc_acevedo20 is a fixed class-stratified half of them)."
        ),
    ),
    "jtsc_zheng18": _ZHENG,
    "cellavision_zheng18": _ZHENG,
    "bccd_crops": DatasetSource(
        url="https://github.com/Shenggan/BCCD_Dataset/archive/refs/heads/master.zip",
        sha256=None,
        archive_name="BCCD_Dataset-master.zip",
        release_folder="BCCD_Dataset-master",
        note=(
            "BCCD (MIT licence): whole 640x480 smear photographs with VOC boxes and dataset-master/labels.csv. "
            "It does not contain the one-white-cell crops of bccd_crops (Banik et al. 2020 cropped them; "
            "their repository ParthaPratimBanik/An-Automatic-Nucleus-Segmentation-and-CNN-Model-based-"
            "Classification-Method-of-White-Blood-Cell, folder wbc_nucleus_seg_localz/BCCD_seg_cropped_img): "
            "arrange those crops as bccd_crops/<class>/<file>.png to use them."
        ),
    ),
    "matek19": DatasetSource(
        url=None,
        sha256=None,
        archive_name="AML-Cytomorphology_LMU.zip",
        release_folder="AML-Cytomorphology_LMU",
        note=(
            "Matek-19 (AML-Cytomorphology_LMU, 18,365 TIFFs) is distributed by The Cancer Imaging Archive "
            "and needs TCIA's NBIA Data Retriever: open "
            "https://www.cancerimagingarchive.net/collection/aml-cytomorphology_lmu/, download the .tcia "
            "manifest, run it with the NBIA Data Retriever, and place (or link) the resulting "
            "AML-Cytomorphology_LMU/ folder (class-code sub-folders BAS/, NGS/, ...) under your data root, "
            "or pass --url with a direct archive URL you have."
        ),
    ),
    "mll23": DatasetSource(
        url=None,
        sha256=None,
        archive_name="MLL23.zip",
        release_folder="MLL23",
        note=(
            "MLL23 has no direct public archive URL known to bcfeat: obtain it from its authors' release and "
            "place the folder with the numbered class folders (01-NORMO/, 13-MYBL/, ...) under your data "
            "root as mll23/ or MLL23/, or pass --url with a direct archive URL."
        ),
    ),
}


def _parse_content_range(value: str | None) -> tuple[int | None, int | None]:
    """``"bytes 100-199/1000"`` -> (100, 1000); ``"bytes */1000"`` -> (None, 1000)."""
    if not value:
        return None, None
    m = re.match(r"\s*bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)", value)
    if not m:
        return None, None
    start = int(m.group(1)) if m.group(1) is not None else None
    total = int(m.group(2)) if m.group(2) != "*" else None
    return start, total



class _Progress:
    """tqdm bar (progress=True), a callback ``(done, total)``, or nothing."""

    def __init__(self, progress: bool | Callable[[int, int | None], None], desc: str):
        self.callback = progress if callable(progress) else None
        self.enabled = progress is True
        self.desc = desc
        self.bar = None

    def start(self, done: int, total: int | None) -> None:
        if self.enabled:
            from tqdm import tqdm

            if self.bar is not None:
                self.bar.close()
            self.bar = tqdm(
                total=total, initial=done, unit="B", unit_scale=True, unit_divisor=1024, desc=self.desc, file=sys.stderr
            )
        if self.callback:
            self.callback(done, total)

    def update(self, n: int, done: int, total: int | None) -> None:
        if self.bar is not None:
            self.bar.update(n)
        if self.callback:
            self.callback(done, total)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def download_file(
    url: str,
    dest: str | os.PathLike,
    sha256: str | None = None,
    progress: bool | Callable[[int, int | None], None] = True,
    *,
    retries: int = 5,
    timeout: float = 60.0,
    backoff: float = 1.0,
    chunk_size: int = 1 << 16,
) -> Path:
    """Download ``url`` to ``dest``, resuming, verifying and renaming atomically.

    Bytes go to ``<dest>.part``. A broken connection is retried up to
    ``retries`` times, each retry asking only for the missing bytes (HTTP
    ``Range``); a server that ignores Range sends the whole file again and the
    part file is restarted. A ``.part`` left by an earlier, interrupted run is
    resumed the same way. When complete, the sha256 is checked (if given) and
    the part file is renamed to ``dest`` in one step.

    Parameters
    ----------
    url : str
        An ``http://`` or ``https://`` URL.
    dest : path-like
        Final file path; its folder is created.
    sha256 : str, optional
        Expected hex digest. On mismatch the part file is deleted and
        :class:`ChecksumMismatch` is raised; ``dest`` is not created.
    progress : bool or callable
        True: a tqdm bar on stderr; a callable receives ``(bytes_done, total_or_None)``.
    retries : int
        Attempts after the first one, for connection errors and short transfers.
    timeout : float
        Socket timeout in seconds.
    backoff : float
        Seconds before the first retry, doubled each time (capped at 30 s).
    chunk_size : int
        Bytes per read.

    Returns
    -------
    Path
        ``dest``. An existing ``dest`` whose digest matches (or with no digest
        given) is returned without downloading.
    """
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme not in ("http", "https"):
        raise ValueError(f"only http(s) URLs can be downloaded, got {url!r}")
    dest = Path(dest)
    expected = sha256.lower() if sha256 else None
    if dest.is_file() and (expected is None or sha256_of(dest) == expected):
        logger.info("%s already present, not downloading", dest)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    bar = _Progress(progress, dest.name)
    # a fresh opener per call reads the proxy settings of the environment now,
    # not those cached by urllib's module-level opener at its first use
    opener = urllib.request.build_opener()
    failures = 0
    try:
        while True:
            have = part.stat().st_size if part.exists() else 0
            headers = {"User-Agent": USER_AGENT}
            if have:
                headers["Range"] = f"bytes={have}-"
            try:
                with opener.open(urllib.request.Request(url, headers=headers), timeout=timeout) as resp:
                    start, total = _parse_content_range(resp.headers.get("Content-Range"))
                    if have and resp.status == 206 and start == have:
                        mode = "ab"
                    else:
                        # server ignored Range (200) or answered another range: start over
                        mode, have = "wb", 0
                        length = resp.headers.get("Content-Length")
                        total = int(length) if length and length.isdigit() else None
                    bar.start(have, total)
                    with open(part, mode) as f:
                        while chunk := resp.read(chunk_size):
                            f.write(chunk)
                            have += len(chunk)
                            bar.update(len(chunk), have, total)
                        f.flush()
                        os.fsync(f.fileno())
                    if total is not None and have < total:
                        raise _ShortTransfer(f"connection closed after {have} of {total} bytes")
                break
            except urllib.error.HTTPError as e:
                if e.code == 416 and have:
                    # nothing left to send: the part file may already be complete
                    _, total = _parse_content_range(e.headers.get("Content-Range"))
                    if total == have:
                        break
                    part.unlink(missing_ok=True)  # larger or unknown: it is not this file
                    failures += 1
                elif e.code >= 500 or e.code == 429:
                    failures += 1
                else:
                    raise DownloadError(f"HTTP {e.code} {e.reason} for {url}") from e
                if failures > retries:
                    raise DownloadError(f"HTTP {e.code} for {url} after {retries} retries") from e
            except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
                failures += 1
                if failures > retries:
                    raise DownloadError(
                        f"download of {url} failed after {retries} retries: {e}; "
                        f"the partial file {part} is kept: run again to resume"
                    ) from e
                logger.warning("download of %s interrupted (%s); resuming (retry %d/%d)", url, e, failures, retries)
            time.sleep(min(backoff * 2 ** (failures - 1), 30.0))
    finally:
        bar.close()

    if expected is not None:
        actual = sha256_of(part)
        if actual != expected:
            part.unlink(missing_ok=True)
            raise ChecksumMismatch(f"sha256 of {url} is {actual}, expected {expected}; the download was deleted")
    os.replace(part, dest)
    return dest


def _safe_member(name: str) -> bool:
    p = PurePosixPath(name.replace("\\", "/"))
    return not p.is_absolute() and ".." not in p.parts and not re.match(r"^[A-Za-z]:", name)


def extract_archive(archive: str | os.PathLike, dest: str | os.PathLike) -> None:
    """Extract a zip or tar archive into ``dest``, refusing paths that escape it."""
    archive, dest = Path(archive), Path(dest)
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as z:
            bad = [n for n in z.namelist() if not _safe_member(n)]
            if bad:
                raise DownloadError(f"archive {archive} has unsafe member paths, e.g. {bad[0]!r}")
            z.extractall(dest)
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as t:
            t.extractall(dest, filter="data")  # rejects absolute paths, "..", device files, escaping links
    else:
        raise DownloadError(f"{archive} is neither a zip nor a tar archive (an error page instead of the data?)")


def _find_folder(tree: Path, name: str) -> Path | None:
    """The shallowest folder called ``name`` below ``tree`` (macOS ``__MACOSX`` ignored)."""
    for depth in range(4):
        hits = sorted(p for p in tree.glob("/".join(["*"] * (depth + 1))) if p.is_dir() and p.name == name and "__MACOSX" not in p.parts)
        if hits:
            return hits[0]
    return None


def _part(archive: Path) -> Path:
    return archive.with_name(archive.name + ".part")


def _discard(archive: Path) -> None:
    """Remove a cached archive, its partial download and its origin record."""
    for path in (archive, _part(archive), archive.with_name(archive.name + ".url")):
        path.unlink(missing_ok=True)


def download_dataset(
    name: str,
    data_dir: str | os.PathLike | None = None,
    *,
    url: str | None = None,
    sha256: str | None = None,
    progress: bool | Callable[[int, int | None], None] = True,
    force: bool = False,
    keep_archive: bool = False,
) -> Path:
    """Download and extract a dataset's public archive into ``data_dir``.

    Parameters
    ----------
    name : str
        A key of ``SOURCES`` (the dataset names of ``bcfeat.data.DATASETS``).
    data_dir : path-like, optional
        Data root to fill; ``bcfeat.paths.DOWNLOADED_DATA`` by default.
    url, sha256 : str, optional
        Override the archive URL (e.g. a mirror) and its expected digest.
    progress : bool or callable
        See :func:`download_file`.
    force : bool
        Fetch the archive again (never from the cache) and replace an existing release folder.
    keep_archive : bool
        Keep the downloaded archive in ``<data_dir>/.downloads`` after extraction.

    Returns
    -------
    Path
        ``<data_dir>/<release_folder>``, e.g. ``data/PBC_dataset_normal_DIB``.

    Raises
    ------
    DownloadUnavailable
        For datasets without a direct download (Matek-19, MLL23) unless ``url`` is given.
    ChecksumMismatch, DownloadError
        On a failed transfer; nothing is left at the target.
    """
    try:
        source = SOURCES[name]
    except KeyError:
        raise KeyError(f"no download known for {name!r}; known: {sorted(SOURCES)}") from None
    url = url or source.url
    if url is None:
        raise DownloadUnavailable(f"{name} cannot be downloaded directly. {source.note}")
    data_dir = Path(paths.DOWNLOADED_DATA if data_dir is None else data_dir)
    target = data_dir / source.release_folder
    if target.is_dir() and any(target.iterdir()) and not force:
        logger.info("%s is already in place at %s (use force=True to replace it)", name, target)
        return target
    data_dir.mkdir(parents=True, exist_ok=True)
    archive = data_dir / ".downloads" / source.archive_name
    origin = archive.with_name(archive.name + ".url")  # where the cached archive (or .part) came from
    cached_from = origin.read_text().strip() if origin.is_file() else None
    if force or (cached_from != url and (archive.exists() or _part(archive).exists())):
        if archive.exists() or _part(archive).exists():
            logger.info("%s: discarding the cached archive %s (%s)", name, archive,
                     "force" if force else f"it came from {cached_from or 'an unknown URL'}, not {url}")
        _discard(archive)
    archive.parent.mkdir(parents=True, exist_ok=True)
    write_text(url + "\n", origin)
    expected = sha256 or source.sha256
    try:
        download_file(url, archive, sha256=expected, progress=progress)
    except ChecksumMismatch:
        _discard(archive)
        raise
    if expected is None:
        logger.warning(
            "%s: no published sha256 for %s; integrity of the archive is not verified "
            "(its sha256 is %s; `bcfeat verify` checks files listed in a manifest)",
            name, url, sha256_of(archive),
        )

    tmp = Path(tempfile.mkdtemp(prefix=f".{source.release_folder}.", suffix=".extracting", dir=data_dir))
    try:
        try:
            extract_archive(archive, tmp)
        except (DownloadError, zipfile.BadZipFile, tarfile.TarError, EOFError) as e:
            _discard(archive)  # a broken archive must not be "resumed" or reused next time
            raise DownloadError(f"could not extract {archive} from {url}: {e}; the archive was discarded") from e
        found = _find_folder(tmp, source.release_folder)
        if found is None:
            # one wrapping archive (some providers zip the zip): extract it and look again
            inner = sorted(p for p in tmp.rglob("*") if p.is_file() and (zipfile.is_zipfile(p) or tarfile.is_tarfile(p)))
            if len(inner) == 1:
                extract_archive(inner[0], tmp / ".inner")
                found = _find_folder(tmp / ".inner", source.release_folder)
        if found is None:
            tops = sorted(p.name for p in tmp.iterdir())
            _discard(archive)  # not the dataset: the next run (e.g. with the right --url) must fetch again
            raise DownloadError(f"archive {archive} from {url} has no folder {source.release_folder!r}; its top "
                                f"level holds {tops}; the archive was discarded")
        if target.exists():  # force: move the old copy aside first, delete it with tmp
            os.rename(target, tmp / ".replaced")
        os.rename(found, target)  # same file system (tmp is beside target): atomic
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if not keep_archive:
        _discard(archive)
    if source.note:
        logger.info("%s: %s", name, source.note)
    return target
