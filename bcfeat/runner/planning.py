"""Planning a run of the study, before anything runs: which stages, with which parameters, and
whether every file they read is there or made by an earlier selected stage.

:func:`plan_run` gives each selected stage its profile's parameters, the paths of the files it
reads and makes (:mod:`bcfeat.runner.stages`) and the ``-p`` overrides. The study's design is
checked here, when the stage that writes it (``00_data_overview``) is selected; a ``-p`` of the
design without that stage is refused, since the later stages read the design from its files.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bcfeat import paths
from bcfeat.runner.profiles import get_profile
from bcfeat.runner.staging import display_path
from bcfeat.runner.stages import (STAGES, Stage, check_declarations, file_parameters, makers, missing_input,
                                  notebook_path, parameters_cell, split_overrides)


def default_output_dir(profile: str) -> Path:
    """The cpu profile writes the results the book shows; the others write under artifacts/."""
    return paths.RESULTS if profile == "cpu" else paths.ARTIFACTS / "runs" / profile


@dataclass
class PlannedStage:
    """A selected stage with the parameters it will receive and the overrides among them."""

    stage: Stage
    parameters: dict[str, Any]
    overrides: dict[str, Any]


def _exists(path: str) -> bool:
    return (paths.ROOT / path).exists()  # repository-relative paths are relative to the notebooks' cwd


def plan_run(profile_name: str, output_dir: Path, only: Sequence[str] | None = None, restore: bool = False,
             overrides: Sequence[Sequence[str]] = ()) -> list[PlannedStage]:
    """The selected stages, in order, with each one's parameters; nothing is run.

    A stage receives its profile's parameters, ``results_dir``, ``artifacts_dir`` (when its
    parameters cell declares it), the paths of the files it reads and makes (from the
    declarations of :mod:`bcfeat.runner.stages`), ``<run_parameter>=not restore``, and last the
    ``-p`` overrides that apply to it.

    Raises
    ------
    ValueError
        An unknown stage, an override no selected stage declares (the error lists the valid
        names), or a stage whose notebook lacks a file parameter it declares.
    MissingInput
        A stage needs a file that no earlier selected stage makes and that is not there (the
        error names the file and the stage that makes it). The study's design is checked
        first (:func:`check_study_design`).
    """
    check_declarations()
    profile = get_profile(profile_name)
    unknown = set(only or []) - {s.stem for s in STAGES}
    if unknown:
        raise ValueError(f"unknown stage(s) {sorted(unknown)}; stages are {[s.stem for s in STAGES]}")
    selected = [s for s in STAGES if not only or s.stem in only]
    declared = {s.stem: parameters_cell(notebook_path(s.stem)) for s in selected}
    refuse_design_overrides(overrides, declared)
    per_stage = split_overrides(overrides, declared)
    results_dir = display_path(output_dir)
    # Files live under the profile's artifacts folder, or the one ``-p artifacts_dir`` names.
    artifacts_dir = next((value for name, value in overrides if name == "artifacts_dir"), profile.artifacts_dir)
    made_by = makers()
    planned, will_make = [], set()
    for stage in selected:
        cell = declared[stage.stem]
        parameters = profile.parameters_for(stage.stem)
        parameters["results_dir"] = results_dir
        if "artifacts_dir" in cell:
            parameters["artifacts_dir"] = artifacts_dir
        parameters.update(file_parameters(stage, results_dir, artifacts_dir))
        if stage.run_parameter is not None:
            parameters[stage.run_parameter] = not restore
        parameters.update(per_stage[stage.stem])
        lacking = [n for n in (*stage.files, stage.run_parameter) if n is not None and n not in cell]
        if lacking:
            raise ValueError(f"{notebook_path(stage.stem)} does not declare its parameter(s) {lacking} "
                             "(see bcfeat/runner/stages.py)")
        planned.append(PlannedStage(stage, parameters, per_stage[stage.stem]))
    check_study_design(planned, declared)
    for p in planned:
        stage, parameters = p.stage, p.parameters
        needed = [n for n in stage.inputs if n not in will_make]
        if stage.run_parameter is not None and parameters[stage.run_parameter] is False:
            needed += list(stage.restore_from)
        for name in needed:
            if not _exists(parameters[name]):
                raise missing_input(stage, name, parameters[name], made_by[name], profile.name)
        will_make |= set(stage.outputs)
    return planned


DESIGN_STAGE = makers()["design_file"].stem  # writes the study's design; later stages read it from its files
DESIGN_PARAMETERS = ("sites", "source_site", "label_space", "max_per_site", "n_repetitions", "seed", "headline")


def refuse_design_overrides(overrides: Sequence[Sequence[str]], declared: dict[str, dict]) -> None:
    """A ``-p`` of the study's design (a parameter of the design stage that no selected stage
    declares) is refused with what to do instead: the later stages read the design the design
    stage wrote, so changing it means running that stage again."""
    if DESIGN_STAGE in declared:
        return
    design_cell = parameters_cell(notebook_path(DESIGN_STAGE))
    for name, _ in overrides:
        if "." not in name and name in design_cell and not any(name in cell for cell in declared.values()):
            raise ValueError(f"-p {name}: {name} is part of the study's design, which {DESIGN_STAGE} writes and the "
                             f"selected stages read; select {DESIGN_STAGE} too (--only {DESIGN_STAGE} "
                             f"{' '.join(declared)}) to change it")


def check_study_design(planned: Sequence[PlannedStage], declared: dict[str, dict]) -> None:
    """The study's design (:class:`bcfeat.study.design.StudyDesign`: sites, source site, label
    space, cells per site, repetitions, seed, headline), checked before any stage runs when the
    design stage is selected: its values (its parameters, else its notebook's defaults) must name
    known datasets, a source among them, common13 only where every site has fine labels, and valid
    sizes. The later stages read the design from the file that stage writes.

    Raises
    ------
    ValueError
        Naming the bad value.
    """
    from bcfeat.study.design import StudyDesign

    for p in planned:
        if p.stage.stem != DESIGN_STAGE:
            continue
        cell = declared[p.stage.stem]
        values = {n: p.parameters.get(n, cell[n].default) for n in DESIGN_PARAMETERS if n in cell}
        if "sites" not in values:
            continue
        try:
            StudyDesign.from_parameters(**values)
        except ValueError as err:
            raise ValueError(f"stage {p.stage.stem}: {err}") from None
