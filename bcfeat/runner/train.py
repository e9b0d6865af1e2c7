"""Train one model from a data file, in one process or under ``torchrun``.

::

    python -m bcfeat.runner.train MODEL --data DATA.pt --checkpoint OUT.pt [--config JSON] [--model-config JSON]
    torchrun --nproc_per_node=4 -m bcfeat.runner.train MODEL --data DATA.pt --checkpoint OUT.pt ...
    torchrun --nnodes=2 --node_rank=K --nproc_per_node=8 --rdzv_endpoint=HOST:29500 -m bcfeat.runner.train ...

``MODEL`` is ``detector``, ``autoencoder``, ``oracle`` or ``ssl``. ``DATA.pt`` is the ``torch.save`` of a
dict of tensors (read with ``weights_only=True``):

* ``detector``: ``images`` ``(n, h, w, 3)`` uint8, optional ``masks`` ``(n, h, w)`` bool (pseudo-masks
  already made; otherwise they are computed), optional ``groups`` ``(n,)`` int (site of each image);
* ``autoencoder``: ``features`` ``(n, C, 14, 14)``, ``crops`` ``(n, 3, S, S)`` in [0, 1], ``domain`` ``(n,)``;
* ``oracle``: ``images`` uint8 ``(n, 3, s, s)`` or ``(n, H, W, 3)``, ``labels`` ``(n,)`` int;
* ``ssl``: ``crops`` ``(n, S, S, 3)`` uint8 canonical crops.

``--config`` is the training config as JSON (``DetectorTrainingConfig``, ``AutoencoderTrainingConfig``,
``OracleConfig``, ``SelfSupervisedConfig``), ``--model-config`` the architecture (``DetectorConfig``,
default ``tiny``/``cpu`` via ``--model-config '"cpu"'``; ``AEConfig``). The checkpoint (and ``--history``,
a JSON list of the loss records) is written by rank 0 only; running the same command again resumes
from the checkpoint (``--no-resume`` starts over). The library functions themselves are torchrun-aware,
so any script that calls :func:`bcfeat.detection.training.train_detector`,
:func:`bcfeat.autoencoder.training.fit_autoencoder`, :func:`bcfeat.evaluation.oracle.train_oracle` or
:func:`bcfeat.crosslab.self_supervised.train_encoder` can be launched with torchrun the same way.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bcfeat.training import distributed

MODELS = ("detector", "autoencoder", "oracle", "ssl")


def _detector(data: dict, config: dict, model_config: Any, checkpoint: Path, resume: bool) -> list[dict]:
    from bcfeat.detection.config import DetectorConfig, DetectorTrainingConfig
    from bcfeat.detection.training import train_detector
    from bcfeat.detection.training_data import PseudoLabelledSet

    images = [im.numpy() for im in data["images"]]
    if "masks" in data:
        n = len(images)
        images = PseudoLabelledSet(images, [m.numpy().astype(bool) for m in data["masks"]], np.ones(n, bool),
                                   np.ones(n, np.float32), [f"array:{i}" for i in range(n)])
    if isinstance(model_config, dict):
        cfg = DetectorConfig.from_dict(model_config)
    else:
        cfg = getattr(DetectorConfig, model_config or "tiny")()
    groups = [str(int(g)) for g in data["groups"]] if "groups" in data else None
    _, history = train_detector(images, cfg, DetectorTrainingConfig.from_dict(config), checkpoint, resume,
                                progress=False, groups=groups)
    return history


def _autoencoder(data: dict, config: dict, model_config: Any, checkpoint: Path, resume: bool) -> list[dict]:
    from bcfeat.autoencoder.model import AEConfig
    from bcfeat.autoencoder.training import AutoencoderTrainingConfig, fit_autoencoder

    ae_cfg = AEConfig.from_dict(model_config) if isinstance(model_config, dict) else getattr(
        AEConfig, model_config or "tiny")()
    _, history = fit_autoencoder((data["features"], data["crops"], data["domain"]), ae_cfg,
                                 AutoencoderTrainingConfig.from_dict(config), checkpoint, resume=resume)
    return history.to_dict("records")


def _oracle(data: dict, config: dict, model_config: Any, checkpoint: Path, resume: bool) -> list[dict]:
    from bcfeat.evaluation.oracle import train_oracle
    from bcfeat.evaluation.oracle_model import OracleConfig

    images = data["images"]
    if images.shape[-1] == 3 and images.shape[1] != 3:
        images = images.numpy()
    return train_oracle(images, data["labels"].numpy(), OracleConfig.from_dict(config), checkpoint, resume).history


def _ssl(data: dict, config: dict, model_config: Any, checkpoint: Path, resume: bool) -> list[dict]:
    from bcfeat.crosslab.self_supervised import SelfSupervisedConfig, train_encoder

    _, history = train_encoder(data["crops"].numpy(), SelfSupervisedConfig(**config), checkpoint_path=checkpoint,
                               resume=resume)
    return history


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bcfeat.runner.train", description=__doc__.split("\n\n")[0])
    ap.add_argument("model", choices=MODELS)
    ap.add_argument("--data", type=Path, required=True, help="torch.save'd dict of tensors (see the module help)")
    ap.add_argument("--checkpoint", type=Path, required=True, help="model file written by rank 0")
    ap.add_argument("--config", default="{}", help="training config as JSON")
    ap.add_argument("--model-config", default="null", help="architecture as JSON: a dict, or a preset name")
    ap.add_argument("--history", type=Path, default=None, help="JSON file of the loss records (rank 0)")
    ap.add_argument("--no-resume", action="store_true", help="start over instead of resuming the checkpoint")
    args = ap.parse_args(argv)
    data = torch.load(args.data, weights_only=True)
    train = {"detector": _detector, "autoencoder": _autoencoder, "oracle": _oracle, "ssl": _ssl}[args.model]
    history = train(data, json.loads(args.config), json.loads(args.model_config), args.checkpoint,
                    not args.no_resume)
    ctx = distributed.context()
    with ctx.main_first() as main:
        if main and args.history is not None:
            args.history.parent.mkdir(parents=True, exist_ok=True)
            args.history.write_text(json.dumps(history, default=float))
    distributed.teardown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
