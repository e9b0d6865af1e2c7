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


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The shared datasets folder (``../shared/datasets``); skips when absent."""
    root = Path(paths.SHARED_DATA)
    if not root.is_dir():
        pytest.skip(f"real data not available: {root} does not exist (CI always has it)")
    return root


@pytest.fixture(scope="session")
def manifest_dir() -> Path:
    """The shared manifests folder (``../shared/manifests``); skips when absent."""
    d = Path(paths.SHARED_MANIFESTS)
    if not d.is_dir():
        pytest.skip(f"manifests not available: {d} does not exist (CI always has them)")
    return d


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
