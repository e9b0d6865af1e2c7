"""The compact data pack: written atomically, verified by sha256, read as a data root by every reader."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bcfeat import paths
from bcfeat.data import resolve_data_root, scan_dataset
from bcfeat.data.pack import PackConfig, site_scale, verify_pack, write_pack
from bcfeat.data.root import pack_of
from bcfeat.detection.mask_metrics import expert_mask_pairs
from bcfeat.runner.cli import main as cli_main

SITES = ("jtsc_zheng18", "cellavision_zheng18")


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A small shared-style folder: ``datasets/`` (two sites, BMP) and ``masks/`` beside it."""
    base = tmp_path_factory.mktemp("shared")
    rng = np.random.default_rng(0)
    for site, side, classes in (("jtsc_zheng18", 120, ("neutrophil", "lymphocyte")),
                                ("cellavision_zheng18", 300, ("monocyte", "eosinophil"))):
        (base / "masks" / site).mkdir(parents=True)
        for i in range(6):
            folder = base / "datasets" / site / classes[i % 2]
            folder.mkdir(parents=True, exist_ok=True)
            image = rng.integers(150, 255, (side, side, 3), dtype=np.uint8)
            Image.fromarray(image).save(folder / f"{i:03d}.bmp")
            mask = np.zeros((side, side), np.uint8)
            mask[side // 4:3 * side // 4, side // 4:3 * side // 4] = 128
            mask[side // 3:side // 2, side // 3:side // 2] = 255
            Image.fromarray(mask).save(base / "masks" / site / f"{i:03d}.png")
    (base / "datasets" / "jtsc_zheng18" / "neutrophil" / "notes.txt").write_text("not an image")
    return base


@pytest.fixture(scope="module")
def pack(source, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("out") / "pack"
    write_pack(out, source / "datasets", PackConfig(sites=SITES, max_mib=5))
    return out


def test_pack_keeps_the_layout_and_scales_each_site_once(source, pack):
    assert not [p for p in pack.parent.iterdir() if p.name.startswith(".")]  # no temporary folder left
    info = json.loads((pack / "pack.json").read_text())
    assert info["format"] == "bcfeat.pack/1" and info["settings"]["quality"] == PackConfig().quality
    assert info["sites"]["jtsc_zheng18"]["scale"] == 1.0  # never enlarged
    assert info["sites"]["cellavision_zheng18"]["scale"] == pytest.approx(256 / 300)
    root = resolve_data_root(pack)
    assert root == (pack / "datasets").resolve() and pack_of(root) == pack and pack_of(pack) == pack
    for site in SITES:
        original, packed = scan_dataset(site, source / "datasets").samples, scan_dataset(site, pack).samples
        assert [Path(r).with_suffix("").as_posix() for r in original["relpath"]] == \
               [Path(r).with_suffix("").as_posix() for r in packed["relpath"]]
        assert packed["relpath"].str.endswith(".jpg").all() and list(packed["label"]) == list(original["label"])
    with Image.open(pack / "datasets/cellavision_zheng18/monocyte/000.jpg") as image:
        assert image.size == (256, 256) and image.format == "JPEG"
    pairs = expert_mask_pairs("cellavision_zheng18", root)  # the masks beside the pack's datasets/
    assert len(pairs) == 6 and all(p.startswith(str(pack / "masks")) for p in pairs["mask_path"])
    mask = np.asarray(Image.open(pairs["mask_path"][0]))
    assert mask.shape == (256, 256) and set(np.unique(mask)) <= {0, 128, 255}


def test_manifest_lists_every_file_with_its_sha256(pack):
    import hashlib

    rows = list(csv.DictReader(open(pack / "manifest.csv")))
    listed = {r["path"] for r in rows}
    on_disk = {p.relative_to(pack).as_posix() for p in pack.rglob("*") if p.is_file()}
    assert on_disk - listed == {"pack.json", "manifest.csv"}
    for row in rows:
        assert hashlib.sha256((pack / row["path"]).read_bytes()).hexdigest() == row["sha256"]
    assert sum(r["kind"] == "image" for r in rows) == 12 and sum(r["kind"] == "mask" for r in rows) == 12
    assert verify_pack(pack).ok


def test_verify_names_every_file_that_differs(pack, tmp_path, capsys):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(pack, copy)
    assert cli_main(["verify", "--root", str(copy)]) == 0
    image = copy / "datasets/jtsc_zheng18/neutrophil/000.jpg"
    data = bytearray(image.read_bytes())
    data[-10] ^= 0xFF
    image.write_bytes(bytes(data))
    (copy / "masks/jtsc_zheng18/001.png").unlink()
    (copy / "datasets/jtsc_zheng18/neutrophil/extra.jpg").write_bytes(b"x")
    capsys.readouterr()
    assert cli_main(["verify", "--root", str(copy / "datasets")]) == 1  # the pack's datasets/ folder works too
    out = capsys.readouterr().out
    assert "altered: datasets/jtsc_zheng18/neutrophil/000.jpg (sha256 differs)" in out
    assert "missing: masks/jtsc_zheng18/001.png" in out
    assert "unexpected: datasets/jtsc_zheng18/neutrophil/extra.jpg" in out
    report = verify_pack(copy)
    assert not report.ok and len(report.altered) == 1 and len(report.missing) == 1 and len(report.unexpected) == 1


def test_bad_input_is_named_and_nothing_is_written(source, tmp_path, capsys):
    out = tmp_path / "p"
    assert cli_main(["pack", "--root", str(tmp_path / "nowhere"), "--output", str(out)]) == 2
    assert "nowhere" in capsys.readouterr().err
    assert cli_main(["pack", "--root", str(source / "datasets"), "--output", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err  # the default sites include two this root lacks
    assert "pbc_acevedo20" in err and "not found" in err and err.count("\n") == 1
    assert cli_main(["pack", "--root", str(source / "datasets"), "--output", str(source / "datasets" / "p"),
                     "--sites", ",".join(SITES)]) == 2
    assert "inside the data root" in capsys.readouterr().err
    assert cli_main(["pack", "--root", str(source / "datasets"), "--output", str(out), "--sites", ",".join(SITES),
                     "--max-mib", "0.01", "--no-progress"]) == 2
    assert "over the limit of 0.01 MiB" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # neither the pack nor a temporary folder
    out.mkdir()
    assert cli_main(["pack", "--root", str(source / "datasets"), "--output", str(out), "--sites", ",".join(SITES)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_overwrite_replaces_a_pack_only_when_the_new_one_is_complete(source, tmp_path):
    out = tmp_path / "p"
    write_pack(out, source / "datasets", PackConfig(sites=SITES, max_mib=5))
    first = (out / "pack.json").read_text()
    with pytest.raises(ValueError, match="over the limit"):
        write_pack(out, source / "datasets", PackConfig(sites=SITES, max_mib=0.01), overwrite=True)
    assert (out / "pack.json").read_text() == first and verify_pack(out).ok
    write_pack(out, source / "datasets", PackConfig(sites=SITES[:1], max_mib=5), overwrite=True)
    assert list(json.loads((out / "pack.json").read_text())["sites"]) == ["jtsc_zheng18"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p"]


def test_default_output_is_outside_the_repository():
    assert not Path(paths.PACK).resolve().is_relative_to(Path(paths.ROOT).resolve())


def test_site_scale_keeps_the_median_at_the_detector_input():
    assert site_scale([360, 363, 363, 369], 256) == pytest.approx(256 / 363)
    assert site_scale([120, 88, 120], 256) == 1.0
    with pytest.raises(ValueError, match="JPEG quality"):
        PackConfig(quality=0)


def test_real_sites_pack_and_read_back(data_root, tmp_path):
    """The shared cellavision set: 100 BMPs at 300 px -> 256 px JPEGs, labels and masks intact."""
    out = tmp_path / "pack"
    summary = write_pack(out, data_root, PackConfig(sites=("cellavision_zheng18",)))
    assert summary.sites["cellavision_zheng18"]["images"] == 100 and summary.sites["cellavision_zheng18"]["masks"] == 100
    original, packed = scan_dataset("cellavision_zheng18", data_root), scan_dataset("cellavision_zheng18", out)
    assert original.counts().to_dict() == packed.counts().to_dict()
    assert summary.total_bytes < 0.1 * sum(Path(p).stat().st_size for p in original.samples["path"])
    assert len(expert_mask_pairs("cellavision_zheng18", resolve_data_root(out))) == 100


def test_the_pack_is_sized_for_what_the_detector_reads():
    from bcfeat.data.pack import PackConfig
    from bcfeat.detection.config import DetectorConfig

    assert PackConfig().long_side == DetectorConfig().image_size == DetectorConfig.cpu().image_size


def test_pack_effect_pairs_seeds_and_compares_with_the_seed_spread():
    import pandas as pd

    from bcfeat.data.pack import pack_effect

    rows = [("original", 0, 0.50), ("original", 1, 0.70), ("pack", 0, 0.80), ("pack", 1, 0.90)]
    table = pd.DataFrame([{"data": d, "seed": s, "feature_set": "f", "test_site": "x", "balanced_accuracy": b}
                          for d, s, b in rows])
    out = pack_effect(table).iloc[0]
    assert out["diff_mean"] == pytest.approx(0.25) and out["diff_max_abs"] == pytest.approx(0.30)
    assert out["seed_std_original"] == pytest.approx(0.1414, abs=1e-4)
    assert not out["within_seed_spread"]  # 0.25 > 0.14


def _rehash(copy: Path, manifest_text: str) -> None:
    """Write a manifest and re-hash it into pack.json, as someone tampering with a pack would."""
    from bcfeat.data.manifest import sha256_of

    (copy / "manifest.csv").write_text(manifest_text)
    info = json.loads((copy / "pack.json").read_text())
    info["manifest_sha256"] = sha256_of(copy / "manifest.csv")
    (copy / "pack.json").write_text(json.dumps(info))


def test_verify_refuses_manifest_entries_that_leave_the_pack(pack, tmp_path):
    import os
    import shutil

    from bcfeat.data.manifest import sha256_of

    copy = tmp_path / "copy"
    shutil.copytree(pack, copy)
    outside = tmp_path / "secret.txt"
    outside.write_text("not yours")
    os.symlink(outside, copy / "datasets" / "link.txt")
    text = (copy / "manifest.csv").read_text()
    header = text.splitlines()[0].split(",")
    rows = []
    for rel in ("../secret.txt", str(outside), "datasets/link.txt"):
        values = {"path": rel, "sha256": sha256_of(outside), "bytes": str(outside.stat().st_size)}
        rows.append(",".join(values.get(h, "") for h in header))
    _rehash(copy, text.rstrip("\n") + "\n" + "\n".join(rows) + "\n")
    report = verify_pack(copy)
    assert not report.ok
    assert {rel for rel, _ in report.altered} == {"../secret.txt", str(outside), "datasets/link.txt"}
    assert all("leaves the pack" in reason for _, reason in report.altered)


def test_a_damaged_pack_json_or_manifest_is_named(pack, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(pack, copy)
    good = (copy / "pack.json").read_text()
    (copy / "pack.json").write_text(good[: len(good) // 2])
    with pytest.raises(ValueError, match="pack.json is damaged"):
        verify_pack(copy)
    (copy / "pack.json").write_text(good)
    _rehash(copy, "name,size\nx,1\n")
    with pytest.raises(ValueError, match="manifest.csv is damaged"):
        verify_pack(copy)
