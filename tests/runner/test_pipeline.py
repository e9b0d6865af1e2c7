"""The runner and the notebooks' interfaces: profiles match parameters cells; a smoke run works."""

from __future__ import annotations

import json
import os

import pytest

from bcfeat.runner import stages
from bcfeat.runner.pipeline import STAGES, notebook_path, plan_run, provenance_frames, run
from bcfeat.runner.profiles import PROFILES, get_profile


def parameters_cell(stem: str) -> dict[str, str]:
    """Names and annotated types of a text notebook's parameters cell."""
    return {name: p.type for name, p in stages.parameters_cell(notebook_path(stem)).items()}


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


@pytest.mark.parametrize("stage", STAGES, ids=[s.stem for s in STAGES])
def test_every_declared_file_is_a_parameter_whose_default_is_the_cpu_run(stage):
    """A notebook run alone (plain papermill, defaults) reads and writes the files the runner would."""
    cell = stages.parameters_cell(notebook_path(stage.stem))
    for name, path in stages.file_parameters(stage, "book/results", "artifacts/cpu").items():
        assert name in cell, f"{stage.stem} does not declare its file parameter {name}"
        assert cell[name].type == "str" and cell[name].default == path, f"{stage.stem}: {name}"
        role = "input" if name in stage.inputs else "output"
        assert cell[name].meaning.startswith(f"{role}:"), f"{stage.stem}: say '{role}:' in the meaning of {name}"
    if stage.run_parameter:
        assert cell[stage.run_parameter].type == "bool"


def test_every_file_is_made_by_exactly_one_earlier_stage():
    stages.check_declarations()
    made = [name for s in STAGES for name in s.outputs]
    assert len(made) == len(set(made))
    assert stages.makers()["splits_file"].stem == "00_data_overview"
    assert stages.makers()["design_file"].stem == "00_data_overview"
    assert stages.makers()["detector_file"].stem == "01_detector"
    twice = (stages.Stage("a", outputs={"x_file": "{results_dir}/x"}), stages.Stage("b", outputs={"x_file": "{results_dir}/y"}))
    with pytest.raises(ValueError, match="x_file is made by two stages, a and b"):
        stages.check_declarations(twice)
    same_file = (stages.Stage("a", outputs={"x_file": "{results_dir}/x"}), stages.Stage("b", outputs={"y_file": "{results_dir}/x"}))
    with pytest.raises(ValueError, match="declared by two outputs"):
        stages.check_declarations(same_file)
    backwards = (stages.Stage("a", inputs=("x_file",)), stages.Stage("b", outputs={"x_file": "{results_dir}/x"}))
    with pytest.raises(ValueError, match=r"stage a reads x_file, which only the later stage\(s\) \['b'\] make"):
        stages.check_declarations(backwards)


def test_no_notebook_or_profile_types_another_stage_s_file_name():
    """Hand-off names live in bcfeat/runner/stages.py only (the notebooks' defaults aside)."""
    import re

    from bcfeat import paths

    pattern = re.compile(r"detector\.pt|splits_coarse5|\boracle_scores\.csv|benchmark_summary\.csv|/ \"features\"")
    for path in [*paths.NOTEBOOKS.glob("*.py"), paths.ROOT / "bcfeat" / "runner" / "profiles.py",
                 *(paths.ROOT / "bcfeat" / "study").glob("*.py")]:
        code = [line for line in path.read_text().splitlines()
                if not re.match(r"^\w+: str = .*  # (input|output):", line)]  # parameter defaults
        hits = [line for line in code if pattern.search(line)]
        assert not hits, f"{path.name} names another stage's file: {hits}"
    # the oracle's feature-set name is never typed out: it comes from its architecture
    for path in [*paths.NOTEBOOKS.glob("*.py"), paths.ROOT / "bcfeat" / "runner" / "profiles.py"]:
        assert not re.search(r"oracle \(\w+, \w+ norm", path.read_text()), path.name


def _design_files(results):
    """Stand-ins for the files of 00_data_overview (the runner checks only that they exist)."""
    (results / "tables").mkdir(parents=True, exist_ok=True)
    for name in ("study_design.json", "splits_coarse5.csv", "splits_common13.csv"):
        (results / "tables" / name).write_text("")


def test_a_missing_input_names_the_file_and_the_stage_that_makes_it(tmp_path):
    empty = str(tmp_path / "artifacts")
    with pytest.raises(stages.MissingInput, match=r"stage 05_benchmark needs .*tables/study_design\.json \(design_file\)"
                                                  r".*made by the stage 00_data_overview"):
        run("smoke", tmp_path / "out", only=["05_benchmark"], overrides=[("artifacts_dir", empty)])
    assert not (tmp_path / "out").exists(), "a refused run writes nothing"
    _design_files(tmp_path / "out")
    with pytest.raises(stages.MissingInput, match=r"stage 05_benchmark needs .*artifacts/features \(features_dir\)"
                                                  r".*made by the stage 03_features"):
        run("smoke", tmp_path / "out", only=["05_benchmark"], overrides=[("artifacts_dir", empty)])
    with pytest.raises(stages.MissingInput, match=r"stage 02_autoencoder needs .*detector\.pt .*01_detector"):
        plan_run("smoke", tmp_path / "out", only=["02_autoencoder", "03_features"], overrides=[("artifacts_dir", empty)])
    # made by an earlier selected stage: nothing to check before the run
    planned = plan_run("smoke", tmp_path / "out", only=["01_detector", "02_autoencoder"],
                       overrides=[("artifacts_dir", empty)])
    assert planned[1].parameters["detector_file"] == planned[0].parameters["detector_file"] == \
        f"{empty}/checkpoints/detector.pt"


def test_restore_needs_the_stage_s_own_saved_output(tmp_path):
    empty = str(tmp_path / "artifacts")
    _design_files(tmp_path)
    with pytest.raises(stages.MissingInput, match=r"stage 01_detector restores from .*detector\.pt.*without --restore"):
        plan_run("smoke", tmp_path, only=["01_detector"], restore=True, overrides=[("artifacts_dir", empty)])
    planned = plan_run("smoke", tmp_path, only=["01_detector"], overrides=[("artifacts_dir", empty)])
    assert planned[0].parameters["train_detector"] is True
    # -p decides per stage, after --restore
    with pytest.raises(stages.MissingInput, match="restores from"):
        plan_run("smoke", tmp_path, only=["01_detector"], overrides=[("artifacts_dir", empty), ("train_detector", "False")])


def _made_before_04(artifacts):
    """Stand-ins for the files of 00_data_overview (beside ``artifacts``), 01_detector and 03_features
    (the runner checks only that they exist)."""
    _design_files(artifacts.parent)
    (artifacts / "features").mkdir(parents=True)
    (artifacts / "checkpoints" / "detector.pt").parent.mkdir(parents=True)
    (artifacts / "checkpoints" / "detector.pt").write_text("")
    return str(artifacts)


def test_overrides_apply_to_every_selected_stage_that_declares_them(tmp_path):
    artifacts = _made_before_04(tmp_path / "artifacts")
    planned = {p.stage.stem: p for p in plan_run("smoke", tmp_path, only=["04_oracle", "05_benchmark", "07_crosslab"],
                                                 restore=True, overrides=[("artifacts_dir", artifacts),
                                                                          ("seed", "3"),
                                                                          ("05_benchmark.raw_pixels_pca", "7"),
                                                                          ("shots", "5"), ("train_oracle", "True")])}
    assert [planned[s].parameters["seed"] for s in planned] == [3, 3, 3]
    assert planned["05_benchmark"].parameters["raw_pixels_pca"] == 7
    assert planned["07_crosslab"].parameters["shots"] == "5"  # a str parameter keeps the text
    assert planned["04_oracle"].parameters["train_oracle"] is True  # -p after --restore
    assert planned["05_benchmark"].overrides == {"seed": 3, "raw_pixels_pca": 7}
    assert planned["04_oracle"].overrides == {"artifacts_dir": artifacts, "seed": 3, "train_oracle": True}
    assert planned["07_crosslab"].parameters["oracles_file"] == f"{artifacts}/checkpoints/oracles.json"
    assert planned["05_benchmark"].parameters["splits_file"] == f"{tmp_path}/tables/splits_coarse5.csv"
    assert planned["07_crosslab"].parameters["design_file"] == f"{tmp_path}/tables/study_design.json"


def test_the_design_is_one_stage_s_parameters_and_every_later_stage_s_input(tmp_path):
    """Sites, sizes, repetitions and the headline are set once, by 00_data_overview; a -p of one of
    them without that stage is refused with what to do, since the later stages read the file."""
    design_cell = parameters_cell("00_data_overview")
    for name in ("sites", "source_site", "label_space", "max_per_site", "n_repetitions", "headline"):
        assert name in design_cell
        assert [s.stem for s in STAGES if name in parameters_cell(s.stem)] == ["00_data_overview"], name
    readers = [s.stem for s in STAGES if "design_file" in s.inputs]
    assert readers == ["01_detector", "02_autoencoder", "03_features", "04_oracle", "05_benchmark", "06_figures",
                       "07_crosslab"]
    artifacts = _made_before_04(tmp_path / "artifacts")
    with pytest.raises(ValueError, match=r"-p n_repetitions: n_repetitions is part of the study's design, which "
                                         r"00_data_overview writes.*--only 00_data_overview 04_oracle 05_benchmark"):
        plan_run("smoke", tmp_path, only=["04_oracle", "05_benchmark"],
                 overrides=[("artifacts_dir", artifacts), ("n_repetitions", "3")])
    planned = plan_run("smoke", tmp_path, only=["00_data_overview", "04_oracle", "05_benchmark"],
                       overrides=[("artifacts_dir", artifacts), ("n_repetitions", "3"), ("headline", "aecfe_mmd")])
    assert planned[0].parameters["n_repetitions"] == 3 and planned[0].parameters["headline"] == "aecfe_mmd"
    assert "n_repetitions" not in planned[1].parameters and "n_repetitions" not in planned[2].parameters


@pytest.mark.parametrize("pair, message", [
    (("n_epochs", "3"), r"no selected stage declares 'n_epochs'; valid names: \[.*'feature_sets'.*'raw_pixels_pca'"),
    (("05_benchmark.shots", "3"), r"no parameter 'shots' in stage 05_benchmark; valid names: \[.*'raw_pixels_pca'"),
    (("07_crosslab.seed", "1"), r"'07_crosslab' is not a selected stage"),
    (("raw_pixels_pca", "2.5"), r"05_benchmark declares raw_pixels_pca: int"),
    (("smoke", "yes"), r"declares smoke: bool \(True or False\)"),
    (("results_dir", "x"), r"set by the runner"),
])
def test_a_bad_override_is_an_error_listing_the_valid_names(tmp_path, pair, message):
    artifacts = _made_before_04(tmp_path / "artifacts")
    with pytest.raises(ValueError, match=message):
        plan_run("smoke", tmp_path, only=["05_benchmark"], overrides=[("artifacts_dir", artifacts), pair])


@pytest.mark.parametrize("text", ["True", "False", "None", "3", "-2", "0.5", "1e-3", "inf", "true", "a,b", "", " 7"])
def test_override_values_are_typed_as_papermill_types_them(text):
    from papermill.cli import _resolve_type  # papermill's own -p typing, the reference

    assert stages.papermill_value(text) == _resolve_type(text)
    assert type(stages.papermill_value(text)) is type(_resolve_type(text))


def test_main_takes_p_and_records_the_overrides_in_the_provenance(tmp_path, monkeypatch, capsys):
    import bcfeat.runner.pipeline as pipeline

    notebooks = _stage_notebooks(tmp_path / "nb", '(tables / "seen.txt").write_text(f"{max_images_per_dataset!r} {seed!r}")\n')
    monkeypatch.setattr(pipeline.paths, "NOTEBOOKS", notebooks)
    out = tmp_path / "out"
    status = pipeline.main(["--profile", "smoke", "--output", str(out), "--only", "00_data_overview",
                            "-p", "max_images_per_dataset", "3", "-p", "seed", "5"])
    assert status == 0
    assert (out / "tables" / "seen.txt").read_text() == "3 5"
    record = json.loads((out / "provenance.json").read_text())
    assert record["overrides"] == [["max_images_per_dataset", "3"], ["seed", "5"]]
    assert record["stages"][0]["overrides"] == {"max_images_per_dataset": 3, "seed": 5}
    assert record["stages"][0]["parameters"]["max_images_per_dataset"] == 3
    _, table, _ = provenance_frames(record)
    assert table.loc[0, "overrides (-p)"] == "max_images_per_dataset=3, seed=5"
    # each stage names the commit of the run that made it; a later partial run keeps it
    assert record["stages"][0]["commit"] == record["commit"]
    record_file = out / "provenance.json"
    earlier_stage = {**{k: v for k, v in record["stages"][0].items() if k != "commit"}, "stem": "05_benchmark"}
    record_file.write_text(json.dumps({**record, "commit": "0123456789abcdef", "stages": [earlier_stage]}))
    monkeypatch.setattr(pipeline, "git_commit", lambda: {"commit": "fedcba9876543210", "dirty": False})
    assert pipeline.main(["--profile", "smoke", "--output", str(out), "--only", "00_data_overview"]) == 0
    again = json.loads(record_file.read_text())
    # in the pipeline's order, though the earlier stage was run last
    assert [(s["stem"], s["commit"]) for s in again["stages"]] == [("00_data_overview", "fedcba9876543210"),
                                                                    ("05_benchmark", "0123456789abcdef")]
    assert list(provenance_frames(again)[1]["commit"]) == ["fedcba9", "0123456"]
    # a name no selected stage declares: exit 2, one line naming the valid ones, nothing run
    status = pipeline.main(["--profile", "smoke", "--output", str(tmp_path / "other"), "--only", "00_data_overview",
                            "-p", "epochs", "3"])
    assert status == 2
    err = capsys.readouterr().err
    assert "no selected stage declares 'epochs'; valid names:" in err and "max_images_per_dataset" in err
    assert not (tmp_path / "other").exists()


def test_the_runner_caps_its_kernels_instruction_set_unless_told_not_to(tmp_path, monkeypatch):
    import bcfeat.runner.pipeline as pipeline
    from bcfeat.instruction_set import PORTABLE_PINS, portable_pins

    if not portable_pins():
        pytest.skip("not an x86-64 CPU with AVX2: the runner pins nothing here")
    for name in PORTABLE_PINS:  # absent, as on a machine where nobody set them
        monkeypatch.setenv(name, "placeholder")
        monkeypatch.delenv(name)
    seen = ('import json, os, torch\n'
            'from numpy._core._multiarray_umath import __cpu_features__\n'
            '(tables / "kernel.json").write_text(json.dumps({"env": {k: os.environ.get(k) for k in '
            + repr(sorted(PORTABLE_PINS)) + '}, "capability": torch.backends.cpu.get_cpu_capability(), '
            '"numpy_avx512": __cpu_features__.get("X86_V4", False)}))\n')
    monkeypatch.setattr(pipeline.paths, "NOTEBOOKS", _stage_notebooks(tmp_path / "nb", seen))
    out = tmp_path / "out"
    assert pipeline.main(["--profile", "smoke", "--output", str(out), "--only", "00_data_overview"]) == 0
    kernel = json.loads((out / "tables" / "kernel.json").read_text())
    assert kernel["env"] == PORTABLE_PINS and kernel["capability"] == "AVX2"  # the notebook's PyTorch took AVX2's kernels
    assert kernel["numpy_avx512"] is False  # and NumPy its AVX2 loops
    record = json.loads((out / "provenance.json").read_text())
    assert record["instruction_set"] == record["stages"][0]["instruction_set"] == "ATEN_CPU_CAPABILITY=avx2, " \
        "ONEDNN_MAX_CPU_ISA=AVX2, OPENBLAS_CORETYPE=Haswell, NPY_DISABLE_CPU_FEATURES=X86_V4 AVX512_ICL AVX512_SPR, " \
        "MKL_ENABLE_INSTRUCTIONS=AVX2, NUMBA_CPU_NAME=haswell, NUMBA_CPU_FEATURES="
    assert provenance_frames(record)[1].loc[0, "instruction set"].startswith("capped: ATEN_CPU_CAPABILITY=avx2")

    assert not set(PORTABLE_PINS) & set(os.environ)  # the run's kernels had them, this process keeps none
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Zen")  # a variable the user set is kept as it is
    assert pipeline.main(["--profile", "smoke", "--output", str(out), "--only", "00_data_overview"]) == 0
    assert json.loads((out / "tables" / "kernel.json").read_text())["env"]["OPENBLAS_CORETYPE"] == "Zen"
    monkeypatch.delenv("OPENBLAS_CORETYPE")
    assert pipeline.main(["--profile", "smoke", "--output", str(out), "--only", "00_data_overview", "--native-isa"]) == 0
    kernel = json.loads((out / "tables" / "kernel.json").read_text())
    assert kernel["env"] == dict.fromkeys(sorted(PORTABLE_PINS))  # nothing capped
    record = json.loads((out / "provenance.json").read_text())
    assert record["instruction_set"] == "native" and provenance_frames(record)[1].loc[0, "instruction set"] == "native"


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
    # the stage that shows the record leaves its own time out (showing it again gives the same table)
    assert list(stages["notebook"]) == [s.stem for s in STAGES if s.stem != "90_provenance"]
    counts = (tmp_path / "tables" / "class_counts.csv").read_text()
    assert "pbc_acevedo20" in counts and "bccd_crops" in counts
    assert not (tmp_path / ".staging").exists() and not list(tmp_path.glob(".*.running.ipynb"))
    design = json.loads((tmp_path / "tables" / "study_design.json").read_text())["design"]
    assert design["max_per_site"] == 60 and design["n_repetitions"] == 2 and design["headline"] == "aecfe_moment"
    # A later stage alone into a new folder needs the design there; with the design stage it
    # runs, and creates the folders it writes.
    fresh = tmp_path / "fresh" / "run"
    from bcfeat.runner.stages import MissingInput  # (``stages`` is the provenance table here)

    with pytest.raises(MissingInput, match="study_design.json .design_file.*00_data_overview"):
        run("smoke", fresh, only=["02_autoencoder"], restore=True)
    run("smoke", fresh, only=["00_data_overview", "02_autoencoder"], restore=True)
    assert (fresh / "tables" / "detections_per_site.csv").is_file() and (fresh / "02_autoencoder.ipynb").is_file()


def test_failed_stage_is_recorded_and_earlier_outputs_kept(tmp_path, monkeypatch):
    """A failing notebook stops the run with its name; the record keeps what finished."""
    import bcfeat.runner.pipeline as pipeline

    broken = tmp_path / "notebooks"
    broken.mkdir()
    (broken / "00_data_overview.py").write_text(HEADER + 'print("ok")\n')
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
          'max_images_per_dataset: int = 0  # m\nresults_dir: str = ""  # r\n'
          'design_file: str = ""  # output: d\nsplits_file: str = ""  # output: s\nsplits_common13_file: str = ""  # output: s\n\n# %%\n'
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


def test_classify_benchmark_figures_read_the_benchmark_json():
    from bcfeat.runner.provenance import classify_benchmark_figures

    results = {"model": "m.pt", "baseline_f6da4b2_cells_per_s": 40.0, "baseline_f6da4b2_tree_peak_pss_mb_1000": 700.0,
               "current_cells_per_s": 60.0, "current_tree_peak_pss_mb_1000": 690.0, "same_predictions": False,
               "prediction_agreement": 0.955, "speedup": 1.5,
               "memory_20000": {"seconds": 300.0, "tree_peak_pss_mb": 810.0},
               "memory_1000": {"seconds": 16.0, "tree_peak_pss_mb": 705.0}}
    figures = classify_benchmark_figures(results)
    assert figures["baseline"] == "f6da4b2" and figures["baseline_cells_per_s"] == 40.0
    assert figures["cells_per_s"] == 60.0 and figures["speedup"] == 1.5
    assert (figures["against_milestone"], figures["against_goal"]) == ("above", "below")
    assert classify_benchmark_figures({**results, "current_cells_per_s": 59.9})["against_milestone"] == "below"
    assert figures["agreement_percent"] == pytest.approx(95.5)
    assert list(figures["peak_pss_mb"].items()) == [(1000, 705.0), (20000, 810.0)]
    assert "ms_per_image" not in figures and "small_call_seconds" not in figures  # an older benchmark file
    assert "site_ms_per_image" not in figures
    steps = {"read": 1.0, "segment": 12.0, "crop": 7.0, "features": 8.0, "total": 28.0}
    figures = classify_benchmark_figures({**results, "stage_ms_per_image": steps, "small_call_seconds": 3.6})
    assert figures["ms_per_image"] == 28.0 and figures["stage_ms_per_image"]["segment"] == 12.0
    assert figures["small_call_seconds"] == 3.6
    per_site = {"stage_ms_per_image_pbc_acevedo20": {**steps, "total": 22.0}, "stage_ms_per_image_bccd_crops": {**steps, "total": 17.5}}
    assert classify_benchmark_figures({**results, **per_site})["site_ms_per_image"] == {"pbc_acevedo20": 22.0, "bccd_crops": 17.5}
    assert figures["largest_call_images"] == 20000 and figures["largest_call_cells_per_s"] == pytest.approx(20000 / 300)
    assert figures["largest_against_goal"] == "below"
    fast = {**results, "memory_20000": {"seconds": 190.0, "tree_peak_pss_mb": 810.0}}
    assert classify_benchmark_figures(fast)["largest_against_goal"] == "above"
    # the largest call timed without the memory sampler, where the benchmark ran it so
    timed = classify_benchmark_figures({**results, "timed_20000": {"seconds": 180.0}})
    assert timed["largest_call_cells_per_s"] == pytest.approx(20000 / 180) and timed["largest_against_goal"] == "above"
    assert timed["peak_pss_mb"][20000] == 810.0
    assert "sampling_cost_percent" not in timed and timed["current_peak_mb"] == 690.0 and timed["baseline_peak_mb"] == 700.0
    sampled = classify_benchmark_figures({**results, "current_seconds": [10.0, 12.0, 11.0], "current_sampled_seconds": 11.55})
    assert sampled["sampling_cost_percent"] == pytest.approx(5.0)
