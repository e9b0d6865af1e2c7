"""The one door to model files: `bcfeat.open_extractor` opens either kind, once, with one interface."""

from __future__ import annotations

import builtins
import hashlib
import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import bcfeat
from bcfeat.crosslab.adaptation import CrossLabClassifier
from bcfeat.crosslab.cell_features import feature_names
from bcfeat.crosslab.model import CrossLabModel, CrossLabConfig, save_model as save_crosslab
from bcfeat.data import scan_dataset
from bcfeat.extraction.transformer import AECFEFeatures, ImageFeatures
from bcfeat.extractors import open_extractor
from bcfeat.model_files import ModelFileError


@pytest.fixture(scope="module")
def files(tiny_aecfe_folder, tmp_path_factory):
    """An AE-CFE file (tiny random detector + autoencoder), a cross-lab file and a detector checkpoint."""
    folder = tmp_path_factory.mktemp("door")
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, len(feature_names())))
    y = np.repeat(["lymphocyte", "neutrophil"], 20)
    clf = CrossLabClassifier(C=0.5).fit(X, y)
    crosslab = save_crosslab(folder / "crosslab.pt", CrossLabModel(CrossLabConfig(mask_source="stain"), None, clf))
    return {"aecfe": tiny_aecfe_folder / "aecfe.pt", "crosslab": Path(crosslab),
            "detector": tiny_aecfe_folder / "detector.pt"}


@pytest.fixture(scope="module")
def images(data_root):
    samples = scan_dataset("cellavision_zheng18", root=data_root).samples
    return samples.groupby("label").head(1)["path"].tolist()[:3]


@pytest.mark.parametrize("kind, n_features", [("aecfe", 50), ("crosslab", len(feature_names()))])
def test_either_kind_opens_with_one_interface(files, images, kind, n_features):
    extractor = bcfeat.open_extractor(files[kind])
    assert extractor.kind == kind
    assert extractor.sha256 == hashlib.sha256(files[kind].read_bytes()).hexdigest()
    assert len(extractor.feature_names) == n_features
    feats = extractor.transform(images)
    assert feats.shape == (len(images), n_features) and feats.dtype == np.float32
    assert np.isfinite(feats).mean() > 0.9  # a cross-lab feature may be NaN by design (no red cell to measure)
    # the transformer reads through the same door and gives the same numbers
    np.testing.assert_array_equal(ImageFeatures(files[kind]).fit().transform(images), feats)
    assert AECFEFeatures is ImageFeatures  # the former name still works


def test_a_file_is_read_once(files, monkeypatch):
    target = files["crosslab"].resolve()
    opened = []
    real_open = builtins.open

    def counting_open(file, *args, **kwargs):
        if isinstance(file, (str, Path)) and Path(file).resolve() == target:
            opened.append(file)
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", counting_open)
    monkeypatch.setattr(io, "open", counting_open)
    open_extractor(files["crosslab"])
    assert len(opened) == 1


def test_other_files_are_refused_by_name_and_kind(files, tmp_path):
    with pytest.raises(ModelFileError, match=r"detector.pt: is a bcfeat detector file; features are extracted with"):
        open_extractor(files["detector"])
    torch.save({"weights": torch.zeros(2)}, tmp_path / "plain.pt")
    with pytest.raises(ModelFileError, match="plain.pt: is not a bcfeat model file"):
        open_extractor(tmp_path / "plain.pt")
    data = files["aecfe"].read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="cut.pt: is damaged"):
        open_extractor(tmp_path / "cut.pt")
    with pytest.raises(ModelFileError, match="is a folder"):
        open_extractor(tmp_path)
    with pytest.raises(FileNotFoundError, match="no model file at"):
        open_extractor(tmp_path / "missing.pt")


def test_extract_folder_is_the_same_for_the_door_and_the_command(files, data_root, tmp_path):
    from bcfeat.runner.cli import main as cli_main

    folder = Path(data_root) / "cellavision_zheng18" / "basophil"
    table, skipped = open_extractor(files["crosslab"]).extract_folder(folder)
    assert cli_main(["extract", str(files["crosslab"]), str(folder), "--output", str(tmp_path / "f.parquet")]) == 0
    expected = pd.read_parquet(tmp_path / "f.parquet")
    assert skipped == [] and list(expected["relpath"]) == list(table["relpath"])
    np.testing.assert_array_equal(table.drop(columns="relpath").to_numpy(), expected.drop(columns="relpath").to_numpy())
    with pytest.raises(ValueError, match="--layout applies to AE-CFE"):
        open_extractor(files["crosslab"]).extract_folder(folder, layout="pbc")


def test_the_top_level_api_is_light_and_complete():
    import subprocess
    import sys

    code = ("import sys, bcfeat; assert 'torch' not in sys.modules, 'import bcfeat loaded torch'; "
            "from bcfeat import open_extractor, ImageFeatures, classify_folder, train_classifier; "
            "print(sorted(bcfeat.__all__))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "open_extractor" in out and "classify_folder" in out
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        bcfeat.nothing  # noqa: B018
