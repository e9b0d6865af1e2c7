"""Run profiles, defined in one place: how big each stage of the study is.

``smoke``: tiny subsets, for the tests and CI (the whole chain in a few minutes).
``cpu``: the default, the whole study on the shared data on a 2-core CPU.
``gpu``: the paper's scale (full image decoder, 150 epochs, ResNeXt-50 oracle).

The runner (:mod:`bcfeat.pipeline`) passes ``Profile.parameters_for(stage)`` to
each notebook's parameters cell; nothing else reaches a notebook.
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

    def parameters_for(self, stage: str) -> dict[str, Any]:
        """The parameters for one notebook: common ones, then the stage's own."""
        return {"profile": self.name, **self.common, **self.stages.get(stage, {})}


def _profile(name: str, description: str, smoke: bool, stages: dict[str, dict[str, Any]]) -> Profile:
    """A profile whose stages that write checkpoints share ``artifacts/<name>``."""
    artifacts = f"artifacts/{name}"
    for stage, parameters in stages.items():
        if stage not in CHEAP_STAGES:
            parameters.setdefault("artifacts_dir", artifacts)
    return Profile(name=name, description=description, common={"seed": 0, "smoke": smoke}, stages=stages)


# Stages that write no checkpoint or cache (no artifacts_dir parameter).
CHEAP_STAGES = ("00_data_overview", "90_provenance")

PROFILES: dict[str, Profile] = {
    "smoke": _profile(
        "smoke", "tiny subsets of every dataset; exercises every notebook in a few minutes (tests, CI)", True,
        {
            "00_data_overview": {"max_images_per_dataset": 40},
            "03_features": {"max_per_site": 60},
            "04_oracle": {"max_per_site": 60, "n_repetitions": 2, "oracle_repetitions": 1},
            "05_benchmark": {"max_per_site": 60, "n_repetitions": 2, "raw_pixels_pca": 10},
        },
    ),
    "cpu": _profile(
        "cpu", "the whole study on the four shared datasets, sized for a 2-core CPU", False,
        {
            "00_data_overview": {"max_images_per_dataset": 0},
            "03_features": {"max_per_site": 0},
            "04_oracle": {"max_per_site": 0, "n_repetitions": 5, "oracle_repetitions": 1},
            "05_benchmark": {"max_per_site": 0, "n_repetitions": 5},
        },
    ),
    "gpu": _profile(
        "gpu", "the paper's scale: full image decoder, 150 epochs, ResNeXt-50 oracle (needs a CUDA GPU)", False,
        {
            "00_data_overview": {"max_images_per_dataset": 0},
            "03_features": {"max_per_site": 0},
            "04_oracle": {"max_per_site": 0, "n_repetitions": 5, "oracle_repetitions": 5},
            "05_benchmark": {"max_per_site": 0, "n_repetitions": 5},
        },
    ),
}


def get_profile(name: str) -> Profile:
    """Look a profile up by name; the error lists the valid names."""
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown profile {name!r}; choose one of {sorted(PROFILES)}") from None
