"""The one runner of the study: papermill executes the numbered notebooks in order.

Each stage is a jupytext text notebook ``notebooks/<stem>.py`` whose parameters cell is
its whole interface. The runner converts it to ``.ipynb`` (papermill cannot read the
text format), injects the profile's parameters, the paths of the files the stage reads and
makes (declared in :mod:`bcfeat.runner.stages`) and the ``-p`` overrides, and writes the
executed notebook to the profile's results folder; the book includes those files without
re-executing them. A stage whose input file is missing stops before it runs, naming the file
and the stage that makes it.

A provenance record (commit, parameters, package versions, hardware, seconds per
notebook) is rewritten after every stage, so a failure late in a long run never loses
the record of the stages that finished (:mod:`bcfeat.runner.provenance`).

A stage's outputs reach the results folder only when the stage finishes: it runs with
``results_dir`` pointing at a staging copy, ``<output>/.staging/<stem>``, and the runner
moves what it wrote into place after it succeeded. A stage that fails, or a run that is
killed, leaves every earlier table as it was; the next run removes the staging folder
(:mod:`bcfeat.runner.staging`). This module plans a run and runs it, and is the command line.

Exit status (:mod:`bcfeat.runner.exit_codes`): 0 every stage ran, 1 a stage failed (its
executed notebook is kept as ``<stem>.failed.ipynb``), 2 a usage error.

Usage::

    python -m bcfeat.runner --profile cpu            # the whole study (the README's main command)
    python -m bcfeat.runner --profile smoke --output /tmp/smoke
    python -m bcfeat.runner --profile cpu --restore  # restore expensive steps from saved outputs
    python -m bcfeat.runner --profile smoke --only 05_benchmark -p n_repetitions 3   # override a parameter
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bcfeat import paths
from bcfeat.atomic_io import write_text
from bcfeat.runner.profiles import PROFILES, get_profile
# load_provenance, stage_parameter and provenance_frames are read by the provenance notebook from here too
from bcfeat.runner.provenance import (git_commit, hardware, load_provenance, package_versions,  # noqa: F401
                                      provenance_frames, stage_parameter)
from bcfeat.runner.staging import StageFailed, clean_staging, display_path, execute_stage
from bcfeat.runner.stages import (STAGES, MissingInput, Stage, check_declarations, file_parameters, makers,  # noqa: F401
                                  missing_input, notebook_path, parameters_cell, split_overrides)

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


DESIGN_PARAMETERS = ("sites", "source_site", "label_space")


def check_study_design(planned: Sequence[PlannedStage], declared: dict[str, dict]) -> None:
    """The study's sites, source site and label space, checked before any stage runs: each stage's
    values (its parameters, else its notebook's defaults) must name known datasets and a source
    among them (:class:`bcfeat.study.design.StudySites`), and every stage must use the same ones.

    Raises
    ------
    ValueError
        Naming the bad value, or the two stages that disagree.
    """
    from bcfeat.study.design import StudySites

    seen: dict[str, tuple[str, object]] = {}
    for p in planned:
        cell = declared[p.stage.stem]
        values = {n: p.parameters.get(n, cell[n].default) for n in DESIGN_PARAMETERS if n in cell}
        if "sites" in values:
            try:
                design = StudySites.from_parameters(values["sites"], values.get("source_site"),
                                                    values.get("label_space", "coarse5"))
            except ValueError as err:
                raise ValueError(f"stage {p.stage.stem}: {err}") from None
            values["sites"] = design.sites
        for name, value in values.items():
            if name in seen and seen[name][1] != value:
                raise ValueError(f"{name}: stage {seen[name][0]} uses {seen[name][1]!r} but {p.stage.stem} "
                                 f"{value!r}; pass -p {name} once for every stage")
            seen.setdefault(name, (p.stage.stem, value))


def run(profile_name: str, output_dir: Path | None = None, only: list[str] | None = None,
        restore: bool = False, overrides: Sequence[Sequence[str]] = ()) -> dict:
    """Run the chain (or the stages named in ``only``) and return the provenance record.

    ``overrides`` are ``(NAME, VALUE)`` pairs, as ``-p NAME VALUE`` gives them (see
    :func:`bcfeat.runner.stages.split_overrides`); the record keeps them.

    Raises
    ------
    StageFailed
        If a stage fails; every output of earlier stages (and of earlier runs) is kept as
        it was, and the provenance file says which stage failed and why.
    MissingInput
        Before anything runs, if a selected stage needs a file that is not there.
    """
    profile = get_profile(profile_name)
    output_dir = Path(output_dir) if output_dir else default_output_dir(profile.name)
    if output_dir.exists() and not output_dir.is_dir():
        raise NotADirectoryError(f"--output {output_dir} is a file, not a folder")
    planned = plan_run(profile.name, output_dir, only, restore, overrides)
    output_dir.mkdir(parents=True, exist_ok=True)
    clean_staging(output_dir)
    record_path = output_dir / "provenance.json"
    record = {
        "profile": profile.name, "description": profile.description,
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **git_commit(), "hardware": hardware(), "packages": package_versions(),
        "overrides": [list(pair) for pair in overrides], "stages": [],
    }
    if only and record_path.exists():
        # A partial re-run keeps the records of the stages it does not repeat.
        previous = json.loads(record_path.read_text())
        record["stages"] = [s for s in previous.get("stages", []) if s["stem"] not in only]

    def save() -> None:
        write_text(json.dumps(record, indent=2, default=str), record_path)

    made_by = makers()
    for step in planned:
        stage, parameters = step.stage, step.parameters
        for name in stage.inputs:  # an earlier stage of this run may not have made what it declares
            if not _exists(parameters[name]):
                raise missing_input(stage, name, parameters[name], made_by[name], profile.name)
        print(f"[bcfeat] {stage.stem} ({profile.name}) ...", flush=True)
        start = time.perf_counter()
        entry = {"stem": stage.stem, "parameters": parameters, "overrides": step.overrides}
        try:
            execute_stage(stage, parameters, output_dir)
        except Exception as error:  # recorded, then re-raised with the stage named
            entry.update(status="failed", seconds=round(time.perf_counter() - start, 1),
                         error=f"{type(error).__name__}: {str(error)[-2000:]}")
            record["stages"].append(entry)
            save()
            raise StageFailed(f"stage {stage.stem} failed; executed notebook so far: "
                              f"{output_dir / (stage.stem + '.failed.ipynb')}\n{error}") from error
        entry.update(status="ok", seconds=round(time.perf_counter() - start, 1))
        record["stages"].append(entry)
        save()
        print(f"[bcfeat] {stage.stem} done in {entry['seconds']:.0f} s", flush=True)
    record["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    save()
    return record


def main(argv: list[str] | None = None) -> int:
    from bcfeat.runner.exit_codes import PROBLEM, run_command

    parser = argparse.ArgumentParser(prog="python -m bcfeat.runner", description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="cpu", choices=sorted(PROFILES))
    parser.add_argument("--output", type=Path, default=None,
                        help="folder for executed notebooks and tables (default: book/results for cpu, "
                             "artifacts/runs/<profile> otherwise)")
    parser.add_argument("--only", nargs="+", metavar="STAGE", choices=[s.stem for s in STAGES],
                        help="run only these stages")
    parser.add_argument("--restore", action="store_true",
                        help="restore expensive steps (training) from their saved outputs instead of re-running")
    parser.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                        dest="overrides",
                        help="override a notebook parameter, as papermill -p does (typed as papermill types "
                             "it: True/False, None, int, float, else text); NAME applies to every selected "
                             "stage that declares it, STAGE.NAME to one stage; repeatable")
    parser.add_argument("-v", "--verbose", action="store_true", help="show the traceback of an unexpected error")
    args = parser.parse_args(argv)

    def command() -> int:
        try:
            run(args.profile, args.output, args.only, args.restore, args.overrides)
        except StageFailed as error:
            print(f"[bcfeat] error: {error}", file=sys.stderr)
            return PROBLEM
        return 0

    return run_command("[bcfeat] error", command, verbose=args.verbose)


if __name__ == "__main__":
    sys.exit(main())
