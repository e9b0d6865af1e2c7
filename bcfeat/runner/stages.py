"""The study's stages and the files they hand each other, declared in one place.

Each stage is one notebook. It declares the files it reads that earlier stages made
(``inputs``) and the files it makes (``outputs``), each by the name of the notebook parameter
that carries the path, the way showyourwork declares a step's inputs and outputs. The runner
fills those parameters from the templates below, so no notebook computes another stage's file
name; a file is made by exactly one stage, and a stage whose input is missing stops before it
runs with the name of the file and of the stage that makes it.

An expensive stage (training) has a ``run_parameter``: True trains, False restores from the
files named in ``restore_from`` (its own outputs of an earlier run).

Templates use ``{results_dir}`` (the run's results folder: tables, executed notebooks) and
``{artifacts_dir}`` (the profile's checkpoints, feature sets and caches).
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bcfeat import paths


@dataclass(frozen=True)
class Stage:
    """One notebook of the chain and the files it reads and makes.

    Attributes
    ----------
    stem : str
        The notebook ``notebooks/<stem>.py`` (and its executed copy ``<stem>.ipynb``).
    inputs : tuple of str
        File parameters it reads; each is an output of an earlier stage.
    outputs : dict
        ``{file parameter: path template}`` of the files it makes.
    run_parameter : str or None
        Boolean parameter choosing between running the expensive step (True) and restoring it
        (False); None: always cheap.
    restore_from : tuple of str
        Outputs (of an earlier run of this stage) that a restore reads back.
    """

    stem: str
    inputs: tuple[str, ...] = ()
    outputs: dict[str, str] = field(default_factory=dict)
    run_parameter: str | None = None
    restore_from: tuple[str, ...] = ()

    @property
    def files(self) -> tuple[str, ...]:
        """Every file parameter of the stage, inputs first."""
        return (*self.inputs, *self.outputs)


STAGES: tuple[Stage, ...] = (
    # The first stage fixes the study's design (sites, source, cells per site, splits, headline
    # feature set); every later stage reads it from these files instead of deriving it again.
    Stage("00_data_overview",
          outputs={"design_file": "{results_dir}/tables/study_design.json",
                   "splits_file": "{results_dir}/tables/splits_coarse5.csv",
                   "splits_common13_file": "{results_dir}/tables/splits_common13.csv"}),
    Stage("01_detector", inputs=("design_file",),
          outputs={"detector_file": "{artifacts_dir}/checkpoints/detector.pt"},
          run_parameter="train_detector", restore_from=("detector_file",)),
    Stage("02_autoencoder", inputs=("design_file", "detector_file"),
          outputs={"autoencoders_file": "{artifacts_dir}/checkpoints/autoencoders.json"},
          run_parameter="train_autoencoder", restore_from=("autoencoders_file",)),
    Stage("03_features", inputs=("design_file", "detector_file", "autoencoders_file"),
          outputs={"features_dir": "{artifacts_dir}/features",
                   "aecfe_model_file": "{artifacts_dir}/aecfe_model.pt",
                   "site_standardized_model_file": "{artifacts_dir}/aecfe_model_site_standardized.pt"}),
    Stage("04_oracle", inputs=("design_file", "splits_file"),
          outputs={"oracles_file": "{artifacts_dir}/checkpoints/oracles.json",
                   "oracle_scores_file": "{results_dir}/tables/oracle_scores.csv",
                   "oracle_predictions_file": "{results_dir}/tables/oracle_predictions.csv"},
          run_parameter="train_oracle", restore_from=("oracles_file",)),
    Stage("05_benchmark", inputs=("design_file", "splits_file", "splits_common13_file", "features_dir",
                                  "oracle_scores_file", "oracle_predictions_file"),
          outputs={"benchmark_summary_file": "{results_dir}/tables/benchmark_summary.csv",
                   "benchmark_predictions_file": "{artifacts_dir}/benchmark_predictions.csv"}),
    Stage("06_figures", inputs=("design_file", "features_dir", "oracles_file", "benchmark_summary_file",
                                "benchmark_predictions_file")),
    Stage("07_crosslab", inputs=("design_file", "splits_file", "detector_file", "features_dir", "oracles_file",
                                 "benchmark_summary_file"),
          outputs={"crosslab_model_file": "{artifacts_dir}/crosslab_model.pt"}),
    # Reads a finished run of scripts/ae_factors.py (committed under book/results/factors/), made
    # outside the chain: its 150-epoch trainings take hours on the CPU.
    Stage("08_factors"),
    Stage("90_provenance"),
)

# Parameters the runner sets from its own options, never from ``-p``.
RUNNER_PARAMETERS = ("profile", "results_dir")
# ``-p artifacts_dir DIR`` moves every ``{artifacts_dir}`` file of the run, so it is valid even
# when no selected stage's parameters cell declares the folder itself.
ARTIFACTS = "artifacts_dir"


def stage_names(stages: Iterable[Stage] = STAGES) -> list[str]:
    return [s.stem for s in stages]


def get_stage(stem: str, stages: Sequence[Stage] = STAGES) -> Stage:
    """A stage by its notebook's stem; the error lists the stages."""
    for stage in stages:
        if stage.stem == stem:
            return stage
    raise ValueError(f"unknown stage {stem!r}; stages are {stage_names(stages)}")


def makers(stages: Sequence[Stage] = STAGES) -> dict[str, Stage]:
    """``{file parameter: the stage that makes it}``."""
    return {name: stage for stage in stages for name in stage.outputs}


def check_declarations(stages: Sequence[Stage] = STAGES) -> None:
    """Every file is made by exactly one stage, and every input by an earlier stage.

    Raises
    ------
    ValueError
        Naming the file made twice, or the input nobody (or only a later stage) makes.
    """
    made: dict[str, str] = {}
    for stage in stages:
        for name in stage.inputs:
            if name not in made:
                later = [s.stem for s in stages if name in s.outputs]
                raise ValueError(f"stage {stage.stem} reads {name}, which "
                                 + (f"only the later stage(s) {later} make" if later else "no stage makes"))
        for name in stage.outputs:
            if name in made:
                raise ValueError(f"{name} is made by two stages, {made[name]} and {stage.stem}")
            made[name] = stage.stem
        for name in stage.restore_from:
            if name not in stage.outputs:
                raise ValueError(f"stage {stage.stem} restores from {name}, which is not one of its outputs")
    templates = [t for s in stages for t in s.outputs.values()]
    doubles = sorted({t for t in templates if templates.count(t) > 1})
    if doubles:
        raise ValueError(f"files declared by two outputs: {doubles}")


def resolve(template: str, results_dir: str, artifacts_dir: str) -> str:
    """A path template with the run's folders filled in.

    >>> resolve("{artifacts_dir}/features", "book/results", "artifacts/cpu")
    'artifacts/cpu/features'
    """
    return template.format(results_dir=str(results_dir).rstrip("/"), artifacts_dir=str(artifacts_dir).rstrip("/"))


def file_parameters(stage: Stage, results_dir: str, artifacts_dir: str,
                    stages: Sequence[Stage] = STAGES) -> dict[str, str]:
    """The paths of every file the stage reads or makes, by parameter name."""
    made_by = makers(stages)
    return {name: resolve(made_by[name].outputs[name], results_dir, artifacts_dir) for name in stage.files}


class MissingInput(FileNotFoundError):
    """A stage needs a file that is not there; the message names the stage that makes it."""


def missing_input(stage: Stage, name: str, path: str, maker: Stage, profile: str) -> MissingInput:
    if maker.stem == stage.stem:
        return MissingInput(f"stage {stage.stem} restores from {path} ({name}), which does not exist: "
                            f"run {stage.stem} without --restore (or with -p {stage.run_parameter} True) first")
    return MissingInput(f"stage {stage.stem} needs {path} ({name}), which does not exist; it is made by the "
                        f"stage {maker.stem}: run it first, e.g. python -m bcfeat.runner --profile {profile} "
                        f"--only {maker.stem}")


# ----------------------------------------------------------------------------- parameters cells
@dataclass(frozen=True)
class Parameter:
    """One line ``name: type = default  # meaning`` of a notebook's parameters cell."""

    name: str
    type: str
    default: Any
    meaning: str


TYPES = {"str": str, "int": int, "float": float, "bool": bool}


def parameters_cell(source: Path) -> dict[str, Parameter]:
    """The parameters a text notebook declares in its first code cell (tagged ``parameters``).

    Raises
    ------
    ValueError
        When there is no such cell, or a line is not of the form ``name: type = default  # meaning``.
    """
    import jupytext

    notebook = jupytext.read(source)
    code = [c for c in notebook.cells if c.cell_type == "code"]
    if not code or "parameters" not in code[0].metadata.get("tags", []):
        raise ValueError(f"{source}: the first code cell must be tagged 'parameters'")
    declared = {}
    for line in code[0].source.splitlines():
        if not line.strip():
            continue
        statement, _, meaning = line.partition("#")
        try:
            node = ast.parse(statement).body[0]
        except (SyntaxError, IndexError):
            node = None
        if not isinstance(node, ast.AnnAssign) or node.value is None or not meaning.strip():
            raise ValueError(f"{source}: not `name: type = default  # meaning`: {line!r}")
        kind = ast.unparse(node.annotation)
        if kind not in TYPES:
            raise ValueError(f"{source}: parameter {node.target.id} has type {kind}; use one of {sorted(TYPES)}")
        declared[node.target.id] = Parameter(node.target.id, kind, ast.literal_eval(node.value), meaning.strip())
    return declared


def notebook_path(stem: str) -> Path:
    return paths.NOTEBOOKS / f"{stem}.py"


# ----------------------------------------------------------------------------- -p overrides
def papermill_value(text: str) -> Any:
    """A ``-p`` value typed the way ``papermill -p`` types it: True, False, None, int, float, else str.

    >>> [papermill_value(v) for v in ("True", "3", "0.5", "1e3", "None", "a,b")]
    [True, 3, 0.5, 1000.0, None, 'a,b']
    """
    if text in ("True", "False"):
        return text == "True"
    if text == "None":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def typed_override(stem: str, parameter: Parameter, text: str) -> Any:
    """``text`` as the value of ``parameter``: typed as papermill types it; a ``str`` parameter
    keeps the text as given (``-p shots 5`` is the list "5", not the number)."""
    if parameter.type == "str":
        return text
    value = papermill_value(text)
    expected = {"bool": (bool,), "int": (int,), "float": (int, float)}[parameter.type]
    if isinstance(value, bool) and parameter.type != "bool" or not isinstance(value, expected):
        raise ValueError(f"-p {parameter.name} {text}: {stem} declares {parameter.name}: {parameter.type}"
                         + (" (True or False)" if parameter.type == "bool" else ""))
    return value


def split_overrides(pairs: Sequence[Sequence[str]], declared: dict[str, dict[str, Parameter]]
                    ) -> dict[str, dict[str, Any]]:
    """``-p NAME VALUE`` pairs as ``{stage: {parameter: value}}`` for the selected stages.

    ``NAME`` applies to every selected stage whose parameters cell declares it; ``STAGE.NAME``
    to that stage alone. ``declared`` maps each selected stage to its parameters cell.

    Raises
    ------
    ValueError
        For a name no selected stage declares (listing the names they do), a parameter the
        runner sets itself, or a value of the wrong type.
    """
    out: dict[str, dict[str, Any]] = {stem: {} for stem in declared}
    valid = sorted({ARTIFACTS, *(n for cell in declared.values() for n in cell)} - set(RUNNER_PARAMETERS))
    for pair in pairs:
        name, text = pair
        stem, dot, short = name.rpartition(".")
        if dot and stem not in declared:
            raise ValueError(f"-p {name}: {stem!r} is not a selected stage; selected: {list(declared)}")
        if short in RUNNER_PARAMETERS:
            raise ValueError(f"-p {name}: {short} is set by the runner (use --profile / --output)")
        targets = [stem] if dot else [s for s, cell in declared.items() if short in cell]
        targets = [s for s in targets if short in declared[s]]
        if not targets and not (short == ARTIFACTS and not dot):
            if dot:
                names = sorted(set(declared[stem]) - set(RUNNER_PARAMETERS))
                raise ValueError(f"-p {name}: no parameter {short!r} in stage {stem}; valid names: {names}")
            raise ValueError(f"-p {name}: no selected stage declares {short!r}; valid names: {valid}")
        for target in targets:
            out[target][short] = typed_override(target, declared[target][short], text)
    return out
