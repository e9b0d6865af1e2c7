"""How well a white-cell mask predictor agrees with the expert masks.

Two of the four datasets (``jtsc_zheng18``, ``cellavision_zheng18``) come with expert
nucleus/cytoplasm masks (Zheng et al. 2018); the whole cell is every pixel > 0. Any
predictor (the label-free pseudo-masks of :mod:`bcfeat.detection.pseudo_masks`, or the trained
detector of :mod:`bcfeat.detection`) is scored here by

* mask IoU with the expert whole-cell mask, per image;
* detection rate: the fraction of images with mask IoU >= 0.5 (the usual "found it"
  criterion of instance segmentation);
* box IoU of the predicted box against the expert mask's bounding box.

The expert masks are read only here and only to measure; nothing fits to them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Collection, Iterable, Sequence

import numpy as np
import pandas as pd
from PIL import Image

from bcfeat import paths
from bcfeat.data import load_image, resolve_data_root

#: The datasets that have expert masks.
MASKED_DATASETS: tuple[str, ...] = ("jtsc_zheng18", "cellavision_zheng18")

#: IoU at or above which the cell counts as found.
DETECTION_IOU = 0.5


def mask_iou(pred: np.ndarray, target: np.ndarray) -> float:
    """Intersection over union of two boolean masks of the same shape.

    Two empty masks give 1.0 (they agree); one empty mask gives 0.0.

    >>> a = np.zeros((4, 4), bool); a[:2] = True
    >>> b = np.zeros((4, 4), bool); b[:, :2] = True
    >>> mask_iou(a, b)   # 4 / 12
    0.3333333333333333
    """
    pred, target = np.asarray(pred, bool), np.asarray(target, bool)
    if pred.shape != target.shape:
        raise ValueError(f"mask shapes differ: predicted {pred.shape}, expert {target.shape}")
    union = np.logical_or(pred, target).sum()
    if union == 0:
        return 1.0
    return float(np.logical_and(pred, target).sum() / union)


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of two ``(x0, y0, x1, y1)`` boxes.

    >>> box_iou((0, 0, 2, 2), (1, 0, 3, 2))
    0.3333333333333333
    """
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def mask_box(mask: np.ndarray) -> tuple[float, float, float, float]:
    """Bounding box ``(x0, y0, x1, y1)`` of a mask, exclusive right/bottom; zeros if empty."""
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return (0.0, 0.0, 0.0, 0.0)
    return (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))


def _expert_mask_levels(mask_path: str | Path) -> np.ndarray:
    """An expert mask's grey levels, ``(H, W)``: 255 nucleus, 128 cytoplasm, 0 background."""
    try:
        arr = np.asarray(Image.open(mask_path))
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read expert mask {mask_path}: {err}") from err
    return arr[..., 0] if arr.ndim == 3 else arr


def load_expert_mask(mask_path: str | Path) -> np.ndarray:
    """The expert whole-cell mask: ``(H, W)`` bool, every pixel > 0 (nucleus 255, cytoplasm 128)."""
    return _expert_mask_levels(mask_path) > 0


def load_expert_nucleus(mask_path: str | Path) -> np.ndarray:
    """The expert nucleus mask: ``(H, W)`` bool, the pixels marked 255 (above the cytoplasm's 128)."""
    return _expert_mask_levels(mask_path) > 191


def expert_mask_pairs(dataset: str, data_root: str | Path | None = None,
                      masks_root: str | Path | None = None) -> pd.DataFrame:
    """Images of one masked dataset paired with their expert mask.

    Parameters
    ----------
    dataset : str
        One of :data:`MASKED_DATASETS`.
    data_root, masks_root : path, optional
        Data root (default: :func:`bcfeat.data.resolve_data_root`) and expert-mask folder
        (default: ``masks/`` beside the data root, as in the shared folder and a data pack, else
        ``bcfeat.paths.SHARED_MASKS``).

    Returns
    -------
    pd.DataFrame
        Columns ``dataset, image_path, mask_path, class_folder, stem``, one row per image
        that has a mask, sorted by stem. Images without a mask are left out (counted in
        ``df.attrs["unpaired"]``).
    """
    if dataset not in MASKED_DATASETS:
        raise ValueError(f"no expert masks for {dataset!r}; masked datasets: {MASKED_DATASETS}")
    data_root = resolve_data_root(data_root)
    if masks_root is None:
        beside = data_root.parent / "masks" / dataset
        masks_root = beside.parent if beside.is_dir() else paths.SHARED_MASKS
    masks_root = Path(masks_root)
    image_dir, mask_dir = data_root / dataset, masks_root / dataset
    if not image_dir.is_dir():
        raise FileNotFoundError(f"dataset folder not found: {image_dir}")
    if not mask_dir.is_dir():
        raise FileNotFoundError(f"expert mask folder not found: {mask_dir}")
    rows, unpaired = [], 0
    for img in sorted(image_dir.glob("*/*")):
        if not img.is_file():
            continue
        mask = mask_dir / f"{img.stem}.png"
        if not mask.is_file():
            unpaired += 1
            continue
        rows.append({"dataset": dataset, "image_path": str(img), "mask_path": str(mask),
                     "class_folder": img.parent.name, "stem": img.stem})
    df = pd.DataFrame(rows, columns=["dataset", "image_path", "mask_path", "class_folder", "stem"])
    df = df.sort_values("stem", kind="stable").reset_index(drop=True)
    df.attrs["unpaired"] = unpaired
    return df


@dataclass
class MaskEvaluation:
    """Result of :func:`evaluate_mask_predictor`.

    Attributes
    ----------
    per_image : pd.DataFrame
        One row per image: ``dataset, stem, class_folder, image_path, mask_iou, box_iou,
        detected, pred_area, expert_area`` and, when the predictor reports them,
        ``fallback`` / ``confident``.
    summary : pd.DataFrame
        One row per dataset: ``dataset, n_images, mean_iou, median_iou, detection_rate,
        mean_box_iou`` (+ ``fallback_rate`` / ``confident_rate``), plus ``seconds``.
    """

    per_image: pd.DataFrame
    summary: pd.DataFrame


def summarize(per_image: pd.DataFrame) -> pd.DataFrame:
    """Per-dataset summary of a per-image table (see :class:`MaskEvaluation`)."""
    agg: dict[str, Any] = {
        "n_images": ("mask_iou", "size"),
        "mean_iou": ("mask_iou", "mean"),
        "median_iou": ("mask_iou", "median"),
        "detection_rate": ("detected", "mean"),
        "mean_box_iou": ("box_iou", "mean"),
    }
    for flag in ("fallback", "confident"):
        if flag in per_image:
            agg[f"{flag}_rate"] = (flag, "mean")
    return per_image.groupby("dataset", sort=False).agg(**agg).reset_index()


def evaluate_mask_predictor(
    predict: Callable[[list[np.ndarray]], Iterable[Any]],
    datasets: Sequence[str] = MASKED_DATASETS,
    *,
    data_root: str | Path | None = None,
    masks_root: str | Path | None = None,
    max_images: int | None = None,
    image_paths: Collection[str] | None = None,
    batch_size: int = 16,
) -> MaskEvaluation:
    """Score a mask predictor against the expert masks, per image and per dataset.

    Parameters
    ----------
    predict : callable
        Takes a list of ``(H, W, 3)`` uint8 images, returns one prediction per image:
        either a ``(H, W)`` bool mask, or an object with a ``mask`` attribute (and
        optionally ``box``, ``fallback``, ``confident``), e.g. a
        :class:`bcfeat.detection.pseudo_masks.PseudoMask` or :class:`bcfeat.detection.inference.Detection`.
    datasets : sequence of str
        Masked datasets to score.
    max_images : int, optional
        Score only the first n images of each dataset (sorted by file stem).
    image_paths : collection of str, optional
        Score only these images (as listed by :func:`expert_mask_pairs`), e.g. a held-out set.
    batch_size : int
        Images per ``predict`` call.

    Returns
    -------
    MaskEvaluation
    """
    rows, seconds = [], {}
    for ds in datasets:
        pairs = expert_mask_pairs(ds, data_root, masks_root)
        if image_paths is not None:
            pairs = pairs[pairs.image_path.isin(set(map(str, image_paths)))]
        if max_images is not None:
            pairs = pairs.iloc[:max_images]
        t0 = time.perf_counter()
        for start in range(0, len(pairs), batch_size):
            chunk = pairs.iloc[start:start + batch_size]
            images = [load_image(p) for p in chunk.image_path]
            preds = list(predict(images))
            if len(preds) != len(images):
                raise ValueError(f"predictor returned {len(preds)} predictions for {len(images)} images")
            for (_, row), img, pred in zip(chunk.iterrows(), images, preds):
                expert = load_expert_mask(row.mask_path)
                if expert.shape != img.shape[:2]:
                    raise ValueError(f"expert mask {row.mask_path} is {expert.shape}, "
                                     f"image {row.image_path} is {img.shape[:2]}")
                mask = np.asarray(getattr(pred, "mask", pred), bool)
                if mask.shape != expert.shape:
                    raise ValueError(f"predicted mask for {row.image_path} is {mask.shape}, expected {expert.shape}")
                box = getattr(pred, "box", None)
                box = mask_box(mask) if box is None else tuple(float(v) for v in box)
                iou = mask_iou(mask, expert)
                rec = {"dataset": ds, "stem": row.stem, "class_folder": row.class_folder,
                       "image_path": row.image_path, "mask_iou": iou,
                       "box_iou": box_iou(box, mask_box(expert)), "detected": iou >= DETECTION_IOU,
                       "pred_area": int(mask.sum()), "expert_area": int(expert.sum())}
                for flag in ("fallback", "confident"):
                    if hasattr(pred, flag):
                        rec[flag] = bool(getattr(pred, flag))
                rows.append(rec)
        seconds[ds] = time.perf_counter() - t0
    per_image = pd.DataFrame(rows)
    summary = summarize(per_image)
    summary["seconds"] = summary["dataset"].map(seconds)
    return MaskEvaluation(per_image, summary)


__all__ = ["MASKED_DATASETS", "DETECTION_IOU", "mask_iou", "box_iou", "mask_box", "load_expert_mask", "load_expert_nucleus",
           "expert_mask_pairs", "MaskEvaluation", "summarize", "evaluate_mask_predictor"]
