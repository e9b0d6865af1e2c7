"""Shared fixtures: the real staged data and its manifests.

CI always has ``../shared/datasets`` beside the checkout, so the real-data tests
run there; elsewhere they skip with the reason instead of failing obscurely.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from bcfeat import paths
from bcfeat.data.sites import SITES

STAGED_DATASETS = SITES


def _shared_folder(folder: str | Path, what: str) -> Path:
    """``folder`` of ``../shared``, or skip the test naming what is missing (CI always has it)."""
    folder = Path(folder)
    if not folder.is_dir():
        pytest.skip(f"{what} not available: {folder} does not exist (CI always has them)")
    return folder


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The shared datasets folder (``../shared/datasets``); skips when absent."""
    return _shared_folder(paths.SHARED_DATA, "real data")


@pytest.fixture(scope="session")
def manifest_dir() -> Path:
    """The shared manifests folder (``../shared/manifests``); skips when absent."""
    return _shared_folder(paths.SHARED_MANIFESTS, "manifests")


@pytest.fixture(scope="session")
def masks_root() -> Path:
    """The shared expert cell masks (``../shared/masks``); skips when absent."""
    return _shared_folder(paths.SHARED_MASKS, "expert masks")


@pytest.fixture(scope="session")
def manifests(manifest_dir) -> dict[str, pd.DataFrame]:
    """Every staged dataset's manifest, read once per session."""
    return {
        name: pd.read_csv(manifest_dir / f"{name}.csv", keep_default_na=False, dtype=str) for name in STAGED_DATASETS
    }


@pytest.fixture
def no_data_env(monkeypatch):
    """Remove ``BCFEAT_DATA_ROOT`` so a test sees only what it sets itself."""
    monkeypatch.delenv("BCFEAT_DATA_ROOT", raising=False)


@pytest.fixture(scope="session")
def tiny_aecfe_folder(tmp_path_factory) -> Path:
    """A tiny random detector (``detector.pt``), autoencoder (``ae.pt``) and the one-file AE-CFE
    extractor made of them (``aecfe.pt``): weights need not be trained to test files and interfaces."""
    import torch

    from bcfeat.autoencoder.aecfe_model import ExtractionConfig, save_model
    from bcfeat.autoencoder.model import AEConfig, CrossDomainAutoencoder, save_checkpoint
    from bcfeat.detection.architecture import build_detector
    from bcfeat.detection.checkpoint import save_detector
    from bcfeat.detection.config import DetectorConfig

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny_aecfe")
    save_detector(folder / "detector.pt", build_detector(DetectorConfig.tiny()))
    cfg = AEConfig.tiny()
    save_checkpoint(folder / "ae.pt", CrossDomainAutoencoder(cfg), cfg)
    save_model(folder / "aecfe.pt", folder / "detector.pt", folder / "ae.pt", ExtractionConfig(crop_size=cfg.image_size))
    return folder


@pytest.fixture
def one_torch_thread():
    """PyTorch on one thread for the test (the CPU is shared; more threads stall), restored after."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
