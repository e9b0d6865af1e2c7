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
(:mod:`bcfeat.runner.staging`). The run is planned first (:mod:`bcfeat.runner.planning`); this
module runs it and is the command line.

Exit status (:mod:`bcfeat.runner.exit_codes`): 0 every stage ran, 1 a stage failed (its
executed notebook is kept as ``<stem>.failed.ipynb``), 2 a usage error.

Usage::

    python -m bcfeat.runner --profile cpu            # the whole study (the README's main command)
    python -m bcfeat.runner --profile smoke --output /tmp/smoke
    python -m bcfeat.runner --profile cpu --restore  # restore expensive steps from saved outputs
    python -m bcfeat.runner --profile smoke --only 05_benchmark -p raw_pixels_pca 20   # override a parameter
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

from bcfeat import paths
from bcfeat.atomic_io import write_text
from bcfeat.instruction_set import instruction_set_pinned, pins_label
from bcfeat.runner.planning import PlannedStage, default_output_dir, plan_run  # noqa: F401 (the runner's API)
from bcfeat.runner.profiles import PROFILES, get_profile
# load_provenance, stage_parameter and provenance_frames are read by the provenance notebook from here too
from bcfeat.runner.provenance import (git_commit, hardware, load_provenance, package_versions,  # noqa: F401
                                      provenance_frames, stage_parameter)
from bcfeat.runner.staging import StageFailed, clean_staging, execute_stage
from bcfeat.runner.stages import STAGES, MissingInput, makers, missing_input, notebook_path  # noqa: F401 (MissingInput: raised by run)

def run(profile_name: str, output_dir: Path | None = None, only: list[str] | None = None,
        restore: bool = False, overrides: Sequence[Sequence[str]] = (), native_isa: bool = False) -> dict:
    """Run the chain (or the stages named in ``only``) and return the provenance record.

    ``overrides`` are ``(NAME, VALUE)`` pairs, as ``-p NAME VALUE`` gives them (see
    :func:`bcfeat.runner.stages.split_overrides`); the record keeps them.

    The notebooks' numeric libraries are capped at AVX2 kernels (the environment the kernels
    inherit, :func:`bcfeat.instruction_set.instruction_set_pinned`), so that the numbers are
    the same on every x86-64 machine of the v3 level (AVX2); ``native_isa=True`` leaves them to choose. The
    record, and each stage's entry, says which.

    Raises
    ------
    StageFailed
        If a stage fails; every output of earlier stages (and of earlier runs) is kept as
        it was, and the provenance file says which stage failed and why.
    MissingInput
        Before anything runs, if a selected stage needs a file that is not there.
    """
    with instruction_set_pinned({} if native_isa else None) as pins:
        return _run(profile_name, output_dir, only, restore, overrides, pins)


def _run(profile_name: str, output_dir: Path | None, only: list[str] | None, restore: bool,
         overrides: Sequence[Sequence[str]], pins: dict[str, str]) -> dict:
    profile = get_profile(profile_name)
    output_dir = Path(output_dir) if output_dir else default_output_dir(profile.name)
    if output_dir.exists() and not output_dir.is_dir():
        raise NotADirectoryError(f"--output {output_dir} is a file, not a folder")
    planned = plan_run(profile.name, output_dir, only, restore, overrides)
    output_dir.mkdir(parents=True, exist_ok=True)
    clean_staging(output_dir)
    record_path = output_dir / "provenance.json"
    instruction_set = pins_label(pins) or "native"
    record = {
        "profile": profile.name, "description": profile.description,
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **git_commit(), "hardware": hardware(), "packages": package_versions(),
        "overrides": [list(pair) for pair in overrides], "instruction_set": instruction_set, "stages": [],
    }
    if only and record_path.exists():
        # A partial re-run keeps the records of the stages it does not repeat.
        previous = json.loads(record_path.read_text())
        record["stages"] = [s for s in previous.get("stages", []) if s["stem"] not in only]
        for kept in record["stages"]:  # records before stages carried their own: the previous run's
            kept.setdefault("commit", previous.get("commit"))
            kept.setdefault("instruction_set", previous.get("instruction_set"))

    order = {stage.stem: i for i, stage in enumerate(STAGES)}

    def save() -> None:  # the stages in the pipeline's order, also after a partial re-run of an earlier one
        record["stages"].sort(key=lambda s: order.get(s["stem"], len(order)))
        write_text(json.dumps(record, indent=2, default=str), record_path)

    made_by = makers()
    for step in planned:
        stage, parameters = step.stage, step.parameters
        for name in stage.inputs:  # an earlier stage of this run may not have made what it declares
            if not (paths.ROOT / parameters[name]).exists():  # repository-relative, as the notebooks see them
                raise missing_input(stage, name, parameters[name], made_by[name], profile.name)
        print(f"[bcfeat] {stage.stem} ({profile.name}) ...", flush=True)
        start = time.perf_counter()
        entry = {"stem": stage.stem, "commit": record["commit"], "instruction_set": instruction_set,
                 "parameters": parameters, "overrides": step.overrides}
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
    parser.add_argument("--native-isa", action="store_true",
                        help="let PyTorch and OpenBLAS use every instruction set of this CPU (faster where it has "
                             "AVX-512) instead of AVX2's kernels, whose numbers are the same on every x86-64 machine")
    parser.add_argument("-v", "--verbose", action="store_true", help="show the traceback of an unexpected error")
    args = parser.parse_args(argv)

    def command() -> int:
        try:
            run(args.profile, args.output, args.only, args.restore, args.overrides, native_isa=args.native_isa)
        except StageFailed as error:
            print(f"[bcfeat] error: {error}", file=sys.stderr)
            return PROBLEM
        return 0

    return run_command("[bcfeat] error", command, verbose=args.verbose)


if __name__ == "__main__":
    sys.exit(main())
