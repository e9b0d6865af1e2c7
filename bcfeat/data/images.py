"""Reading single-cell images of any format the datasets use into one array type.

Every image enters the pipeline as an ``(H, W, 3) uint8`` RGB array, whatever
its file format (JPEG, BMP, PNG, TIFF), bit depth or colour mode. Conversions:

- alpha (RGBA, LA, palette with transparency): composited on white, the colour
  of an empty smear background under bright-field light, so transparent
  padding looks like background instead of black. Opaque pixels are unchanged;
  Matek-19's RGBA TIFFs are fully opaque, so for them this only drops alpha.
- grayscale and palette images: expanded to three equal / looked-up channels.
- 16-bit samples: mapped to 8 bit by their high byte (``v >> 8``), which is what
  Pillow itself does for 16-bit RGB(A) PNG and TIFF; grayscale 16-bit gets the
  same rule here so all 16-bit inputs agree.
- float samples: values in [0, 1] are scaled by 255, larger ones are clipped to 255.
- multi-frame files: the first frame.

A file that cannot be decoded completely (empty, truncated, garbage) raises
:class:`ImageDecodeError` naming the file; :func:`iter_images` turns such
errors into counted skips so a long run never dies halfway.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFile

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"})

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
# One size limit for every decoder (Pillow, tifffile, nvJPEG) and for arrays, checked on the
# header before any pixel is decoded: more pixels than Pillow's own decompression-bomb warning
# (about 9460 x 9460) is no single-cell image, and fewer than MIN_SIDE pixels a side leaves
# nothing to segment.
MAX_PIXELS = 89_478_485
MIN_SIDE = 8
# Pillow's "load what you can" switch is a module global; when another library
# turned it on, it is forced off while we decode, under a lock so two threads do
# not restore each other's value.
_TRUNCATION_LOCK = threading.Lock()


class ImageDecodeError(ValueError):
    """An image file could not be decoded completely; the message names the file."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"cannot decode image {self.path}: {reason}")


class ImageSizeError(ImageDecodeError):
    """An image too large to decode safely, or too small to hold a cell; the message names it."""


def size_problem(width: int, height: int, min_side: int = 1) -> str | None:
    """Why an image of ``width`` x ``height`` pixels is refused, or None: more than
    :data:`MAX_PIXELS`, or (for a cell image, ``min_side=MIN_SIDE``) too small to segment.

    >>> size_problem(360, 363) is None, size_problem(1, 1, MIN_SIDE), size_problem(20000, 20000)[:30]
    (True, '1x1 px: fewer than 8 px a side', '20000x20000 px = 400,000,000 p')
    """
    if width * height > MAX_PIXELS:
        return f"{width}x{height} px = {width * height:,} pixels, more than the limit of {MAX_PIXELS:,}"
    if min(width, height) < min_side:
        return f"{width}x{height} px: fewer than {min_side} px a side"
    return None


def _identified_size(path: str | os.PathLike) -> tuple[int, int] | None:
    """``(width, height)`` from the header, None where Pillow cannot identify the file; a
    decompression bomb raises Pillow's error."""
    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, ValueError, SyntaxError, EOFError):
        return None


def header_size(path: str | os.PathLike) -> tuple[int, int] | None:
    """``(width, height)`` from an image file's header (nothing decoded); None where Pillow cannot
    read the header (not an image, truncated, or a decompression bomb)."""
    try:
        return _identified_size(path)
    except Image.DecompressionBombError:
        return None


def check_image_file_size(path: str | os.PathLike) -> None:
    """Refuse a file whose header declares a size outside the limits (:func:`size_problem`),
    reading the header only. Files Pillow cannot identify are left to the decoder."""
    try:
        size = _identified_size(path)
    except Image.DecompressionBombError as error:
        raise ImageSizeError(path, str(error)) from error
    if size is None:
        return
    problem = size_problem(*size)
    if problem:
        raise ImageSizeError(path, problem)


def _to_uint8(a: np.ndarray) -> np.ndarray:
    """Map integer or float samples of any depth to uint8 (see module docstring)."""
    if a.dtype == np.uint8:
        return a
    if a.dtype == np.bool_:
        return a.astype(np.uint8) * 255
    if np.issubdtype(a.dtype, np.floating):
        a = np.nan_to_num(a.astype(np.float64), nan=0.0, posinf=255.0, neginf=0.0)
        scale = 255.0 if a.size and a.max() <= 1.0 else 1.0
        return np.clip(np.rint(a * scale), 0, 255).astype(np.uint8)
    if np.issubdtype(a.dtype, np.integer):
        if a.dtype.itemsize == 1:  # int8
            return np.clip(a, 0, 255).astype(np.uint8)
        if a.dtype.itemsize == 2 or (a.size and 0 <= a.min() and a.max() <= 0xFFFF):
            # 16-bit data (also 16-bit PNG gray that older Pillow hands back as 32-bit "I")
            return (np.clip(a, 0, 0xFFFF).astype(np.uint32) >> 8).astype(np.uint8)
        return (np.clip(a, 0, 0xFFFFFFFF).astype(np.uint64) >> 24).astype(np.uint8)
    raise TypeError(f"unsupported sample type {a.dtype}")


def _composite_on_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """``rgb * a + 255 * (1 - a)`` in integer arithmetic, rounded; shapes (H, W, 3), (H, W)."""
    a = alpha.astype(np.uint32)[..., None]
    out = (rgb.astype(np.uint32) * a + 255 * (255 - a) + 127) // 255
    return out.astype(np.uint8)


def _channels_to_rgb(a: np.ndarray) -> np.ndarray:
    """(H, W), (H, W, 1..4) uint8 -> (H, W, 3) uint8, alpha composited on white."""
    if a.ndim == 2:
        return np.repeat(a[..., None], 3, axis=2)
    c = a.shape[2]
    if c == 1:
        return np.repeat(a, 3, axis=2)
    if c == 2:  # gray + alpha
        return _composite_on_white(np.repeat(a[..., :1], 3, axis=2), a[..., 1])
    if c == 3:
        return a
    # 4 or more: RGB + alpha (further extra samples are ignored)
    return _composite_on_white(a[..., :3], a[..., 3])


def _pil_to_rgb(im: Image.Image) -> np.ndarray:
    mode = im.mode
    if mode in ("RGB",):
        return np.asarray(im, dtype=np.uint8)
    if mode.startswith("I;16") or mode in ("I", "F"):
        return _channels_to_rgb(_to_uint8(np.asarray(im)))
    if mode == "P":
        # palette with a transparent entry must keep its alpha for compositing
        im = im.convert("RGBA") if "transparency" in im.info else im.convert("RGB")
    elif mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        im = im.convert("RGBA")
    elif mode == "L":
        return _channels_to_rgb(np.asarray(im, dtype=np.uint8))
    else:  # "1", CMYK, YCbCr, LAB, HSV, ...
        im = im.convert("RGB")
    return _channels_to_rgb(np.asarray(im, dtype=np.uint8))


def _tifffile_to_rgb(path: Path) -> np.ndarray:
    """Fallback for TIFFs Pillow cannot open (float RGB, unusual sample layouts)."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        page = tif.pages.first
        problem = size_problem(int(page.imagewidth), int(page.imagelength))
        if problem:  # checked on the tags, before a tile is decompressed
            raise ImageSizeError(path, problem)
        a = page.asarray()
        photometric = getattr(page.photometric, "name", str(page.photometric))
        if photometric == "PALETTE" and page.colormap is not None:
            cmap = np.asarray(page.colormap)  # (3, 2**bits), 16-bit entries
            a = cmap[:, a].transpose(1, 2, 0)
        elif photometric == "MINISWHITE":
            info = np.iinfo(a.dtype) if np.issubdtype(a.dtype, np.integer) else None
            a = (info.max - a) if info else (1.0 - a)
        if a.ndim == 3 and a.shape[0] in (1, 2, 3, 4) and a.shape[2] not in (1, 2, 3, 4):
            a = np.moveaxis(a, 0, -1)  # planar (samples, H, W) -> (H, W, samples)
        if a.ndim not in (2, 3):
            raise ValueError(f"unsupported TIFF array shape {a.shape}")
    return _channels_to_rgb(_to_uint8(a))


def _decode_with_pillow(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        problem = size_problem(*im.size)
        if problem:  # the header's size, before any pixel is decoded
            raise ImageSizeError(path, problem)
        im.seek(0)
        im.load()  # forces the full decode: truncation raises here, not later
        if im.getexif().get(0x0112, 1) != 1:  # EXIF orientation: measure the cell as it was seen
            from PIL import ImageOps

            im = ImageOps.exif_transpose(im)
        return _pil_to_rgb(im)


def _writable(a: np.ndarray) -> np.ndarray:
    # arrays viewing Pillow's buffer are read-only; callers may augment in place
    a = np.ascontiguousarray(a)
    return a if a.flags.writeable else a.copy()


def _is_tiff(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) in _TIFF_MAGIC


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Read one image file as an RGB array.

    Parameters
    ----------
    path : path-like
        A JPEG, BMP, PNG or TIFF file (any bit depth or colour mode Pillow or
        tifffile can decode).

    Returns
    -------
    np.ndarray
        ``(H, W, 3) uint8`` RGB, C-contiguous, writable.

    Raises
    ------
    FileNotFoundError
        When ``path`` does not exist.
    ImageDecodeError
        When the file is empty, truncated, or not a decodable image. The whole
        file is decoded here, so truncation is detected now and not later.
    ImageSizeError
        When its header declares more than :data:`MAX_PIXELS` pixels, for every decoder
        (checked before decoding).

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> from PIL import Image
    >>> p = Path(tempfile.mkdtemp()) / "gray.png"
    >>> Image.fromarray(np.full((4, 5), 7, np.uint8)).save(p)
    >>> load_image(p).shape, load_image(p).dtype.name, int(load_image(p)[0, 0, 2])
    ((4, 5, 3), 'uint8', 7)
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"image file not found: {path}")
    if path.is_dir():
        raise ImageDecodeError(path, "is a folder, not a file")
    if path.stat().st_size == 0:
        raise ImageDecodeError(path, "empty file (0 bytes)")

    pil_error: Exception | None = None
    try:
        if ImageFile.LOAD_TRUNCATED_IMAGES:
            # someone switched Pillow's global "pad truncated images" on: switch it
            # off around our decode only (serialised, so threads restore in order)
            with _TRUNCATION_LOCK:
                previous = ImageFile.LOAD_TRUNCATED_IMAGES
                ImageFile.LOAD_TRUNCATED_IMAGES = False
                try:
                    rgb = _decode_with_pillow(path)
                finally:
                    ImageFile.LOAD_TRUNCATED_IMAGES = previous
        else:  # the usual case: no lock, so threads decode in parallel
            rgb = _decode_with_pillow(path)
        return _writable(rgb)
    except ImageSizeError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageSizeError(path, str(e)) from e
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        # UnidentifiedImageError is an OSError; decoder errors are OSError/ValueError/SyntaxError.
        pil_error = e

    if _is_tiff(path):
        try:
            return _writable(_tifffile_to_rgb(path))
        except ImageSizeError:
            raise
        except Exception as e:  # tifffile raises many types for broken files
            raise ImageDecodeError(path, f"{type(pil_error).__name__}: {pil_error}; tifffile: {e}") from e
    raise ImageDecodeError(path, f"{type(pil_error).__name__}: {pil_error}") from pil_error


def read_image(item: Any) -> np.ndarray:
    """One image (a path or an array) as a checked ``(H, W, 3) uint8`` array.

    Raises
    ------
    FileNotFoundError, ImageDecodeError
        A path that does not exist or does not decode.
    ValueError
        An array of another shape or type, or an empty one (0 pixels high or wide).
    ImageSizeError, ValueError
        A file or array too large (:data:`MAX_PIXELS`) or with fewer than :data:`MIN_SIDE`
        pixels a side: no cell can be found in it.
    """
    if isinstance(item, np.ndarray):
        if item.ndim != 3 or item.shape[2] != 3 or item.dtype != np.uint8:
            raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got shape {item.shape} {item.dtype}")
        if item.shape[0] == 0 or item.shape[1] == 0:
            raise ValueError(f"empty image of shape {item.shape} (0 pixels high or wide)")
        problem = size_problem(item.shape[1], item.shape[0], MIN_SIDE)
        if problem:
            raise ValueError(f"image array of shape {item.shape}: {problem}")
        return item
    if isinstance(item, (str, os.PathLike)):
        image = load_image(item)
        problem = size_problem(image.shape[1], image.shape[0], MIN_SIDE)
        if problem:
            raise ImageSizeError(item, problem)
        return image
    raise TypeError(f"expected an image path or an (H, W, 3) uint8 array, got {type(item).__name__}")


@dataclass
class SkippedImages:
    """Files skipped while reading many images, with the reason for each.

    ``len(skipped)`` is the count; ``skipped.entries`` the ``(path, reason)`` pairs.
    """

    entries: list[tuple[Path, str]] = field(default_factory=list)

    def add(self, path: str | os.PathLike, reason: str) -> None:
        self.entries.append((Path(path), reason))

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self):
        return iter(self.entries)

    @property
    def paths(self) -> list[Path]:
        return [p for p, _ in self.entries]

    def summary(self, max_listed: int = 10) -> str:
        """One paragraph: the count and the first ``max_listed`` files with reasons."""
        if not self.entries:
            return "no images skipped"
        lines = [f"skipped {len(self.entries)} unreadable image(s):"]
        lines += [f"  {p}: {r}" for p, r in self.entries[:max_listed]]
        if len(self.entries) > max_listed:
            lines.append(f"  ... and {len(self.entries) - max_listed} more")
        return "\n".join(lines)


def iter_images(
    paths: Iterable[str | os.PathLike],
    skipped: SkippedImages | None = None,
    *,
    loader: Callable[[Path], np.ndarray] = load_image,
) -> Iterator[tuple[Path, np.ndarray]]:
    """Yield ``(path, image)`` for every readable file, skipping and counting the rest.

    Parameters
    ----------
    paths : iterable of path-like
        Image files, in the order wanted.
    skipped : SkippedImages, optional
        Collects ``(path, reason)`` for each file that raised
        :class:`ImageDecodeError` or ``OSError`` (missing, unreadable). Pass one
        in to read the count and names afterwards; a warning with the count is
        logged at the end either way.
    loader : callable
        ``path -> (H, W, 3) uint8``; :func:`load_image` by default.

    Yields
    ------
    (Path, np.ndarray)
        The path and its ``(H, W, 3) uint8`` image.
    """
    skipped = SkippedImages() if skipped is None else skipped
    n_before = len(skipped)
    for p in paths:
        p = Path(p)
        try:
            img = loader(p)
        except (ImageDecodeError, OSError) as e:
            skipped.add(p, str(e))
            continue
        yield p, img
    n_new = len(skipped) - n_before
    if n_new:
        new = SkippedImages(skipped.entries[n_before:])
        logger.warning(new.summary())
