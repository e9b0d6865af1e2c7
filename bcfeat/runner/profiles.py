"""Run profiles, defined in one place: how big each stage of the study is.

``smoke``: tiny subsets, for the tests and CI (the whole chain in a few minutes).
``cpu``: the default, the whole study on the shared data on a 2-core CPU.
``gpu``: the paper's scale (full image decoder, 150 epochs, ResNeXt-50 oracle).

The runner (:mod:`bcfeat.runner.pipeline`) passes ``Profile.parameters_for(stage)`` to
each notebook's parameters cell, with the folders and the paths of the files the stage reads
and makes (declared in :mod:`bcfeat.runner.stages`) and the ``-p`` overrides; nothing else
reaches a notebook.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Profile:
    """Parameters of every stage for one scale of the study.

    Attributes
    ----------
    name : str
        Profile name, also passed to every notebook as ``profile``.
    description : str
        One line for the README and the reproducibility chapter.
    common : dict
        Parameters every notebook receives (seed, smoke switch, ...).
    stages : dict
        ``{stage stem: {parameter: value}}`` overrides per notebook.
    """

    name: str
    description: str
    common: dict[str, Any] = field(default_factory=dict)
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def artifacts_dir(self) -> str:
        """The profile's checkpoints, feature sets and caches (repository-relative)."""
        return f"artifacts/{self.name}"

    def parameters_for(self, stage: str) -> dict[str, Any]:
        """The parameters for one notebook: common ones, then the stage's own."""
        return {"profile": self.name, **self.common, **self.stages.get(stage, {})}


def _profile(name: str, description: str, smoke: bool, stages: dict[str, dict[str, Any]]) -> Profile:
    return Profile(name=name, description=description, common={"seed": 0, "smoke": smoke}, stages=stages)


PROFILES: dict[str, Profile] = {
    "smoke": _profile(
        "smoke", "tiny subsets of every dataset; exercises every notebook in a few minutes (tests, CI)", True,
        {
            "00_data_overview": {"max_images_per_dataset": 40, "max_per_site": 60, "n_repetitions": 2},
            "01_detector": {"images_per_site": 12, "steps": 6, "batch_size": 2, "detector_preset": "tiny",
                            "max_eval_images": 6},
            "02_autoencoder": {"max_source_images": 60, "ae_preset": "tiny", "epochs": 1,
                               "batch_size": 32},
            "04_oracle": {"oracle_repetitions": 1},
            "05_benchmark": {"raw_pixels_pca": 10},
            # two feature sets (one with fine texture, one without) keep every path of the selection and
            # its order-stable candidates, at half the grid's cost
            "07_crosslab": {"candidate_C": "0.03,0.1", "candidate_groups": "all,no_fine_texture", "ablation_cells": 20,
                            "ssl_epochs": 1, "ssl_image_size": 24, "cnn_epochs": 1, "cnn_image_size": 24, "n_boot": 50, "shots": "0,1,5", "n_draws": 2,
                            "few_shot_source_cells": 0, "n_workers": 2,
                            "n_virtual_labs": 2, "n_hard_virtual_labs": 1, "virtual_lab_cells": 0, "shift_cells": 12, "mix_calls": 2, "flag_calls": 3,
                            "candidate_statistics": "plain,cbr,cbr_mix", "untouched_folder": ""},
        },
    ),
    "cpu": _profile(
        "cpu", "the whole study on the four shared datasets, sized for a 2-core CPU", False,
        {
            "00_data_overview": {"max_images_per_dataset": 0, "max_per_site": 0, "n_repetitions": 5},
            "01_detector": {"images_per_site": 400, "steps": 2500, "batch_size": 6, "detector_preset": "cpu"},
            "02_autoencoder": {"max_source_images": 4000, "ae_preset": "cpu", "epochs": 12,
                               "batch_size": 128},
            "04_oracle": {"oracle_repetitions": 1},
        },
    ),
    "gpu": _profile(
        "gpu", "the paper's scale: full image decoder, 150 epochs, ResNeXt-50 oracle (needs a CUDA GPU)", False,
        {
            "00_data_overview": {"max_images_per_dataset": 0, "max_per_site": 0, "n_repetitions": 5},
            "01_detector": {"images_per_site": 2000, "steps": 6000, "batch_size": 8, "detector_preset": "gpu"},
            "02_autoencoder": {"max_source_images": 0, "ae_preset": "paper", "epochs": 150,
                               "batch_size": 500, "num_threads": 8},
            "04_oracle": {"oracle_repetitions": 5},
            "07_crosslab": {"ssl_epochs": 30, "ssl_image_size": 64},
        },
    ),
}


def get_profile(name: str) -> Profile:
    """Look a profile up by name; the error lists the valid names."""
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown profile {name!r}; choose one of {sorted(PROFILES)}") from None


def projected_gpu_minutes(bench: dict[str, Any]) -> dict[str, Any]:
    """Minutes the ``gpu`` profile's two trainings take at the rates ``benchmarks/bench_gpu.py``
    measured (its JSON): detector steps x seconds per step, and autoencoder epochs x variants x
    images / samples per second, both with mixed precision (the default on CUDA)."""
    from bcfeat.study.autoencoder import VARIANTS

    gpu = PROFILES["gpu"]
    detector, autoencoder = gpu.parameters_for("01_detector"), gpu.parameters_for("02_autoencoder")
    n_variants = len(VARIANTS)  # the gpu profile trains every variant (the notebook's default)
    return {
        "detector": detector["steps"] * bench["detector_gpu_amp"]["s_per_step"] / 60,
        "autoencoder": autoencoder["epochs"] * n_variants * bench["n_autoencoder_images"]
        / bench["autoencoder_paper_amp"]["samples_per_s"] / 60,
        "autoencoder_variants": n_variants,
    }
