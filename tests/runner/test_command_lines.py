"""Every command line ends the same way: exit 2 and one line on stderr for a bad value, and the
library's log shown on stderr (INFO, one line, no traceback; DEBUG and tracebacks with --verbose).
And pytest runs the package's doctests without importing a command's ``__main__``."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tomllib
from contextlib import contextmanager

import pytest

from bcfeat import paths
from bcfeat.runner import exit_codes


def _console_script() -> list[str]:
    """``bcfeat`` as pyproject.toml installs it (the entry point, run with this interpreter)."""
    with open(paths.ROOT / "pyproject.toml", "rb") as handle:
        module, func = tomllib.load(handle)["project"]["scripts"]["bcfeat"].split(":")
    return [sys.executable, "-c", f"import sys; from {module} import {func}; sys.exit({func}())"]


COMMANDS = {
    "bcfeat": (_console_script(), ["splits", "jtsc_zheng18", "--seed", "-1"],
               "argument --seed: -1 is out of range: must be >= 0"),
    "python -m bcfeat.runner": ([sys.executable, "-m", "bcfeat.runner"], ["--only", "no_such_stage"],
                                "argument --only: invalid choice: 'no_such_stage'"),
    "python -m bcfeat.runner.detector": ([sys.executable, "-m", "bcfeat.runner.detector"], ["--steps", "0"],
                                   "argument --steps: 0 is out of range: must be >= 1"),
}


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_a_bad_value_exits_2_with_one_line_in_every_command(name):
    command, argv, message = COMMANDS[name]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(paths.ROOT), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([*command, *argv], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == exit_codes.USAGE == 2, result.stderr[-2000:]
    assert message in result.stderr and "Traceback" not in result.stderr
    assert result.stdout == ""


@contextmanager
def bare_root_logger():
    """The root logger as a fresh process has it (no handlers; pytest adds its own), restored after."""
    root, package = logging.getLogger(), logging.getLogger("bcfeat")
    saved = root.handlers[:], root.level, package.level
    root.handlers.clear()
    try:
        yield root
    finally:
        for handler in root.handlers:
            handler.close()
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        package.setLevel(saved[2])


def _log_a_failure(logger: logging.Logger) -> None:
    try:
        raise RuntimeError("inner detail")
    except RuntimeError:
        logger.exception("reading %s failed", "x.png")


def test_commands_show_info_as_one_line_without_traceback(capsys):
    logger = logging.getLogger("bcfeat.data.download")
    with bare_root_logger():
        exit_codes.configure_logging(verbose=False)
        logger.info("pbc_acevedo20 already in place")
        logger.debug("a detail")
        logging.getLogger("some.library").info("chatter")
        logging.getLogger("some.library").warning("a library warning")
        _log_a_failure(logger)
    err = capsys.readouterr().err
    assert err.splitlines() == ["INFO: pbc_acevedo20 already in place", "WARNING: a library warning",
                                "ERROR: reading x.png failed"]


def test_verbose_commands_show_debug_and_tracebacks(capsys):
    logger = logging.getLogger("bcfeat.data.download")
    with bare_root_logger():
        exit_codes.configure_logging(verbose=True)
        logger.debug("a detail")
        logging.getLogger("some.library").info("chatter")
        _log_a_failure(logger)
    err = capsys.readouterr().err
    assert err.startswith("DEBUG bcfeat.data.download: a detail\nERROR bcfeat.data.download: reading x.png failed\n")
    assert "Traceback" in err and "RuntimeError: inner detail" in err and "chatter" not in err


def test_an_already_configured_root_logger_is_left_alone():
    handler = logging.NullHandler()
    with bare_root_logger() as root:
        root.addHandler(handler)
        exit_codes.configure_logging(verbose=True)
        assert root.handlers == [handler]


def test_pytest_collects_the_package_doctests_and_never_a_command_module():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(paths.ROOT), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "bcfeat"],
                            capture_output=True, text=True, env=env, cwd=paths.ROOT, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    collected = result.stdout.splitlines()
    for doctest in ("bcfeat/atomic_io.py::bcfeat.atomic_io.atomic_path",
                    "bcfeat/data/splits.py::bcfeat.data.splits.make_splits",
                    "bcfeat/evaluation/baselines.py::bcfeat.evaluation.baselines.ColorShapeFeatures"):
        assert doctest in collected
    assert not [line for line in collected if "__main__" in line]


@pytest.mark.parametrize("device, message", [("bogus", "is not a device"), ("cuda:99", "CUDA GPU")])
def test_a_device_the_machine_lacks_is_a_usage_error(device, message, tmp_path, capsys):
    from bcfeat.runner.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["extract", "model.pt", str(tmp_path), "--output", str(tmp_path / "f.csv"), "--device", device])
    assert exit_info.value.code == exit_codes.USAGE
    assert message in capsys.readouterr().err
    assert not (tmp_path / "f.csv").exists()
