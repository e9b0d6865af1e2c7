"""The AE-CFE model file: the cell detector and the autoencoder's encoder as one model.

* :func:`instance_arrays` / :func:`cached_instance_arrays`: images -> instance features and
  masked crops (through the detector), cached on disk per data and detector checkpoint.
* :func:`autoencoder_inputs`: those arrays as the autoencoder's training tensors.
* :class:`AECFEModel`: detector + autoencoder in **one checkpoint file** (:func:`save_model`,
  :func:`load_model`), each part rebuilt from the config stored inside it.

The scikit-learn transformer over any bcfeat model file is
:class:`bcfeat.extraction.transformer.ImageFeatures` (files are opened by
:func:`bcfeat.extractors.open_extractor`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bcfeat.atomic_io import atomic_torch_save
from bcfeat.detection.feature_cache import cache_key, cached_arrays
from bcfeat.model_files import ModelFileError, build_from_payload, format_name, load_model_file, parse_format


MODEL_FORMAT = format_name("aecfe", 1)


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

    Returns an :class:`bcfeat.detection.instance_features.InstanceBatch` (scores 1, no fallbacks).
    """
    from torchvision.ops import MultiScaleRoIAlign

    from bcfeat.data.images import read_image
    from bcfeat.detection.architecture import config_of
    from bcfeat.detection.instance_features import ROI_SIZE, InstanceBatch, masked_crop

    cfg = config_of(detector)
    device = next(detector.parameters()).device
    pool = MultiScaleRoIAlign(cfg.feature_names, ROI_SIZE, sampling_ratio=2)
    detector.eval()
    features, crops, boxes = [], [], []
    images = [read_image(item) for item in images]
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


def instance_arrays(detector, paths: Sequence[Any], cfg: ExtractionConfig, runtime=None) -> dict[str, np.ndarray]:
    """Instance features (float16), crops (uint8, ``(n, 3, S, S)``) and detection records of images.

    ``runtime`` (:class:`bcfeat.detection.batched_inference.ExtractionRuntime`, optional) says where and how:
    None runs the reference path on the detector's own device at ``cfg.batch_size`` (the
    ``cpu`` study's numbers); with a runtime the detector is moved to its device and, when it
    resolves to ``fast``, the batched path of :mod:`bcfeat.detection.batched_inference` runs.
    """
    from bcfeat.detection.instance_features import extract_instances

    batch_size = cfg.batch_size
    fast = None
    if runtime is not None:
        from bcfeat.detection.batched_inference import CUDA_BATCH_SIZE

        fast = runtime.resolved()
        device = torch.device(fast.device)
        detector = detector.to(device)
        batch_size = fast.batch_size or (CUDA_BATCH_SIZE if fast.fast and device.type == "cuda" else cfg.batch_size)
    if cfg.region == "whole":
        batch = whole_image_instances(detector, list(paths), cfg.crop_size, batch_size)
    elif fast is not None and fast.fast:
        from bcfeat.detection.batched_inference import extract_instances_fast

        batch = extract_instances_fast(detector, list(paths), crop_size=cfg.crop_size, batch_size=batch_size,
                                       background=cfg.background, runtime=fast)
    else:
        batch = extract_instances(detector, list(paths), crop_size=cfg.crop_size, batch_size=batch_size,
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
                           cache_dir: str | os.PathLike, progress: bool = True, runtime=None) -> dict[str, np.ndarray]:
    """:func:`instance_arrays` for every path, computed once per (images, detector file, config).

    ``runtime`` (:class:`bcfeat.detection.batched_inference.ExtractionRuntime`; default ``ExtractionRuntime()``:
    CUDA and the batched path when there is a GPU, else the CPU and the reference path). The
    settings of a runtime that can change the arrays join the cache key; the default on the CPU
    adds none, so the key is the one it always was.
    """
    from bcfeat.detection.checkpoint import load_detector
    from bcfeat.detection.batched_inference import ExtractionRuntime

    runtime = (runtime or ExtractionRuntime()).resolved()
    settings = runtime.cache_settings()
    key = cache_key(paths, detector_checkpoint, {**asdict(cfg), "runtime": settings} if settings else asdict(cfg))
    detector: list = []

    def compute(chunk: list[str]) -> dict[str, np.ndarray]:
        if not detector:  # load lazily: a complete cache entry never touches the detector
            detector.append(load_detector(detector_checkpoint).to(runtime.torch_device()).eval())
        with torch.inference_mode():
            if not runtime.fast and runtime.batch_size is None:
                return instance_arrays(detector[0], chunk, cfg)  # the reference path, as it always ran
            return instance_arrays(detector[0], chunk, cfg, runtime)

    return cached_arrays(paths, compute, cache_dir, key=key, chunk_size=512, progress=progress,
                         description=f"instances ({cfg.region})")


def autoencoder_inputs(arrays: dict[str, np.ndarray], domain: Sequence[int]):
    """``(features, crops, domain)`` tensors for :func:`bcfeat.autoencoder.training.fit_autoencoder`.

    Features are min-max scaled per sample (:func:`scale_features`); crops become float in [0, 1].
    """
    features = scale_features(torch.from_numpy(arrays["features"].astype(np.float32)))
    crops = torch.from_numpy(arrays["crops"]).float() / 255
    return features, crops, torch.as_tensor(np.asarray(domain), dtype=torch.long)


@torch.inference_mode()
def encode_features(autoencoder, features: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """Latent codes ``(n, 50)`` of instance features ``(n, C, 14, 14)`` (scaled here), computed on the
    autoencoder's device."""
    autoencoder.eval()
    device = next(autoencoder.parameters()).device
    out = []
    for start in range(0, len(features), batch_size):
        chunk = scale_features(torch.from_numpy(np.asarray(features[start:start + batch_size], np.float32)))
        out.append(autoencoder.encode(chunk.to(device)).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, autoencoder.cfg.latent_dim), np.float32)


@torch.inference_mode()
def reconstruct(autoencoder, features: np.ndarray) -> np.ndarray:
    """Image-decoder reconstructions ``(n, 3, S, S)`` in [0, 1] of instance features."""
    autoencoder.eval()
    return autoencoder(scale_features(torch.from_numpy(np.asarray(features, np.float32)))).image.numpy()


@dataclass
class AECFEModel:
    """A trained extractor: detector, autoencoder and the extraction settings.

    With ``site_standardize`` (:mod:`bcfeat.autoencoder.site_standardization`), the images of one call
    are taken as one site and standardised with their own channel statistics: pass one
    site's images per call, at least ``MIN_SITE_IMAGES`` of them.
    """

    detector: Any
    autoencoder: Any
    extraction: ExtractionConfig
    site_standardize: bool = False

    @torch.inference_mode()
    def transform(self, images: Sequence[Any], runtime=None) -> np.ndarray:
        """Images (arrays or paths) -> ``(n, latent_dim)`` features.

        ``runtime``: an :class:`bcfeat.detection.batched_inference.ExtractionRuntime` (device, batch size,
        fast path); None: the reference path where the model is.
        """
        arrays = instance_arrays(self.detector.eval(), list(images), self.extraction, runtime)
        return self.encode(arrays["features"])

    def to(self, device: str | torch.device) -> "AECFEModel":
        """Move detector and autoencoder to ``device`` (``"auto"``: CUDA when available); returns self."""
        from bcfeat.training.device import resolve_device

        device = resolve_device(str(device))
        self.detector.to(device)
        self.autoencoder.to(device)
        return self

    def encode(self, features: np.ndarray) -> np.ndarray:
        """Instance features of one site's images ``(n, C, 14, 14)`` -> latent codes ``(n, 50)``."""
        if self.site_standardize:
            from bcfeat.autoencoder.site_standardization import channel_statistics, standardize

            features = standardize(features, channel_statistics(features))
        return encode_features(self.autoencoder, features)


def save_model(path: str | os.PathLike, detector_checkpoint: str | os.PathLike,
               autoencoder_checkpoint: str | os.PathLike, extraction: ExtractionConfig,
               site_standardize: bool = False) -> Path:
    """Bundle a detector checkpoint and an autoencoder checkpoint into one file (atomic write).

    The file holds only weights and plain values (see :mod:`bcfeat.model_files`):
    ``{"format": "bcfeat.aecfe/1", "site_standardize", "extraction", "detector", "autoencoder"}``,
    the two parts being the payloads of their own checkpoint files.
    """
    payload = {
        "format": MODEL_FORMAT,
        "site_standardize": bool(site_standardize),
        "extraction": asdict(extraction),
        "detector": load_model_file(detector_checkpoint, "detector"),
        "autoencoder": load_model_file(autoencoder_checkpoint, "autoencoder"),
    }
    return atomic_torch_save(payload, path)


def load_model(path: str | os.PathLike, payload: Any = None) -> AECFEModel:
    """Rebuild an :class:`AECFEModel` from one file written by :func:`save_model`.

    The file is opened as data (:func:`bcfeat.model_files.load_model_file`): nothing in it
    is ever executed. ``payload``: its contents when read already (then only checked).

    Raises
    ------
    FileNotFoundError
        No file at ``path``.
    bcfeat.model_files.ModelFileError
        A file of another kind, damaged, missing a part, or holding code (one line naming it).
    """
    from bcfeat.detection.checkpoint import detector_from_payload
    from bcfeat.autoencoder.model import autoencoder_from_payload

    path = Path(path)
    if payload is None and not path.exists():
        raise FileNotFoundError(f"no AE-CFE model file at {path}")
    payload = load_model_file(path, "aecfe", required=("extraction", "detector", "autoencoder"), payload=payload)
    for part, kind in (("detector", "detector"), ("autoencoder", "autoencoder")):
        inner = payload[part]
        missing = [k for k in ("config", "state_dict") if not isinstance(inner, dict) or k not in inner]
        if missing:
            raise ModelFileError(path, f"is incomplete: its {part} part lacks {', '.join(map(repr, missing))}")
        if parse_format(inner.get("format")) != (kind, 1):
            raise ModelFileError(path, f"its {part} part is not a bcfeat {kind} (format {inner.get('format')!r})")
    detector = detector_from_payload(payload["detector"], path)
    autoencoder, _, _ = autoencoder_from_payload(payload["autoencoder"], path)
    extraction = build_from_payload(path, "extraction settings", lambda: ExtractionConfig(**payload["extraction"]))
    return AECFEModel(detector.eval(), autoencoder.eval(), extraction, bool(payload.get("site_standardize", False)))
