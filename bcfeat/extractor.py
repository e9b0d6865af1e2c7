"""The trained AE-CFE feature extractor: the cell detector and the autoencoder's encoder as one model.

* :func:`instance_arrays` / :func:`cached_instance_arrays`: images -> instance features and
  masked crops (through the detector), cached on disk per data and detector checkpoint.
* :func:`autoencoder_inputs`: those arrays as the autoencoder's training tensors.
* :class:`AECFEModel`: detector + autoencoder in **one checkpoint file** (:func:`save_model`,
  :func:`load_model`), each part rebuilt from the config stored inside it.
* :class:`AECFEFeatures`: a scikit-learn transformer, images or paths -> ``(n, 50)`` latents,
  so the benchmark is ``make_pipeline(AECFEFeatures(model_path), RandomForestClassifier())``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from bcfeat.atomic_io import atomic_torch_save
from bcfeat.feature_cache import cache_key, cached_arrays

MODEL_FORMAT = "bcfeat.aecfe/1"


@dataclass
class ExtractionConfig:
    """How images become autoencoder inputs.

    Attributes
    ----------
    crop_size : int
        Side of the masked cell crop the image decoder reconstructs (= ``AEConfig.image_size``).
    batch_size : int
        Images per detector forward pass.
    background : float
        Value outside the cell mask in the crops (0: black).
    region : {"detected", "whole"}
        ``detected``: RoIAlign at the detected cell (AE-CFE). ``whole``: at the whole image,
        and the crop is the whole image (the "no detector" ablation).
    """

    crop_size: int = 64
    batch_size: int = 16
    background: float = 0.0
    region: str = "detected"

    def __post_init__(self) -> None:
        if self.region not in ("detected", "whole"):
            raise ValueError(f"region must be 'detected' or 'whole', got {self.region!r}")


def scale_features(features: torch.Tensor) -> torch.Tensor:
    """Per-sample min-max scaling to [-1, 1], as the released code's data loader does.

    ``(n, C, 14, 14) -> (n, C, 14, 14)``; the feature decoder ends in tanh, so its targets must
    lie in [-1, 1]. A constant sample maps to -1.
    """
    flat = features.reshape(len(features), -1).float()
    low = flat.min(dim=1, keepdim=True).values
    span = (flat.max(dim=1, keepdim=True).values - low).clamp_min(1e-12)
    return (2 * (flat - low) / span - 1).reshape(features.shape)


@torch.inference_mode()
def whole_image_instances(detector, images: Sequence[Any], crop_size: int, batch_size: int = 16):
    """The "no detector" ablation: RoIAlign over the FPN at the **whole image**, and the whole image
    as the crop. Only the backbone and FPN run (no proposals, no heads); no fallback is involved.

    Returns an :class:`bcfeat.instance_features.InstanceBatch` (scores 1, no fallbacks).
    """
    from torchvision.ops import MultiScaleRoIAlign

    from bcfeat.detector import _as_image, config_of
    from bcfeat.instance_features import ROI_SIZE, InstanceBatch, masked_crop

    cfg = config_of(detector)
    device = next(detector.parameters()).device
    pool = MultiScaleRoIAlign(cfg.feature_names, ROI_SIZE, sampling_ratio=2)
    detector.eval()
    features, crops, boxes = [], [], []
    images = [_as_image(item) for item in images]
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size]
        tensors = [torch.from_numpy(np.ascontiguousarray(im)).permute(2, 0, 1).to(device).float().div_(255)
                   for im in chunk]
        image_list, _ = detector.transform(tensors)
        maps = detector.backbone(image_list.tensors)
        whole = [torch.tensor([[0.0, 0.0, float(w), float(h)]], device=device) for h, w in image_list.image_sizes]
        features.append(pool(maps, whole, image_list.image_sizes).cpu())
        for im in chunk:
            h, w = im.shape[:2]
            crops.append(masked_crop(im, np.ones((h, w), bool), (0, 0, w, h), crop_size))
            boxes.append((0.0, 0.0, float(w), float(h)))
    n = len(images)
    return InstanceBatch(features=torch.cat(features).float(), crops=torch.stack(crops),
                         boxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                         scores=torch.ones(n), fallback=torch.zeros(n, dtype=torch.bool),
                         n_candidates=torch.ones(n, dtype=torch.int64))


def instance_arrays(detector, paths: Sequence[Any], cfg: ExtractionConfig) -> dict[str, np.ndarray]:
    """Instance features (float16), crops (uint8, ``(n, 3, S, S)``) and detection records of images."""
    from bcfeat.instance_features import extract_instances

    if cfg.region == "whole":
        batch = whole_image_instances(detector, list(paths), cfg.crop_size, cfg.batch_size)
    else:
        batch = extract_instances(detector, list(paths), crop_size=cfg.crop_size, batch_size=cfg.batch_size,
                                  background=cfg.background)
    return {
        "features": batch.features.numpy().astype(np.float16),
        "crops": (batch.crops.clamp(0, 1) * 255).round().to(torch.uint8).numpy(),
        "boxes": batch.boxes.numpy(),
        "scores": batch.scores.numpy(),
        "fallback": batch.fallback.numpy(),
        "n_candidates": batch.n_candidates.numpy(),
    }


def cached_instance_arrays(detector_checkpoint: str | os.PathLike, paths: Sequence[str], cfg: ExtractionConfig,
                           cache_dir: str | os.PathLike, progress: bool = True) -> dict[str, np.ndarray]:
    """:func:`instance_arrays` for every path, computed once per (images, detector file, config)."""
    from bcfeat.detector import load_detector
    from bcfeat.train import resolve_device

    key = cache_key(paths, detector_checkpoint, asdict(cfg))
    detector: list = []

    def compute(chunk: list[str]) -> dict[str, np.ndarray]:
        if not detector:  # load lazily: a complete cache entry never touches the detector
            detector.append(load_detector(detector_checkpoint).to(resolve_device()).eval())
        with torch.inference_mode():
            return instance_arrays(detector[0], chunk, cfg)

    return cached_arrays(paths, compute, cache_dir, key=key, chunk_size=512, progress=progress,
                         description=f"instances ({cfg.region})")


def autoencoder_inputs(arrays: dict[str, np.ndarray], domain: Sequence[int]):
    """``(features, crops, domain)`` tensors for :func:`bcfeat.train.fit_autoencoder`.

    Features are min-max scaled per sample (:func:`scale_features`); crops become float in [0, 1].
    """
    features = scale_features(torch.from_numpy(arrays["features"].astype(np.float32)))
    crops = torch.from_numpy(arrays["crops"]).float() / 255
    return features, crops, torch.as_tensor(np.asarray(domain), dtype=torch.long)


@torch.inference_mode()
def encode_features(autoencoder, features: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """Latent codes ``(n, 50)`` of instance features ``(n, C, 14, 14)`` (scaled here)."""
    autoencoder.eval()
    out = []
    for start in range(0, len(features), batch_size):
        chunk = scale_features(torch.from_numpy(np.asarray(features[start:start + batch_size], np.float32)))
        out.append(autoencoder.encode(chunk).numpy())
    return np.concatenate(out) if out else np.zeros((0, autoencoder.cfg.latent_dim), np.float32)


@torch.inference_mode()
def reconstruct(autoencoder, features: np.ndarray) -> np.ndarray:
    """Image-decoder reconstructions ``(n, 3, S, S)`` in [0, 1] of instance features."""
    autoencoder.eval()
    return autoencoder(scale_features(torch.from_numpy(np.asarray(features, np.float32)))).image.numpy()


@dataclass
class AECFEModel:
    """A trained extractor: detector, autoencoder and the extraction settings.

    With ``site_standardize`` (:mod:`bcfeat.site_standardization`), the images of one call
    are taken as one site and standardised with their own channel statistics: pass one
    site's images per call, at least ``MIN_SITE_IMAGES`` of them.
    """

    detector: Any
    autoencoder: Any
    extraction: ExtractionConfig
    site_standardize: bool = False

    @torch.inference_mode()
    def transform(self, images: Sequence[Any]) -> np.ndarray:
        """Images (arrays or paths) -> ``(n, latent_dim)`` features."""
        arrays = instance_arrays(self.detector.eval(), list(images), self.extraction)
        return self.encode(arrays["features"])

    def encode(self, features: np.ndarray) -> np.ndarray:
        """Instance features of one site's images ``(n, C, 14, 14)`` -> latent codes ``(n, 50)``."""
        if self.site_standardize:
            from bcfeat.site_standardization import channel_statistics, standardize

            features = standardize(features, channel_statistics(features))
        return encode_features(self.autoencoder, features)


def save_model(path: str | os.PathLike, detector_checkpoint: str | os.PathLike,
               autoencoder_checkpoint: str | os.PathLike, extraction: ExtractionConfig,
               site_standardize: bool = False) -> Path:
    """Bundle a detector checkpoint and an autoencoder checkpoint into one file (atomic write)."""
    payload = {
        "format": MODEL_FORMAT,
        "site_standardize": bool(site_standardize),
        "extraction": asdict(extraction),
        "detector": torch.load(detector_checkpoint, map_location="cpu", weights_only=False),
        "autoencoder": torch.load(autoencoder_checkpoint, map_location="cpu", weights_only=False),
    }
    return atomic_torch_save(payload, path)


def load_model(path: str | os.PathLike) -> AECFEModel:
    """Rebuild an :class:`AECFEModel` from one file written by :func:`save_model`."""
    import tempfile

    from bcfeat.detector import load_detector
    from bcfeat.model import load_checkpoint

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no AE-CFE model file at {path}")
    payload = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(payload, dict) or payload.get("format") != MODEL_FORMAT:
        raise ValueError(f"{path} is not an AE-CFE model file (expected format {MODEL_FORMAT!r})")
    with tempfile.TemporaryDirectory() as tmp:  # the part loaders read files; reuse them unchanged
        det_file, ae_file = Path(tmp) / "detector.pt", Path(tmp) / "autoencoder.pt"
        torch.save(payload["detector"], det_file)
        torch.save(payload["autoencoder"], ae_file)
        detector = load_detector(det_file)
        autoencoder, _, _ = load_checkpoint(ae_file)
    return AECFEModel(detector.eval(), autoencoder.eval(), ExtractionConfig(**payload["extraction"]),
                      bool(payload.get("site_standardize", False)))


class AECFEFeatures(TransformerMixin, BaseEstimator):
    """AE-CFE features as a scikit-learn transformer: images or image paths -> ``(n, 50)``.

    Parameters
    ----------
    model_path : path-like
        A model file of :func:`save_model` (detector + autoencoder). ``fit`` loads it; the
        autoencoder is trained without labels beforehand (``notebooks/02_autoencoder.py``),
        so ``fit`` learns nothing from ``X`` or ``y``.

    Attributes
    ----------
    model_ : AECFEModel
    n_features_out_ : int

    Examples
    --------
    >>> from sklearn.base import clone
    >>> clone(AECFEFeatures("model.pt")).get_params()
    {'model_path': 'model.pt'}
    """

    def __init__(self, model_path: str | os.PathLike | None = None):
        self.model_path = model_path

    def fit(self, X: Any = None, y: Any = None) -> "AECFEFeatures":
        if self.model_path is None:
            raise ValueError("AECFEFeatures needs model_path, a model file written by bcfeat.extractor.save_model")
        self.model_ = load_model(self.model_path)
        self.n_features_out_ = int(self.model_.autoencoder.cfg.latent_dim)
        return self

    def transform(self, X: Sequence[Any]) -> np.ndarray:
        check_is_fitted(self, "model_")
        return self.model_.transform(list(X))

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        check_is_fitted(self, "model_")
        return np.asarray([f"aecfe{i}" for i in range(self.n_features_out_)], dtype=object)


def folder_images(folder: str | os.PathLike, layout: str = "files") -> pd.DataFrame:
    """The images of a folder: ``[path, relpath, label]`` (label empty for layout ``files``)."""
    import pandas as pd

    from bcfeat.data.images import IMAGE_SUFFIXES
    from bcfeat.data.registry import scan_folder

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no folder {folder}")
    if layout == "files":
        paths = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        table = pd.DataFrame({"path": [str(p) for p in paths],
                              "relpath": [str(p.relative_to(folder)) for p in paths], "label": ""})
    else:
        samples = scan_folder(folder, layout=layout, label_space=None).samples
        table = samples[["path", "relpath"]].assign(label=samples["cell_type"].fillna(""))
    if table.empty:
        raise FileNotFoundError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found below {folder}")
    return table.reset_index(drop=True)


def extract_folder(model_path: str | os.PathLike, folder: str | os.PathLike, layout: str = "files",
                   batch_size: int = 64, progress: bool = True):
    """The features of every image below ``folder``: one row per file, unreadable files skipped.

    Returns
    -------
    table : pd.DataFrame
        ``relpath, label, fallback, score, aecfe0 .. aecfe49``.
    skipped : list of str
        Files that could not be decoded (named, counted, never fatal).
    """
    import pandas as pd
    from tqdm import tqdm

    from bcfeat.data.images import SkippedImages, iter_images

    model = load_model(model_path)
    files = folder_images(folder, layout)
    label_of = dict(zip(files["path"], files["label"]))
    skipped = SkippedImages()
    rows, batch, encoded = [], [], []

    def flush() -> None:
        with torch.inference_mode():
            arrays = instance_arrays(model.detector, [image for _, image in batch], model.extraction)
        for (path, _), fb, score in zip(batch, arrays["fallback"], arrays["scores"]):
            rows.append({"relpath": str(Path(path).relative_to(folder)), "label": label_of.get(str(path), ""),
                         "fallback": bool(fb), "score": float(score)})
        # A site-standardised model needs the whole folder's statistics: keep its features until the end.
        encoded.append(arrays["features"] if model.site_standardize else model.encode(arrays["features"]))
        batch.clear()

    for path, image in tqdm(iter_images(files["path"], skipped), total=len(files), disable=not progress,
                            desc="extracting", unit="img"):
        batch.append((str(path), image))
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    table = pd.DataFrame(rows, columns=["relpath", "label", "fallback", "score"])
    if rows:
        latent = model.encode(np.concatenate(encoded)) if model.site_standardize else np.concatenate(encoded)
        table = pd.concat([table, pd.DataFrame(latent, columns=[f"aecfe{i}" for i in range(latent.shape[1])])],
                          axis=1)
    return table, [str(p) for p in skipped.paths]
