"""Splits: identical for a seed whatever the order or process, stratified, and shared through disk."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from bcfeat.data import SplitConfig, SplitMismatch, make_or_load_splits, split_samples, scan_dataset
from bcfeat.data.splits import read_splits, stratified_holdout, stratified_kfold


@pytest.fixture(scope="module")
def pbc(data_root):
    return scan_dataset("pbc_acevedo20", data_root, "coarse5")


def test_same_seed_same_split_in_any_input_order(pbc):
    a = split_samples(pbc.samples, SplitConfig("holdout", seed=3))
    shuffled = pbc.samples.sample(frac=1.0, random_state=np.random.RandomState(7))
    b = split_samples(shuffled, SplitConfig("holdout", seed=3))
    pd.testing.assert_frame_equal(a, b)


def test_different_seed_different_split(pbc):
    a = split_samples(pbc.samples, SplitConfig("holdout", seed=0))["split"]
    b = split_samples(pbc.samples, SplitConfig("holdout", seed=1))["split"]
    assert (a != b).mean() > 0.2  # ~32% expected for two independent 80/20 draws
    fa = split_samples(pbc.samples, SplitConfig("kfold", seed=0))["fold"]
    fb = split_samples(pbc.samples, SplitConfig("kfold", seed=1))["fold"]
    assert (fa != fb).mean() > 0.5


def test_holdout_is_stratified(pbc):
    s = split_samples(pbc.samples, SplitConfig("holdout", seed=0, test_size=0.25))
    for label, g in s.groupby("label"):
        n_test = (g["split"] == "test").sum()
        assert abs(n_test - 0.25 * len(g)) <= 0.5, label


def test_kfold_is_stratified_and_balanced(pbc):
    s = split_samples(pbc.samples, SplitConfig("kfold", seed=0, n_folds=5))
    assert set(s["fold"]) == set(range(5))
    for label, g in s.groupby("label"):
        sizes = np.bincount(g["fold"], minlength=5)
        assert sizes.max() - sizes.min() <= 1, label
    total = np.bincount(s["fold"], minlength=5)
    assert total.max() - total.min() <= 1


def test_tiny_classes_keep_a_training_sample():
    keys = [f"k{i}" for i in range(7)]
    labels = ["one", "two", "two", "five", "five", "five", "five"]
    split = stratified_holdout(keys, labels, test_size=0.5, seed=0)
    assert split[0] == "train"  # a lone sample cannot be tested on
    for lab in ("two", "five"):
        got = [s for s, l in zip(split, labels) if l == lab]
        assert "train" in got and "test" in got
    with pytest.raises(ValueError, match="unique"):
        stratified_kfold(["a", "a"], ["x", "y"])


_SUBPROCESS = """
import sys
from bcfeat.data import scan_dataset, split_samples, SplitConfig
s = scan_dataset("jtsc_zheng18", sys.argv[1], "coarse5").samples
sys.stdout.write(split_samples(s, SplitConfig("kfold", seed=11)).to_csv(index=False))
"""


def test_identical_across_processes_and_hash_seeds(data_root):
    here = split_samples(scan_dataset("jtsc_zheng18", data_root).samples, SplitConfig("kfold", seed=11))
    outs = []
    for hash_seed in ("1", "4242"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        r = subprocess.run([sys.executable, "-c", _SUBPROCESS, str(data_root)], capture_output=True, text=True, env=env, check=True)
        outs.append(r.stdout)
    assert outs[0] == outs[1] == here.to_csv(index=False)


def test_disk_round_trip_and_reuse(data_root, tmp_path):
    df = make_or_load_splits("cellavision_zheng18", kind="holdout", seed=5, root=data_root, out_dir=tmp_path)
    files = list(tmp_path.glob("*.csv"))
    assert [f.name for f in files] == ["cellavision_zheng18__coarse5__holdout0.2__seed5.csv"]
    stored, meta = read_splits(files[0])
    assert meta["seed"] == "5" and meta["dataset"] == "cellavision_zheng18"
    assert list(stored.columns) == ["relpath", "label", "split"]
    pd.testing.assert_frame_equal(stored, df[["relpath", "label", "split"]])
    # the second call reads the file: an edit on disk shows up (and nothing is rewritten)
    mtime = files[0].stat().st_mtime_ns
    flipped = stored.copy()
    flipped.loc[0, "split"] = "test" if flipped.loc[0, "split"] == "train" else "train"
    flipped.to_csv(files[0], index=False)
    again = make_or_load_splits("cellavision_zheng18", kind="holdout", seed=5, root=data_root, out_dir=tmp_path)
    assert again.loc[0, "split"] == flipped.loc[0, "split"]
    assert files[0].stat().st_mtime_ns >= mtime
    assert list(again.columns[:-1]) == list(df.columns[:-1]) and "path" in again


def test_stale_split_file_is_refused(data_root, tmp_path):
    scan = scan_dataset("jtsc_zheng18", data_root)
    make_or_load_splits(scan, kind="kfold", out_dir=tmp_path)
    scan.samples = scan.samples.iloc[:-3]  # data changed: three images gone
    with pytest.raises(SplitMismatch, match="3 in the file but not in the data"):
        make_or_load_splits(scan, kind="kfold", out_dir=tmp_path)
    remade = make_or_load_splits(scan, kind="kfold", out_dir=tmp_path, overwrite=True)
    assert len(remade) == 297 and remade["fold"].notna().all()
