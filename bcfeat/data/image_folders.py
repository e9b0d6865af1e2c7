"""The images of a user's folder (a plain tree of files, or a dataset layout), and every other
file below it named with the reason it is left out."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd




def _relative(path: Path, folder: Path) -> str:
    """``path`` below ``folder`` as text that can always be printed and written (a name that is
    not UTF-8 shows its undecodable bytes as ``\\xNN``)."""
    rel = str(path.relative_to(folder))
    return rel.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _name_problem(name: str, kind: str) -> str | None:
    """Why a file or folder name is left out, or None: hidden (``.ipynb_checkpoints``, ``.DS_Store``)
    or not valid UTF-8 (it could be neither a class name nor a row of a table)."""
    if name.startswith("."):
        return f"hidden {kind} (names beginning with '.' are skipped)"
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return f"{kind} name is not valid UTF-8"
    return None


def folder_images(folder: str | os.PathLike, layout: str = "files") -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    """The images of a folder, and every file below it that is not taken, with the reason.

    Returns
    -------
    table : pd.DataFrame
        ``[path, relpath, label]`` (label empty for layout ``files``).
    dropped : list of (str, str)
        ``(relpath, reason)`` of each file or folder left out: another file type (a GIF, a
        text file), a broken or looping link, a folder reached twice through links, a hidden
        file or folder, a name that is not UTF-8, an unlistable folder; for a dataset layout,
        what the scanner excluded as unreadable. Links to files and folders are followed.
    """
    from bcfeat.data.images import IMAGE_SUFFIXES
    from bcfeat.data.registry import scan_folder

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no folder {folder}")
    dropped: list[tuple[str, str]] = []
    if layout == "files":
        paths = []

        def unlistable(error: OSError) -> None:
            dropped.append((str(error.filename), f"cannot list folder: {error.strerror or error}"))

        # Links are followed (a lab may link class folders in from elsewhere); a folder reached a
        # second time, through a loop or a second link, is named once and not listed again.
        seen = {os.path.realpath(folder)}
        for dirpath, dirnames, filenames in os.walk(folder, onerror=unlistable, followlinks=True):
            base = Path(dirpath)
            kept = []
            for name in sorted(dirnames):
                rel = _relative(base / name, folder)
                reason = _name_problem(name, "folder")
                real = os.path.realpath(base / name)
                if reason is None and real in seen:
                    reason = "folder already listed (a link loop or a second link to it)"
                if reason is not None:
                    dropped.append((rel, reason))
                    continue
                seen.add(real)
                kept.append(name)
            dirnames[:] = kept
            for name in sorted(filenames):
                path = base / name
                rel = _relative(path, folder)
                reason = _name_problem(name, "file")
                if reason is not None:
                    dropped.append((rel, reason))
                elif path.suffix.lower() not in IMAGE_SUFFIXES:
                    dropped.append((rel, f"not an image type bcfeat reads ({path.suffix or 'no extension'}; "
                                         f"reads {', '.join(sorted(IMAGE_SUFFIXES))})"))
                elif not path.is_file():  # a broken or looping link
                    try:
                        path.stat()
                        reason = "not a regular file"
                    except OSError as error:
                        reason = f"broken or looping link ({error.strerror or error})"
                    dropped.append((rel, reason))
                else:
                    paths.append(path)
        paths.sort()
        table = pd.DataFrame({"path": [str(p) for p in paths],
                              "relpath": [str(p.relative_to(folder)) for p in paths], "label": ""})
    else:
        scan = scan_folder(folder, layout=layout, label_space=None)
        samples = scan.samples
        table = samples[["path", "relpath"]].assign(label=samples["cell_type"].fillna(""))
        dropped += [(str(rel), reason) for rel, reason in scan.skipped]
    if table.empty:
        raise FileNotFoundError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found below {folder}"
                                + (f" ({len(dropped)} other file(s), e.g. {dropped[0][0]})" if dropped else ""))
    return table.reset_index(drop=True), dropped


