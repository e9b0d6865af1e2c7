"""The cross-lab cell model: find the cell, cut a canonical crop, measure it; optionally classify.

:class:`CrossLabModel` is what the study writes and what a lab uses:

- a **mask source**: the study's white-cell detector (:mod:`bcfeat.detection`, its weights
  stored inside the model file) or the label-free stain segmentation
  (:mod:`bcfeat.detection.pseudo_masks`, no weights);
- the **canonical crop** (:mod:`bcfeat.crosslab.cell_crop`) and the **cell features**
  (:mod:`bcfeat.crosslab.cell_features`);
- optionally a **classifier** (:class:`bcfeat.crosslab.adaptation.CrossLabClassifier`,
  logistic) trained on one lab's labelled folders, with a record of what it was trained on.

Model files are data, not code: a ``torch.save`` of tensors and plain values of format
``bcfeat.crosslab/1``, opened only through :func:`bcfeat.model_files.load_model_file`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bcfeat.atomic_io import atomic_torch_save
from bcfeat.crosslab.cell_crop import CellCrop, CropConfig, canonical_crop
from bcfeat.crosslab.cell_features import (NUCLEUS_OD, TEXTURE_OD, cell_features, feature_names, fine_texture_columns,
                                           ruler_column)
from bcfeat.data.images import ImageDecodeError, SkippedImages, read_image
from bcfeat.detection.pseudo_masks import SegmentationConfig
from bcfeat.model_files import ModelFileError, arrays_as_tensors, build_from_payload, format_name, load_model_file

if TYPE_CHECKING:  # scikit-learn is imported where a classifier is fitted, not by the worker processes' parent
    from bcfeat.crosslab.adaptation import CrossLabClassifier

logger = logging.getLogger(__name__)

MODEL_KIND = "crosslab"
MODEL_VERSION = 1
MASK_SOURCES = ("detector", "stain")
REMAKE_HINT = ("re-run the cross-lab stage: `make pipeline RUN_ARGS=\"--only 07_crosslab\"` "
               "(notebooks/07_crosslab.py), or `bcfeat train-classifier` for a classifier file")


@dataclass(frozen=True)
class CrossLabConfig:
    """How the cross-lab model finds and cuts out cells (``ExtractionConfig`` is the AE-CFE extractor's).

    Attributes
    ----------
    mask_source : {"detector", "stain"}
        The study's detector (needs its weights) or the label-free stain segmentation.
    crop : CropConfig
    segmentation : SegmentationConfig
        The label-free stain segmentation's settings (``mask_source="stain"``): its defaults with
        Pillow's resampling (the same masks as the reproduction's pseudo-masks up to a boundary
        pixel, a third less time per image). Model files written before this field existed
        segment as the reproduction does (scikit-image resampling), so they keep their features.
    texture_od : {"raw", "nucleus"}
        How the texture features read the optical density
        (:func:`bcfeat.crosslab.cell_features.texture_density`): as measured, or scaled per cell
        to a reference nucleus density. Model files written before this field read it raw.
    nucleus_od : {"total", "red"}
        The optical density whose darker class inside the cell is the nucleus
        (:func:`bcfeat.crosslab.cell_features.nucleus_density`): every dye's, or the red channel's
        (the nuclear dye's) alone. Model files written before this field use the total.
    detector_batch_size : int
        Images per detector forward pass.
    n_workers : int
        Processes measuring the crops in parallel (1: in this process).
    chunk_size : int
        Images read and measured at a time: memory holds at most two chunks of images (the workers
        measure one while the other is collected), never the folder.
    """

    mask_source: str = "detector"
    crop: CropConfig = field(default_factory=CropConfig)
    segmentation: SegmentationConfig = field(default_factory=lambda: SegmentationConfig(resampler="pillow"))
    texture_od: str = "raw"
    nucleus_od: str = "total"
    detector_batch_size: int = 16
    n_workers: int = 1
    chunk_size: int = 256

    def __post_init__(self) -> None:
        if self.mask_source not in MASK_SOURCES:
            raise ValueError(f"mask_source must be one of {MASK_SOURCES}, got {self.mask_source!r}")
        if self.texture_od not in TEXTURE_OD:
            raise ValueError(f"texture_od must be one of {TEXTURE_OD}, got {self.texture_od!r}")
        if self.nucleus_od not in NUCLEUS_OD:
            raise ValueError(f"nucleus_od must be one of {NUCLEUS_OD}, got {self.nucleus_od!r}")
        if self.detector_batch_size < 1 or self.n_workers < 1 or self.chunk_size < 1:
            raise ValueError("detector_batch_size, n_workers and chunk_size must be >= 1, got "
                             f"{self.detector_batch_size}, {self.n_workers} and {self.chunk_size}")

    @classmethod
    def from_dict(cls, d: dict) -> CrossLabConfig:
        d = dict(d)
        d["crop"] = CropConfig(**d.get("crop", {}))
        seg = dict(d.get("segmentation", {}))  # absent: a file from before the field, scikit-image's resampling
        if "inside_shrink" in seg:
            seg["inside_shrink"] = tuple(seg["inside_shrink"])
        d["segmentation"] = SegmentationConfig(**seg)
        return cls(**d)


def end_with_parent() -> None:
    """Worker initializer: the kernel sends this process SIGTERM when its parent dies (Linux
    ``PR_SET_PDEATHSIG``), so a killed ``bcfeat classify`` leaves no worker behind holding memory.
    Elsewhere it does nothing."""
    import ctypes
    import signal
    import sys

    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
        except OSError:
            pass
        if os.getppid() == 1:  # the parent died before the request: end now
            os._exit(1)


def _measure(image: np.ndarray, mask: Any, crop_cfg: CropConfig, ruler: bool = True,
             seg_cfg: SegmentationConfig | None = None, texture_od: str = "raw",
             fine_texture: bool = True, nucleus_od: str = "total") -> tuple[np.ndarray, np.ndarray, bool]:
    """One image and its cell mask (None: the label-free stain segmentation's, with ``seg_cfg``; or
    the detector's ``(mask, found)``) -> (features, crop image, whether a cell was found rather than
    the fallback). ``ruler=False`` skips the red-cell ruler (its feature is NaN), ``fine_texture=False``
    the pixel-scale texture (NaN); ``texture_od`` and ``nucleus_od``: see :class:`CrossLabConfig`."""
    found = True
    if mask is None:
        from bcfeat.detection.pseudo_masks import segment_white_cell

        segmented = segment_white_cell(image, seg_cfg, full_nucleus=False)  # the features find their own
        mask, found = segmented.mask, segmented.reason != "no_nucleus"
    elif isinstance(mask, tuple):  # (the detector's mask, whether it found a cell)
        mask, found = mask
    if not mask.any():  # nothing found: the detector's own fallback, a centred ellipse
        from bcfeat.detection.pseudo_masks import centred_ellipse

        mask, found = centred_ellipse(*image.shape[:2]), False
    crop = canonical_crop(image, mask, crop_cfg, ruler=ruler)
    return cell_features(crop, texture_od, fine_texture, nucleus_od), crop.image, found


THUMBNAIL_QUALITY = 90  # JPEG quality of the review page's cell crops


def encode_thumbnail(crop: np.ndarray) -> bytes:
    """A canonical crop ``(S, S, 3)`` uint8 as JPEG bytes (a few kB), for a review page."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(crop).save(buffer, format="JPEG", quality=THUMBNAIL_QUALITY)
    return buffer.getvalue()


def measured_parts(reads: Sequence[int] | None) -> tuple[bool, bool]:
    """Whether the red-cell ruler and the pixel-scale texture must be measured for a caller that
    reads the feature columns ``reads`` (None: all of them).

    >>> from bcfeat.crosslab.cell_features import feature_set_columns
    >>> measured_parts(None), measured_parts(feature_set_columns("no_fine_texture"))
    ((True, True), (True, False))
    """
    if reads is None:
        return True, True
    reads = {int(c) for c in reads}
    return ruler_column() in reads, bool(reads & set(fine_texture_columns()))


def _measure_item(args: tuple[Any, Any, CrossLabConfig, bool, bool, bool, bool]
                  ) -> tuple[np.ndarray, np.ndarray | None, bool, bytes | None] | str:
    """``(image, mask, model config, encode, ruler, fine texture, keep crop)``: one image (a path, read
    here, or an array) and its mask (see :func:`_measure`) -> ``(features, crop or None, found,
    thumbnail or None)``, or the reason why the file could not be read. The crop comes back only
    when asked for: a worker process would otherwise send every crop to its parent for nothing."""
    item, mask, cfg, encode, ruler, fine, keep_crop = args
    try:
        image = read_image(item)
    except (ImageDecodeError, OSError, ValueError, TypeError) as error:
        return str(error)
    feats, crop, found = _measure(image, mask, cfg.crop, ruler, cfg.segmentation, cfg.texture_od, fine,
                                  cfg.nucleus_od)
    return feats, crop if keep_crop else None, found, encode_thumbnail(crop) if encode else None


# Images a worker process takes from the queue at a time. A task of a few images (tens of
# milliseconds) costs nothing to hand over and lets the workers finish a chunk together: with
# larger tasks the last one of a call kept one worker busy while the other waited.
TASK_IMAGES = 4


def _item_name(item: Any, index: int) -> str:
    return item if not isinstance(item, np.ndarray) else f"<array {index}>"


def _chunks(items: Iterable[Any], size: int) -> Iterator[tuple[int, list]]:
    """``(index of the first, items)`` of consecutive chunks of at most ``size`` items."""
    chunk: list = []
    start = 0
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield start, chunk
            start += size
            chunk = []
    if chunk:
        yield start, chunk


class CrossLabModel:
    """Mask source + canonical crop + cell features, and optionally a trained classifier.

    Parameters
    ----------
    config : CrossLabConfig
    detector : torchvision MaskRCNN or None
        Needed when ``config.mask_source == "detector"``.
    classifier : CrossLabClassifier or None
    record : dict
        Free-form provenance (what the detector / classifier was trained on).
    """

    def __init__(self, config: CrossLabConfig, detector: Any = None, classifier: CrossLabClassifier | None = None,
                 record: dict | None = None):
        if config.mask_source == "detector" and detector is None:
            raise ValueError("mask_source='detector' needs a detector")
        self.config = config
        self.detector = detector
        self.classifier = classifier
        self.record = dict(record or {})

    @property
    def feature_names(self) -> list[str]:
        return feature_names()

    def _masks(self, images: list[np.ndarray]) -> list[np.ndarray | None]:
        """The detector's masks; None per image for the stain segmentation, which runs in the workers."""
        if self.config.mask_source == "stain":
            return [None] * len(images)
        import torch

        from bcfeat.detection.inference import detect

        with torch.inference_mode():
            return [(d.mask, not d.fallback)
                    for d in detect(self.detector, images, batch_size=self.config.detector_batch_size)]

    def iter_measure(self, images: Iterable[Any], skipped: SkippedImages, return_crops: bool = False,
                     found: list | None = None, thumbnails: list | None = None, reads: Sequence[int] | None = None,
                     meanwhile: Callable[[], Any] | None = None
                     ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
        """:meth:`measure` in bounded chunks: yields ``(features, kept indices, crops or None)``
        per chunk of at most ``config.chunk_size`` images, so memory does not grow with the number
        of images (only what the caller keeps of the yields does).

        With the stain segmentation the worker processes read the files themselves (the main
        process holds no decoded image); with the detector the main process decodes a chunk and
        runs the detector on it while the workers measure the previous one. ``thumbnails`` (a
        list) receives each kept cell's canonical crop as JPEG bytes, for a review page. ``reads``:
        the feature columns the caller will read (None: all); the red-cell ruler and the pixel-scale
        texture are measured only when one of their columns is read (else NaN), so a classifier
        that reads neither gets the same classes in less time. ``meanwhile``: work of the main
        process's own (loading a classifier, say), run once while the workers measure the first
        chunk, so that it costs no time of its own; its exception ends the measuring.
        """
        cfg = self.config
        ruler, fine = measured_parts(reads)
        encode = thumbnails is not None
        pool = (ProcessPoolExecutor(cfg.n_workers, initializer=end_with_parent) if cfg.n_workers > 1 else None)

        def submit(start: int, chunk: list) -> tuple[int, list, list, Iterator]:
            """Start measuring one chunk: the workers begin at once, the results come lazily."""
            jobs, kept = [], []
            if cfg.mask_source == "stain":
                jobs = [(item, None, cfg, encode, ruler, fine, return_crops) for item in chunk]
                kept = list(range(start, start + len(chunk)))
            else:
                loaded = []
                for i, item in enumerate(chunk, start):
                    try:
                        loaded.append(read_image(item))
                        kept.append(i)
                    except (ImageDecodeError, OSError, ValueError, TypeError) as error:
                        skipped.add(_item_name(item, i), str(error))
                jobs = [(im, m, cfg, encode, ruler, fine, return_crops) for im, m in zip(loaded, self._masks(loaded) if loaded else [])]
            if pool is not None and len(jobs) > 1:
                results = pool.map(_measure_item, jobs, chunksize=TASK_IMAGES)
            else:
                results = map(_measure_item, jobs)
            return start, chunk, kept, results

        def collect(start: int, chunk: list, kept: list, results: Iterator
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
            feats, crops, ok = [], [], []
            for i, result in zip(kept, results):
                if isinstance(result, str):  # the worker could not read the file: its reason
                    skipped.add(_item_name(chunk[i - start], i), result)
                    continue
                f, crop, was_found, thumb = result
                ok.append(i)
                feats.append(f)
                if return_crops:
                    crops.append(crop)
                if found is not None:
                    found.append(bool(was_found))
                if encode:
                    thumbnails.append(thumb)
            d = len(feature_names())
            return (np.stack(feats) if feats else np.zeros((0, d)), np.asarray(ok, dtype=np.int64),
                    (np.stack(crops) if crops else np.zeros((0, cfg.crop.size, cfg.crop.size, 3), np.uint8))
                    if return_crops else None)

        try:
            # One chunk ahead: the workers measure the next chunk while this one is collected (and,
            # with the detector, while the main process detects), so no core waits at a chunk's end;
            # memory holds at most two chunks.
            ahead = None
            for start, chunk in _chunks(images, cfg.chunk_size):
                submitted = submit(start, chunk)
                if meanwhile is not None:
                    meanwhile, work = None, meanwhile
                    work()
                if ahead is not None:
                    yield collect(*ahead)
                ahead = submitted
            if meanwhile is not None:  # no image at all
                meanwhile()
            if ahead is not None:
                yield collect(*ahead)
        finally:
            if pool is not None:
                pool.shutdown(cancel_futures=True)

    def measure(self, images: Sequence[Any], skipped: SkippedImages | None = None,
                return_crops: bool = False, found: list | None = None, thumbnails: list | None = None,
                reads: Sequence[int] | None = None, meanwhile: Callable[[], Any] | None = None
                ) -> tuple[np.ndarray, np.ndarray] | tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Cell features of images (arrays or paths).

        Returns ``(features (m, d), kept (m,) indices into images)``, and the canonical crops
        ``(m, S, S, 3)`` uint8 with ``return_crops``. Unreadable images (and images whose cell
        cannot be cut out) are skipped and named in ``skipped`` when a list is passed (the caller
        reports them), else logged with their count. A list
        passed as ``found`` receives, per kept image, whether a cell was found (False: the mask is
        the centred fallback, e.g. a blank image); one passed as ``thumbnails`` each kept cell's
        canonical crop as JPEG bytes.

        Images are read and measured in chunks (:meth:`iter_measure`, which runs ``meanwhile``):
        only the features (and the crops or thumbnails asked for) are held for the whole call.
        """
        told = skipped is not None  # a caller that passes the list reports it (the commands do, once)
        skipped = SkippedImages() if skipped is None else skipped
        parts = list(self.iter_measure(images, skipped, return_crops, found, thumbnails, reads, meanwhile))
        d = len(feature_names())
        feats = np.concatenate([p[0] for p in parts]) if parts else np.zeros((0, d))
        kept = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, np.int64)
        if len(skipped) and not told:
            logger.warning("%s", skipped.summary())
        if not return_crops:
            return feats, kept
        crops = (np.concatenate([p[2] for p in parts]) if parts
                 else np.zeros((0, self.config.crop.size, self.config.crop.size, 3), np.uint8))
        return feats, kept, crops

    def classify(self, images: Sequence[Any], skipped: SkippedImages | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Class probabilities of **one lab's** images: ``((m, n_classes), kept indices)``.

        The classifier standardises the images of one call with their own statistics, so
        pass one lab's cells together (at least ``MIN_SITE_CELLS``).
        """
        if self.classifier is None:
            raise ValueError("this model has no classifier: train one with `bcfeat train-classifier`")
        feats, kept = self.measure(images, skipped, reads=self.classifier_columns)
        return self.classifier.predict_proba(feats), kept

    @property
    def classifier_columns(self) -> tuple[int, ...] | None:
        """The feature columns the classifier reads (None: all, or no classifier)."""
        return None if self.classifier is None or self.classifier.columns is None else tuple(self.classifier.columns)


# ----------------------------------------------------------------------------- model files
def save_model(path: str | os.PathLike, model: CrossLabModel) -> Path:
    """Write a model file (atomic): tensors and plain values only."""
    payload: dict[str, Any] = {
        "format": format_name(MODEL_KIND, MODEL_VERSION),
        "config": asdict(model.config),
        "feature_names": feature_names(),
        "record": model.record,
        "detector": None,
        "classifier": None if model.classifier is None else model.classifier.to_payload(),
    }
    if model.detector is not None:
        from bcfeat.detection.architecture import config_of

        payload["detector"] = {"config": asdict(config_of(model.detector)),
                               "state_dict": {k: v.detach().cpu() for k, v in model.detector.state_dict().items()}}
    return atomic_torch_save(payload, path)


def read_model_payload(path: str | os.PathLike, payload: Any = None, arrays: bool = False) -> dict:
    """The payload of a cross-lab model file, opened as data (:func:`bcfeat.model_files.load_model_file`).

    ``payload``: the file's contents when they were read already (only checked then). ``arrays``:
    numpy arrays in place of tensors, read without importing PyTorch where the file allows it
    (:func:`bcfeat.model_files.read_payload_arrays`).

    Raises
    ------
    FileNotFoundError
        No file at ``path``.
    ModelFileError
        Damaged, of another kind or version, holding code, or measuring other features than
        this bcfeat; the message names the file.
    """
    payload = load_model_file(path, MODEL_KIND, versions=(MODEL_VERSION,),
                              required=("config", "feature_names", "detector", "classifier"), payload=payload,
                              arrays=arrays)
    if payload["feature_names"] != feature_names():
        raise ModelFileError(path, f"measures other cell features than this bcfeat; {REMAKE_HINT}")
    return payload


def load_model(path: str | os.PathLike, payload: Any = None) -> CrossLabModel:
    """Rebuild a :class:`CrossLabModel` from a file of :func:`save_model` (``payload``: its contents,
    when read already by :func:`bcfeat.model_files.read_payload`).

    Read from the file, it is opened without PyTorch (numpy arrays); PyTorch is imported only for a
    file that holds a detector, so classifying with the stain segmentation never loads it."""
    payload = read_model_payload(path, payload, arrays=payload is None)

    def build() -> CrossLabModel:
        config = CrossLabConfig.from_dict(payload["config"])
        detector = None
        if payload["detector"] is not None:
            from bcfeat.detection.checkpoint import detector_from_payload

            detector = detector_from_payload(arrays_as_tensors(payload["detector"]), path)
        classifier = None
        if payload["classifier"] is not None:
            from bcfeat.crosslab.adaptation import CrossLabClassifier

            classifier = CrossLabClassifier.from_payload(payload["classifier"], len(feature_names()))
        return CrossLabModel(config, detector, classifier, payload.get("record", {}))

    return build_from_payload(path, "cross-lab model", build)


def load_measuring_part(path: str | os.PathLike, payload: dict) -> tuple[CrossLabModel, tuple[int, ...] | None]:
    """The measuring part of a stain-segmentation model file, without its classifier: ``(model,
    the feature columns its classifier reads)`` (None: every column, or no classifier). ``payload``:
    the file read by :func:`read_model_payload`.

    A caller that measures before it classifies (``bcfeat classify``) starts the worker processes
    with this part and builds the whole model (:func:`load_model` with the same payload) while
    they measure (the classifier's logistic regression is read as
    :class:`~bcfeat.crosslab.estimator_api.FittedLogistic`: no scikit-learn is imported)."""
    if payload["detector"] is not None:
        raise ValueError(f"{path}: a detector model is measured in this process; load it whole with load_model")

    def build() -> tuple[CrossLabModel, tuple[int, ...] | None]:
        model = CrossLabModel(CrossLabConfig.from_dict(payload["config"]), record=payload.get("record", {}))
        params = (payload["classifier"] or {}).get("params") or {}
        columns = params.get("columns")
        return model, None if columns is None else tuple(int(c) for c in columns)

    return build_from_payload(path, "cross-lab model", build)


__all__ = ["MODEL_KIND", "MODEL_VERSION", "MASK_SOURCES", "CrossLabConfig", "CrossLabModel", "measured_parts",
           "save_model", "load_model", "load_measuring_part", "read_model_payload"]
