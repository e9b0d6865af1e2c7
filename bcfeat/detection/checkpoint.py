"""Detector files: ``{"format", "config", "state_dict", ...}`` written atomically, opened only
through :func:`bcfeat.model_files.load_model_file`; the model is rebuilt from the stored config."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torchvision.models.detection import MaskRCNN

from bcfeat.detection.architecture import build_detector, config_of
from bcfeat.detection.config import DetectorConfig
from bcfeat.model_files import build_from_payload
from bcfeat.training.checkpoint import RESERVED_KEYS, read_model_file, save_model_file

# Training state that a rebuilt detector does not carry in ``bcfeat_extra`` (``torch_rng``: files
# written before the shared resume state).
_RESUME_KEYS = ("optimizer", "scheduler", "rng", "torch_rng", "scaler")


def save_detector(path: str | os.PathLike, model: MaskRCNN, extra: dict[str, Any] | None = None) -> Path:
    """Write ``{"format", "config": asdict(cfg), "state_dict", **extra}`` atomically.

    Written to a temporary file beside ``path`` and moved over it with ``os.replace``, so an
    interrupted write leaves the previous checkpoint intact. ``extra`` values must load
    with ``torch.load(weights_only=True)`` (tensors, numbers, strings, containers).
    """
    return save_model_file(path, "detector", config_of(model), model.state_dict(), extra)


def read_detector_file(path: str | os.PathLike) -> dict[str, Any]:
    """The payload of a detector file, opened safely (:func:`bcfeat.model_files.load_model_file`)."""
    return read_model_file(path, "detector")


def detector_from_payload(payload: dict[str, Any], source: str | os.PathLike = "<payload>") -> MaskRCNN:
    """Rebuild a detector from a checkpoint payload (eval mode, CPU); ``source`` names it in errors."""
    def build() -> MaskRCNN:
        model = build_detector(DetectorConfig.from_dict(payload["config"]))
        model.load_state_dict(payload["state_dict"])
        return model

    model = build_from_payload(source, "detector configuration or weights", build)
    model.bcfeat_extra = {k: v for k, v in payload.items()
                          if k not in RESERVED_KEYS and k not in _RESUME_KEYS}
    return model.eval()


def load_detector(path: str | os.PathLike) -> MaskRCNN:
    """Rebuild a detector from a checkpoint's stored config and weights (eval mode, CPU).

    The other stored entries (training config, history, ...) are in ``model.bcfeat_extra``.
    """
    return detector_from_payload(read_detector_file(path), path)
