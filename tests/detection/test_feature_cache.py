"""The feature cache: computed once, reused, invalidated by data/model/settings, resumable."""

from __future__ import annotations

import numpy as np
import pytest

from bcfeat.detection.feature_cache import cache_key, cached_arrays


@pytest.fixture
def images(tmp_path):
    paths = []
    for i in range(5):
        path = tmp_path / f"img_{i}.bin"
        path.write_bytes(bytes([i]) * (100 + i))
        paths.append(path)
    return paths


def counting_compute(calls):
    def compute(batch):
        calls.append(list(batch))
        return {"size": np.array([len(open(p, "rb").read()) for p in batch]),
                "feature": np.ones((len(batch), 2, 3), np.float32)}
    return compute


def test_computed_once_then_read_back(tmp_path, images):
    key = cache_key(images, None, {"crop": 64})
    calls = []
    first = cached_arrays(images, counting_compute(calls), tmp_path / "cache", key=key, chunk_size=2, progress=False)
    assert len(calls) == 3 and first["size"].tolist() == [100, 101, 102, 103, 104]
    assert first["feature"].shape == (5, 2, 3)
    again = cached_arrays(images, counting_compute(calls), tmp_path / "cache", key=key, chunk_size=2, progress=False)
    assert len(calls) == 3, "a complete entry must not be recomputed"
    np.testing.assert_array_equal(again["size"], first["size"])


def test_key_changes_with_data_model_and_settings(tmp_path, images):
    model = tmp_path / "model.pt"
    model.write_bytes(b"weights-1")
    base = cache_key(images, model, {"crop": 64})
    assert cache_key(images, model, {"crop": 64}) == base
    assert cache_key(images, model, {"crop": 32}) != base
    assert cache_key(images[::-1], model, {"crop": 64}) != base
    model.write_bytes(b"weights-2")
    assert cache_key(images, model, {"crop": 64}) != base
    model.write_bytes(b"weights-1")
    images[0].write_bytes(b"changed")
    assert cache_key(images, model, {"crop": 64}) != base


def test_key_changes_with_the_instruction_set_cap_in_effect(images, monkeypatch):
    from bcfeat.instruction_set import PORTABLE_PINS

    for name in PORTABLE_PINS:  # a process the runner did not start: no cap
        monkeypatch.delenv(name, raising=False)
    native = cache_key(images, None, {"crop": 64})
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")  # arrays computed under a cap have other last bits
    capped = cache_key(images, None, {"crop": 64})
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE")
    assert len({native, capped, cache_key(images, None, {"crop": 64})}) == 3
    monkeypatch.setenv("PATH", "/elsewhere")  # other variables do not count
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    assert cache_key(images, None, {"crop": 64}) == native


def test_interrupted_extraction_resumes_at_the_missing_chunk(tmp_path, images):
    key = cache_key(images, None, {})
    calls = []

    def failing(batch):
        if len(calls) == 1:
            raise KeyboardInterrupt
        return counting_compute(calls)(batch)

    with pytest.raises(KeyboardInterrupt):
        cached_arrays(images, failing, tmp_path / "c", key=key, chunk_size=2, progress=False)
    assert len(calls) == 1
    result = cached_arrays(images, counting_compute(calls), tmp_path / "c", key=key, chunk_size=2, progress=False)
    assert [len(c) for c in calls] == [2, 2, 1], "the finished first chunk is reused, the rest computed"
    assert result["size"].tolist() == [100, 101, 102, 103, 104]
    assert not list((tmp_path / "c" / key).glob("*.tmp"))


def test_wrong_row_count_is_an_error(tmp_path, images):
    with pytest.raises(ValueError, match="wrong number of rows"):
        cached_arrays(images, lambda batch: {"x": np.zeros(1)}, tmp_path, key="k", chunk_size=4, progress=False)
