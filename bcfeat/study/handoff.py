"""Files one stage hands to the next: a missing one names the stage that makes it; the oracle's
hand-off lists its checkpoints."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from bcfeat.study.samples import run_key
from bcfeat.study.feature_store import oracle_feature_set, oracle_short_name


def oracle_factory(config, checkpoint_pattern: Path, train: bool) -> Callable[[int], object]:
    """A ``random_state -> OracleClassifier`` factory for :func:`run_feature_sets`.

    ``train=False`` restores: every checkpoint the benchmark needs must already exist (the
    error names the missing file), and nothing is trained.
    """
    from bcfeat.evaluation.oracle import OracleClassifier

    def make(random_state: int):
        path = Path(str(checkpoint_pattern).replace("{seed}", str(random_state)))
        if not train and not path.exists():
            raise FileNotFoundError(f"restore requested but the oracle checkpoint {path} does not exist; "
                                    "run with train_oracle=True first")
        return OracleClassifier(config, random_state=random_state, checkpoint_path=path)

    return make

def oracle_checkpoint_pattern(checkpoints: str | os.PathLike, config: object, samples: pd.DataFrame, norm: str,
                              seed: int | None = None) -> Path:
    """Where 04_oracle keeps the oracle of one normalisation: ``{seed}`` left in the name for
    :func:`oracle_factory`, or filled with ``seed`` (the oracle of the repetition of that seed)."""
    path = Path(checkpoints) / f"oracle_{norm}_{run_key(samples, config)}_seed{{seed}}.pt"
    return path if seed is None else Path(str(path).replace("{seed}", str(seed)))

def require_input(path: str | os.PathLike, made_by: str) -> Path:
    """``path`` if the file exists; else an error naming the stage that makes it."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: it is made by the stage {made_by}; run that stage first")
    return path

def write_handoff(path: str | os.PathLike, record: dict) -> Path:
    """Write a stage's hand-off record (JSON: what it made and with which settings), atomically."""
    import json

    from bcfeat.atomic_io import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(record, indent=2, sort_keys=True, default=str))
    return Path(path)

def read_handoff(path: str | os.PathLike, made_by: str) -> dict:
    """A hand-off record written by :func:`write_handoff`; the error names the stage that makes it."""
    import json

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: run the stage {made_by} first")
    return json.loads(path.read_text())

def oracle_handoff(configs: dict[str, object], samples: pd.DataFrame, checkpoints: str | os.PathLike,
                   seed: int, n_repetitions: int) -> dict:
    """What ``04_oracle`` hands on: per normalisation, its feature-set name and the checkpoint of
    every repetition it trained (repetition ``r`` is trained with seed ``seed + r``)."""
    return {"feature_sets": {oracle_short_name(norm): oracle_feature_set(cfg.arch, norm)
                             for norm, cfg in configs.items()},
            "checkpoints": {norm: [str(oracle_checkpoint_pattern(checkpoints, cfg, samples, norm, seed + r))
                                   for r in range(n_repetitions)]
                            for norm, cfg in configs.items()}}

def oracle_checkpoint(oracles_file: str | os.PathLike, norm: str, repetition: int = 0) -> Path:
    """The oracle checkpoint of one normalisation and repetition, as ``04_oracle`` recorded it."""
    record = read_handoff(oracles_file, "04_oracle")
    if norm not in record["checkpoints"]:
        raise ValueError(f"{oracles_file}: no oracle with {norm!r} norm; 04_oracle trained {sorted(record['checkpoints'])}")
    return Path(record["checkpoints"][norm][repetition])


__all__ = ["oracle_factory", "oracle_checkpoint_pattern", "require_input", "write_handoff", "read_handoff", "oracle_handoff", "oracle_checkpoint"]
