"""Files written for other people: the user's umask, not 0600; CSV cells that a spreadsheet would run are escaped."""

from __future__ import annotations

import os
import stat

import pandas as pd
import torch

from bcfeat.atomic_io import atomic_folder, atomic_torch_save, save_table


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_written_files_and_folders_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        save_table(pd.DataFrame({"a": [1]}), tmp_path / "t.csv")
        atomic_torch_save({"x": torch.zeros(1)}, tmp_path / "m.pt")
        with atomic_folder(tmp_path / "pack") as folder:
            (folder / "f.txt").write_text("x")
        assert _mode(tmp_path / "t.csv") == 0o644
        assert _mode(tmp_path / "m.pt") == 0o644
        assert _mode(tmp_path / "pack") == 0o755
        os.umask(0o077)
        save_table(pd.DataFrame({"a": [1]}), tmp_path / "private.csv")
        assert _mode(tmp_path / "private.csv") == 0o600
    finally:
        os.umask(old)


def test_csv_cells_that_would_run_as_formulas_are_escaped(tmp_path):
    table = pd.DataFrame({"relpath": ["=1+2.bmp", "a.png", "@SUM(A1).png", "-cmd.png"],
                          "predicted": ['=HYPERLINK("http://x","y")', "neutrophil", "+x", "lymphocyte"],
                          "probability": [-0.5, 0.9, 0.8, 0.7]})
    save_table(table, tmp_path / "p.csv")
    back = pd.read_csv(tmp_path / "p.csv")
    assert back["relpath"].tolist() == ["'=1+2.bmp", "a.png", "'@SUM(A1).png", "'-cmd.png"]
    assert back["predicted"].tolist() == ['\'=HYPERLINK("http://x","y")', "neutrophil", "'+x", "lymphocyte"]
    assert back["probability"].tolist() == [-0.5, 0.9, 0.8, 0.7]  # numbers untouched
    save_table(table, tmp_path / "p.parquet")
    assert pd.read_parquet(tmp_path / "p.parquet")["relpath"][0] == "=1+2.bmp"


def test_a_long_file_name_is_written_and_a_too_long_one_refused_before_work(tmp_path):
    from bcfeat.runner.cli import check_output_path

    long = tmp_path / ("x" * 245 + ".csv")  # 249 bytes: the temporary name must not add 14 more
    save_table(pd.DataFrame({"a": [1]}), long)
    assert long.read_text() == "a\n1\n"
    assert [p.name for p in tmp_path.iterdir()] == [long.name]
    import pytest

    with pytest.raises(ValueError, match="255"):
        check_output_path(tmp_path / ("y" * 260 + ".csv"))


def test_leftovers_of_a_killed_write_are_removed_by_the_next_one(tmp_path):
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()  # a process id that no longer runs
    stale = tmp_path / f".t.csv.{dead}.abcd1234.tmp"
    stale.write_text("a\n1\n")  # complete, but never renamed: the writer was killed
    stale_folder = tmp_path / f".pack.{dead}.abcd1234.tmp"
    stale_folder.mkdir()
    live = tmp_path / ".t.csv.1.abcd1234.tmp"  # process 1 runs: a write in progress, left alone
    live.write_text("x")
    save_table(pd.DataFrame({"a": [2]}), tmp_path / "t.csv")
    with atomic_folder(tmp_path / "pack") as folder:
        (folder / "f.txt").write_text("x")
    assert not stale.exists() and not stale_folder.exists()
    assert live.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["t.csv", "pack", live.name])
