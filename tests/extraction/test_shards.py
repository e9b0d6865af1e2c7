"""Sharded extraction: `bcfeat extract --shard K/N` + merge gives the single-process table, exactly."""

from __future__ import annotations

import json

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from bcfeat.autoencoder.aecfe_model import ExtractionConfig, save_model
from bcfeat.extractors import open_extractor
from bcfeat.autoencoder.model import AEConfig, CrossDomainAutoencoder, save_checkpoint
from bcfeat.extraction.shards import Shard, extract_shard, merge_shards, shard_folder, shard_path, shard_range
from bcfeat.detection.architecture import build_detector
from bcfeat.detection.checkpoint import save_detector
from bcfeat.detection.config import DetectorConfig
from bcfeat.runner.cli import main as cli_main


def _model(folder: Path, site_standardize: bool = False) -> Path:
    torch.manual_seed(0)
    save_detector(folder / "detector.pt", build_detector(DetectorConfig.tiny()))
    cfg = AEConfig.tiny()
    save_checkpoint(folder / "ae.pt", CrossDomainAutoencoder(cfg), cfg)
    name = "site.pt" if site_standardize else "aecfe.pt"
    return save_model(folder / name, folder / "detector.pt", folder / "ae.pt", ExtractionConfig(crop_size=cfg.image_size),
                      site_standardize=site_standardize)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    """A tiny random detector + autoencoder in one file (weights need not be trained)."""
    return _model(tmp_path_factory.mktemp("model"))


def _cells(folder: Path, n: int, seed: int = 0) -> Path:
    """``n`` synthetic smear images of varying sizes (a dark disk on a light background) in two folders."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        h, w = int(rng.integers(48, 96)), int(rng.integers(48, 96))
        image = np.clip(rng.normal(215, 12, (h, w, 3)), 0, 255)
        yy, xx = np.mgrid[:h, :w]
        disk = (yy - h / 2) ** 2 + (xx - w / 2) ** 2 < (min(h, w) / 3) ** 2
        image[disk] = rng.normal((110, 60, 150), 10, (disk.sum(), 3))
        sub = folder / ("a" if i % 2 else "b")
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image.astype(np.uint8)).save(sub / f"cell_{i:02d}.png")
    (folder / "notes.txt").write_text("not an image")  # named in the skipped list by every run
    return folder


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return _cells(tmp_path_factory.mktemp("cells"), 11)


def _shards(model, folder, out, n, batch_size=2, **kwargs):
    for k in range(1, n + 1):
        extract_shard(model, folder, out, Shard(k, n), batch_size=batch_size, progress=False, **kwargs)


def test_shards_cut_the_sorted_list_on_whole_batches():
    ranges = [shard_range(11, 2, Shard(k, 3)) for k in (1, 2, 3)]
    assert ranges == [(0, 4), (4, 8), (8, 11)]  # 6 batches of 2 (the last one short), 2 per shard
    assert all(start % 2 == 0 for start, _ in ranges)
    assert [shard_range(3, 2, Shard(k, 4)) for k in range(1, 5)] == [(0, 0), (0, 2), (2, 2), (2, 3)]


def test_merged_table_is_the_single_process_table(model_file, folder, tmp_path, capsys):
    single = tmp_path / "single.csv"
    assert cli_main(["extract", str(model_file), str(folder), "--output", str(single), "--batch-size", "2",
                     "--no-progress"]) == 0
    out = tmp_path / "sharded.csv"
    for k in (2, 3, 1):  # any order; the last one to finish writes the merged table
        assert not out.exists()
        assert cli_main(["extract", str(model_file), str(folder), "--output", str(out), "--batch-size", "2",
                         "--shard", f"{k}/3", "--no-progress"]) == 0
    assert out.read_bytes() == single.read_bytes()
    stdout = capsys.readouterr().out
    assert "skipped notes.txt" in stdout.split("merge-shards")[-1]
    # the frames themselves, dtypes and all, and the skipped lists
    table, skipped = open_extractor(model_file).extract_folder(folder, batch_size=2, progress=False)
    merged, merged_skipped = merge_shards(out)
    pd.testing.assert_frame_equal(merged, table, check_exact=True)
    assert merged_skipped == skipped
    # merging again by hand writes the same table
    out.unlink()
    assert cli_main(["merge-shards", "--output", str(out)]) == 0
    assert out.read_bytes() == single.read_bytes()


def test_a_site_standardised_model_is_encoded_at_the_merge(tmp_path):
    model = _model(tmp_path, site_standardize=True)
    cells = _cells(tmp_path / "site", 22, seed=1)  # >= MIN_SITE_IMAGES
    table, skipped = open_extractor(model).extract_folder(cells, batch_size=4, progress=False)
    out = tmp_path / "f.parquet"
    _shards(model, cells, out, 3, batch_size=4)
    merged, merged_skipped = merge_shards(out)
    pd.testing.assert_frame_equal(merged, table, check_exact=True)
    assert merged_skipped == skipped


def test_undecodable_files_do_not_move_the_batches(model_file, tmp_path):
    cells = _cells(tmp_path / "c", 9, seed=2)
    (cells / "a" / "cell_00x.png").write_bytes(b"not an image")  # a batch of 2 files holds 1 image
    table, skipped = open_extractor(model_file).extract_folder(cells, batch_size=2, progress=False)
    out = tmp_path / "f.csv"
    _shards(model_file, cells, out, 2)
    merged, merged_skipped = merge_shards(out)
    assert merged_skipped == skipped and any("cell_00x.png" in p for p, _ in skipped)
    pd.testing.assert_frame_equal(merged, table, check_exact=True)


def test_a_missing_shard_is_refused_and_named(model_file, folder, tmp_path, capsys):
    out = tmp_path / "f.csv"
    for k in (1, 3):
        extract_shard(model_file, folder, out, Shard(k, 3), batch_size=2, progress=False)
    assert cli_main(["merge-shards", "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert "missing shard(s) 2/3" in err and "Traceback" not in err and not out.exists()
    assert cli_main(["merge-shards", "--output", str(tmp_path / "none.csv")]) == 2
    assert "no shards of" in capsys.readouterr().err


def test_shards_of_other_settings_or_counts_are_refused(model_file, folder, tmp_path):
    out = tmp_path / "f.csv"
    extract_shard(model_file, folder, out, Shard(1, 2), batch_size=2, progress=False)
    extract_shard(model_file, folder, out, Shard(2, 2), batch_size=4, progress=False)
    with pytest.raises(ValueError, match=r"shard 2/2 was made differently .*batch_size"):
        merge_shards(out)
    extract_shard(model_file, folder, out, Shard(2, 3), batch_size=2, progress=False)
    with pytest.raises(ValueError, match="mixes shards of different counts N = 2, 3"):
        merge_shards(out)
    shutil.rmtree(shard_folder(out))
    _shards(model_file, folder, out, 2)
    with pytest.raises(ValueError, match="expected 4 shards, the shard files say N = 2"):
        merge_shards(out, n_shards=4)


@pytest.mark.parametrize("value, message", [("0/3", "1 <= K <= N"), ("4/3", "1 <= K <= N"),
                                            ("x/3", "expected K/N"), ("3", "expected K/N"), ("1/0", "1 <= K <= N")])
def test_bad_shard_numbers_are_refused(tmp_path, capsys, value, message):
    with pytest.raises(SystemExit) as stop:
        cli_main(["extract", "m.pt", str(tmp_path), "--output", str(tmp_path / "f.csv"), "--shard", value])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "--shard" in err and message in err
    with pytest.raises(ValueError, match=r"need 1 <= K <= N"):
        Shard(0, 3)


def test_a_killed_shard_resumes_where_it_stopped(model_file, folder, tmp_path, monkeypatch):
    import bcfeat.extraction.folder as extractor  # where a batch calls the detector

    real = extractor.instance_arrays
    calls = []

    def dies_at_third_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # the process is killed
        return real(*args, **kwargs)

    monkeypatch.setattr(extractor, "instance_arrays", dies_at_third_batch)
    out = tmp_path / "f.csv"
    with pytest.raises(KeyboardInterrupt):
        extract_shard(model_file, folder, out, Shard(1, 1), batch_size=2, progress=False, checkpoint_every=1)
    partial = shard_folder(out) / "shard-1-of-1.partial.npz"
    assert partial.is_file() and not shard_path(out, Shard(1, 1)).exists()
    calls.clear()
    monkeypatch.setattr(extractor, "instance_arrays", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    extract_shard(model_file, folder, out, Shard(1, 1), batch_size=2, progress=False, checkpoint_every=1)
    assert len(calls) == 6 - 2  # 11 files in batches of 2: the 2 batches saved are not run again
    assert not partial.exists()
    merged, _ = merge_shards(out)
    monkeypatch.setattr(extractor, "instance_arrays", real)
    single, _ = open_extractor(model_file).extract_folder(folder, batch_size=2, progress=False)
    pd.testing.assert_frame_equal(merged, single, check_exact=True)
    # a finished shard is not recomputed
    calls.clear()
    monkeypatch.setattr(extractor, "instance_arrays", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    extract_shard(model_file, folder, out, Shard(1, 1), batch_size=2, progress=False)
    assert calls == []


def test_torchrun_rank_picks_the_shard(model_file, folder, tmp_path, monkeypatch):
    torchrun = {"TORCHELASTIC_RUN_ID": "run"}
    assert Shard.from_env({"RANK": "1", "WORLD_SIZE": "2", **torchrun}) == Shard(2, 2)
    assert Shard.from_env({"RANK": "0", "WORLD_SIZE": "1", **torchrun}) is None and Shard.from_env({}) is None
    # RANK / WORLD_SIZE left in a shell by something else do not turn extract into a shard run
    assert Shard.from_env({"RANK": "1", "WORLD_SIZE": "2"}) is None
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    plain = tmp_path / "plain.csv"
    assert cli_main(["extract", str(model_file), str(folder), "--output", str(plain), "--batch-size", "2",
                     "--no-progress"]) == 0
    assert plain.is_file()
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "run")
    out = tmp_path / "f.csv"
    assert cli_main(["extract", str(model_file), str(folder), "--output", str(out), "--batch-size", "2",
                     "--no-progress"]) == 0
    assert shard_path(out, Shard(2, 2)).is_file() and not out.exists()


def test_crosslab_model_shards_merge_to_the_single_table(data_root, tmp_path):
    from bcfeat.crosslab.model import CrossLabModel, CrossLabConfig, save_model as save_crosslab
    from bcfeat.data import scan_dataset

    model = save_crosslab(tmp_path / "m.pt", CrossLabModel(CrossLabConfig(mask_source="stain")))
    cells = tmp_path / "lab"
    cells.mkdir()
    for path in scan_dataset("cellavision_zheng18", root=data_root).samples["path"].tolist()[:5]:
        shutil.copy(path, cells)
    table, skipped = open_extractor(model).extract_folder(cells)
    out = tmp_path / "f.csv"
    _shards(model, cells, out, 2)
    merged, merged_skipped = merge_shards(out)
    pd.testing.assert_frame_equal(merged, table, check_exact=True)
    assert merged_skipped == skipped


def test_torchrun_with_two_processes_merges_to_the_single_table(model_file, folder, tmp_path):
    """Two CPU processes under torchrun; torchrun runs each with OMP_NUM_THREADS=1, and float sums depend on
    the thread count, so the reference is a single process with one thread too."""
    import os
    import subprocess
    import sys

    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip(f"no torchrun beside {sys.executable}")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "OMP_NUM_THREADS": "1"}
    env.pop("RANK", None), env.pop("WORLD_SIZE", None)
    args = ["extract", str(model_file), str(folder), "--batch-size", "2", "--no-progress", "--output"]
    subprocess.run([sys.executable, "-m", "bcfeat.runner.cli", *args, str(tmp_path / "single.csv")], env=env,
                   check=True, capture_output=True)
    subprocess.run([str(torchrun), "--nproc_per_node=2", "--master_port=0", "-m", "bcfeat.runner.cli", *args,
                    str(tmp_path / "f.csv")], env=env, check=True, capture_output=True, timeout=300)
    assert sorted(p.name for p in shard_folder(tmp_path / "f.csv").iterdir()) == ["shard-1-of-2.npz", "shard-2-of-2.npz"]
    assert (tmp_path / "f.csv").read_bytes() == (tmp_path / "single.csv").read_bytes()


def _rewrite(path, change):
    """Rewrite a shard file with ``change(meta, arrays)`` applied, its checksum made to match."""
    from bcfeat.extraction.shards import _arrays_digest

    with np.load(path, allow_pickle=False) as stored:
        arrays = {key: stored[key] for key in stored.files}
    meta = json.loads(str(arrays.pop("meta")[()]))
    change(meta, arrays)
    meta["arrays_sha256"] = _arrays_digest(arrays)
    with open(path, "wb") as handle:
        np.savez(handle, meta=np.asarray(json.dumps(meta, sort_keys=True)), **arrays)


@pytest.mark.parametrize("damage, message", [
    (lambda m, a: a.update(encoded=a["encoded"][:-1]), "arrays of lengths"),
    (lambda m, a: a.update(relpath=a["relpath"][::-1]), "out of order"),
    (lambda m, a: a.update(relpath=np.append(a["relpath"][:-1], "../../../etc/passwd")), "not one of its files"),
    (lambda m, a: m.update(start=1), "do not fit together"),
])
def test_merge_refuses_damaged_or_tampered_shards_by_name(model_file, folder, tmp_path, damage, message):
    out = tmp_path / "f.csv"
    _shards(model_file, folder, out, 2)
    _rewrite(shard_path(out, Shard(2, 2)), damage)
    with pytest.raises(ValueError, match=f"shard-2-of-2.npz.*{message}"):
        merge_shards(out)


def test_merge_names_a_truncated_or_altered_shard(model_file, folder, tmp_path):
    out = tmp_path / "f.csv"
    _shards(model_file, folder, out, 2)
    path = shard_path(out, Shard(1, 2))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="shard-1-of-2.npz is damaged"):
        merge_shards(out)
    path.write_bytes(data)
    with np.load(path, allow_pickle=False) as stored:
        arrays = {key: stored[key] for key in stored.files}
    arrays["encoded"] = arrays["encoded"] + 1.0  # values changed, checksum not updated
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)
    with pytest.raises(ValueError, match="shard-1-of-2.npz is damaged or was altered"):
        merge_shards(out)


def test_a_replaced_image_of_the_same_size_makes_the_shard_run_again(model_file, tmp_path):
    folder = tmp_path / "cells"
    folder.mkdir()
    rng = np.random.default_rng(3)
    for i in range(4):  # BMPs of one size: a replaced image keeps the file size to the byte
        image = np.clip(rng.normal(215, 12, (64, 64, 3)), 0, 255)
        yy, xx = np.mgrid[:64, :64]
        image[(yy - 32) ** 2 + (xx - 20 - 8 * i) ** 2 < 15 ** 2] = (110, 60, 150)
        Image.fromarray(image.astype(np.uint8)).save(folder / f"c{i}.bmp")
    out = tmp_path / "f.csv"
    _shards(model_file, folder, out, 1)
    first = merge_shards(out)[0]
    size = (folder / "c0.bmp").stat().st_size
    (folder / "c0.bmp").write_bytes((folder / "c3.bmp").read_bytes())
    assert (folder / "c0.bmp").stat().st_size == size
    _shards(model_file, folder, out, 1)
    second = merge_shards(out)[0]
    features = [c for c in first.columns if c.startswith("aecfe_")] or list(first.columns[4:])
    assert not np.allclose(first.loc[0, features].to_numpy(float), second.loc[0, features].to_numpy(float))
    np.testing.assert_allclose(second.loc[0, features].to_numpy(float), second.loc[3, features].to_numpy(float))


def test_shard_count_is_bounded_by_the_batches(model_file, folder, tmp_path):
    with pytest.raises(ValueError, match="at most 6 shards"):
        extract_shard(model_file, folder, tmp_path / "f.csv", Shard(1, 1_000_000_000), batch_size=2, progress=False)
