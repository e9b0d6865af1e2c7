"""How tightly each lab frames its white cells, and what a tighter frame costs the chosen classifier.

The named shift ``tight_crop`` cuts Acevedo-20's images to 0.45 of their side, and the chosen
classifier loses much there. Whether that stands for a real lab depends on how much of the crop a
real lab's cell fills. Here a lab's framing is read as each image's **cell fill**: the white cell's
measured diameter (``log_cell_diameter_px``, the cross-lab measurement's) over the image's shorter
side. The framing sweep reads its development cells' fill the same way, on the frame each virtual
lab renders (:func:`~bcfeat.crosslab.virtual_labs.rendered_shape`), so it sits on the same axis as the
real labs: a tighter frame cuts the cell or moves its mask, so the measured fill is not the
photographed one over the crop fraction.
Nothing here reads a label of a lab but to score the virtual labs (Acevedo-20 cells).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from bcfeat.crosslab.cell_features import feature_names
from bcfeat.crosslab.virtual_labs import VirtualLab
from bcfeat.data.images import header_size

#: Crop fractions of the framing sweep: the named ``tight_crop`` (0.45) up to a frame that keeps
#: four fifths of the image.
FRAMING_FRACTIONS = (0.45, 0.55, 0.65, 0.8)


def framing_labs(fractions: Sequence[float] = FRAMING_FRACTIONS) -> list[VirtualLab]:
    """One virtual lab per crop fraction, nothing else shifted.

    >>> [(lab.name, lab.crop_fraction) for lab in framing_labs((0.5, 0.8))]
    [('crop_fraction_0.5', 0.5), ('crop_fraction_0.8', 0.8)]
    """
    return [VirtualLab(f"crop_fraction_{f:g}", crop_fraction=float(f)) for f in fractions]


def image_shapes(paths: Sequence[str]) -> np.ndarray:
    """``(n, 2)`` height and width of each image, read from the file's header."""
    shapes = []
    for path in paths:
        size = header_size(path)
        if size is None:
            raise ValueError(f"{path}: not a readable image")
        shapes.append(size[::-1])
    return np.asarray(shapes, dtype=np.int64).reshape(-1, 2)


def cell_fill(shapes: np.ndarray, features: np.ndarray) -> np.ndarray:
    """Each image's white-cell diameter (the measured ``log_cell_diameter_px``) over its shorter
    side: ``shapes`` ``(n, 2)`` (height, width) and ``features`` ``(n, d)`` -> ``(n,)``.

    >>> X = np.zeros((1, len(feature_names()))); X[0, 0] = np.log(60.0)
    >>> cell_fill(np.array([[120, 200]]), X).round(3).tolist()
    [0.5]
    """
    features = np.asarray(features, dtype=np.float64)
    shapes = np.asarray(shapes).reshape(-1, 2)
    if features.ndim != 2 or len(features) != len(shapes):
        raise ValueError(f"expected one feature row per image shape ({len(shapes)}), got {features.shape}")
    diameter = np.exp(features[:, feature_names().index("log_cell_diameter_px")])
    return diameter / shapes.min(axis=1).astype(np.float64)


def fill_table(fills: dict[str, np.ndarray]) -> pd.DataFrame:
    """Per lab: its cells and the quartiles of their cell fill (NaN fills, where no cell was
    measured, left out).

    >>> fill_table({"a": np.array([0.2, 0.4, 0.6, np.nan])})[["lab", "cells", "fill_median"]].values.tolist()
    [['a', 3, 0.4]]
    """
    rows = []
    for lab, values in fills.items():
        v = np.asarray(values, dtype=np.float64)
        v = v[np.isfinite(v)]
        q25, q50, q75 = np.quantile(v, [0.25, 0.5, 0.75]) if len(v) else (np.nan,) * 3
        rows.append({"lab": lab, "cells": int(len(v)), "fill_q25": float(q25), "fill_median": float(q50),
                     "fill_q75": float(q75)})
    return pd.DataFrame(rows)


def framing_table(clf, features: dict[str, np.ndarray], labels: np.ndarray, labs: Sequence[VirtualLab],
                  shapes: np.ndarray, native: np.ndarray | None = None) -> pd.DataFrame:
    """The chosen classifier on Acevedo-20's development cells framed by each lab of ``labs``
    (``features``: lab name -> ``(n, d)`` raw features; all cells in one call), beside the cells as
    photographed (``native``, when given; ``shapes`` ``(n, 2)``: their images' height and width):
    the crop fraction, the cells' median fill on the frame it renders, the balanced accuracy, and
    the share of cells whose red-cell ruler found no red cell."""
    from sklearn.metrics import balanced_accuracy_score

    from bcfeat.crosslab.virtual_labs import rendered_shape

    ruler = feature_names().index("log_cell_over_red_cell")
    shapes = np.asarray(shapes).reshape(-1, 2)
    framed = [(1.0, shapes, native)] if native is not None else []
    framed += [(lab.crop_fraction, np.array([rendered_shape(tuple(s), lab) for s in shapes]), features[lab.name])
               for lab in labs]
    rows = []
    for fraction, framed_shapes, X in framed:
        rows.append({"crop_fraction": float(fraction), "cell_fill": float(np.nanmedian(cell_fill(framed_shapes, X))),
                     "balanced_accuracy": float(balanced_accuracy_score(labels, clf.predict(X))),
                     "no_ruler_share": float(np.mean(np.isnan(X[:, ruler])))})
    return pd.DataFrame(rows).sort_values("crop_fraction", ascending=False, ignore_index=True)


def framing_glue(framing: pd.DataFrame, fills: pd.DataFrame) -> dict:
    """``crosslab_fill_<lab>`` (median cell fill of every lab), ``crosslab_framing_<percent>``
    (balanced accuracy at each crop fraction of the sweep, in percent of the side: ``_45``), and the real labs' tightest median
    fill with the sweep's score at the frame nearest it (``crosslab_framing_real_tightest_fill``,
    ``crosslab_framing_at_real_tightest``, ``crosslab_framing_real_tightest_fraction``); the first
    row of ``fills`` is the training lab, the others real labs.

    >>> f = pd.DataFrame({"crop_fraction": [1.0, 0.6, 0.45], "cell_fill": [0.36, 0.6, 0.8],
    ...                   "balanced_accuracy": [0.99, 0.97, 0.8], "no_ruler_share": [0.4, 0.8, 0.7]})
    >>> s = pd.DataFrame({"lab": ["src", "a", "b"], "fill_median": [0.36, 0.55, 0.62]})
    >>> g = framing_glue(f, s)
    >>> g["crosslab_framing_real_tightest_fill"], g["crosslab_framing_at_real_tightest"], g["crosslab_framing_45"]
    (0.62, 0.97, 0.8)
    """
    glue = {f"crosslab_fill_{row.lab}": float(row.fill_median) for row in fills.itertuples()}
    glue.update({f"crosslab_framing_{round(100 * row.crop_fraction)}": float(row.balanced_accuracy)
                 for row in framing.itertuples()})
    real = fills.iloc[1:]
    if not len(real):
        return {**glue, **dict.fromkeys(("crosslab_framing_real_tightest_fill", "crosslab_framing_at_real_tightest",
                                          "crosslab_framing_real_tightest_fraction"), float("nan"))}
    tightest = float(real["fill_median"].max())
    nearest = framing.iloc[int(np.argmin(np.abs(framing["cell_fill"].to_numpy() - tightest)))]
    return {**glue, "crosslab_framing_real_tightest_fill": tightest,
            "crosslab_framing_at_real_tightest": float(nearest["balanced_accuracy"]),
            "crosslab_framing_real_tightest_fraction": float(nearest["crop_fraction"])}


__all__ = ["FRAMING_FRACTIONS", "framing_labs", "image_shapes", "cell_fill", "fill_table", "framing_table", "framing_glue"]
