"""A user's folder of images: links followed once, hidden and undecodable names named, never dropped."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from bcfeat.data.image_folders import folder_images


def _image(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), 100, np.uint8)).save(path)


def test_linked_class_folders_are_listed_and_a_link_loop_is_named_once(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    for cls in ("lymph", "mono", "neut"):
        _image(elsewhere / cls / "a.png")
    lab = tmp_path / "lab"
    _image(lab / "baso" / "a.png")
    for cls in ("lymph", "mono", "neut"):
        os.symlink(elsewhere / cls, lab / cls)
    os.symlink(lab, lab / "baso" / "loop")  # a loop back to the top
    table, dropped = folder_images(lab)
    assert sorted(table["relpath"]) == ["baso/a.png", "lymph/a.png", "mono/a.png", "neut/a.png"]
    assert dropped == [("baso/loop", "folder already listed (a link loop or a second link to it)")]


def test_hidden_files_and_folders_are_named_not_taken(tmp_path):
    _image(tmp_path / "lymph" / "a.png")
    _image(tmp_path / ".ipynb_checkpoints" / "a.png")
    _image(tmp_path / "lymph" / ".b.png")
    table, dropped = folder_images(tmp_path)
    assert list(table["relpath"]) == ["lymph/a.png"]
    assert dict(dropped) == {".ipynb_checkpoints": "hidden folder (names beginning with '.' are skipped)",
                             "lymph/.b.png": "hidden file (names beginning with '.' are skipped)"}


def test_a_name_that_is_not_utf8_is_named_with_its_bytes(tmp_path):
    _image(tmp_path / "ok.png")
    raw = os.fsencode(tmp_path) + b"/caf\xe9.png"
    with open(raw, "wb") as handle:
        handle.write((tmp_path / "ok.png").read_bytes())
    os.mkdir(os.fsencode(tmp_path) + b"/cl\xe4ss")
    table, dropped = folder_images(tmp_path)
    assert list(table["relpath"]) == ["ok.png"]
    assert dict(dropped) == {"caf\\xe9.png": "file name is not valid UTF-8", "cl\\xe4ss": "folder name is not valid UTF-8"}
    "\n".join(f"{p}: {r}" for p, r in dropped).encode("utf-8")  # printable and writable as is
