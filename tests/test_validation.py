"""Bad values are refused where they enter, with the setting, the value and the valid range."""

from __future__ import annotations

import pytest

from bcfeat.runner.detector import main as detector_main
from bcfeat.detection.config import DetectorTrainingConfig
from bcfeat.study import common as study
from bcfeat.study.autoencoder import autoencoder_samples
from bcfeat.study.detector import DetectorPlan
from bcfeat.evaluation.oracle_model import OracleConfig
from bcfeat.validation import require_int


@pytest.mark.parametrize("field, value, message", [
    ("steps", -1, r"DetectorTrainingConfig.steps=-1 is out of range: must be >= 1"),
    ("steps", 0, r"DetectorTrainingConfig.steps=0 is out of range: must be >= 1"),
    ("batch_size", 0, r"DetectorTrainingConfig.batch_size=0 is out of range: must be >= 1"),
    ("batch_size", 2.5, r"DetectorTrainingConfig.batch_size=2.5 is not a whole number"),
    ("lr", 0.0, r"DetectorTrainingConfig.lr=0.0 is out of range: must be a number > 0"),
])
def test_detector_training_settings(field, value, message):
    with pytest.raises(ValueError, match=message):
        DetectorTrainingConfig(**{field: value})


def test_detector_plan_from_notebook_parameters():
    with pytest.raises(ValueError, match="DetectorTrainingConfig.steps=-1"):
        DetectorPlan.from_parameters("tiny", steps=-1, batch_size=2, seed=0, images_per_site=4)
    with pytest.raises(ValueError, match="images_per_site=0 is out of range: must be >= 1"):
        DetectorPlan.from_parameters("tiny", steps=1, batch_size=2, seed=0, images_per_site=0)


def test_sample_counts_of_the_notebooks(tmp_path):
    # refused before any folder is scanned, so no data is needed
    with pytest.raises(ValueError, match=r"max_per_site=-5 is out of range: must be >= 0 \(0: every image"):
        study.site_samples(tmp_path, None, max_per_site=-5)
    with pytest.raises(ValueError, match=r"max_source_images=-1 is out of range: must be >= 0"):
        autoencoder_samples(tmp_path, 0, -1, 0)


@pytest.mark.parametrize("field", ["epochs", "batch_size", "image_size"])
def test_oracle_settings(field):
    with pytest.raises(ValueError, match=f"OracleConfig.{field}=0 is out of range: must be >= 1"):
        OracleConfig(**{field: 0})


def test_require_int_refuses_bools_and_strings():
    with pytest.raises(ValueError, match="is not a whole number"):
        require_int("n", True, 0)
    with pytest.raises(ValueError, match="'3' is not a whole number"):
        require_int("n", "3", 0)
    assert require_int("n", 3, 0, 5) == 3
    with pytest.raises(ValueError, match=r"n=6 is out of range: must be in \[0, 5\]"):
        require_int("n", 6, 0, 5)


@pytest.mark.parametrize("argv, message", [
    (["--steps", "-1"], "argument --steps: -1 is out of range: must be >= 1"),
    (["--batch-size", "0"], "argument --batch-size: 0 is out of range: must be >= 1"),
    (["--images-per-site", "0"], "argument --images-per-site: 0 is out of range: must be >= 1"),
    (["--max-eval-images", "-2"], "argument --max-eval-images: -2 is out of range: must be >= 0"),
])
def test_detector_command_refuses_bad_values(argv, message, capsys):
    with pytest.raises(SystemExit) as stop:
        detector_main(argv)
    assert stop.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--test-size", "1.5"], "argument --test-size: 1.5 is out of range: must be in (0.0, 1.0)"),
    (["--n-folds", "1"], "argument --n-folds: 1 is out of range: must be >= 2"),
    (["--seed", "-1"], "argument --seed: -1 is out of range: must be >= 0"),
])
def test_splits_command_refuses_bad_values(argv, message, capsys):
    from bcfeat.runner.cli import main

    with pytest.raises(SystemExit) as stop:
        main(["splits", "jtsc_zheng18", *argv])
    assert stop.value.code == 2 and message in capsys.readouterr().err


def test_an_unexpected_error_is_one_line_and_a_traceback_only_with_verbose(monkeypatch, tmp_path, capsys):
    import bcfeat.runner.cli as cli

    def bug(args):
        raise ZeroDivisionError("division by zero")

    parser = cli.build_parser
    monkeypatch.setattr(cli, "_cmd_scan", bug)

    def patched():
        p = parser()
        p._subparsers._group_actions[0].choices["scan"].set_defaults(func=bug)
        return p

    monkeypatch.setattr(cli, "build_parser", patched)
    assert cli.main(["scan", "x"]) == 1
    err = capsys.readouterr().err
    assert "unexpected error (ZeroDivisionError: division by zero)" in err and "--verbose" in err
    assert "Traceback" not in err
    with pytest.raises(ZeroDivisionError):
        cli.main(["--verbose", "scan", "x"])
