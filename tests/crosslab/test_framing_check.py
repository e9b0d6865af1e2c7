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
    # the first half of the call is framed loosely, the second tightly: a sample of the first
    # cells alone would miss the second half
    Image.new("RGB", (100, 100)).save(tmp_path / "a.png")
    paths = [tmp_path / "a.png"] * 1000
    diameters = np.r_[np.full(499, 30.0), np.full(501, 80.0)]
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


def test_classify_warns_a_folder_framed_unlike_the_labs_checked(tmp_path, data_root):
    """Real Acevedo-20 cells: as photographed no framing warning; cut to 0.45 of their side (the
    cell fills about 0.8) a warning that they are framed too tightly; inside twice their side of
    mirrored smear (a fill of about 0.2) a warning that they may be whole photographs."""
    from bcfeat.crosslab.folders import classify_folder, train_classifier
    from bcfeat.crosslab.model import CrossLabConfig, CrossLabModel, save_model

    images = {c: sorted((data_root / "pbc_acevedo20" / c).glob("*.jpg"))[:12] for c in ("lymphocyte", "neutrophil")}

    def tight(img):
        h, w = img.shape[:2]
        top, left = round(h * 0.275), round(w * 0.275)
        return img[top:top + round(h * 0.45), left:left + round(w * 0.45)]

    def loose(img):
        h, w = img.shape[:2]
        return np.pad(img, ((h // 2, h // 2), (w // 2, w // 2), (0, 0)), mode="symmetric")

    base = save_model(tmp_path / "base.pt", CrossLabModel(CrossLabConfig(mask_source="stain", n_workers=1)))
    model, _, _ = train_classifier(base, _lab(tmp_path / "train", images, lambda im: im), tmp_path / "clf.pt")
    said = {}
    for name, frame in (("native", lambda im: im), ("tight", tight), ("loose", loose)):
        warnings: list[str] = []
        classify_folder(model, _lab(tmp_path / name, images, frame), warning_list=warnings)
        said[name] = [w for w in warnings if "of their images' shorter side" in w]
    assert said["native"] == []
    assert len(said["tight"]) == 1 and "tighter" in said["tight"][0]
    assert len(said["loose"]) == 1 and "whole photographs" in said["loose"][0]
