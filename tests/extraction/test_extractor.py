"""The AE-CFE extractor as users meet it: one model file, a sklearn transformer, `bcfeat extract`."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.base import clone
from sklearn.ensemble import RandomForestClassifier
from sklearn.exceptions import NotFittedError
from sklearn.pipeline import make_pipeline

from bcfeat.runner.cli import main as cli_main
from bcfeat.data import scan_dataset
from bcfeat.detection.config import DetectorConfig
from bcfeat.detection.architecture import build_detector
from bcfeat.detection.checkpoint import save_detector
from bcfeat.extraction.transformer import AECFEFeatures
from bcfeat.autoencoder.aecfe_model import ExtractionConfig, instance_arrays, load_model, save_model, scale_features
from bcfeat.autoencoder.model import AEConfig, CrossDomainAutoencoder, save_checkpoint


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    """A tiny random detector + autoencoder bundled into one file (weights need not be trained)."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("model")
    detector = build_detector(DetectorConfig.tiny())
    save_detector(folder / "detector.pt", detector)
    cfg = AEConfig.tiny()
    save_checkpoint(folder / "ae.pt", CrossDomainAutoencoder(cfg), cfg)
    return save_model(folder / "aecfe.pt", folder / "detector.pt", folder / "ae.pt",
                      ExtractionConfig(crop_size=cfg.image_size))


@pytest.fixture(scope="module")
def real_paths(data_root):
    samples = scan_dataset("cellavision_zheng18", root=data_root).samples
    return samples.groupby("label").head(2)["path"].tolist()


def test_scale_features_maps_each_sample_to_minus_one_one():
    x = torch.randn(3, 4, 14, 14) * torch.tensor([1.0, 10.0, 100.0]).view(3, 1, 1, 1)
    y = scale_features(x)
    assert torch.allclose(y.flatten(1).min(1).values, torch.full((3,), -1.0))
    assert torch.allclose(y.flatten(1).max(1).values, torch.ones(3))
    assert torch.equal(scale_features(torch.ones(1, 2, 14, 14)), torch.full((1, 2, 14, 14), -1.0))


def test_model_file_round_trip_gives_identical_features(model_file, real_paths):
    a = load_model(model_file).transform(real_paths[:4])
    b = load_model(model_file).transform(real_paths[:4])
    assert a.shape == (4, 50) and np.isfinite(a).all()
    np.testing.assert_array_equal(a, b)
    assert np.abs(a).max() <= 1.0  # tanh latent


def test_load_model_rejects_other_files(tmp_path):
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="other.pt: is not a bcfeat aecfe file"):
        load_model(tmp_path / "other.pt")
    with pytest.raises(FileNotFoundError, match="no AE-CFE model file"):
        load_model(tmp_path / "missing.pt")


def test_transformer_contract_and_pipeline(model_file, real_paths, data_root):
    features = AECFEFeatures(model_file)
    assert clone(features).get_params() == {"model_path": model_file, "on_error": "raise", "device": None,
                                            "batch_size": None}
    with pytest.raises(NotFittedError):
        features.transform(real_paths[:1])
    labels = [p.split("/")[-2] for p in real_paths]
    pipe = make_pipeline(AECFEFeatures(model_file), RandomForestClassifier(n_estimators=10, random_state=0))
    pipe.fit(real_paths, labels)
    assert set(pipe.predict(real_paths[:3])) <= set(labels)
    assert list(pipe[0].get_feature_names_out()[:2]) == ["aecfe0", "aecfe1"]


def test_whole_image_region_uses_the_whole_image(model_file, real_paths):
    model = load_model(model_file)
    arrays = instance_arrays(model.detector, real_paths[:2], ExtractionConfig(crop_size=32, region="whole"))
    assert arrays["features"].shape == (2, 16, 14, 14)
    np.testing.assert_array_equal(arrays["boxes"][0], [0, 0, 300, 300])
    assert not arrays["fallback"].any()
    with pytest.raises(ValueError, match="region"):
        ExtractionConfig(region="nucleus")


def test_extract_command_writes_one_row_per_readable_file(model_file, real_paths, tmp_path, capsys):
    folder = tmp_path / "mine"
    (folder / "a").mkdir(parents=True)
    for path in real_paths[:3]:
        shutil.copy(path, folder / "a")
    (folder / "a" / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "features.csv"
    assert cli_main(["extract", str(model_file), str(folder), "--output", str(out), "--no-progress"]) == 0
    table = pd.read_csv(out)
    assert len(table) == 3 and {"relpath", "fallback", "score", "aecfe49"} <= set(table.columns)
    stdout = capsys.readouterr().out
    assert "1 file(s) skipped" in stdout and "skipped a/broken.png: cannot decode image" in stdout
    assert cli_main(["extract", str(model_file), str(tmp_path / "nothing"), "--output", str(out)]) == 2


def test_extract_names_every_file_it_leaves_out(model_file, real_paths, tmp_path, capsys):
    from PIL import Image

    folder = tmp_path / "mine"
    folder.mkdir()
    shutil.copy(real_paths[0], folder / "cell.jpg")
    frames = [Image.new("RGB", (8, 8), c) for c in ("red", "blue")]
    frames[0].save(folder / "animated.gif", save_all=True, append_images=frames[1:], loop=0)
    (folder / "loop.png").symlink_to(folder / "loop.png")
    (folder / "gone.jpg").symlink_to(folder / "missing.jpg")
    (folder / "empty.bmp").write_bytes(b"")
    out = tmp_path / "new" / "deeper" / "features.parquet"  # folders created, parquet written
    assert cli_main(["extract", str(model_file), str(folder), "--output", str(out), "--no-progress"]) == 0
    assert len(pd.read_parquet(out)) == 1
    stdout = capsys.readouterr().out
    assert "1 images" in stdout and "4 file(s) skipped" in stdout
    for name, reason in [("animated.gif", "not an image type"), ("loop.png", "looping link"),
                         ("gone.jpg", "broken or looping link"), ("empty.bmp", "empty file")]:
        assert f"skipped {name}: " in stdout and reason in stdout.split(f"skipped {name}: ")[1].split("\n")[0]


@pytest.mark.parametrize("output, message", [
    ("features.xlsx", "unknown table format '.xlsx'"),
    ("features", "unknown table format '(no extension)'"),
    ("folder.csv/", "is a folder"),
    ("afile/x.csv", "afile is a file, not a folder"),
])
def test_extract_refuses_a_bad_output_before_any_work(tmp_path, capsys, monkeypatch, output, message):
    import bcfeat.extractors

    def must_not_run(*args, **kwargs):
        raise AssertionError("the model file was opened")

    monkeypatch.setattr(bcfeat.extractors, "open_extractor", must_not_run)
    (tmp_path / "folder.csv").mkdir()
    (tmp_path / "afile").write_text("x")
    status = cli_main(["extract", str(tmp_path / "model.pt"), str(tmp_path), "--output", str(tmp_path / output)])
    err = capsys.readouterr().err
    assert status == 2 and message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not list(tmp_path.rglob("*.tmp"))


def test_extract_leaves_no_temporary_file_when_writing_fails(model_file, real_paths, tmp_path, monkeypatch, capsys):
    folder = tmp_path / "mine"
    folder.mkdir()
    shutil.copy(real_paths[0], folder / "cell.jpg")

    def disk_full(self, path, **kwargs):
        Path(path).write_text("half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_csv", disk_full)
    out = tmp_path / "out" / "f.csv"
    assert cli_main(["extract", str(model_file), str(folder), "--output", str(out), "--no-progress"]) == 1
    assert not out.exists() and list((tmp_path / "out").iterdir()) == []


@pytest.mark.parametrize("value", ["0", "-1", "x"])
def test_extract_batch_size_must_be_positive(tmp_path, capsys, value):
    with pytest.raises(SystemExit) as stop:
        cli_main(["extract", "m.pt", str(tmp_path), "--output", "f.csv", "--batch-size", value])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "--batch-size" in err and (">= 1" in err or "whole number" in err)


def test_transformer_gives_one_row_per_input(model_file, real_paths, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    good = np.ascontiguousarray(np.full((40, 40, 3), 200, np.uint8))
    inputs = [real_paths[0], str(broken), np.zeros((0, 0, 3), np.uint8), good, str(tmp_path / "missing.png")]
    strict = AECFEFeatures(model_file).fit()
    with pytest.raises(ValueError, match="input 1 is not a readable image: cannot decode image .*broken.png"):
        strict.transform(inputs)
    with pytest.raises(ValueError, match=r"input 0 is not a readable image: empty image of shape \(0, 0, 3\)"):
        strict.transform([np.zeros((0, 0, 3), np.uint8)])
    lenient = AECFEFeatures(model_file, on_error="nan").fit()
    out = lenient.transform(inputs)
    assert out.shape == (5, 50)
    assert np.isnan(out[[1, 2, 4]]).all() and np.isfinite(out[[0, 3]]).all()
    assert lenient.n_skipped_ == 3 and [i for i, _ in lenient.skipped_] == [1, 2, 4]
    # (a batch is padded to its largest image, so batch-mates shift results slightly: atol)
    np.testing.assert_allclose(out[[0, 3]], strict.transform([real_paths[0], good]), atol=1e-6)
    # A bare path is one image, not a sequence of characters.
    np.testing.assert_allclose(strict.transform(real_paths[0]), out[[0]], atol=1e-4)
    np.testing.assert_allclose(strict.transform(Path(real_paths[0])), out[[0]], atol=1e-4)
    with pytest.raises(ValueError, match="on_error"):
        AECFEFeatures(model_file, on_error="skip").fit()


def test_a_site_standardised_model_takes_each_call_as_one_site(tmp_path, data_root):
    """The model file remembers the per-site standardisation; a folder (or one transform call) is a site."""
    import tempfile

    from bcfeat.autoencoder.site_standardization import MIN_SITE_IMAGES

    torch.manual_seed(0)
    detector = build_detector(DetectorConfig.tiny())
    save_detector(tmp_path / "detector.pt", detector)
    cfg = AEConfig.tiny()
    save_checkpoint(tmp_path / "ae.pt", CrossDomainAutoencoder(cfg), cfg)
    path = save_model(tmp_path / "site.pt", tmp_path / "detector.pt", tmp_path / "ae.pt",
                      ExtractionConfig(crop_size=cfg.image_size), site_standardize=True)
    model = load_model(path)
    assert model.site_standardize and not load_model(tmp_path / "site.pt").extraction.region == "whole"
    files = scan_dataset("jtsc_zheng18", root=data_root).samples["path"].tolist()[:MIN_SITE_IMAGES]
    arrays = instance_arrays(model.detector, files, model.extraction)
    # The same cells under a lab-wide change of the feature maps give the same codes.
    shifted = arrays["features"].astype(np.float32) * 3.0 + 0.5
    np.testing.assert_allclose(model.encode(arrays["features"]), model.encode(shifted), atol=1e-4)
    with pytest.raises(ValueError, match=f">= {MIN_SITE_IMAGES} images"):
        model.transform(files[:3])
    with tempfile.TemporaryDirectory() as tmp:
        for f in files:
            shutil.copy(f, tmp)
        from bcfeat.extractors import open_extractor

        table, skipped = open_extractor(path).extract_folder(tmp, progress=False)
    assert len(table) == MIN_SITE_IMAGES and not skipped
    order = [[Path(f).name for f in files].index(r) for r in table["relpath"]]
    np.testing.assert_allclose(table[[f"aecfe{i}" for i in range(50)]].to_numpy(),
                               model.encode(arrays["features"])[order], atol=1e-5)


def test_batched_path_through_the_api_equals_the_reference(model_file, real_paths, tmp_path):
    """The runtime setting (device, batch size, fast path) of instance_arrays, AECFEFeatures and
    bcfeat extract: on the CPU, the batched path at the same batches gives the same arrays."""
    from bcfeat.detection.batched_inference import ExtractionRuntime

    model = load_model(model_file)
    cfg = model.extraction
    ref = instance_arrays(model.detector, real_paths[:5], cfg)
    fast = instance_arrays(model.detector, real_paths[:5], cfg,
                           ExtractionRuntime(device="cpu", fast=True, bucket=False, batch_size=cfg.batch_size))
    for key in ref:
        np.testing.assert_array_equal(ref[key], fast[key], err_msg=key)
    default = AECFEFeatures(model_file).fit().transform(real_paths[:4])
    on_cpu = AECFEFeatures(model_file, device="cpu", batch_size=2).fit()
    assert on_cpu.runtime_.fast is False and on_cpu.runtime_.batch_size == 2
    np.testing.assert_allclose(on_cpu.transform(real_paths[:4]), default, rtol=1e-4, atol=1e-5)
    folder = tmp_path / "imgs" / "a"
    folder.mkdir(parents=True)
    for path in real_paths[:3]:
        shutil.copy(path, folder)
    outs = []
    for extra in ([], ["--device", "cpu"]):
        out = tmp_path / f"f{len(extra)}.csv"
        assert cli_main(["extract", str(model_file), str(tmp_path / "imgs"), "--output", str(out), "--no-progress",
                         *extra]) == 0
        outs.append(pd.read_csv(out))
    pd.testing.assert_frame_equal(outs[0], outs[1])
