"""Atomic writes: a write that fails leaves the previous file as it was and no temporary file."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from bcfeat.atomic_io import atomic_path, atomic_torch_save, save_npz, save_table, write_text
from bcfeat.data.splits import read_splits, write_splits


class Unwritable:
    """A value that cannot be turned into text or pickled: the write fails half-way."""

    def __str__(self):
        raise RuntimeError("cannot format")

    def __reduce__(self):
        raise RuntimeError("cannot pickle")


def _fail_table(path):
    save_table(pd.DataFrame({"a": [1, 2, Unwritable()]}), path)


def _fail_npz(path):
    save_npz(path, X=np.arange(3), bad=np.array([Unwritable()], dtype=object))


def _fail_torch(path):
    atomic_torch_save({"weights": torch.zeros(3), "bad": Unwritable()}, path)


def _fail_text(path):
    write_text("naïve", path, encoding="ascii")


def _fail_splits(path):
    write_splits(pd.DataFrame({"relpath": ["a.png", "b.png"], "label": ["x", Unwritable()], "split": ["train", "test"]}),
                 path, {"seed": 0})


def _fail_in_block(path):
    with atomic_path(path) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("interrupted")


@pytest.mark.parametrize("name, fail", [("t.csv", _fail_table), ("t.parquet", _fail_table), ("f.npz", _fail_npz),
                                        ("m.pt", _fail_torch), ("n.txt", _fail_text), ("s.csv", _fail_splits),
                                        ("x.bin", _fail_in_block)])
def test_a_failed_write_keeps_the_previous_file_and_leaves_no_temporary(tmp_path, name, fail):
    if name.endswith(".parquet"):
        pytest.importorskip("pyarrow")
    target = tmp_path / name
    target.write_bytes(b"previous contents")
    with pytest.raises(Exception):
        fail(target)
    assert target.read_bytes() == b"previous contents"
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_a_failed_first_write_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        _fail_table(tmp_path / "new" / "t.csv")
    assert [p.name for p in (tmp_path / "new").iterdir()] == []


def test_writers_replace_the_file_and_create_folders(tmp_path):
    table = pd.DataFrame({"key": ["a", "b"], "value": [0.125, 2.0]})
    csv = save_table(table, tmp_path / "deep" / "t.csv")
    assert csv.read_text() == "key,value\na,0.125\nb,2.0\n"  # the bytes of DataFrame.to_csv(path, index=False)
    pd.testing.assert_frame_equal(pd.read_csv(save_table(table.iloc[:1], csv)), table.iloc[:1])
    assert save_table(table, tmp_path / "i.csv", index=True).read_text().startswith(",key,value\n0,a,")

    npz = save_npz(tmp_path / "arrays.npz", keys=np.array(["a", "b"]), X=np.eye(2))
    with np.load(npz) as stored:
        assert stored["keys"].tolist() == ["a", "b"] and stored["X"].tolist() == [[1.0, 0.0], [0.0, 1.0]]
    assert save_npz(tmp_path / "chunk_00001", X=np.zeros(1)).name == "chunk_00001"  # no ".npz" appended

    text = write_text("one\ntwo\n", tmp_path / "t" / "paths.txt")
    assert text.read_text() == "one\ntwo\n"
    write_text("three", text)
    assert text.read_text() == "three"

    model = atomic_torch_save({"w": torch.ones(2)}, tmp_path / "m.pt")
    assert torch.load(model, weights_only=True)["w"].tolist() == [1.0, 1.0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["arrays.npz", "chunk_00001", "deep", "i.csv", "m.pt", "t"]


def test_save_table_parquet_round_trip(tmp_path):
    pytest.importorskip("pyarrow")
    table = pd.DataFrame({"key": ["a", "b"], "value": [1.5, 2.5]})
    pd.testing.assert_frame_equal(pd.read_parquet(save_table(table, tmp_path / "t.parquet")), table)


def test_save_table_refuses_an_unknown_format_before_writing(tmp_path):
    with pytest.raises(ValueError, match=r"unknown table format '\.xlsx'; use one of \.csv, \.parquet"):
        save_table(pd.DataFrame({"a": [1]}), tmp_path / "t.xlsx")
    assert list(tmp_path.iterdir()) == []


def test_split_files_are_written_atomically_and_read_back(tmp_path):
    splits = pd.DataFrame({"relpath": ["a.png", "b.png"], "label": ["x", "y"], "split": ["train", "test"]})
    path = write_splits(splits, tmp_path / "s.csv", {"dataset": "d", "seed": 3})
    assert path.read_text().splitlines()[0] == "# bcfeat-splits dataset=d seed=3"
    back, meta = read_splits(path)
    pd.testing.assert_frame_equal(back, splits)
    assert meta == {"dataset": "d", "seed": "3"}
