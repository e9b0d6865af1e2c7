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

import glob
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

TABLE_FORMATS = (".csv", ".parquet")
# A CSV cell beginning with one of these is a formula to a spreadsheet (=HYPERLINK(...), +cmd|...):
# such text cells are written with a leading apostrophe, which spreadsheets show as plain text.
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _give_user_mode(path: str | os.PathLike, folder: bool = False) -> None:
    """A temporary file (0600) or folder (0700) gets the mode a plain ``open``/``mkdir`` would
    give it under the user's umask, so files meant for other people are readable by them."""
    os.chmod(path, (0o777 if folder else 0o666) & ~_current_umask())


def escape_formulas(df: Any) -> Any:
    """A copy of ``df`` whose text cells that begin with ``= + - @``, a tab or a carriage return
    are prefixed with ``'`` (CSV formula injection); numbers are left as they are.

    >>> import pandas as pd
    >>> escape_formulas(pd.DataFrame({"a": ["=1+2", "ok", "-x"], "b": [-1, 2, 3]}))["a"].tolist()
    ["'=1+2", 'ok', "'-x"]
    """
    import pandas as pd

    out = df.copy()
    for column in out.columns:
        if not (pd.api.types.is_numeric_dtype(out[column]) or pd.api.types.is_bool_dtype(out[column])):
            values = out[column].astype(object)
            risky = values.map(lambda v: isinstance(v, str) and v.startswith(FORMULA_PREFIXES))
            if risky.any():
                out[column] = values.where(~risky, "'" + values.astype(str))
    if out.columns.map(lambda c: isinstance(c, str) and c.startswith(FORMULA_PREFIXES)).any():
        out.columns = [f"'{c}" if isinstance(c, str) and c.startswith(FORMULA_PREFIXES) else c for c in out.columns]
    return out


# A file name may hold 255 bytes; the temporary name adds a dot, 8 random characters and ".tmp".
MAX_NAME_BYTES = 255


def _short_name(path: Path) -> str:
    pid = str(os.getpid())
    budget = MAX_NAME_BYTES - 16 - len(pid) - 1
    return path.name.encode("utf-8", "surrogateescape")[:budget].decode("utf-8", "ignore")


def _temporary_prefix(path: Path) -> str:
    """``.<name>.<pid>.``, the name shortened so that the temporary name stays within
    :data:`MAX_NAME_BYTES`; the writer's process id lets a later run tell a leftover from a
    write in progress."""
    return f".{_short_name(path)}.{os.getpid()}."


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_leftovers(path: str | os.PathLike) -> list[Path]:
    """Remove the temporary files or folders that a killed write of ``path`` left beside it (their
    writer's process no longer runs); writes in progress are left alone. Returns what was removed."""
    path = Path(path)
    removed = []
    if not path.parent.is_dir():
        return removed
    name = _short_name(path)
    for leftover in path.parent.glob(f".{glob.escape(name)}.*.tmp"):
        pid = leftover.name[len(name) + 2:].split(".", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            if leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)
            removed.append(leftover)
    return removed



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
    remove_leftovers(path)
    fd, tmp = tempfile.mkstemp(prefix=_temporary_prefix(path), suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        if fsync:
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
        _give_user_mode(tmp)
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

    In a CSV, text cells and column names that a spreadsheet would run as a formula are escaped
    (:func:`escape_formulas`); Parquet keeps the values as they are.

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
            escape_formulas(df).to_csv(tmp, index=index)
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
    remove_leftovers(path)
    tmp = Path(tempfile.mkdtemp(prefix=_temporary_prefix(path), suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        _give_user_mode(tmp, folder=True)
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
