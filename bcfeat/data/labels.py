"""The one label map of the project: fine labels -> cell types -> label spaces.

The paper (Salehi, Sadafi et al., MICCAI 2022, Sec. 3 "Datasets") compares
datasets through the 13 classes they share (``COMMON13``); the three small sets
available here only say basophil/eosinophil/lymphocyte/monocyte/neutrophil, so
the space all four staged sets share is ``COARSE5``.

Every dataset's own vocabulary (file-name prefixes, class codes, folder names)
is translated here, once, into a *cell type*: one of the 13 common classes or a
named type outside them (platelet, unspecified neutrophil, ...). A cell type
then maps to at most one label in each label space. A sample whose cell type
has no label in the chosen space is excluded (and counted by the scanner),
never relabelled into a neighbouring class.

>>> to_common13("neutrophil_unspecified") is None
True
>>> to_coarse5("neutrophil_unspecified")
'neutrophil'
>>> cell_type_of("pbc_prefix", "MMY"), to_coarse5("metamyelocyte") is None
('metamyelocyte', True)
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

COMMON13: tuple[str, ...] = (
    "basophil",
    "eosinophil",
    "erythroblast",
    "myeloblast",
    "promyelocyte",
    "myelocyte",
    "metamyelocyte",
    "neutrophil_banded",
    "neutrophil_segmented",
    "monocyte",
    "lymphocyte_typical",
    "lymphocyte_atypical",
    "smudge_cell",
)

COARSE5: tuple[str, ...] = ("basophil", "eosinophil", "lymphocyte", "monocyte", "neutrophil")

# Cell types named by some dataset that have no common13 class. They are kept
# distinct (not folded into a neighbour) so exclusions can be counted by type.
OUTSIDE_COMMON13: tuple[str, ...] = (
    "neutrophil_unspecified",  # PBC "NEUTROPHIL", and the small sets' "neutrophil"
    "lymphocyte_unspecified",  # a user folder that only says "lymphocyte"
    "ig_unspecified",  # PBC "IG": immature granulocyte, stage not given
    "platelet",
    "promyelocyte_bilobed",  # Matek-19 PMB (faggot/bilobed promyelocyte in APL)
    "large_granular_lymphocyte",  # MLL23 04-LGL
    "plasma_cell",  # MLL23 16-PLZ
    "hairy_cell",  # MLL23 21-Haarzelle
    "promyelocyte_atypical",  # MLL23 22-Atyp-PMYEL
)

CELL_TYPES: tuple[str, ...] = COMMON13 + OUTSIDE_COMMON13

LABEL_SPACES: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {"common13": COMMON13, "coarse5": COARSE5}
)

_COARSE5_OF: dict[str, str] = {
    "basophil": "basophil",
    "eosinophil": "eosinophil",
    "monocyte": "monocyte",
    "lymphocyte_typical": "lymphocyte",
    "lymphocyte_atypical": "lymphocyte",
    "lymphocyte_unspecified": "lymphocyte",
    "neutrophil_banded": "neutrophil",
    "neutrophil_segmented": "neutrophil",
    "neutrophil_unspecified": "neutrophil",
    # erythroblast, blasts, immature granulocytes, smudge cells, platelets and
    # the MLL23 extras have no coarse5 class on purpose: absent means excluded.
}

# --- dataset vocabularies -> cell types ------------------------------------
# Keys are compared case-insensitively (see ``cell_type_of``).

# Acevedo-20 / PBC: the file-name prefix before the first "_" (e.g. SNE_12345.jpg).
PBC_PREFIXES: Mapping[str, str] = MappingProxyType(
    {
        "BA": "basophil",
        "EO": "eosinophil",
        "ERB": "erythroblast",
        "LY": "lymphocyte_typical",
        "MO": "monocyte",
        "PLATELET": "platelet",
        "BNE": "neutrophil_banded",
        "SNE": "neutrophil_segmented",
        "NEUTROPHIL": "neutrophil_unspecified",
        "PMY": "promyelocyte",
        "MY": "myelocyte",
        "MMY": "metamyelocyte",
        "IG": "ig_unspecified",
    }
)

# Matek-19 (AML-Cytomorphology_LMU): class code folders, file names CODE_0001.tiff.
MATEK19_CODES: Mapping[str, str] = MappingProxyType(
    {
        "BAS": "basophil",
        "EOS": "eosinophil",
        "EBO": "erythroblast",
        "MYO": "myeloblast",
        "PMO": "promyelocyte",
        "MYB": "myelocyte",
        "MMZ": "metamyelocyte",
        "NGB": "neutrophil_banded",
        "NGS": "neutrophil_segmented",
        "MON": "monocyte",
        "MOB": "monocyte",  # monoblast; mapped to monocyte as in the datasets README
        "LYT": "lymphocyte_typical",
        "LYA": "lymphocyte_atypical",
        "KSC": "smudge_cell",
        "PMB": "promyelocyte_bilobed",
    }
)

# MLL23 (public relative of the in-house INT-20): numbered folders.
MLL23_FOLDERS: Mapping[str, str] = MappingProxyType(
    {
        "01-NORMO": "erythroblast",
        "04-LGL": "large_granular_lymphocyte",
        "05-MONO": "monocyte",
        "08-LYMPH-neo": "lymphocyte_atypical",
        "09-BASO": "basophil",
        "10-EOS": "eosinophil",
        "11-STAB": "neutrophil_banded",
        "12-LYMPH-reaktiv": "lymphocyte_atypical",
        "13-MYBL": "myeloblast",
        "14-LYMPH-typ": "lymphocyte_typical",
        "15-SEG": "neutrophil_segmented",
        "16-PLZ": "plasma_cell",
        "17-Kernschatten": "smudge_cell",
        "18-PMYEL": "promyelocyte",
        "19-MYEL": "myelocyte",
        "20-Meta": "metamyelocyte",
        "21-Haarzelle": "hairy_cell",
        "22-Atyp-PMYEL": "promyelocyte_atypical",
    }
)

# The small coarse sets (Zheng-18 x2, BCCD crops): one folder per coarse class.
# Their "neutrophil" does not say band or segmented, so it is the unspecified
# type (outside common13, inside coarse5). Their "lymphocyte" follows the
# staged manifests (common13 = lymphocyte_typical): these are routine smears
# whose curators did not separate reactive forms.
COARSE_FOLDERS: Mapping[str, str] = MappingProxyType(
    {
        "basophil": "basophil",
        "eosinophil": "eosinophil",
        "lymphocyte": "lymphocyte_typical",
        "monocyte": "monocyte",
        "neutrophil": "neutrophil_unspecified",
    }
)

# Zheng-18 public release: integer codes in "Class Labels of Dataset N.csv".
# Checked against the staged class folders of all 400 images.
ZHENG18_CODES: Mapping[str, str] = MappingProxyType(
    {"1": "neutrophil", "2": "lymphocyte", "3": "monocyte", "4": "eosinophil", "5": "basophil"}
)


def _generic_names() -> dict[str, str]:
    # A user's folder may be named after any cell type or coarse5 class. A bare
    # "lymphocyte"/"neutrophil" says nothing about the subtype, so it maps to the
    # unspecified type: inside coarse5, outside common13.
    names = {t: t for t in CELL_TYPES}
    names.update({"lymphocyte": "lymphocyte_unspecified", "neutrophil": "neutrophil_unspecified"})
    return names


GENERIC_FOLDERS: Mapping[str, str] = MappingProxyType(_generic_names())

# Vocabulary per layout name; the registry's layouts refer to these by name.
VOCABULARIES: Mapping[str, Mapping[str, str]] = MappingProxyType(
    {
        "pbc_prefix": PBC_PREFIXES,
        "matek19": MATEK19_CODES,
        "mll23": MLL23_FOLDERS,
        "coarse_folders": COARSE_FOLDERS,
        "zheng18_release": COARSE_FOLDERS,
        "generic": GENERIC_FOLDERS,
    }
)


def normalise_name(name: str) -> str:
    """Case- and separator-insensitive key for a class name.

    >>> normalise_name("Neutrophil Segmented"), normalise_name("08-LYMPH-neo")
    ('neutrophil_segmented', '08_lymph_neo')
    """
    return "_".join(name.strip().lower().replace("-", " ").replace("_", " ").split())


def _index(vocabulary: Mapping[str, str]) -> dict[str, str]:
    return {normalise_name(k): v for k, v in vocabulary.items()}


_INDEXED = {layout: _index(vocab) for layout, vocab in VOCABULARIES.items()}
# MLL23 folders are also matched without their number ("MYBL" for "13-MYBL"),
# so a renumbered copy still parses.
_INDEXED["mll23"].update(
    {normalise_name(k.split("-", 1)[1]): v for k, v in MLL23_FOLDERS.items()}
)


def cell_type_of(vocabulary: str, fine_label: str) -> str | None:
    """Cell type of a dataset's fine label, or None when the label is unknown.

    Parameters
    ----------
    vocabulary : str
        A key of ``VOCABULARIES`` (the layout's name, e.g. ``"pbc_prefix"``).
    fine_label : str
        The label as the dataset spells it (``"SNE"``, ``"13-MYBL"``, ``"neutrophil"``).

    >>> cell_type_of("mll23", "13-mybl"), cell_type_of("pbc_prefix", "XYZ") is None
    ('myeloblast', True)
    """
    try:
        table = _INDEXED[vocabulary]
    except KeyError:
        raise KeyError(
            f"unknown label vocabulary {vocabulary!r}; known: {sorted(VOCABULARIES)}"
        ) from None
    return table.get(normalise_name(fine_label))


def _check_cell_type(cell_type: str) -> None:
    if cell_type not in CELL_TYPES:
        raise ValueError(f"unknown cell type {cell_type!r}; known: {CELL_TYPES}")


def to_common13(cell_type: str) -> str | None:
    """The common13 class of a cell type, or None when it is outside common13."""
    _check_cell_type(cell_type)
    return cell_type if cell_type in COMMON13 else None


def to_coarse5(cell_type: str) -> str | None:
    """The coarse5 class of a cell type, or None when it is outside coarse5.

    Accepts common13 names too (they are cell types), so the chain
    fine -> common13 -> coarse5 is ``to_coarse5(to_common13(t))`` wherever
    common13 is defined; unspecified neutrophils/lymphocytes reach coarse5
    directly.
    """
    _check_cell_type(cell_type)
    return _COARSE5_OF.get(cell_type)


def to_label_space(cell_type: str, label_space: str | None) -> str | None:
    """The label of ``cell_type`` in ``label_space`` ("common13", "coarse5").

    ``label_space=None`` means no label space: the cell type itself is the label.
    """
    if label_space is None:
        _check_cell_type(cell_type)
        return cell_type
    if label_space == "common13":
        return to_common13(cell_type)
    if label_space == "coarse5":
        return to_coarse5(cell_type)
    raise ValueError(f"unknown label space {label_space!r}; use one of {sorted(LABEL_SPACES)} or None")


def check_label_space(label_space: str | None) -> None:
    """Raise ValueError naming the choices when ``label_space`` is not known."""
    if label_space is not None and label_space not in LABEL_SPACES:
        raise ValueError(f"unknown label space {label_space!r}; use one of {sorted(LABEL_SPACES)} or None")
