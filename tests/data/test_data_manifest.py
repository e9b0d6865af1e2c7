"""Verification against the manifests: the real data is intact; damage in a fake root is found."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest

from bcfeat.runner.cli import main
from bcfeat.data import verify_dataset

STAGED = ("pbc_acevedo20", "jtsc_zheng18", "cellavision_zheng18", "bccd_crops")


@pytest.mark.parametrize("name", STAGED)
def test_real_data_matches_its_manifest_by_size(name, data_root, manifest_dir, manifests):
    r = verify_dataset(name, data_root, manifest_dir=manifest_dir, fast=True)
    assert r.ok, r.summary()
    assert r.n_checked == r.n_expected == len(manifests[name])
    assert (r.counts["expected"] == r.counts["found"]).all()
    assert r.counts["expected"].sum() == len(manifests[name])


def test_real_data_sha256_small_set_and_a_pbc_sample(data_root, manifest_dir, manifests):
    r = verify_dataset("jtsc_zheng18", data_root, manifest_dir=manifest_dir)
    assert r.ok and not r.fast
    sample = manifests["pbc_acevedo20"]["file"].iloc[::170].tolist()  # ~50 files across all classes
    r = verify_dataset("pbc_acevedo20", data_root, manifest_dir=manifest_dir, only=sample)
    assert r.ok, r.summary()


def test_release_folder_is_verified_by_source_path(data_root, manifest_dir, tmp_path):
    (tmp_path / "PBC_dataset_normal_DIB").symlink_to(data_root / "pbc_acevedo20", target_is_directory=True)
    r = verify_dataset("pbc_acevedo20", tmp_path, manifest_dir=manifest_dir, fast=True)
    assert r.ok and r.folder.name == "PBC_dataset_normal_DIB" and r.n_checked == 8547


@pytest.fixture
def fake_root(tmp_path, data_root, manifests):
    """A data root with 8 real jtsc_zheng18 files (2 per class) and a manifest listing exactly them."""
    m = manifests["jtsc_zheng18"]
    m = m[m["class_folder"].isin(["eosinophil", "lymphocyte", "monocyte", "neutrophil"])].groupby("class_folder").head(2)
    root, mdir = tmp_path / "root", tmp_path / "manifests"
    for f in m["file"]:
        (root / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(data_root / f, root / f)
    mdir.mkdir()
    m.to_csv(mdir / "jtsc_zheng18.csv", index=False)
    return root, mdir, m.reset_index(drop=True)


def test_clean_fake_root_passes(fake_root):
    root, mdir, m = fake_root
    r = verify_dataset("jtsc_zheng18", root, manifest_dir=mdir)
    assert r.ok and r.n_checked == 8
    assert main(["verify", "--root", str(root), "--manifests", str(mdir), "--dataset", "jtsc_zheng18"]) == 0


def test_missing_altered_and_unexpected_files_are_found(fake_root, capsys):
    root, mdir, m = fake_root
    gone, grown, flipped = (m["file"][i] for i in (0, 2, 5))
    (root / gone).unlink()
    with open(root / grown, "ab") as f:
        f.write(b"\x00")  # size changes
    data = bytearray((root / flipped).read_bytes())
    data[100] ^= 0xFF  # same size, other content
    (root / flipped).write_bytes(bytes(data))
    shutil.copyfile(root / m["file"][1], root / "jtsc_zheng18/monocyte/999.bmp")
    (root / "jtsc_zheng18" / ".DS_Store").write_bytes(b"x")  # junk is not "unexpected"

    strip = lambda f: f.split("/", 1)[1]  # noqa: E731
    r = verify_dataset("jtsc_zheng18", root, manifest_dir=mdir)
    assert not r.ok
    assert r.missing == [strip(gone)]
    size = int(m.set_index("file").loc[grown, "bytes"])
    assert dict(r.altered) == {strip(grown): f"size {size + 1} != {size}", strip(flipped): "sha256 differs"}
    assert r.unexpected == ["monocyte/999.bmp"]
    cls = m["class_folder"][0]
    assert r.counts.loc[cls, "expected"] == 2 and r.counts.loc[cls, "found"] == 1

    fast = verify_dataset("jtsc_zheng18", root, manifest_dir=mdir, fast=True)
    assert [f for f, _ in fast.altered] == [strip(grown)]  # size-only mode cannot see the flipped byte

    rc = main(["verify", "--root", str(root), "--manifests", str(mdir), "--dataset", "jtsc_zheng18"])
    out = capsys.readouterr().out
    assert rc == 1
    assert "PROBLEMS" in out and "1 missing" in out and "2 altered" in out and "1 unexpected" in out


def test_cli_verify_real_data_fast(data_root, manifest_dir, capsys):
    assert main(["verify", "--root", str(data_root), "--manifests", str(manifest_dir), "--fast"]) == 0
    out = capsys.readouterr().out
    assert "verified 4 dataset(s)" in out and "all OK" in out


def test_cli_verify_without_data_root_exits_2(tmp_path, capsys):
    assert main(["verify", "--root", str(tmp_path / "none")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_manifest_counts_are_per_class_folder(data_root, manifest_dir, manifests):
    r = verify_dataset("pbc_acevedo20", data_root, manifest_dir=manifest_dir, fast=True)
    want = manifests["pbc_acevedo20"]["class_folder"].value_counts().sort_index()
    pd.testing.assert_series_equal(r.counts["expected"].sort_index(), want, check_names=False)


def test_cli_verify_checks_every_dataset_when_some_are_missing(fake_root, manifests, capsys):
    """A root holding one dataset: that one is verified, each absent one is named, exit 1."""
    root, mdir, _ = fake_root
    manifests["bccd_crops"].to_csv(mdir / "bccd_crops.csv", index=False)
    manifests["cellavision_zheng18"].to_csv(mdir / "cellavision_zheng18.csv", index=False)
    rc = main(["verify", "--root", str(root), "--manifests", str(mdir)])
    out = capsys.readouterr().out
    assert rc == 1
    assert "bccd_crops: MISSING" in out and "cellavision_zheng18: MISSING" in out
    assert "jtsc_zheng18" in out and "verified 3 dataset(s)" in out and "2 with problems" in out
