"""Scanning datasets: real counts against the manifests, and the public layouts on small synthetic trees."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

from bcfeat.data import (
    DATASETS,
    DatasetNotFound,
    load_image,
    scan_dataset,
    scan_folder,
)
from bcfeat.data import labels as L
from bcfeat.data.registry import SAMPLE_COLUMNS

STAGED = ("pbc_acevedo20", "jtsc_zheng18", "cellavision_zheng18", "bccd_crops")


# --- the real staged data -------------------------------------------------------------


@pytest.mark.parametrize("name", STAGED)
def test_counts_per_class_folder_match_the_manifest(name, data_root, manifests):
    scan = scan_dataset(name, data_root, label_space=None)
    m = manifests[name]
    assert len(scan.samples) == len(m)
    assert not scan.excluded and not scan.skipped
    got = scan.samples["class_folder"].value_counts().sort_index()
    want = m["class_folder"].value_counts().sort_index()
    pd.testing.assert_series_equal(got, want, check_names=False)
    # the same files, not only the same numbers
    assert sorted(scan.samples["relpath"]) == sorted(m["file"].str.split("/", n=1).str[1])


def test_pbc_has_8547_files_and_8_folders(data_root):
    scan = scan_dataset("pbc_acevedo20", data_root, label_space=None)
    assert len(scan.samples) == 8547
    assert scan.samples["class_folder"].nunique() == 8
    assert list(scan.samples.columns) == list(SAMPLE_COLUMNS)


def test_pbc_coarse5_excludes_and_counts_what_is_outside(data_root, manifests):
    m = manifests["pbc_acevedo20"]
    scan = scan_dataset("pbc_acevedo20", data_root, label_space="coarse5")
    fine_counts = m["fine_label"].value_counts()
    outside = {"ERB": "erythroblast", "PLATELET": "platelet", "IG": "ig_unspecified",
               "PMY": "promyelocyte", "MY": "myelocyte", "MMY": "metamyelocyte"}  # fmt: skip
    assert scan.excluded == Counter({f"outside_coarse5/{t}": int(fine_counts[f]) for f, t in outside.items()})
    assert len(scan.samples) + scan.n_excluded == 8547
    # nothing relabelled: every kept sample's label is its own cell type's coarse5 class
    assert set(scan.samples["fine_label"]) == {"BA", "EO", "LY", "MO", "BNE", "SNE", "NEUTROPHIL"}
    assert scan.counts()["neutrophil"] == fine_counts["BNE"] + fine_counts["SNE"] + fine_counts["NEUTROPHIL"]
    assert (scan.samples["label"] == scan.samples["coarse5"]).all()


def test_pbc_common13_excludes_unspecified_and_platelets(data_root, manifests):
    fine_counts = manifests["pbc_acevedo20"]["fine_label"].value_counts()
    scan = scan_dataset("pbc_acevedo20", data_root, label_space="common13")
    assert scan.excluded == Counter(
        {
            "outside_common13/platelet": int(fine_counts["PLATELET"]),
            "outside_common13/ig_unspecified": int(fine_counts["IG"]),
            "outside_common13/neutrophil_unspecified": int(fine_counts["NEUTROPHIL"]),
        }
    )
    assert set(scan.samples["label"]) <= set(L.COMMON13)
    assert scan.samples["label"].nunique() == 10  # Acevedo-20 covers 10 of the 13


@pytest.mark.parametrize("name", ["jtsc_zheng18", "cellavision_zheng18", "bccd_crops"])
def test_small_sets_neutrophils_are_unspecified(name, data_root, manifests):
    m = manifests[name]
    n_neutro = int((m["class_folder"] == "neutrophil").sum())
    coarse = scan_dataset(name, data_root, "coarse5")
    assert not coarse.excluded and coarse.counts()["neutrophil"] == n_neutro
    common = scan_dataset(name, data_root, "common13")
    assert common.excluded == Counter({"outside_common13/neutrophil_unspecified": n_neutro})


def test_samples_are_sorted_by_relative_path_and_paths_exist(data_root):
    s = scan_dataset("cellavision_zheng18", data_root).samples
    assert list(s["relpath"]) == sorted(s["relpath"])
    assert all(Path(p).is_file() and p.endswith(r) for p, r in zip(s["path"], s["relpath"]))


def test_release_folder_name_is_found(data_root, tmp_path):
    # the public archive extracts to PBC_dataset_normal_DIB/: a link stands in for it
    (tmp_path / "PBC_dataset_normal_DIB").symlink_to(data_root / "pbc_acevedo20", target_is_directory=True)
    via_release = scan_dataset("pbc_acevedo20", tmp_path)
    staged = scan_dataset("pbc_acevedo20", data_root)
    assert via_release.folder.name == "PBC_dataset_normal_DIB"
    pd.testing.assert_frame_equal(via_release.samples.drop(columns="path"), staged.samples.drop(columns="path"))


def test_root_may_be_the_dataset_folder_itself(data_root):
    s = scan_dataset("jtsc_zheng18", data_root / "jtsc_zheng18")
    assert len(s) == 300


def test_missing_dataset_names_every_folder_tried(tmp_path):
    with pytest.raises(DatasetNotFound) as e:
        scan_dataset("pbc_acevedo20", tmp_path)
    assert str(tmp_path / "pbc_acevedo20") in str(e.value)
    assert str(tmp_path / "PBC_dataset_normal_DIB") in str(e.value)
    with pytest.raises(KeyError, match="unknown dataset"):
        scan_dataset("pbc", tmp_path)


def test_empty_dataset_folder_is_an_error_naming_it(tmp_path):
    (tmp_path / "bccd_crops" / "basophil").mkdir(parents=True)
    (tmp_path / "bccd_crops" / "README.md").write_text("not an image")
    with pytest.raises(DatasetNotFound, match="holds no image files") as e:
        scan_dataset("bccd_crops", tmp_path)
    assert str(tmp_path / "bccd_crops") in str(e.value)


# --- synthetic trees with the public names --------------------------------------------


def _tiny_tiff(path: Path, rgba: bool = True, size: int = 6) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    a = np.random.default_rng(len(path.name)).integers(0, 255, (size, size, 4 if rgba else 3), dtype=np.uint8)
    if rgba:
        a[..., 3] = 255  # Matek-19 TIFFs are RGBA with an opaque alpha
    tifffile.imwrite(path, a, photometric="rgb")


def test_matek19_layout(tmp_path):
    root = tmp_path / "AML-Cytomorphology_LMU"  # the TCIA release folder name
    for code in L.MATEK19_CODES:
        for i in (1, 2):
            _tiny_tiff(root / code / f"{code}_{i:04d}.tiff")
    _tiny_tiff(root / "NGS" / "NGB_0099.tiff")  # file name disagrees with its folder
    (root / "NGS" / "Thumbs.db").write_bytes(b"x")
    scan = scan_dataset("matek19", tmp_path, "common13")
    assert scan.layout == "matek19"
    s = scan.samples
    assert len(s) == 2 * 14
    row = s.set_index("relpath").loc["NGS/NGS_0001.tiff"]
    assert (row["fine_label"], row["common13"], row["coarse5"]) == ("NGS", "neutrophil_segmented", "neutrophil")
    assert s.set_index("relpath").loc["MOB/MOB_0002.tiff", "label"] == "monocyte"
    assert scan.excluded == Counter({"outside_common13/promyelocyte_bilobed": 2, "folder_label_conflict/NGS:NGB": 1})
    assert scan.ignored == ["NGS/Thumbs.db"]

    coarse = scan_dataset("matek19", tmp_path, "coarse5")
    assert sorted(coarse.samples["fine_label"].unique()) == ["BAS", "EOS", "LYA", "LYT", "MOB", "MON", "NGB", "NGS"]
    assert coarse.counts().to_dict() == {"basophil": 2, "eosinophil": 2, "lymphocyte": 4, "monocyte": 4, "neutrophil": 4}
    img = load_image(coarse.samples["path"].iloc[0])
    assert img.shape == (6, 6, 3) and img.dtype == np.uint8


def test_mll23_layout(tmp_path):
    root = tmp_path / "mll23"
    for folder in L.MLL23_FOLDERS:
        _tiny_tiff(root / folder / f"{folder}_img1.tif", rgba=False)
    _tiny_tiff(root / "99-Unbekannt" / "x.tif", rgba=False)
    _tiny_tiff(root / "13-mybl" / "lower_case_folder.tif", rgba=False)  # folder case differs
    scan = scan_dataset("mll23", tmp_path, "common13")
    s = scan.samples.set_index("relpath")
    assert s.loc["13-MYBL/13-MYBL_img1.tif", "label"] == "myeloblast"
    assert s.loc["13-mybl/lower_case_folder.tif", "label"] == "myeloblast"
    assert s.loc["12-LYMPH-reaktiv/12-LYMPH-reaktiv_img1.tif", "label"] == "lymphocyte_atypical"
    assert s.loc["01-NORMO/01-NORMO_img1.tif", "label"] == "erythroblast"
    assert set(scan.samples["label"]) == set(L.COMMON13)  # MLL23 covers all 13
    assert scan.excluded == Counter(
        {
            "outside_common13/large_granular_lymphocyte": 1,
            "outside_common13/plasma_cell": 1,
            "outside_common13/hairy_cell": 1,
            "outside_common13/promyelocyte_atypical": 1,
            "unknown_class_folder/99-Unbekannt": 1,
        }
    )
    coarse = scan_dataset("mll23", tmp_path, "coarse5")
    assert coarse.counts()["lymphocyte"] == 3  # typ + neo + reaktiv
    assert coarse.counts()["neutrophil"] == 2  # STAB + SEG


def _touch(path: Path, content: bytes = b"\xff\xd8not decoded by the scan") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)


def test_pbc_prefixes_conflicts_and_junk(tmp_path):
    root = tmp_path / "PBC_dataset_normal_DIB"
    for rel in [
        "basophil/BA_1.jpg", "ig/MMY_2.jpg", "ig/MY_3.jpg", "ig/PMY_4.jpg", "ig/IG_5.jpg",
        "neutrophil/SNE_6.jpg", "neutrophil/BNE_7.jpg", "neutrophil/NEUTROPHIL_8.jpg",
        "platelet/PLATELET_9.jpg", "basophil/EO_10.jpg", "eosinophil/XYZ_11.jpg", "eosinophil/EO_12.JPG",
    ]:  # fmt: skip
        _touch(root / rel)
    _touch(root / "eosinophil" / "EO_13.jpg", b"")  # empty: unreadable, skipped
    _touch(root / ".DS_Store", b"x")
    _touch(root / "eosinophil" / "._EO_12.JPG", b"x")  # macOS AppleDouble companion
    _touch(root / "README.txt", b"x")
    scan = scan_dataset("pbc_acevedo20", tmp_path, label_space=None)
    s = scan.samples.set_index("relpath")
    assert s.loc["ig/MMY_2.jpg", "cell_type"] == "metamyelocyte"
    assert s.loc["ig/MY_3.jpg", "cell_type"] == "myelocyte"
    assert s.loc["neutrophil/NEUTROPHIL_8.jpg", "cell_type"] == "neutrophil_unspecified"
    assert s.loc["eosinophil/EO_12.JPG", "cell_type"] == "eosinophil"
    assert scan.excluded == Counter({"folder_label_conflict/basophil:EO": 1, "unknown_fine_label/XYZ": 1})
    assert scan.skipped == [("eosinophil/EO_13.jpg", "empty file (0 bytes)")]
    assert sorted(scan.ignored) == [".DS_Store", "README.txt", "eosinophil/._EO_12.JPG"]


def test_zheng18_release_layout_reads_the_label_table(data_root, manifests, tmp_path):
    # the GitHub archive: "Dataset 1/NNN.bmp" + NNN.png masks + "Class Labels of Dataset 1.csv"
    release = tmp_path / "segmentation_WBC-master"
    (release / "Dataset 1").mkdir(parents=True)
    m = manifests["jtsc_zheng18"].head(40)
    code_of = {v: k for k, v in L.ZHENG18_CODES.items()}
    rows = ["image ID,class label"]
    for file, source, folder in zip(m["file"], m["source_path"], m["class_folder"]):
        name = Path(source).name
        os.symlink(data_root / file, release / "Dataset 1" / name)
        _touch(release / "Dataset 1" / name.replace(".bmp", ".png"), b"mask")
        rows.append(f"{int(Path(name).stem)},{code_of[folder]}")
    (release / "Class Labels of Dataset 1.csv").write_text("\n".join(rows) + "\n")
    scan = scan_dataset("jtsc_zheng18", tmp_path)
    assert scan.layout == "zheng18_release" and len(scan) == 40
    assert len(scan.ignored) == 40  # the masks are not samples
    want = dict(zip(m["source_path"].map(lambda p: Path(p).name), m["class_folder"]))
    got = dict(zip(scan.samples["relpath"], scan.samples["fine_label"]))
    assert got == want


def test_generic_layout_for_a_users_folder(tmp_path):
    root = tmp_path / "my_cells"
    from PIL import Image

    for folder, n in [("Neutrophil", 2), ("LYMPHOCYTE_TYPICAL", 1), ("lymphocyte", 1), ("Platelet", 1), ("junk", 1)]:
        for i in range(n):
            (root / folder).mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (4, 4), (i, 0, 0)).save(root / folder / f"{i}.png")
    _touch(root / "notes.md", b"x")
    coarse = scan_folder(root, "generic", "coarse5")
    assert coarse.dataset == "my_cells"
    assert coarse.counts().to_dict() == {"lymphocyte": 2, "neutrophil": 2}
    assert coarse.excluded == Counter({"outside_coarse5/platelet": 1, "unknown_class_folder/junk": 1})
    common = scan_folder(root, "generic", "common13")
    assert common.counts().to_dict() == {"lymphocyte_typical": 1}
    assert common.excluded == Counter(
        {
            "outside_common13/neutrophil_unspecified": 2,
            "outside_common13/lymphocyte_unspecified": 1,
            "outside_common13/platelet": 1,
            "unknown_class_folder/junk": 1,
        }
    )
    with pytest.raises(ValueError, match="unknown layout"):
        scan_folder(root, "imagefolder")


def test_check_images_skips_undecodable_files(tmp_path):
    from PIL import Image

    root = tmp_path / "cells"
    (root / "monocyte").mkdir(parents=True)
    Image.new("RGB", (5, 5)).save(root / "monocyte" / "good.png")
    (root / "monocyte" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    fast = scan_folder(root, "generic")
    assert len(fast) == 2  # the default scan does not decode
    checked = scan_folder(root, "generic", check_images=True)
    assert list(checked.samples["relpath"]) == ["monocyte/good.png"]
    assert [r for r, _ in checked.skipped] == ["monocyte/bad.png"]
    assert "bad.png" in checked.skipped[0][1]


def test_registry_lists_the_papers_datasets():
    assert set(DATASETS) == {"pbc_acevedo20", "matek19", "mll23", "jtsc_zheng18", "cellavision_zheng18", "bccd_crops"}
    assert ("PBC_dataset_normal_DIB", "pbc_prefix") in DATASETS["pbc_acevedo20"].release_folders
