"""A scikit-learn transformer over any bcfeat model file: images or paths -> one feature row per input,
so a benchmark is ``make_pipeline(ImageFeatures(model_path), RandomForestClassifier())``.

The file is opened by :func:`bcfeat.extractors.open_extractor`; ``AECFEFeatures`` is the class's former name."""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

logger = logging.getLogger(__name__)


ON_ERROR = ("raise", "nan")


def _as_items(X: Any) -> list[Any]:
    """The images of ``X`` as a list: one path or one ``(H, W, 3)`` array is one image, not a sequence."""
    if isinstance(X, (str, bytes, os.PathLike)):
        return [X]
    if isinstance(X, np.ndarray) and X.ndim == 3:
        return [X]
    if isinstance(X, pd.Series):
        return X.tolist()
    return list(X)


# one reader of "an image path or an (H, W, 3) uint8 array" for every entry point
from bcfeat.data.images import read_image


class ImageFeatures(TransformerMixin, BaseEstimator):
    """Features of any bcfeat model file as a scikit-learn transformer: images or image paths ->
    ``(n, d)`` (50 AE-CFE features, or a cross-lab model's named cell features).

    ``transform`` returns one row per input, always. What happens to an input that is not
    a readable image (a missing or broken file, an empty or wrongly shaped array) is
    chosen by ``on_error``.

    Parameters
    ----------
    model_path : path-like
        A model file of :func:`save_model` (detector + autoencoder), or a cross-lab model file
        (:mod:`bcfeat.crosslab.model`; then the output is its named cell features, raw, before
        any per-lab standardisation). ``fit`` loads it; both are trained beforehand by the
        study, so ``fit`` learns nothing from ``X`` or ``y``.
    on_error : {"raise", "nan"}
        ``"raise"`` (default): the first unreadable input stops ``transform`` with an error
        naming it. ``"nan"``: its row is all NaN, and the count and reasons are kept in
        ``n_skipped_`` and ``skipped_`` (scikit-learn's random forests accept NaN).
    device : str, optional
        Where an AE-CFE model runs: ``"auto"``, ``"cpu"``, ``"cuda"``...; on CUDA the batched
        path of :mod:`bcfeat.detection.batched_inference` runs. None (default): the CPU, as the study.
    batch_size : int, optional
        Images per detector pass (default: the model file's, or 256 on the batched CUDA path).

    Attributes
    ----------
    extractor_ : bcfeat.extractors.Extractor
        The opened model file (``kind``, ``feature_names``, ``sha256``).
    model_ : AECFEModel or CrossLabModel
    n_features_out_ : int
    n_skipped_ : int
        Inputs of the last ``transform`` call that gave a NaN row (``on_error="nan"``).
    skipped_ : list of (int, str)
        Their positions in that call's input and why each was skipped.

    Examples
    --------
    >>> from sklearn.base import clone
    >>> clone(ImageFeatures("model.pt")).get_params()
    {'batch_size': None, 'device': None, 'model_path': 'model.pt', 'on_error': 'raise'}
    """

    def __init__(self, model_path: str | os.PathLike | None = None, on_error: str = "raise",
                 device: str | None = None, batch_size: int | None = None):
        self.model_path = model_path
        self.on_error = on_error
        self.device = device
        self.batch_size = batch_size

    def fit(self, X: Any = None, y: Any = None) -> "ImageFeatures":
        if self.model_path is None:
            raise ValueError(f"{type(self).__name__} needs model_path, an AE-CFE or cross-lab model file")
        if self.on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {self.on_error!r}")
        from bcfeat.extractors import open_extractor

        self.extractor_ = open_extractor(self.model_path)
        self.n_features_out_ = len(self.extractor_.feature_names)
        self.runtime_ = None
        if self.extractor_.kind == "aecfe" and (self.device is not None or self.batch_size is not None):
            from bcfeat.detection.batched_inference import ExtractionRuntime

            self.runtime_ = ExtractionRuntime(device=self.device or "cpu", batch_size=self.batch_size).resolved()
            self.extractor_.model.to(self.runtime_.torch_device())
        self.n_skipped_, self.skipped_ = 0, []
        return self

    @property
    def model_(self):
        """The model the file holds (:class:`~bcfeat.autoencoder.aecfe_model.AECFEModel` or
        :class:`~bcfeat.crosslab.model.CrossLabModel`)."""
        check_is_fitted(self, "extractor_")
        return self.extractor_.model

    def transform(self, X: Any) -> np.ndarray:
        """Images -> ``(n_inputs, n_features_out_)`` float32, one row per input (see ``on_error``)."""
        from bcfeat.data.images import ImageDecodeError

        check_is_fitted(self, "extractor_")
        items = _as_items(X)
        images, kept, skipped = [], [], []
        for i, item in enumerate(items):
            try:
                images.append(read_image(item))
            except (ImageDecodeError, OSError, ValueError, TypeError) as error:
                if self.on_error == "raise":
                    raise ValueError(f"input {i} is not a readable image: {error} "
                                     f"({type(self).__name__}(on_error='nan') gives it a NaN row instead)") from error
                skipped.append((i, str(error)))
                continue
            kept.append(i)
        out = np.full((len(items), self.n_features_out_), np.nan, dtype=np.float32)
        if images:
            out[kept] = self.extractor_.transform(images, self.runtime_)
        self.n_skipped_, self.skipped_ = len(skipped), skipped
        if skipped:
            logger.warning("%s: %d of %d inputs unreadable, NaN rows: %s", type(self).__name__,
                           len(skipped), len(items), "; ".join(f"{i}: {r}" for i, r in skipped[:5]))
        return out

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        check_is_fitted(self, "extractor_")
        return np.asarray(self.extractor_.feature_names, dtype=object)


# The name it had when it read AE-CFE files only; kept for code written against it.
AECFEFeatures = ImageFeatures
