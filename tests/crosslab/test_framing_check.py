"""The label-free framing check of bcfeat classify: how much of its image each white cell fills."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from bcfeat.crosslab.framing_check import CHECKED_FILL, framing_warning, median_cell_fill
from bcfeat.data.images import read_image


def test_the_median_fill_reads_each_images_shorter_side_and_skips_unreadable_files(tmp_path):
    sizes = [(100, 200), (300, 150), (80, 80)]
    paths = []
    for i, (w, h) in enumerate(sizes):
        Image.new("RGB", (w, h)).save(tmp_path / f"{i}.png")
        paths.append(tmp_path / f"{i}.png")
    (tmp_path / "broken.png").write_bytes(b"not an image")
    paths.append(tmp_path / "broken.png")
    diameters = np.array([50.0, 75.0, 60.0, 10.0])
    assert median_cell_fill(paths, diameters) == pytest.approx(0.5)          # 0.5, 0.5, 0.75
    assert median_cell_fill(paths[:1], diameters[:1]) == pytest.approx(0.5)
    assert np.isnan(median_cell_fill(paths[3:], diameters[3:]))
    with pytest.raises(ValueError, match="one diameter per path"):
        median_cell_fill(paths, diameters[:2])


def test_the_sample_is_spread_through_the_call(tmp_path):
    # the first 400 cells are framed loosely, the other 600 tightly: a sample of the first cells
    # alone would read 0.3
    Image.new("RGB", (100, 100)).save(tmp_path / "a.png")
    paths = [tmp_path / "a.png"] * 1000
    diameters = np.r_[np.full(400, 30.0), np.full(600, 80.0)]
    assert median_cell_fill(paths, diameters, sample=20) == pytest.approx(0.8)


def test_a_fill_outside_the_checked_range_warns_and_says_which_way():
    low, high = CHECKED_FILL
    assert framing_warning((low + high) / 2) is None and framing_warning(float("nan")) is None
    assert framing_warning(low) is None and framing_warning(high) is None
    tight = framing_warning(high + 0.1)
    assert "tighter" in tight and f"{high + 0.1:.2f}" in tight
    loose = framing_warning(low - 0.1)
    assert "whole photographs" in loose and "crop-boxes" in loose


def _lab(root, images, frame):
    for cls, paths in images.items():
        (root / cls).mkdir(parents=True)
        for p in paths:
            Image.fromarray(frame(read_image(p))).save(root / cls / (p.stem + ".png"))
    return root


def test_classify_reads_its_calls_framing_from_the_measured_cells_and_their_files(tmp_path, data_root, monkeypatch):
    """Real Acevedo-20 cells, as photographed (a fill of about 0.33) and cut to 0.45 of their side
    (the cell cut by the frame, about 0.67). The measured fill saturates as the frame cuts the
    cell, so the checked range is narrowed here to see each side of it: inside it no warning, a
    tight call told so, and a call looser than the range told it may be whole photographs."""
    from bcfeat.crosslab import framing_check
    from bcfeat.crosslab.folders import classify_folder, train_classifier
    from bcfeat.crosslab.model import CrossLabConfig, CrossLabModel, save_model

    images = {c: sorted((data_root / "pbc_acevedo20" / c).glob("*.jpg"))[:12] for c in ("lymphocyte", "neutrophil")}

    def tight(img):
        h, w = img.shape[:2]
        top, left = round(h * 0.275), round(w * 0.275)
        return img[top:top + round(h * 0.45), left:left + round(w * 0.45)]

    base = save_model(tmp_path / "base.pt", CrossLabModel(CrossLabConfig(mask_source="stain", n_workers=1)))
    model, _, _ = train_classifier(base, _lab(tmp_path / "train", images, lambda im: im), tmp_path / "clf.pt")
    folders = {"native": _lab(tmp_path / "native", images, lambda im: im), "tight": _lab(tmp_path / "tight", images, tight)}

    def said(folder, checked):
        monkeypatch.setattr(framing_check, "CHECKED_FILL", checked)
        warnings: list[str] = []
        classify_folder(model, folder, warning_list=warnings)
        return [w for w in warnings if "of their images' shorter side" in w]

    assert said(folders["native"], (0.25, 0.5)) == []
    tight_said = said(folders["tight"], (0.25, 0.5))
    assert len(tight_said) == 1 and "tighter" in tight_said[0]
    loose_said = said(folders["native"], (0.45, 0.9))
    assert len(loose_said) == 1 and "whole photographs" in loose_said[0]
    assert said(folders["tight"], (0.45, 0.9)) == []
