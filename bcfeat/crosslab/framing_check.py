"""Is a lab's framing within what the model was checked on? A label-free check of how much of its
image each white cell fills.

The cross-lab measurement cuts every cell out around its mask and rescales it, so a lab's framing
reaches the features only through what the crop's frame holds: the surround the stain
segmentation samples, the red cells the ruler measures, and whether the cell touches the edge. The
study measured it (chapter "Beyond the paper", the framing table, ``crosslab_framing.csv`` and
``crosslab_cell_fill.csv``): a cell's **fill** is its measured diameter over the image's shorter
side; the labs' median fills run from 0.37 (Acevedo-20) to 0.67 (BCCD); Acevedo-20's development
cells framed so tightly that they fill 0.66 of the side lost about 0.05 balanced accuracy, at 0.75
about 0.19; the loosest frame measured (1.3 times Acevedo-20's side, the smear continued) puts them
at about 0.29. :data:`CHECKED_FILL` is that range, rounded outwards: a call whose median fill lies
outside it was framed unlike anything the model was checked on, and ``bcfeat classify`` says so.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np

from bcfeat.data.images import header_size

#: Median cell fills inside which the model was checked (see the module's text).
CHECKED_FILL = (0.29, 0.70)
#: Cells whose image sides are read for a call's median fill (evenly spaced through the call): the
#: header of every file of a 20,000-image folder would cost more than the median needs.
FILL_SAMPLE = 200


def median_cell_fill(paths: Sequence[str | os.PathLike], diameters_px: np.ndarray,
                     sample: int = FILL_SAMPLE) -> float:
    """The median, over up to ``sample`` cells evenly spaced through the call, of each cell's
    diameter (``diameters_px``, in its image's pixels) over its image's shorter side (read from the
    file's header). Files that cannot be opened are left out; NaN when none is left.

    >>> import tempfile, pathlib
    >>> from PIL import Image
    >>> d = pathlib.Path(tempfile.mkdtemp()); Image.new("RGB", (200, 100)).save(d / "a.png")
    >>> median_cell_fill([d / "a.png"], np.array([60.0]))
    0.6
    """
    diameters_px = np.asarray(diameters_px, dtype=np.float64)
    if len(diameters_px) != len(paths):
        raise ValueError(f"expected one diameter per path ({len(paths)}), got {len(diameters_px)}")
    if not len(paths):
        return float("nan")
    picked = np.unique(np.linspace(0, len(paths) - 1, min(len(paths), sample)).round().astype(int))
    fills = []
    for i in picked:
        size = header_size(paths[i])
        if size is not None and min(size) > 0 and math.isfinite(diameters_px[i]):
            fills.append(diameters_px[i] / min(size))
    return float(np.median(fills)) if fills else float("nan")


def framing_warning(fill: float, checked: tuple[float, float] | None = None) -> str | None:
    """A warning when a call's median cell fill lies outside ``checked`` (default
    :data:`CHECKED_FILL`; None inside, or NaN).

    >>> framing_warning(0.5) is None, framing_warning(float("nan")) is None
    (True, True)
    >>> "tighter" in framing_warning(0.85), "whole photographs" in framing_warning(0.12)
    (True, True)
    """
    low, high = CHECKED_FILL if checked is None else checked
    if not math.isfinite(fill) or low <= fill <= high:
        return None
    if fill > high:
        return (f"the white cells fill {fill:.2f} of their images' shorter side (median), framed tighter than "
                f"any lab the model was checked on (median fills up to {high:.2f}); framed that tightly, "
                "Acevedo-20's cells lost up to a fifth of their balanced accuracy: crop with more of the smear "
                "around each cell")
    return (f"the white cells fill only {fill:.2f} of their images' shorter side (median), less than any framing "
            f"the model was checked on (from {low:.2f}): if these are whole photographs, cut one cell per "
            "image first (bcfeat crop-boxes)")


__all__ = ["CHECKED_FILL", "FILL_SAMPLE", "median_cell_fill", "framing_warning"]
