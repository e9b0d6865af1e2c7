"""Data-root resolution order and its error message."""

from __future__ import annotations

from pathlib import Path

import pytest

from bcfeat import paths
from bcfeat.data import DataRootNotFound, resolve_data_root


@pytest.fixture
def fake_defaults(tmp_path, monkeypatch, no_data_env):
    """Point the shared and download folders at tmp paths that do not exist yet."""
    shared, downloaded = tmp_path / "shared" / "datasets", tmp_path / "repo" / "data"
    monkeypatch.setattr(paths, "SHARED_DATA", shared)
    monkeypatch.setattr(paths, "DOWNLOADED_DATA", downloaded)
    return shared, downloaded


def test_order_explicit_then_env_then_shared_then_downloaded(tmp_path, monkeypatch, fake_defaults):
    shared, downloaded = fake_defaults
    explicit, env = tmp_path / "explicit", tmp_path / "env"
    for d in (explicit, env, shared, downloaded / "PBC_dataset_normal_DIB"):
        d.mkdir(parents=True)
    monkeypatch.setenv("BCFEAT_DATA_ROOT", str(env))
    assert resolve_data_root(explicit) == explicit.resolve()
    assert resolve_data_root() == env.resolve()
    monkeypatch.delenv("BCFEAT_DATA_ROOT")
    assert resolve_data_root() == shared.resolve()
    shared.rmdir()
    assert resolve_data_root() == downloaded.resolve()


def test_download_folder_counts_only_when_it_holds_data(fake_defaults):
    _, downloaded = fake_defaults
    (downloaded / ".downloads").mkdir(parents=True)
    (downloaded / ".downloads" / "PBC_dataset_normal_DIB.zip.part").write_bytes(b"half")
    with pytest.raises(DataRootNotFound):
        resolve_data_root()
    (downloaded / "segmentation_WBC-master").mkdir()
    assert resolve_data_root() == downloaded.resolve()


def test_missing_root_message_says_where_and_how(fake_defaults):
    shared, downloaded = fake_defaults
    with pytest.raises(DataRootNotFound) as e:
        resolve_data_root()
    msg = str(e.value)
    assert isinstance(e.value, FileNotFoundError)
    for needle in ("BCFEAT_DATA_ROOT", str(shared), str(downloaded), "bcfeat download", "pbc_acevedo20"):
        assert needle in msg
    # the order is stated: explicit, env, shared, downloaded
    assert msg.index("explicit") < msg.index("BCFEAT_DATA_ROOT") < msg.index(str(shared)) < msg.index(str(downloaded))


def test_a_wrong_explicit_or_env_root_is_an_error_not_a_fallback(tmp_path, monkeypatch, fake_defaults):
    shared, _ = fake_defaults
    shared.mkdir(parents=True)  # a valid default exists, but must not be picked silently
    with pytest.raises(DataRootNotFound, match="explicitly"):
        resolve_data_root(tmp_path / "typo")
    monkeypatch.setenv("BCFEAT_DATA_ROOT", str(tmp_path / "typo"))
    with pytest.raises(DataRootNotFound, match="BCFEAT_DATA_ROOT="):
        resolve_data_root()


def test_default_is_the_shared_folder_in_this_checkout(data_root, no_data_env):
    assert resolve_data_root() == Path(data_root).resolve()
