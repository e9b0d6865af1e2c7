"""The one label map: label spaces, and every manifest row mapped like the manifest says."""

from __future__ import annotations

import pytest

from bcfeat.data import labels as L
from bcfeat.data import scan_dataset

# The datasets README, written out independently of bcfeat.data.labels:
# coarse5 neutrophil = band + segmented + unspecified; lymphocyte = typical + atypical;
# erythroblast, blasts, immature granulocytes, smudge cells and platelets are outside.
README_COARSE5 = {
    "basophil": "basophil",
    "eosinophil": "eosinophil",
    "monocyte": "monocyte",
    "lymphocyte_typical": "lymphocyte",
    "lymphocyte_atypical": "lymphocyte",
    "neutrophil_banded": "neutrophil",
    "neutrophil_segmented": "neutrophil",
}
LAYOUT_OF = {
    "pbc_acevedo20": "pbc_prefix",
    "jtsc_zheng18": "coarse_folders",
    "cellavision_zheng18": "coarse_folders",
    "bccd_crops": "coarse_folders",
}


def test_label_spaces_are_the_papers():
    assert len(L.COMMON13) == 13 and len(set(L.COMMON13)) == 13
    assert L.COARSE5 == ("basophil", "eosinophil", "lymphocyte", "monocyte", "neutrophil")
    assert set(L.COMMON13).isdisjoint(L.OUTSIDE_COMMON13)
    # every common13 class either has one coarse5 class or is deliberately outside
    for t in L.COMMON13:
        assert L.to_coarse5(t) == README_COARSE5.get(t)


@pytest.mark.parametrize(
    "cell_type, common13, coarse5",
    [
        ("neutrophil_unspecified", None, "neutrophil"),
        ("ig_unspecified", None, None),
        ("platelet", None, None),
        ("erythroblast", "erythroblast", None),
        ("smudge_cell", "smudge_cell", None),
        ("lymphocyte_atypical", "lymphocyte_atypical", "lymphocyte"),
        ("promyelocyte_bilobed", None, None),
    ],
)
def test_outside_means_none(cell_type, common13, coarse5):
    assert L.to_common13(cell_type) == common13
    assert L.to_coarse5(cell_type) == coarse5
    assert L.to_label_space(cell_type, None) == cell_type


def test_unknown_names_are_errors_not_guesses():
    with pytest.raises(ValueError, match="unknown cell type"):
        L.to_coarse5("neutrophill")
    with pytest.raises(ValueError, match="label space"):
        L.to_label_space("basophil", "coarse6")
    assert L.cell_type_of("pbc_prefix", "XYZ") is None


def test_prefixes_are_not_matched_by_substring():
    # MY is inside MMY and PMY; NE is inside BNE/SNE/NEUTROPHIL: each must map to its own type
    assert L.cell_type_of("pbc_prefix", "MY") == "myelocyte"
    assert L.cell_type_of("pbc_prefix", "MMY") == "metamyelocyte"
    assert L.cell_type_of("pbc_prefix", "PMY") == "promyelocyte"
    assert L.cell_type_of("pbc_prefix", "SNE") == "neutrophil_segmented"
    assert L.cell_type_of("pbc_prefix", "BNE") == "neutrophil_banded"
    assert L.cell_type_of("pbc_prefix", "NEUTROPHIL") == "neutrophil_unspecified"


def test_every_manifest_row_maps_to_the_manifest_common13(manifests):
    # The manifests write "unknown" / "neutrophil_unspecified" for samples outside common13.
    for name, m in manifests.items():
        for fine, expected in zip(m["fine_label"], m["common13"]):
            cell_type = L.cell_type_of(LAYOUT_OF[name], fine)
            assert cell_type is not None, f"{name}: fine label {fine!r} unmapped"
            want = expected if expected in L.COMMON13 else None
            assert L.to_common13(cell_type) == want, (name, fine, expected)


def test_every_manifest_row_maps_to_the_readme_coarse5(manifests):
    for name, m in manifests.items():
        for fine, folder, c13 in zip(m["fine_label"], m["class_folder"], m["common13"]):
            got = L.to_coarse5(L.cell_type_of(LAYOUT_OF[name], fine))
            # unspecified neutrophils (PBC "NEUTROPHIL", small sets' "neutrophil") are coarse5 neutrophils
            want = README_COARSE5.get(c13) or ("neutrophil" if fine.lower() == "neutrophil" else None)
            assert got == want, (name, fine, folder)


def test_scanned_labels_match_the_manifest_per_file(data_root, manifests):
    for name, m in manifests.items():
        samples = scan_dataset(name, data_root, label_space=None).samples
        assert len(samples) == len(m)
        by_file = dict(zip(m["file"].str.split("/", n=1).str[1], zip(m["fine_label"], m["common13"])))
        for rel, fine, c13 in zip(samples["relpath"], samples["fine_label"], samples["common13"]):
            want_fine, want_c13 = by_file[rel]
            assert fine == want_fine
            assert (c13 if isinstance(c13, str) else None) == (want_c13 if want_c13 in L.COMMON13 else None)


def test_matek19_and_mll23_vocabularies_follow_the_readme():
    assert {k: L.to_common13(v) for k, v in L.MATEK19_CODES.items()} == {
        "BAS": "basophil", "EOS": "eosinophil", "EBO": "erythroblast", "MYO": "myeloblast",
        "PMO": "promyelocyte", "MYB": "myelocyte", "MMZ": "metamyelocyte", "NGB": "neutrophil_banded",
        "NGS": "neutrophil_segmented", "MON": "monocyte", "MOB": "monocyte", "LYT": "lymphocyte_typical",
        "LYA": "lymphocyte_atypical", "KSC": "smudge_cell", "PMB": None,
    }  # fmt: skip
    outside = {k for k, v in L.MLL23_FOLDERS.items() if L.to_common13(v) is None}
    assert outside == {"04-LGL", "16-PLZ", "21-Haarzelle", "22-Atyp-PMYEL"}
    assert L.to_common13(L.MLL23_FOLDERS["08-LYMPH-neo"]) == "lymphocyte_atypical"
    assert L.to_common13(L.MLL23_FOLDERS["12-LYMPH-reaktiv"]) == "lymphocyte_atypical"
    assert L.to_common13(L.MLL23_FOLDERS["17-Kernschatten"]) == "smudge_cell"
    assert L.to_common13(L.MLL23_FOLDERS["01-NORMO"]) == "erythroblast"
    # covered: the 13 classes all appear in Matek-19 (the paper's reference set)
    assert {L.to_common13(v) for v in L.MATEK19_CODES.values()} - {None} == set(L.COMMON13)
