"""The images of a user's folder (a plain tree of files, or a dataset layout), and every other
file below it named with the reason it is left out."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd




def folder_images(folder: str | os.PathLike, layout: str = "files") -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    """The images of a folder, and every file below it that is not taken, with the reason.

    Returns
    -------
    table : pd.DataFrame
        ``[path, relpath, label]`` (label empty for layout ``files``).
    dropped : list of (str, str)
        ``(relpath, reason)`` of each file left out: another file type (a GIF, a text
        file), a broken or looping link, an unlistable folder; for a dataset layout, what
        the scanner excluded as unreadable.
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

        for dirpath, dirnames, filenames in os.walk(folder, onerror=unlistable):
            dirnames.sort()
            for name in sorted(filenames):
                path = Path(dirpath) / name
                rel = str(path.relative_to(folder))
                if path.suffix.lower() not in IMAGE_SUFFIXES:
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


