"""The datasets the project knows, their on-disk layouts, and the scanner that lists their samples.

A *layout* says how a folder of images encodes labels (file-name prefix, class
code folder, numbered folder, a label CSV, ...). A *dataset spec* names a
dataset, the layout of its staged folder (``<root>/<name>/``) and the public
release folders it may sit under instead (``<root>/PBC_dataset_normal_DIB/``).
:func:`scan_dataset` turns a dataset into a table of samples with labels in one
label space; samples outside that space are excluded and counted, never
relabelled (see :mod:`bcfeat.data.labels`).

Datasets (paper Sec. 3 and the datasets README):

==========================  =========================================================
``pbc_acevedo20``           Acevedo-20 / PBC, ``PBC_dataset_normal_DIB/<class>/<PREFIX>_<id>.jpg``
``matek19``                 Matek-19, ``AML-Cytomorphology_LMU/<CODE>/<CODE>_0001.tiff``
``mll23``                   MLL23 (INT-20's public relative), ``<NN-NAME>/<file>.tif``
``jtsc_zheng18``            Zheng-18 Dataset 1, class folders or the GitHub release
``cellavision_zheng18``     Zheng-18 Dataset 2, class folders or the GitHub release
``bccd_crops``              BCCD white-cell crops, class folders
==========================  =========================================================

A user's own ``<root>/<class>/<image>`` folder is scanned with
``scan_folder(path, layout="generic")``.
"""

from __future__ import annotations

import csv
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from types import MappingProxyType

import pandas as pd

from bcfeat.data import labels as L
from bcfeat.data.images import IMAGE_SUFFIXES, ImageDecodeError, load_image
from bcfeat.data.root import resolve_data_root

SAMPLE_COLUMNS = (
    "path",  # absolute path of the file
    "relpath",  # POSIX path relative to the dataset folder: the stable key (splits, manifests)
    "dataset",
    "class_folder",
    "fine_label",  # the label as the dataset spells it (prefix, code, folder name)
    "cell_type",  # see labels.CELL_TYPES
    "common13",
    "coarse5",
    "label",  # the label in the chosen label space
)

# Files that are never images even with an image-like name, or never data.
_IGNORED_NAMES = frozenset({"thumbs.db", "desktop.ini", ".ds_store"})
_IGNORED_DIRS = frozenset({"__macosx", ".git", "@eadir"})
_LETTERS = re.compile(r"^[A-Za-z]+")


class DatasetNotFound(FileNotFoundError):
    """A dataset folder is missing or holds no images; the message names the paths."""


@dataclass(frozen=True)
class _Entry:
    relpath: PurePosixPath
    class_folder: str
    fine_label: str | None
    problem: str | None = None  # an exclusion reason decided by the layout itself


@dataclass(frozen=True)
class Layout:
    """How a folder of images encodes its labels.

    Attributes
    ----------
    name : str
        Layout name, also the key of its vocabulary in ``labels.VOCABULARIES``.
    description : str
        One line for humans.
    parse : callable
        ``(folder, image_relpaths) -> list[_Entry]``: the class folder and fine
        label of every image.
    suffixes : frozenset of str
        Which file suffixes are images of this layout (others are ignored).
    """

    name: str
    description: str
    parse: Callable[[Path, list[PurePosixPath]], list[_Entry]]
    suffixes: frozenset[str] = IMAGE_SUFFIXES
    max_depth: int | None = None  # only files at most this deep (1 = directly in the folder)


def _class_folder_entries(rels: Iterable[PurePosixPath], fine: Callable[[PurePosixPath], str]) -> list[_Entry]:
    out = []
    for rel in rels:
        if len(rel.parts) < 2:
            out.append(_Entry(rel, "", None, f"no_class_folder/{rel.name}"))
        else:
            out.append(_Entry(rel, rel.parts[0], fine(rel)))
    return out


def _parse_by_folder(folder: Path, rels: list[PurePosixPath]) -> list[_Entry]:
    return _class_folder_entries(rels, lambda rel: rel.parts[0])


def _letters_prefix(rel: PurePosixPath) -> str:
    # "SNE_12345.jpg" -> "SNE", "PLATELET_1.jpg" -> "PLATELET": the whole run of
    # letters, never a startswith test, so "MY" cannot swallow "MMY".
    m = _LETTERS.match(rel.name)
    return m.group(0).upper() if m else ""


# Which fine cell types each PBC folder may hold; a file whose prefix disagrees
# with its folder is excluded as a conflict rather than trusted either way.
_PBC_FOLDER_TYPES = {
    "basophil": {"basophil"},
    "eosinophil": {"eosinophil"},
    "erythroblast": {"erythroblast"},
    "ig": {"promyelocyte", "myelocyte", "metamyelocyte", "ig_unspecified"},
    "lymphocyte": {"lymphocyte_typical"},
    "monocyte": {"monocyte"},
    "neutrophil": {"neutrophil_banded", "neutrophil_segmented", "neutrophil_unspecified"},
    "platelet": {"platelet"},
}


def _parse_pbc(folder: Path, rels: list[PurePosixPath]) -> list[_Entry]:
    out = []
    for e in _class_folder_entries(rels, _letters_prefix):
        if e.problem is None:
            t = L.cell_type_of("pbc_prefix", e.fine_label)
            allowed = _PBC_FOLDER_TYPES.get(e.class_folder.lower())
            if t is not None and allowed is not None and t not in allowed:
                e = _Entry(e.relpath, e.class_folder, e.fine_label, f"folder_label_conflict/{e.class_folder}:{e.fine_label}")
        out.append(e)
    return out


def _parse_matek(folder: Path, rels: list[PurePosixPath]) -> list[_Entry]:
    out = []
    for e in _class_folder_entries(rels, lambda rel: rel.parts[0].upper()):
        prefix = _letters_prefix(e.relpath)
        if e.problem is None and prefix in L.MATEK19_CODES and prefix != e.fine_label:
            e = _Entry(e.relpath, e.class_folder, e.fine_label, f"folder_label_conflict/{e.class_folder}:{prefix}")
        out.append(e)
    return out


def _zheng_label_csv(folder: Path) -> Path:
    return folder.parent / f"Class Labels of {folder.name}.csv"


def _parse_zheng_release(folder: Path, rels: list[PurePosixPath]) -> list[_Entry]:
    """``segmentation_WBC/Dataset N/NNN.bmp`` labelled by ``Class Labels of Dataset N.csv``."""
    table = _zheng_label_csv(folder)
    if not table.is_file():
        raise DatasetNotFound(f"Zheng-18 release folder {folder} has no label table {table}")
    with open(table, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.reader(f))
    by_id: dict[int, str] = {}
    for row in rows[1:]:  # header: "image ID,class label" (Dataset 1) / "image ID,class" (Dataset 2)
        if len(row) >= 2 and row[0].strip().isdigit():
            code = row[1].strip()
            by_id[int(row[0])] = L.ZHENG18_CODES.get(code, f"code_{code}")
    out = []
    for rel in rels:
        stem = rel.stem
        fine = by_id.get(int(stem)) if stem.isdigit() else None
        out.append(_Entry(rel, folder.name, fine, None if fine else f"unlabelled_file/{rel.name}"))
    return out


LAYOUTS: Mapping[str, Layout] = MappingProxyType(
    {
        "pbc_prefix": Layout(
            "pbc_prefix",
            "<class>/<PREFIX>_<id>.<ext>; the file-name prefix (BA, SNE, MMY, ...) is the fine label",
            _parse_pbc,
        ),
        "matek19": Layout(
            "matek19", "<CODE>/<CODE>_<n>.tiff with Matek-19 class codes (BAS, NGS, ...)", _parse_matek
        ),
        "mll23": Layout("mll23", "<NN-NAME>/<file> with MLL23 numbered folders (13-MYBL, ...)", _parse_by_folder),
        "coarse_folders": Layout(
            "coarse_folders",
            "<coarse class>/<file> as staged for the small sets (neutrophil = unspecified)",
            _parse_by_folder,
        ),
        "zheng18_release": Layout(
            "zheng18_release",
            "Zheng-18 GitHub release: 'Dataset N/NNN.bmp' + 'Class Labels of Dataset N.csv' (the .png are masks)",
            _parse_zheng_release,
            suffixes=frozenset({".bmp"}),
            max_depth=1,
        ),
        "generic": Layout(
            "generic",
            "<class>/<image> with class folders named after a cell type or coarse5 class (any case)",
            _parse_by_folder,
        ),
    }
)


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset the project knows.

    Attributes
    ----------
    name : str
        Short name, also the staged folder name under the data root.
    title : str
        Human name and source.
    layout : str
        Layout of the staged folder ``<root>/<name>``.
    release_folders : tuple of (str, str)
        Other places under the root, as ``(relative folder, layout)``, where the
        public release may sit, tried in order after ``<root>/<name>``.
    """

    name: str
    title: str
    layout: str
    release_folders: tuple[tuple[str, str], ...] = ()

    def candidate_folders(self, root: Path) -> list[tuple[Path, str]]:
        return [(root / self.name, self.layout)] + [(root / rel, lay) for rel, lay in self.release_folders]


DATASETS: Mapping[str, DatasetSpec] = MappingProxyType(
    {
        s.name: s
        for s in (
            DatasetSpec(
                "pbc_acevedo20",
                "Acevedo-20 / PBC, Hospital Clinic of Barcelona (Acevedo et al. 2020, Mendeley Data)",
                "pbc_prefix",
                (("PBC_dataset_normal_DIB", "pbc_prefix"),),
            ),
            DatasetSpec(
                "matek19",
                "Matek-19, AML-Cytomorphology_LMU (Matek et al. 2019, TCIA)",
                "matek19",
                (("AML-Cytomorphology_LMU", "matek19"),),
            ),
            DatasetSpec("mll23", "MLL23, Munich Leukemia Laboratory (public relative of INT-20)", "mll23", (("MLL23", "mll23"),)),
            DatasetSpec(
                "jtsc_zheng18",
                "Zheng-18 Dataset 1, Jiangxi Tecom Science Corp. (Zheng et al. 2018)",
                "coarse_folders",
                (
                    ("segmentation_WBC-master/Dataset 1", "zheng18_release"),
                    ("segmentation_WBC/Dataset 1", "zheng18_release"),
                ),
            ),
            DatasetSpec(
                "cellavision_zheng18",
                "Zheng-18 Dataset 2, CellaVision blog (Zheng et al. 2018)",
                "coarse_folders",
                (
                    ("segmentation_WBC-master/Dataset 2", "zheng18_release"),
                    ("segmentation_WBC/Dataset 2", "zheng18_release"),
                ),
            ),
            DatasetSpec("bccd_crops", "BCCD white-cell crops (Banik et al. 2020; BCCD, MIT licence)", "coarse_folders"),
        )
    }
)


@dataclass
class ScanResult:
    """The samples of one dataset folder in one label space.

    Attributes
    ----------
    dataset : str
        Dataset name.
    folder : Path
        The folder scanned.
    layout : str
        The layout used to read labels.
    label_space : str or None
        "coarse5", "common13", or None (every parsable sample; label = cell type).
    samples : pandas.DataFrame
        One row per kept image, columns ``SAMPLE_COLUMNS``, sorted by ``relpath``.
    excluded : collections.Counter
        ``"reason/label" -> count`` for images not kept, e.g.
        ``"outside_coarse5/erythroblast"`` or ``"unknown_fine_label/XYZ"``.
    skipped : list of (str, str)
        ``(relpath, reason)`` for entries that could not be read (empty file,
        broken link, no permission, or a failed decode with ``check_images``).
    ignored : list of str
        Relative paths of non-image files that were passed over (README, .DS_Store, ...).
    """

    dataset: str
    folder: Path
    layout: str
    label_space: str | None
    samples: pd.DataFrame
    excluded: Counter = field(default_factory=Counter)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def n_excluded(self) -> int:
        return sum(self.excluded.values())

    def counts(self) -> pd.Series:
        """Number of kept samples per label, in label-space order."""
        order = list(L.LABEL_SPACES.get(self.label_space, ())) if self.label_space else None
        c = self.samples["label"].value_counts()
        if order:
            c = c.reindex([x for x in order if x in c.index])
        else:
            c = c.sort_index()
        return c.rename("n")

    def summary(self) -> str:
        lines = [
            f"{self.dataset}: {len(self.samples)} samples in {self.label_space or 'all cell types'} "
            f"from {self.folder} (layout {self.layout})"
        ]
        lines += [f"  {k}: {v}" for k, v in self.counts().items()]
        if self.excluded:
            lines.append(f"  excluded {self.n_excluded}:")
            lines += [f"    {k}: {v}" for k, v in sorted(self.excluded.items())]
        if self.skipped:
            lines.append(f"  skipped {len(self.skipped)} unreadable: " + ", ".join(r for r, _ in self.skipped[:5]))
        if self.ignored:
            lines.append(f"  ignored {len(self.ignored)} non-image file(s)")
        return "\n".join(lines)


def _walk(folder: Path, layout: Layout) -> tuple[list[PurePosixPath], list[str], list[tuple[str, str]]]:
    """Image files (relative, sorted), ignored files and unreadable entries below ``folder``."""
    images: list[PurePosixPath] = []
    ignored: list[str] = []
    skipped: list[tuple[str, str]] = []

    def on_error(err: OSError) -> None:
        # an unlistable sub-folder is reported, not fatal; os.walk goes on
        where = Path(err.filename) if err.filename else folder
        rel = where.relative_to(folder).as_posix() if where.is_relative_to(folder) else str(where)
        skipped.append((rel, f"cannot list folder: {err.strerror or err}"))

    for dirpath, dirnames, filenames in os.walk(folder, onerror=on_error):
        here = Path(dirpath)
        rel_dir = here.relative_to(folder)
        depth = len(rel_dir.parts)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d.lower() not in _IGNORED_DIRS)
        if layout.max_depth is not None and depth + 1 >= layout.max_depth:
            dirnames[:] = []
        for name in sorted(filenames):
            rel = PurePosixPath(*rel_dir.parts, name)
            if (
                name.startswith(".")  # .DS_Store, AppleDouble "._x.jpg", editor droppings
                or name.lower() in _IGNORED_NAMES
                or Path(name).suffix.lower() not in layout.suffixes
            ):
                ignored.append(rel.as_posix())
                continue
            full = here / name
            try:
                st = full.stat()  # follows links: a broken link fails here
            except OSError as e:
                skipped.append((rel.as_posix(), f"cannot stat: {e.strerror or e}"))
                continue
            if st.st_size == 0:
                skipped.append((rel.as_posix(), "empty file (0 bytes)"))
            elif not os.access(full, os.R_OK):
                skipped.append((rel.as_posix(), "no read permission"))
            else:
                images.append(rel)
    images.sort(key=lambda r: r.as_posix())
    return images, ignored, skipped


def scan_folder(
    folder: str | os.PathLike,
    layout: str = "generic",
    label_space: str | None = "coarse5",
    *,
    dataset: str | None = None,
    check_images: bool = False,
) -> ScanResult:
    """Scan one folder with an explicit layout (for a user's own images).

    Parameters
    ----------
    folder : path-like
        The dataset folder, e.g. ``my_cells/`` holding ``Neutrophil/``, ``lymphocyte_typical/``...
    layout : str
        A key of ``LAYOUTS``; ``"generic"`` matches class folder names to cell
        types and coarse5 classes case-insensitively.
    label_space : {"coarse5", "common13", None}
        Keep samples with a label in this space; None keeps every parsable sample.
    dataset : str, optional
        Name written in the ``dataset`` column (default: the folder's name).
    check_images : bool
        Decode every kept image once and move undecodable ones to ``skipped``
        (slow on large sets; off by default).

    Returns
    -------
    ScanResult

    Raises
    ------
    DatasetNotFound
        When ``folder`` does not exist or holds no image files.
    """
    L.check_label_space(label_space)
    try:
        lay = LAYOUTS[layout]
    except KeyError:
        raise ValueError(f"unknown layout {layout!r}; known: {sorted(LAYOUTS)}") from None
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetNotFound(f"dataset folder not found: {folder}")
    rels, ignored, skipped = _walk(folder, lay)
    if not rels and not skipped:
        raise DatasetNotFound(f"dataset folder {folder} holds no image files ({', '.join(sorted(lay.suffixes))})")
    name = dataset or folder.name
    excluded: Counter = Counter()
    rows = []
    for e in lay.parse(folder, rels):
        if e.problem is not None:
            excluded[e.problem] += 1
            continue
        cell_type = L.cell_type_of(lay.name, e.fine_label) if e.fine_label else None
        if cell_type is None:
            what = "unknown_class_folder" if e.fine_label == e.class_folder else "unknown_fine_label"
            excluded[f"{what}/{e.fine_label}"] += 1
            continue
        label = L.to_label_space(cell_type, label_space)
        if label is None:
            excluded[f"outside_{label_space}/{cell_type}"] += 1
            continue
        rows.append(
            (
                str(folder / e.relpath),
                e.relpath.as_posix(),
                name,
                e.class_folder,
                e.fine_label,
                cell_type,
                L.to_common13(cell_type),
                L.to_coarse5(cell_type),
                label,
            )
        )
    samples = pd.DataFrame(rows, columns=list(SAMPLE_COLUMNS))
    if check_images and len(samples):
        bad = []
        for i, (p, rel) in enumerate(zip(samples["path"], samples["relpath"])):
            try:
                load_image(p)
            except (ImageDecodeError, OSError) as err:
                skipped.append((rel, str(err)))
                bad.append(i)
        samples = samples.drop(index=bad)
    samples = samples.sort_values("relpath", kind="stable").reset_index(drop=True)
    return ScanResult(name, folder, lay.name, label_space, samples, excluded, skipped, ignored)


def get_spec(name_or_spec: str | DatasetSpec) -> DatasetSpec:
    """The spec of a dataset by name (or the spec itself)."""
    if isinstance(name_or_spec, DatasetSpec):
        return name_or_spec
    try:
        return DATASETS[name_or_spec]
    except KeyError:
        raise KeyError(
            f"unknown dataset {name_or_spec!r}; known: {sorted(DATASETS)} "
            "(scan your own folder with scan_folder(path, layout='generic'))"
        ) from None


def locate_dataset(name_or_spec: str | DatasetSpec, root: str | os.PathLike | None = None) -> tuple[Path, str]:
    """Find a dataset's folder under the data root: its short name first, then its release names.

    ``root`` may also be the dataset folder itself (its name is the short or a
    release name).

    Returns
    -------
    (Path, str)
        The folder and the layout to read it with.

    Raises
    ------
    DatasetNotFound
        Naming every folder tried.
    """
    spec = get_spec(name_or_spec)
    root = resolve_data_root(root)
    candidates = spec.candidate_folders(root)
    for folder, layout in candidates:
        if folder.is_dir():
            return folder, layout
    for folder, layout in spec.candidate_folders(root.parent):
        if folder == root:  # root given as the dataset folder itself
            return folder, layout
    tried = "\n".join(f"  {f}" for f, _ in candidates)
    raise DatasetNotFound(
        f"dataset {spec.name!r} not found under data root {root}; looked for:\n{tried}\n"
        f"Get it with `bcfeat download {spec.name}` or point BCFEAT_DATA_ROOT at a folder holding it."
    )


def scan_dataset(
    name_or_spec: str | DatasetSpec,
    root: str | os.PathLike | None = None,
    label_space: str | None = "coarse5",
    *,
    check_images: bool = False,
) -> ScanResult:
    """List a known dataset's samples with their labels in one label space.

    Parameters
    ----------
    name_or_spec : str or DatasetSpec
        A key of ``DATASETS`` (e.g. ``"pbc_acevedo20"``) or a spec.
    root : path-like, optional
        Data root; resolved with :func:`bcfeat.data.resolve_data_root` when None.
    label_space : {"coarse5", "common13", None}
        Samples without a label in this space are excluded and counted in
        ``ScanResult.excluded``; None keeps all (label = cell type).
    check_images : bool
        Also decode every image once and skip undecodable ones (slow).

    Returns
    -------
    ScanResult
        ``.samples`` sorted by relative path, so the order never depends on
        the file system.

    Examples
    --------
    >>> r = scan_dataset("jtsc_zheng18")  # doctest: +SKIP
    >>> r.counts()["neutrophil"]  # doctest: +SKIP
    176
    """
    spec = get_spec(name_or_spec)
    folder, layout = locate_dataset(spec, root)
    return scan_folder(folder, layout, label_space, dataset=spec.name, check_images=check_images)


def dataset_image_files(name_or_spec: str | DatasetSpec, root: str | os.PathLike | None = None) -> tuple[Path, str, list[str]]:
    """The folder, its layout, and every image file the layout would read (relative POSIX paths).

    Used by manifest verification to find unexpected files without parsing labels.
    """
    folder, layout = locate_dataset(name_or_spec, root)
    rels, _, skipped = _walk(folder, LAYOUTS[layout])
    return folder, layout, sorted([r.as_posix() for r in rels] + [r for r, _ in skipped])
