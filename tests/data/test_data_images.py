"""load_image on every format and mode the datasets (and users) bring, and on broken files."""

from __future__ import annotations

import logging
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image, ImageFile

from bcfeat.data import ImageDecodeError, SkippedImages, iter_images, load_image


def _check_rgb(a: np.ndarray, hw: tuple[int, int]) -> None:
    assert a.shape == (*hw, 3) and a.dtype == np.uint8 and a.flags.c_contiguous and a.flags.writeable


def _png16(path: Path, arr: np.ndarray) -> None:
    """Write a 16-bit RGB/RGBA PNG by hand (Pillow cannot write those)."""
    h, w, c = arr.shape
    raw = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))

    def chunk(t: bytes, d: bytes) -> bytes:
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 16, {3: 2, 4: 6}[c], 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


V16 = np.array([[0, 257 * 100, 65535, 300]], dtype=np.uint16)  # -> 0, 100, 255, 1 (high byte)
V8 = np.array([[0, 100, 255, 1]], dtype=np.uint8)


def test_real_files_of_every_staged_format(data_root):
    _check_rgb(load_image(data_root / "pbc_acevedo20/basophil/BA_100102.jpg"), (363, 360))
    _check_rgb(load_image(data_root / "jtsc_zheng18/basophil/291.bmp"), (120, 120))
    _check_rgb(load_image(data_root / "cellavision_zheng18/basophil/088.bmp"), (300, 300))
    _check_rgb(load_image(data_root / "bccd_crops/basophil/BloodImage_00008_1.png"), (291, 291))


def test_rgba_png_is_composited_on_white(tmp_path):
    a = np.zeros((1, 3, 4), np.uint8)
    a[0, 0] = (10, 20, 30, 255)  # opaque: unchanged
    a[0, 1] = (10, 20, 30, 0)  # transparent: white
    a[0, 2] = (0, 0, 0, 128)  # half: mid grey
    Image.fromarray(a, "RGBA").save(tmp_path / "rgba.png")
    out = load_image(tmp_path / "rgba.png")
    _check_rgb(out, (1, 3))
    assert out[0, 0].tolist() == [10, 20, 30]
    assert out[0, 1].tolist() == [255, 255, 255]
    assert out[0, 2].tolist() == [127, 127, 127]


def test_grayscale_and_palette(tmp_path):
    g = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    Image.fromarray(g, "L").save(tmp_path / "gray.png")
    out = load_image(tmp_path / "gray.png")
    _check_rgb(out, (3, 4))
    assert (out == g[..., None]).all()

    p = Image.new("P", (2, 1))
    p.putpalette([200, 10, 20, 5, 6, 7] + [0] * 762)
    p.putpixel((0, 0), 0)
    p.putpixel((1, 0), 1)
    p.save(tmp_path / "palette.png")
    assert load_image(tmp_path / "palette.png")[0].tolist() == [[200, 10, 20], [5, 6, 7]]
    p.save(tmp_path / "palette_t.png", transparency=1)  # entry 1 transparent -> white
    assert load_image(tmp_path / "palette_t.png")[0].tolist() == [[200, 10, 20], [255, 255, 255]]
    Image.fromarray(g > 100).save(tmp_path / "bilevel.png")
    assert set(np.unique(load_image(tmp_path / "bilevel.png"))) <= {0, 255}


def test_16bit_gray_png_is_scaled_not_clipped(tmp_path):
    Image.fromarray(V16).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    out = load_image(tmp_path / "g16.png")
    assert out[..., 0].tolist() == V8.tolist() and (out[..., 0] == out[..., 2]).all()


def test_16bit_rgb_and_rgba_png(tmp_path):
    rgb = np.stack([V16, V16 // 2, V16], -1)
    _png16(tmp_path / "rgb16.png", rgb)
    assert load_image(tmp_path / "rgb16.png")[..., 0].tolist() == V8.tolist()
    rgba = np.concatenate([rgb, np.full(V16.shape + (1,), 65535, np.uint16)], -1)
    _png16(tmp_path / "rgba16.png", rgba)
    assert load_image(tmp_path / "rgba16.png")[..., 2].tolist() == V8.tolist()


def test_16bit_tiffs(tmp_path):
    tifffile.imwrite(tmp_path / "g16.tif", V16)
    assert load_image(tmp_path / "g16.tif")[..., 1].tolist() == V8.tolist()
    tifffile.imwrite(tmp_path / "rgb16.tif", np.stack([V16, V16, V16], -1), photometric="rgb")
    assert load_image(tmp_path / "rgb16.tif")[..., 0].tolist() == V8.tolist()


def test_rgba_tiff_like_matek19(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (8, 9, 3), dtype=np.uint8)
    opaque = np.concatenate([rgb, np.full((8, 9, 1), 255, np.uint8)], -1)
    tifffile.imwrite(tmp_path / "NGS_0001.tiff", opaque, photometric="rgb")
    assert (load_image(tmp_path / "NGS_0001.tiff") == rgb).all()  # opaque alpha: just dropped
    clear = opaque.copy()
    clear[..., 3] = 0
    tifffile.imwrite(tmp_path / "clear.tiff", clear, photometric="rgb", extrasamples=["unassalpha"])
    assert (load_image(tmp_path / "clear.tiff") == 255).all()


def test_float_tiff_goes_through_tifffile(tmp_path):
    f = np.stack([V16, V16, V16], -1).astype(np.float32) / 65535.0
    tifffile.imwrite(tmp_path / "f.tif", f, photometric="rgb")
    with pytest.raises(Exception):
        Image.open(tmp_path / "f.tif").load()  # Pillow cannot: the fallback is needed
    assert load_image(tmp_path / "f.tif")[..., 0].tolist() == [[0, 100, 255, 1]]


def _truncated_copy(src: Path, dst: Path, frac: float = 0.5) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * frac)])
    return dst


@pytest.fixture
def broken_files(tmp_path, data_root) -> dict[str, Path]:
    out = {
        "truncated.jpg": _truncated_copy(data_root / "pbc_acevedo20/basophil/BA_100102.jpg", tmp_path / "truncated.jpg"),
        "truncated.bmp": _truncated_copy(data_root / "jtsc_zheng18/basophil/291.bmp", tmp_path / "truncated.bmp"),
        "truncated.png": _truncated_copy(
            data_root / "bccd_crops/basophil/BloodImage_00008_1.png", tmp_path / "truncated.png"
        ),
    }
    tifffile.imwrite(tmp_path / "whole.tif", np.zeros((64, 64, 3), np.uint8))
    out["truncated.tif"] = _truncated_copy(tmp_path / "whole.tif", tmp_path / "truncated.tif")
    (tmp_path / "empty.jpg").write_bytes(b"")
    out["empty.jpg"] = tmp_path / "empty.jpg"
    (tmp_path / "garbage.png").write_bytes(np.random.default_rng(1).integers(0, 256, 777, dtype=np.uint8).tobytes())
    out["garbage.png"] = tmp_path / "garbage.png"
    return out


@pytest.mark.parametrize("name", ["truncated.jpg", "truncated.bmp", "truncated.png", "truncated.tif", "empty.jpg", "garbage.png"])
def test_broken_files_raise_naming_the_file(broken_files, name, monkeypatch):
    # even with Pillow's global "load truncated images" switch on, truncation is an error
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(ImageDecodeError) as e:
        load_image(broken_files[name])
    assert isinstance(e.value, ValueError)
    assert name in str(e.value) and e.value.path == broken_files[name]
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # restored


def test_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.png"):
        load_image(tmp_path / "nope.png")


def test_iter_images_skips_and_counts(broken_files, data_root, tmp_path, caplog):
    good = [data_root / "jtsc_zheng18/basophil/291.bmp", data_root / "cellavision_zheng18/basophil/088.bmp"]
    paths = [good[0], *broken_files.values(), tmp_path / "missing.jpg", good[1]]
    skipped = SkippedImages()
    with caplog.at_level(logging.WARNING, logger="bcfeat.data.images"):
        out = list(iter_images(paths, skipped))
    assert [p for p, _ in out] == good  # order kept, the run did not stop
    assert all(img.shape[2] == 3 for _, img in out)
    assert len(skipped) == len(broken_files) + 1
    assert set(skipped.paths) == set(broken_files.values()) | {tmp_path / "missing.jpg"}
    assert f"skipped {len(skipped)} unreadable image(s)" in caplog.text
    assert "garbage.png" in skipped.summary()
