"""Running one stage so that a failure changes nothing: the notebook runs against a staging copy
of the results folder, and what it wrote is moved into place only when it finished."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from bcfeat import paths
from bcfeat.atomic_io import write_text
from bcfeat.runner.stages import Stage, notebook_path


def display_path(path: Path) -> str:
    """Repository-relative when inside the repository (the notebooks run with cwd = ROOT), so
    committed notebooks carry no machine-bound paths; absolute otherwise."""
    path = Path(path).resolve()
    try:
        return str(path.relative_to(paths.ROOT))
    except ValueError:
        return str(path)


STAGING = ".staging"


class StageFailed(RuntimeError):
    """A notebook of the chain raised (or its kernel died); earlier outputs are untouched."""


def _stage_copy(output_dir: Path, staging: Path) -> None:
    """A fresh staging folder holding a copy of the results a stage may read (not the notebooks)."""
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for entry in output_dir.iterdir():
        if entry.name.startswith(".") or entry.suffix == ".ipynb":
            continue
        if entry.is_dir():
            shutil.copytree(entry, staging / entry.name, symlinks=True)
        else:
            shutil.copy2(entry, staging / entry.name)


def _publish(staging: Path, output_dir: Path, skip: Path) -> list[Path]:
    """Move every file the stage added or changed from ``staging`` into ``output_dir``.

    Each file is replaced in one step (``os.replace``); unchanged copies are left alone.
    """
    import filecmp

    moved = []
    for source in sorted(p for p in staging.rglob("*") if p.is_file() and p != skip):
        target = output_dir / source.relative_to(staging)
        if target.is_file() and filecmp.cmp(source, target, shallow=False):
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(source, target)
        moved.append(target)
    return moved


def _point_at(notebook: Path, staged: str, final: str) -> None:
    """Make an executed notebook name the results folder it is published to, not the staging one."""
    text = notebook.read_text()
    if staged in text:
        write_text(text.replace(json.dumps(staged)[1:-1], json.dumps(final)[1:-1]), notebook)


def clean_staging(output_dir: Path) -> None:
    """Remove what a killed run left behind: the staging folder and old-style running notebooks."""
    shutil.rmtree(Path(output_dir) / STAGING, ignore_errors=True)
    for leftover in Path(output_dir).glob(".*.running.ipynb"):
        leftover.unlink(missing_ok=True)


def execute_stage(stage: Stage, parameters: dict, output_dir: Path) -> Path:
    """Convert one text notebook, run it with papermill, return the executed notebook's path.

    The notebook runs against a staging copy of ``output_dir`` (its ``results_dir``
    parameter is replaced); the tables it wrote and the executed notebook are moved into
    ``output_dir`` only when it finished without error.
    """
    import jupytext
    import nbformat
    import papermill

    source = notebook_path(stage.stem)
    if not source.exists():
        raise FileNotFoundError(f"stage {stage.stem}: notebook {source} does not exist")
    notebook = jupytext.read(source)
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    output_dir = Path(output_dir)
    output = output_dir / f"{stage.stem}.ipynb"
    # The book must never show a half-run notebook, nor tables from a half-run stage: the stage
    # runs in a staging copy and replaces the previous outputs only on success. A failed run is
    # kept as <stem>.failed.ipynb, executed up to the failing cell.
    staging = output_dir / STAGING / stage.stem
    running = staging / f"{stage.stem}.ipynb"
    failed = output_dir / f"{stage.stem}.failed.ipynb"
    final_dir = parameters.get("results_dir", display_path(output_dir))
    staged_dir = display_path(staging)
    # The files the stage makes in the results folder are made in the staging copy too.
    staged_parameters = {**parameters, "results_dir": staged_dir}
    for name in stage.files:
        value = parameters.get(name)
        if isinstance(value, str) and value.startswith(final_dir.rstrip("/") + "/"):
            staged_parameters[name] = staged_dir + value[len(final_dir.rstrip("/")):]
    _stage_copy(output_dir, staging)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            converted = Path(tmp) / f"{stage.stem}.ipynb"
            nbformat.write(notebook, converted)
            try:
                papermill.execute_notebook(
                    str(converted), str(running), parameters=staged_parameters,
                    kernel_name="python3", cwd=str(paths.ROOT), progress_bar=False, log_output=False,
                )
            except BaseException:
                if running.exists():
                    _point_at(running, staged_dir, final_dir)
                    os.replace(running, failed)
                raise
        _point_at(running, staged_dir, final_dir)
        _publish(staging, output_dir, skip=running)
        os.replace(running, output)  # last: the notebook appears with its tables in place
        failed.unlink(missing_ok=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if (output_dir / STAGING).is_dir() and not any((output_dir / STAGING).iterdir()):
            (output_dir / STAGING).rmdir()
    return output
