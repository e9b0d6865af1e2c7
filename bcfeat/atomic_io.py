"""Atomic writes: a file is either its old self or completely new, never half-written.

Every file the package writes goes through this module, so an interrupted long run leaves the
last good file in place and no temporary file behind:

- :func:`atomic_path`: the primitive, a temporary path beside the target, moved over it on success;
- :func:`atomic_torch_save`: checkpoints and model files (fsynced);
- :func:`save_table`: result tables, ``.csv`` (or ``.parquet``) by the file's suffix;
- :func:`save_npz`: arrays (feature sets, cache chunks);
- :func:`write_text`: small text files;
- :func:`atomic_folder`: a folder written as a whole (a data pack), swapped in when complete.

Two writes are atomic by other means, on purpose: a download keeps its ``.part`` file on an error
so the next run resumes it, and an extracted dataset folder is renamed into place as a whole
(both in :mod:`bcfeat.data.download`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

TABLE_FORMATS = (".csv", ".parquet")


@contextmanager
def atomic_path(path: str | os.PathLike, fsync: bool = False) -> Iterator[Path]:
    """A temporary path beside ``path``; on normal exit it replaces ``path``, on error it is removed.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> target = pathlib.Path(tempfile.mkdtemp()) / "x.txt"
    >>> with atomic_path(target) as tmp:
    ...     _ = tmp.write_text("done")
    >>> target.read_text()
    'done'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        if fsync:
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_torch_save(obj: Any, path: str | os.PathLike, fsync: bool = True) -> Path:
    """``torch.save(obj)`` to ``path`` atomically (fsynced by default: checkpoints must survive a crash)."""
    import torch

    with atomic_path(path, fsync=fsync) as tmp, open(tmp, "wb") as handle:
        torch.save(obj, handle)
    return Path(path)


def save_table(df: Any, path: str | os.PathLike, index: bool = False) -> Path:
    """Write a table atomically: CSV for a ``.csv`` path, Parquet for ``.parquet``; folders are created.

    Parameters
    ----------
    df : pandas.DataFrame
    path : path-like
        Destination; its suffix chooses the format.
    index : bool
        Write the row index too (off: the tables are tidy, their keys are columns).

    Returns
    -------
    Path
        The written path.

    Examples
    --------
    >>> import tempfile, pathlib, pandas as pd
    >>> target = save_table(pd.DataFrame({"a": [1, 2]}), pathlib.Path(tempfile.mkdtemp()) / "t.csv")
    >>> target.read_text()
    'a\\n1\\n2\\n'
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in TABLE_FORMATS:
        raise ValueError(f"{path}: unknown table format {path.suffix or '(no extension)'!r}; "
                         f"use one of {', '.join(TABLE_FORMATS)}")
    with atomic_path(path) as tmp:
        if suffix == ".parquet":
            df.to_parquet(tmp, index=index)
        else:
            df.to_csv(tmp, index=index)
    return path


def save_npz(path: str | os.PathLike, **arrays: Any) -> Path:
    """``numpy.savez(path, **arrays)`` atomically (the name is kept as given, no ``.npz`` is appended)."""
    import numpy as np

    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **arrays)
    return Path(path)


def write_text(text: str, path: str | os.PathLike, encoding: str = "utf-8") -> Path:
    """``Path(path).write_text(text)`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding=encoding)
    return Path(path)


@contextmanager
def atomic_folder(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """A temporary folder beside ``path``, renamed to ``path`` on normal exit and removed on error.

    An existing ``path`` is refused (``FileExistsError``, before any work) unless ``overwrite``;
    then it is replaced only once the new folder is complete.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> target = pathlib.Path(tempfile.mkdtemp()) / "pack"
    >>> with atomic_folder(target) as tmp:
    ...     _ = (tmp / "a.txt").write_text("done")
    >>> sorted(p.name for p in target.iterdir())
    ['a.txt']
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; remove it or ask to overwrite it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        if not path.exists():
            os.replace(tmp, path)
            return
        # The old folder steps aside only once the new one is complete, and comes back if the swap fails.
        old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
        os.replace(path, old / path.name)
        try:
            os.replace(tmp, path)
        except BaseException:
            os.replace(old / path.name, path)
            old.rmdir()
            raise
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
