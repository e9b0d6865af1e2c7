"""`bcfeat classify` over a folder in bounded chunks, sharded, and through the faster crop path:
each must give the table (and features) that the plain, whole-folder computation gives."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage as ndi

from bcfeat.crosslab.cell_crop import CropConfig, _smoothed_window, background_colour, canonical_crop
from bcfeat.crosslab.model import CrossLabModel, CrossLabConfig, save_model
from bcfeat.data.images import SkippedImages
from tests.crosslab.test_crosslab_method import two_class_lab


def _reference_background(image, cell_mask):
    """The white point as first written: np.quantile and np.median over the pixels."""
    pixels = image.reshape(-1, 3)
    if cell_mask is not None and (~cell_mask).sum() >= 16:
        pixels = pixels[~cell_mask.reshape(-1)]
    brightness = pixels.astype(np.int32).sum(axis=1)
    bright = pixels[brightness >= np.quantile(brightness, 0.9)]
    return np.maximum(np.median(bright, axis=0).astype(np.float64), 1.0)


@pytest.mark.parametrize("seed", range(6))
def test_histogram_white_point_equals_quantile_and_median(seed):
    rng = np.random.default_rng(seed)
    h, w = rng.integers(9, 90, size=2)
    levels = rng.integers(2, 256)  # few levels: many ties at the quantile
    image = (rng.integers(0, levels, size=(h, w, 3)) * (255 // max(levels - 1, 1))).astype(np.uint8)
    mask = rng.random((h, w)) < rng.random()
    for m in (mask, None, np.ones((h, w), bool)):
        assert np.array_equal(background_colour(image, m), _reference_background(image, m))


def test_smoothing_only_the_sampled_window_gives_the_same_numbers():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(120, 130, 3)).astype(np.uint8)
    for centre, sigma in [((60.3, 64.8), 1.3), ((5.5, 120.2), 2.0), ((118.0, 2.0), 0.7)]:
        offsets = (np.arange(40) - 19.5) / 0.5
        rows, cols = np.meshgrid(centre[0] + offsets / 2, centre[1] + offsets / 2, indexing="ij")
        part, r0, c0 = _smoothed_window(image, rows, cols, sigma)
        whole = ndi.gaussian_filter(image.astype(np.float32), sigma=(sigma, sigma, 0))
        for c in range(3):
            a = ndi.map_coordinates(part[..., c], np.stack([rows - r0, cols - c0]), order=1, mode="constant", cval=7.0)
            b = ndi.map_coordinates(whole[..., c], np.stack([rows, cols]), order=1, mode="constant", cval=7.0)
            assert np.array_equal(a, b)


def test_leaving_the_ruler_out_changes_only_the_ruler():
    img = np.full((200, 200, 3), 235, np.uint8)
    yy, xx = np.mgrid[:200, :200]
    for cy, cx in [(30, 30), (30, 170), (170, 30), (170, 170)]:  # red cells around the white one
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < 18 ** 2] = (205, 120, 130)
    cell = (yy - 100) ** 2 + (xx - 100) ** 2 < 45 ** 2
    img[cell] = (200, 170, 210)
    img[(yy - 100) ** 2 + (xx - 100) ** 2 < 20 ** 2] = (90, 40, 130)
    with_ruler = canonical_crop(img, cell, CropConfig())
    without = canonical_crop(img, cell, CropConfig(), ruler=False)
    assert np.isfinite(with_ruler.red_cell_diameter_px) and np.isnan(without.red_cell_diameter_px)
    assert np.array_equal(with_ruler.image, without.image) and np.array_equal(with_ruler.mask, without.mask)


def test_a_classifier_without_fine_texture_gets_the_same_features_without_measuring_it(tmp_path):
    from bcfeat.crosslab.cell_features import feature_set_columns, fine_texture_columns
    from bcfeat.crosslab.model import measured_parts

    two_class_lab(tmp_path)
    files = sorted(str(p) for p in (tmp_path / "new").glob("*.png"))
    model = CrossLabModel(CrossLabConfig(mask_source="stain", n_workers=1))
    reads = feature_set_columns("no_fine_texture")
    everything, _ = model.measure(files)
    needed, _ = model.measure(files, reads=reads)
    fine = list(fine_texture_columns())
    assert len(fine) > 0 and np.isnan(needed[:, fine]).all() and np.isfinite(everything[:, fine]).all()
    assert np.array_equal(everything[:, list(reads)], needed[:, list(reads)], equal_nan=True)
    assert measured_parts(feature_set_columns("no_texture")) == (True, False)
    assert measured_parts(feature_set_columns("no_ruler")) == (False, True)


def test_chunked_measuring_equals_one_pass_and_names_bad_files(tmp_path):
    two_class_lab(tmp_path)
    files = sorted(str(p) for p in (tmp_path / "new").glob("*.png"))
    (tmp_path / "bad.png").write_bytes(b"not an image")
    files.insert(5, str(tmp_path / "bad.png"))
    results = {}
    for chunk, workers in [(1000, 1), (3, 1), (4, 2)]:
        skipped, found, thumbs = SkippedImages(), [], []
        model = CrossLabModel(CrossLabConfig(mask_source="stain", chunk_size=chunk, n_workers=workers))
        feats, kept, crops = model.measure(files, skipped, return_crops=True, found=found, thumbnails=thumbs)
        results[chunk] = feats
        assert list(kept) == [i for i in range(len(files)) if i != 5]
        assert [str(p) for p, _ in skipped] == [str(tmp_path / "bad.png")]
        assert len(found) == len(thumbs) == len(crops) == 16 and all(t[:2] == b"\xff\xd8" for t in thumbs)
    assert np.array_equal(results[1000], results[3], equal_nan=True)
    assert np.array_equal(results[1000], results[4], equal_nan=True)


def test_the_workers_send_a_crop_back_only_when_it_is_asked_for(tmp_path):
    from bcfeat.crosslab.model import _measure_item

    two_class_lab(tmp_path)
    path = str(sorted((tmp_path / "new").glob("*.png"))[0])
    config = CrossLabConfig(mask_source="stain")
    with_crop = _measure_item((path, None, config, False, True, True, True))
    without = _measure_item((path, None, config, False, True, True, False))
    assert with_crop[1].shape == (config.crop.size, config.crop.size, 3) and without[1] is None
    assert np.array_equal(with_crop[0], without[0], equal_nan=True)
    model = CrossLabModel(CrossLabConfig(mask_source="stain", n_workers=2, chunk_size=5))
    files = sorted(str(p) for p in (tmp_path / "new").glob("*.png"))
    feats, kept, crops = model.measure(files, SkippedImages(), return_crops=True)
    assert crops.shape == (len(files), config.crop.size, config.crop.size, 3)
    assert model.measure(files, SkippedImages())[1].tolist() == list(range(len(files)))


def test_sharded_classify_writes_the_plain_table(tmp_path, capsys):
    from bcfeat.runner.cli import main

    two_class_lab(tmp_path)
    (tmp_path / "new" / "broken.png").write_bytes(b"not an image")
    base = save_model(tmp_path / "base.pt", CrossLabModel(CrossLabConfig(mask_source="stain")))
    clf = tmp_path / "clf.pt"
    assert main(["train-classifier", str(base), str(tmp_path / "lab"), "--output", str(clf)]) == 0
    plain, sharded = tmp_path / "plain.csv", tmp_path / "sharded.csv"
    assert main(["classify", str(clf), str(tmp_path / "new"), "--output", str(plain)]) == 0
    assert main(["classify", str(clf), str(tmp_path / "new"), "--output", str(sharded), "--shard", "2/2"]) == 0
    assert not sharded.exists()  # shard 1 is still missing
    assert main(["classify", str(clf), str(tmp_path / "new"), "--output", str(sharded), "--shard", "1/2"]) == 0
    pd.testing.assert_frame_equal(pd.read_csv(plain), pd.read_csv(sharded))
    assert "skipped broken.png" in capsys.readouterr().out
    # a report needs every crop in one process
    assert main(["classify", str(clf), str(tmp_path / "new"), "--output", str(tmp_path / "x.csv"), "--shard", "1/2",
                 "--report", str(tmp_path / "r.html")]) == 2


def test_the_worker_processes_parent_has_not_imported_scikit_learn():
    """``bcfeat classify`` forks its workers before it builds the classifier: importing the command
    line, the folder functions and the model module must not import scikit-learn (or PyTorch)."""
    import subprocess
    import sys

    code = ("import sys, bcfeat.runner.cli, bcfeat.crosslab.folders, bcfeat.crosslab.model; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'sklearn', 'torch'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_work_given_as_meanwhile_runs_once_while_measuring_and_its_error_ends_it(tmp_path):
    two_class_lab(tmp_path)
    files = sorted(str(p) for p in (tmp_path / "new").glob("*.png"))
    model = CrossLabModel(CrossLabConfig(mask_source="stain", chunk_size=4, n_workers=2))
    calls = []
    feats, kept = model.measure(files, meanwhile=lambda: calls.append(len(calls)))
    assert calls == [0] and len(kept) == len(files)  # once, not per chunk
    assert np.array_equal(feats, model.measure(files)[0], equal_nan=True)
    model.measure([], meanwhile=lambda: calls.append(len(calls)))
    assert calls == [0, 1]  # also when there is nothing to measure

    def broken():
        raise RuntimeError("the classifier could not be built")

    with pytest.raises(RuntimeError, match="could not be built"):
        model.measure(files, meanwhile=broken)


def test_classify_builds_the_classifier_while_measuring_and_names_a_bad_model_file(tmp_path):
    import torch

    from bcfeat.crosslab.folders import classify_cells, classify_folder
    from bcfeat.crosslab.model import load_measuring_part, load_model, read_model_payload
    from bcfeat.model_files import ModelFileError
    from bcfeat.runner.cli import main

    two_class_lab(tmp_path)
    base = save_model(tmp_path / "base.pt", CrossLabModel(CrossLabConfig(mask_source="stain")))
    clf = tmp_path / "clf.pt"
    assert main(["train-classifier", str(base), str(tmp_path / "lab"), "--output", str(clf),
                 "--groups", "no_fine_texture"]) == 0
    whole = load_model(clf)
    part, reads = load_measuring_part(clf, read_model_payload(clf, arrays=True))
    assert part.classifier is None and part.config == whole.config and reads == whole.classifier_columns
    table, _ = classify_folder(clf, tmp_path / "new")
    files, found = sorted((tmp_path / "new").glob("*.png")), []
    feats, _ = whole.measure([str(p) for p in files], found=found, reads=whole.classifier_columns)
    expected = classify_cells(whole, pd.Series([p.name for p in files]), feats, np.asarray(found), tmp_path / "new")
    pd.testing.assert_frame_equal(table.sort_values("relpath", ignore_index=True), expected)  # what the whole model gives
    with pytest.raises(ValueError, match="holds no classifier"):
        classify_folder(base, tmp_path / "new")  # refused before any image is read
    payload = torch.load(clf, weights_only=True)
    payload["classifier"]["params"]["C"] = -1.0  # a damaged classifier, found while the workers measure
    torch.save(payload, tmp_path / "damaged.pt")
    with pytest.raises(ModelFileError, match="damaged.pt"):
        classify_folder(tmp_path / "damaged.pt", tmp_path / "new")


def test_a_detector_model_is_loaded_whole_before_classify_measures(tmp_path, monkeypatch):
    """The detector runs in the main process, so its model file is loaded whole first (not as the
    measuring's meanwhile work), once, and classifies as the whole model does."""
    import torch

    from bcfeat.crosslab import folders
    from bcfeat.crosslab.model import load_model
    from bcfeat.detection.architecture import build_detector
    from bcfeat.detection.config import DetectorConfig
    from bcfeat.runner.cli import main

    two_class_lab(tmp_path)
    stain = save_model(tmp_path / "base.pt", CrossLabModel(CrossLabConfig(mask_source="stain")))
    assert main(["train-classifier", str(stain), str(tmp_path / "lab"), "--output", str(tmp_path / "clf.pt")]) == 0
    torch.manual_seed(0)
    detector = build_detector(DetectorConfig.tiny()).eval()
    path = save_model(tmp_path / "d.pt", CrossLabModel(CrossLabConfig(mask_source="detector", n_workers=1), detector,
                                                        load_model(tmp_path / "clf.pt").classifier))
    loads = []
    monkeypatch.setattr(folders, "load_model", lambda *a: loads.append(a) or load_model(*a))
    monkeypatch.setattr(folders, "load_measuring_part", lambda *a: pytest.fail("a detector model is measured whole"))
    table, _ = folders.classify_folder(path, tmp_path / "new")
    assert len(loads) == 1
    whole, files, found = load_model(path), sorted((tmp_path / "new").glob("*.png")), []
    feats, _ = whole.measure([str(p) for p in files], found=found, reads=whole.classifier_columns)
    expected = folders.classify_cells(whole, pd.Series([p.name for p in files]), feats, np.asarray(found), tmp_path / "new")
    pd.testing.assert_frame_equal(table.sort_values("relpath", ignore_index=True), expected)
