"""The runner and the notebooks' interfaces: profiles match parameters cells; a smoke run works."""

from __future__ import annotations

import ast
import json

import pytest

from bcfeat.runner.pipeline import STAGES, notebook_path, provenance_frames, run
from bcfeat.runner.profiles import PROFILES, get_profile


def parameters_cell(stem: str) -> dict[str, str]:
    """Names and annotated types of a text notebook's parameters cell."""
    import jupytext

    notebook = jupytext.read(notebook_path(stem))
    cells = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, f"{stem}: expected exactly one cell tagged 'parameters', found {len(cells)}"
    assert cells[0] is [c for c in notebook.cells if c.cell_type == "code"][0], \
        f"{stem}: the parameters cell must be the first code cell"
    names = {}
    for line in cells[0].source.splitlines():
        if not line.strip():
            continue
        assert "#" in line, f"{stem}: parameter line lacks a '# meaning' comment: {line!r}"
        node = ast.parse(line).body[0]
        assert isinstance(node, ast.AnnAssign), f"{stem}: not `name: type = default`: {line!r}"
        names[node.target.id] = ast.unparse(node.annotation)
    return names


@pytest.mark.parametrize("stage", [s.stem for s in STAGES])
def test_every_profile_parameter_exists_in_the_notebook(stage):
    declared = parameters_cell(stage)
    for profile in PROFILES.values():
        passed = profile.parameters_for(stage) | {"results_dir": "x"}
        unknown = set(passed) - set(declared)
        assert not unknown, f"profile {profile.name} passes {unknown} that {stage} does not declare"
        for name, value in passed.items():
            expected = {"str": str, "int": int, "float": (int, float), "bool": bool}[declared[name]]
            assert isinstance(value, expected), f"{profile.name}/{stage}: {name}={value!r} is not {declared[name]}"


def test_unknown_profile_is_named_in_the_error():
    with pytest.raises(ValueError, match="unknown profile 'fast'.*smoke"):
        get_profile("fast")


def test_unknown_stage_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="unknown stage"):
        run("smoke", tmp_path, only=["nope"])


@pytest.mark.slow
def test_smoke_run_of_every_notebook(tmp_path):
    """The whole chain with the smoke profile: every notebook executes and the record says so."""
    record = run("smoke", tmp_path)
    assert [s["stem"] for s in record["stages"]] == [s.stem for s in STAGES]
    assert all(s["status"] == "ok" for s in record["stages"])
    for stage in STAGES:
        executed = json.loads((tmp_path / f"{stage.stem}.ipynb").read_text())
        errors = [o for c in executed["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"]
        assert not errors
    figures = json.loads((tmp_path / "06_figures.ipynb").read_text())
    images = [o for c in figures["cells"] for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) >= 5, "the figures notebook must carry its figures as PNG (glued into the book)"
    saved = json.loads((tmp_path / "provenance.json").read_text())
    assert saved["profile"] == "smoke" and saved["packages"]["torch"]
    run_table, stages, packages = provenance_frames(saved)
    assert list(stages["notebook"]) == [s.stem for s in STAGES]
    counts = (tmp_path / "tables" / "class_counts.csv").read_text()
    assert "pbc_acevedo20" in counts and "bccd_crops" in counts
    assert not (tmp_path / ".staging").exists() and not list(tmp_path.glob(".*.running.ipynb"))
    # One stage alone into a new folder creates the folders it writes.
    fresh = tmp_path / "fresh" / "run"
    run("smoke", fresh, only=["02_autoencoder"], restore=True)
    assert (fresh / "tables" / "detections_per_site.csv").is_file() and (fresh / "02_autoencoder.ipynb").is_file()


def test_failed_stage_is_recorded_and_earlier_outputs_kept(tmp_path, monkeypatch):
    """A failing notebook stops the run with its name; the record keeps what finished."""
    import bcfeat.runner.pipeline as pipeline

    broken = tmp_path / "notebooks"
    broken.mkdir()
    (broken / "00_data_overview.py").write_text(
        '# %% tags=["parameters"]\nprofile: str = "x"  # p\nsmoke: bool = False  # s\nseed: int = 0  # s\n'
        'max_images_per_dataset: int = 0  # m\nresults_dir: str = ""  # r\n\n# %%\nprint("ok")\n')
    (broken / "90_provenance.py").write_text(
        '# %% tags=["parameters"]\nprofile: str = "x"  # p\nsmoke: bool = False  # s\nseed: int = 0  # s\n'
        'results_dir: str = ""  # r\n\n# %%\nraise RuntimeError("boom in the last stage")\n')
    monkeypatch.setattr(pipeline.paths, "NOTEBOOKS", broken)
    out = tmp_path / "out"
    (out / "90_provenance.ipynb").parent.mkdir(parents=True)
    (out / "90_provenance.ipynb").write_text("previous good output")
    with pytest.raises(RuntimeError, match="stage 90_provenance failed"):
        run("smoke", out, only=["00_data_overview", "90_provenance"])
    record = json.loads((out / "provenance.json").read_text())
    assert [(s["stem"], s["status"]) for s in record["stages"]] == [("00_data_overview", "ok"),
                                                                   ("90_provenance", "failed")]
    assert "boom in the last stage" in record["stages"][1]["error"]
    assert (out / "00_data_overview.ipynb").exists()
    # the failed run is kept beside, and the previous good output is not replaced by it
    assert (out / "90_provenance.ipynb").read_text() == "previous good output"
    assert "boom in the last stage" in (out / "90_provenance.failed.ipynb").read_text()


HEADER = ('# %% tags=["parameters"]\nprofile: str = "x"  # p\nsmoke: bool = False  # s\nseed: int = 0  # s\n'
          'max_images_per_dataset: int = 0  # m\nresults_dir: str = ""  # r\n\n# %%\n'
          'import os, signal\nfrom pathlib import Path\ntables = Path(results_dir) / "tables"\n'
          'tables.mkdir(parents=True, exist_ok=True)\n')


def _stage_notebooks(folder, body: str):
    folder.mkdir(exist_ok=True)
    (folder / "00_data_overview.py").write_text(HEADER + body)
    return folder


def _previous_outputs(out):
    (out / "tables").mkdir(parents=True)
    (out / "tables" / "class_counts.csv").write_text("previous table")
    (out / "00_data_overview.ipynb").write_text("previous notebook")


def test_a_failed_stage_changes_no_earlier_table(tmp_path, monkeypatch):
    import bcfeat.runner.pipeline as pipeline

    notebooks = _stage_notebooks(tmp_path / "nb", '(tables / "class_counts.csv").write_text("half-run table")\n'
                                                  '(tables / "new.csv").write_text("x")\nraise RuntimeError("boom")\n')
    monkeypatch.setattr(pipeline.paths, "NOTEBOOKS", notebooks)
    out = tmp_path / "out"
    _previous_outputs(out)
    with pytest.raises(pipeline.StageFailed, match="stage 00_data_overview failed"):
        run("smoke", out, only=["00_data_overview"])
    assert (out / "tables" / "class_counts.csv").read_text() == "previous table"
    assert not (out / "tables" / "new.csv").exists()
    assert (out / "00_data_overview.ipynb").read_text() == "previous notebook"
    assert sorted(p.name for p in out.iterdir()) == ["00_data_overview.failed.ipynb", "00_data_overview.ipynb",
                                                     "provenance.json", "tables"]
    # the failed notebook names the real results folder, not the staging one
    assert ".staging" not in (out / "00_data_overview.failed.ipynb").read_text()


def test_a_killed_run_changes_no_earlier_output_and_the_next_run_cleans_up(tmp_path, monkeypatch):
    """SIGKILL of the runner in the middle of a stage (after it wrote a table): nothing published."""
    import subprocess
    import sys

    import bcfeat.runner.pipeline as pipeline
    from bcfeat import paths

    killing = _stage_notebooks(tmp_path / "killing", '(tables / "class_counts.csv").write_text("half-run table")\n'
                                                     'os.kill(os.getppid(), signal.SIGKILL)\nos._exit(1)\n')
    out = tmp_path / "out"
    _previous_outputs(out)
    code = ("import sys; from pathlib import Path; import bcfeat.runner.pipeline as p; p.paths.NOTEBOOKS = Path(sys.argv[1]); "
            "sys.exit(p.main(['--profile', 'smoke', '--output', sys.argv[2], '--only', '00_data_overview']))")
    result = subprocess.run([sys.executable, "-c", code, str(killing), str(out)], cwd=paths.ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == -9, result.stderr[-2000:]
    assert (out / "tables" / "class_counts.csv").read_text() == "previous table"
    assert (out / "00_data_overview.ipynb").read_text() == "previous notebook"

    good = _stage_notebooks(tmp_path / "good", '(tables / "class_counts.csv").write_text("new table")\n')
    monkeypatch.setattr(pipeline.paths, "NOTEBOOKS", good)
    run("smoke", out, only=["00_data_overview"])
    assert (out / "tables" / "class_counts.csv").read_text() == "new table"
    assert sorted(p.name for p in out.iterdir()) == ["00_data_overview.ipynb", "provenance.json", "tables"]
    executed = json.loads((out / "00_data_overview.ipynb").read_text())
    injected = [c for c in executed["cells"] if "injected-parameters" in c["metadata"].get("tags", [])]
    assert f'results_dir = "{out}"' in "".join(injected[0]["source"])


def test_runner_exit_codes(tmp_path, monkeypatch, capsys):
    import bcfeat.runner.pipeline as pipeline

    with pytest.raises(SystemExit) as stop:
        pipeline.main(["--only", "nope", "--output", str(tmp_path)])
    assert stop.value.code == 2
    (tmp_path / "afile").write_text("x")
    assert pipeline.main(["--profile", "smoke", "--output", str(tmp_path / "afile")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    monkeypatch.setattr(pipeline.paths, "NOTEBOOKS", _stage_notebooks(tmp_path / "nb", 'raise RuntimeError("x")\n'))
    assert pipeline.main(["--profile", "smoke", "--output", str(tmp_path / "o"), "--only", "00_data_overview"]) == 1
    assert "stage 00_data_overview failed" in capsys.readouterr().err
