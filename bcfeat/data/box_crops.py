"""Single-cell crops from whole smear photographs with one box per white cell (YOLO labels).

Some public white-cell sets are camera frames with a labelled box around each white cell
rather than crops, e.g. the Chulalongkorn University set (``singgihbekti/WBC_Dataset`` on
GitHub, MIT licence: 500 frames of 1440 x 900 px from a Raspberry Pi camera, about 100 cells
per class, classes 0 neutrophil, 1 eosinophil, 2 basophil, 3 lymphocyte, 4 monocyte). This
module cuts one square crop per box, ``margin`` times the box's long side and centred on it
(moved inside the frame at the borders), so the cell fills about as much of the crop as in the
study's sets, and writes ``<output>/<class>/<frame>_<k>.png`` with a ``crops.csv`` that records
each crop's frame, box and sha256. The frames are read where the user keeps them; nothing is
copied into the repository.

YOLO label files hold one line per box: ``class x_centre y_centre width height``, the last
four as fractions of the frame's width and height.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

# The Chulalongkorn set's class ids (its notebook, WBC_Dataset.ipynb).
CHULA_CLASSES = ("neutrophil", "eosinophil", "basophil", "lymphocyte", "monocyte")
CHULA_SOURCE = {"repository": "github.com/singgihbekti/WBC_Dataset", "commit": "45759ab1e6258b9746377a0935077e2eef0da41b",
                "licence": "MIT", "site": "Chulalongkorn University, Bangkok (Raspberry Pi camera)"}


def parse_yolo_labels(text: str, source: str = "<labels>") -> list[tuple[int, float, float, float, float]]:
    """The boxes of one YOLO label file: ``(class, xc, yc, w, h)``, fractions of the frame.

    >>> parse_yolo_labels("2 0.5 0.25 0.1 0.2\\n")
    [(2, 0.5, 0.25, 0.1, 0.2)]
    """
    boxes = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        try:
            cls, xc, yc, w, h = int(parts[0]), *(float(v) for v in parts[1:5])
        except (ValueError, IndexError) as error:
            raise ValueError(f"{source} line {number}: not 'class x y w h': {line!r}") from error
        if len(parts) != 5 or not (0 <= xc <= 1 and 0 <= yc <= 1 and 0 < w <= 1 and 0 < h <= 1):
            raise ValueError(f"{source} line {number}: box outside the frame: {line!r}")
        boxes.append((cls, xc, yc, w, h))
    return boxes


def square_window(box: tuple[float, float, float, float], width: int, height: int,
                  margin: float) -> tuple[int, int, int, int]:
    """``(left, top, right, bottom)`` pixels of the square crop around a fractional box, its side
    ``margin`` x the box's long side (at most the frame's short side), shifted inside the frame.

    >>> square_window((0.5, 0.5, 0.1, 0.1), 1000, 800, 2.0)
    (400, 300, 600, 500)
    >>> square_window((0.02, 0.5, 0.04, 0.05), 1000, 800, 2.0)   # at the left border: moved in
    (0, 360, 80, 440)
    """
    xc, yc, w, h = box
    side = int(round(min(margin * max(w * width, h * height), width, height)))
    left = int(round(xc * width - side / 2))
    top = int(round(yc * height - side / 2))
    left = min(max(left, 0), width - side)
    top = min(max(top, 0), height - side)
    return left, top, left + side, top + side


def crop_boxes(images_dirs: Sequence[str | os.PathLike], output: str | os.PathLike,
               class_names: Sequence[str] = CHULA_CLASSES, margin: float = 2.2) -> pd.DataFrame:
    """Cut every labelled box of every frame into ``<output>/<class>/<frame>_<k>.png``.

    ``images_dirs``: folders of frames, each with a sibling ``labels`` folder holding
    ``<frame stem>.txt`` (the YOLO layout ``.../images``, ``.../labels``). A frame without a
    label file, or a box of an unknown class, is skipped and counted in the log. Written
    through a temporary folder renamed when complete.

    Returns the table written to ``<output>/crops.csv``: ``relpath, label, frame, box, sha256``.
    """
    from PIL import Image

    from bcfeat.atomic_io import atomic_folder, save_table
    from bcfeat.data.manifest import sha256_of

    if not 1.0 <= margin <= 6.0:
        raise ValueError(f"margin must lie in [1, 6] box sides, got {margin}")
    output = Path(output)
    rows, skipped = [], []
    with atomic_folder(output) as tmp:
        for images_dir in images_dirs:
            images_dir = Path(images_dir)
            labels_dir = images_dir.parent / "labels"
            if not images_dir.is_dir():
                raise FileNotFoundError(f"no folder of frames {images_dir}")
            for frame in sorted(images_dir.iterdir()):
                if frame.suffix.lower() not in (".jpg", ".jpeg", ".png", ".bmp"):
                    continue
                label_file = labels_dir / f"{frame.stem}.txt"
                if not label_file.is_file():
                    skipped.append((str(frame), "no label file"))
                    continue
                boxes = parse_yolo_labels(label_file.read_text(), str(label_file))
                with Image.open(frame) as im:
                    image = np.asarray(im.convert("RGB"))
                height, width = image.shape[:2]
                for k, (cls, *box) in enumerate(boxes):
                    if not 0 <= cls < len(class_names):
                        skipped.append((f"{frame}#{k}", f"class id {cls} outside 0..{len(class_names) - 1}"))
                        continue
                    left, top, right, bottom = square_window(tuple(box), width, height, margin)
                    rel = Path(class_names[cls]) / f"{frame.stem}_{k}.png"
                    (tmp / rel.parent).mkdir(parents=True, exist_ok=True)
                    Image.fromarray(image[top:bottom, left:right]).save(tmp / rel)
                    rows.append({"relpath": rel.as_posix(), "label": class_names[cls], "frame": frame.name,
                                 "box": f"{left},{top},{right},{bottom}", "sha256": sha256_of(tmp / rel)})
        table = pd.DataFrame(rows, columns=["relpath", "label", "frame", "box", "sha256"])
        save_table(table, tmp / "crops.csv")
    if skipped:
        logger.warning("%d box(es) or frame(s) skipped: %s", len(skipped),
                       "; ".join(f"{p} ({r})" for p, r in skipped[:10]))
    return table


__all__ = ["CHULA_CLASSES", "CHULA_SOURCE", "parse_yolo_labels", "square_window", "crop_boxes"]
