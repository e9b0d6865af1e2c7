"""One size limit for every decoder path and for arrays: refused on the header, named, and a skip
(never the end of a run) in the commands that read many images."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from PIL import Image

from bcfeat.data import images
from bcfeat.data.images import ImageSizeError, load_image, read_image, size_problem


def test_size_problem_names_too_large_and_too_small():
    assert size_problem(360, 363) is None
    assert "fewer than 8 px" in size_problem(1, 1, images.MIN_SIDE)
    assert "fewer than 8 px" in size_problem(5000, 3, images.MIN_SIDE)
    assert size_problem(5000, 3) is None
    assert "400,000,000 pixels" in size_problem(20000, 20000)


def test_tiny_and_huge_files_are_refused_by_name_on_every_decoder(tmp_path, monkeypatch):
    Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(tmp_path / "dot.png")
    assert load_image(tmp_path / "dot.png").shape == (1, 1, 3)  # the decoder reads it; a cell reader refuses it
    with pytest.raises(ImageSizeError, match="dot.png.*1x1 px"):
        read_image(tmp_path / "dot.png")
    monkeypatch.setattr(images, "MAX_PIXELS", 1000)
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(tmp_path / "big.png")
    with pytest.raises(ImageSizeError, match="big.png.*1,600 pixels"):
        load_image(tmp_path / "big.png")
    # a float RGB TIFF goes to tifffile (Pillow cannot read it); its tags are checked before decoding
    tifffile.imwrite(tmp_path / "big.tif", np.zeros((40, 40, 3), np.float32), tile=(16, 16), compression="zlib",
                     photometric="rgb")
    decoded = []
    monkeypatch.setattr(tifffile.TiffPage, "asarray", lambda *a, **k: decoded.append(1))
    with pytest.raises(ImageSizeError, match="big.tif"):
        load_image(tmp_path / "big.tif")
    assert decoded == []
    with pytest.raises(ValueError, match="1,600"):
        read_image(np.zeros((40, 40, 3), np.uint8))
    monkeypatch.setattr(images, "MAX_PIXELS", 10**6)
    with pytest.raises(ValueError, match="fewer than 8"):
        read_image(np.zeros((5000, 3, 3), np.uint8))


def test_one_degenerate_image_is_a_named_skip_in_the_crosslab_commands(tmp_path):
    from bcfeat.crosslab.model import CrossLabModel, CrossLabConfig
    from bcfeat.data.images import SkippedImages

    rng = np.random.default_rng(0)
    paths = []
    for i in range(3):
        img = np.full((96, 96, 3), 230, np.uint8)
        yy, xx = np.mgrid[:96, :96]
        img[(yy - 48) ** 2 + (xx - 48) ** 2 < 24 ** 2] = (200, 170, 210)
        img[(yy - 48) ** 2 + (xx - 48) ** 2 < 11 ** 2] = (90, 40, 130)
        img = np.clip(img + rng.normal(0, 3, img.shape), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(tmp_path / f"c{i}.png")
        paths.append(tmp_path / f"c{i}.png")
    Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(tmp_path / "dot.png")
    Image.fromarray(np.zeros((3, 500, 3), np.uint8)).save(tmp_path / "strip.png")
    skipped = SkippedImages()
    feats, kept = CrossLabModel(CrossLabConfig(mask_source="stain")).measure(
        [paths[0], tmp_path / "dot.png", paths[1], tmp_path / "strip.png", paths[2]], skipped)
    assert kept.tolist() == [0, 2, 4] and len(feats) == 3
    assert sorted(p.name for p in skipped.paths) == ["dot.png", "strip.png"]


def test_an_exif_rotated_jpeg_is_read_upright(tmp_path):
    upright = np.zeros((40, 20, 3), np.uint8)
    upright[:10] = 255  # a white band at the top
    Image.fromarray(upright).save(tmp_path / "up.png")
    stored = Image.fromarray(np.ascontiguousarray(np.rot90(upright, -1)))  # as a camera stores a turned shot
    exif = stored.getexif()
    exif[0x0112] = 8  # "rotate 90 CW to view" for this storage
    stored.save(tmp_path / "turned.jpg", exif=exif, quality=95)
    read = load_image(tmp_path / "turned.jpg")
    assert read.shape == (40, 20, 3)
    assert read[:10].mean() > 200 and read[20:].mean() < 50


def test_a_skipped_file_is_named_once_by_classify(tmp_path, capsys, caplog):
    from tests.crosslab.test_crosslab_method import _write_cell

    from bcfeat.crosslab.model import CrossLabModel, CrossLabConfig, save_model
    from bcfeat.runner.cli import main

    rng = np.random.default_rng(1)
    for i in range(6):
        _write_cell(tmp_path / "cells" / f"c{i}.png", 1, 24, rng)
    (tmp_path / "cells" / "broken.png").write_bytes(b"not an image")
    model = save_model(tmp_path / "m.pt", CrossLabModel(CrossLabConfig(mask_source="stain")))
    with caplog.at_level("INFO"):
        assert main(["extract", str(model), str(tmp_path / "cells"), "--output", str(tmp_path / "f.csv")]) == 0
    shown = capsys.readouterr()
    lines = (shown.out + shown.err + caplog.text).splitlines()
    assert sum("broken.png" in line for line in lines) == 1  # one line names it, not a log line and a list
