"""Where the image data lives: the data root, resolved in a fixed order.

The data is read in place and never copied into the repository. The root is
the folder that holds one sub-folder per dataset (``pbc_acevedo20/``,
``jtsc_zheng18/``, ... or the public release names such as
``PBC_dataset_normal_DIB/``).
"""

from __future__ import annotations

import os
from pathlib import Path

from bcfeat import paths
from bcfeat.data.sites import SITES

ENV_VAR = "BCFEAT_DATA_ROOT"


class DataRootNotFound(FileNotFoundError):
    """No data root was found; the message says where we looked and what to do."""


def _holds_data(folder: Path) -> bool:
    # A download folder counts only once something was extracted into it:
    # a lone `.downloads/` cache or a `.part` file is not data.
    try:
        return any(p.is_dir() and not p.name.startswith(".") for p in folder.iterdir())
    except OSError:
        return False


# What makes a folder a data pack (written by :mod:`bcfeat.data.pack`): its description and its
# ``datasets/`` folder, laid out as a data root.
PACK_INFO = "pack.json"
DATASETS_DIR = "datasets"


def pack_of(path: str | os.PathLike | None) -> Path | None:
    """The pack folder when ``path`` is a pack or a pack's ``datasets/`` folder, else None.

    >>> pack_of("/nonexistent") is None
    True
    """
    if path is None:
        return None
    path = Path(path).expanduser()
    for candidate in (path, path.parent):
        if (candidate / PACK_INFO).is_file() and (candidate / DATASETS_DIR).is_dir():
            if candidate == path or path.name == DATASETS_DIR:
                return candidate
    return None


def _pack_datasets(root: Path) -> Path:
    """A data pack's ``datasets/`` folder when ``root`` is a pack, else ``root``."""
    return root / DATASETS_DIR if pack_of(root) == root.expanduser() else root


def resolve_data_root(explicit: str | os.PathLike | None = None) -> Path:
    """Return the data root, looking in a fixed order.

    1. ``explicit`` (a function argument or ``--root`` on the command line);
    2. the environment variable ``BCFEAT_DATA_ROOT``;
    3. ``bcfeat.paths.SHARED_DATA`` (``../shared/datasets`` beside the checkout) when it exists;
    4. ``bcfeat.paths.DOWNLOADED_DATA`` (``<repo>/data``, where ``bcfeat download``
       puts archives) when it holds at least one dataset folder.

    A root given explicitly (1 or 2) must exist: it is an error, not a reason to
    fall through to the next candidate, so a typo never silently selects other data.
    A data pack (``bcfeat pack``) given as 1 or 2 stands for its ``datasets/`` folder.

    Parameters
    ----------
    explicit : path-like, optional
        A data root chosen by the caller.

    Returns
    -------
    Path
        The resolved, absolute data root.

    Raises
    ------
    DataRootNotFound
        With the candidates tried, in order, and how to get the data.
    """
    if explicit is not None:
        root = Path(explicit).expanduser()
        if not root.is_dir():
            raise DataRootNotFound(f"data root given explicitly does not exist or is not a folder: {root}")
        return _pack_datasets(root).resolve()

    from_env = os.environ.get(ENV_VAR)
    if from_env:
        root = Path(from_env).expanduser()
        if not root.is_dir():
            raise DataRootNotFound(
                f"{ENV_VAR}={from_env} does not exist or is not a folder; "
                f"fix the variable or unset it to use the default locations"
            )
        return _pack_datasets(root).resolve()

    shared, downloaded = Path(paths.SHARED_DATA), Path(paths.DOWNLOADED_DATA)
    if shared.is_dir():
        return shared.resolve()
    if downloaded.is_dir() and _holds_data(downloaded):
        return downloaded.resolve()

    raise DataRootNotFound(
        "no image data root found. Looked, in this order, for:\n"
        f"  1. an explicit root (argument / --root): none given\n"
        f"  2. the environment variable {ENV_VAR}: not set\n"
        f"  3. the shared datasets folder beside the checkout: {shared} (missing)\n"
        f"  4. the download folder: {downloaded} (missing or empty)\n"
        "To get the data by hand: run `bcfeat download <name>` "
        f"(names: {', '.join(SITES)}) "
        f"to fill {downloaded}, or set {ENV_VAR}=/path/to/datasets, a folder "
        "holding one sub-folder per dataset."
    )
