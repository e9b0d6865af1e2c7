"""Model files are data: hostile, damaged and foreign files are refused in one line, and nothing runs."""

from __future__ import annotations

import pathlib
import zipfile

import pytest
import torch

from bcfeat.evaluation import oracle
from bcfeat.runner.cli import main as cli_main
from bcfeat.detection.checkpoint import load_detector
from bcfeat.autoencoder.aecfe_model import load_model
from bcfeat.autoencoder.model import load_checkpoint
from bcfeat.model_files import ModelFileError, load_model_file


class _TouchOnLoad:
    """Unpickling this calls ``Path.touch(marker)``: the stand-in for code hidden in a shared file."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


@pytest.fixture(scope="module")
def files(tiny_aecfe_folder):
    return tiny_aecfe_folder


LOADERS = {"aecfe": load_model, "detector": load_detector, "autoencoder": load_checkpoint,
           "oracle": oracle.load_checkpoint}


@pytest.mark.parametrize("kind", sorted(LOADERS))
def test_a_file_with_code_in_it_is_refused_without_running_the_code(kind, tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"format": f"bcfeat.{kind}/1", "config": {}, "state_dict": {}, "extra": _TouchOnLoad(marker)}, evil)
    with pytest.raises(ModelFileError, match=r"evil\.pt: holds Python objects .*possibly code.*not opened") as error:
        LOADERS[kind](evil)
    assert not marker.exists()
    assert "\n" not in str(error.value) and "re-run" in str(error.value)  # says how to re-create an old file
    # The payload really is hostile: the unsafe load the project used before runs it.
    torch.load(evil, weights_only=False)
    assert marker.exists()


def test_the_cli_refuses_a_hostile_model_in_one_line(tmp_path, capsys):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"format": "bcfeat.aecfe/1", "x": _TouchOnLoad(marker)}, evil)
    (tmp_path / "images").mkdir()
    assert cli_main(["extract", str(evil), str(tmp_path / "images"), "--output", str(tmp_path / "f.csv")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "evil.pt" in err and "Traceback" not in err
    assert not marker.exists() and not (tmp_path / "f.csv").exists()


def _flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x10]) + data[at + 1:]


@pytest.mark.parametrize("damage", ["truncated", "half", "empty", "flip_tensor", "flip_pickle", "flip_directory"])
def test_damaged_model_files_are_refused_in_one_line(files, damage, tmp_path):
    data = (files / "aecfe.pt").read_bytes()
    with zipfile.ZipFile(files / "aecfe.pt") as archive:
        infos = archive.infolist()
    pickle_info = next(i for i in infos if i.filename.endswith("data.pkl"))
    tensor_info = max(infos, key=lambda i: i.file_size)
    damaged = {
        "truncated": data[:-100],
        "half": data[: len(data) // 2],
        "empty": b"",
        "flip_tensor": _flip(data, tensor_info.header_offset + 200 + tensor_info.file_size // 2),
        "flip_pickle": _flip(data, pickle_info.header_offset + 120),
        "flip_directory": _flip(data, len(data) - 40),
    }[damage]
    path = tmp_path / "model.pt"
    path.write_bytes(damaged)
    with pytest.raises(ModelFileError, match=r"model\.pt: (is damaged|is empty)") as error:
        load_model(path)
    assert "\n" not in str(error.value)


def test_a_file_of_another_kind_or_incomplete_is_named(files, tmp_path):
    with pytest.raises(ModelFileError, match="detector.pt: is a bcfeat detector file, not a bcfeat aecfe file"):
        load_model(files / "detector.pt")
    with pytest.raises(ModelFileError, match="aecfe.pt: is a bcfeat aecfe file, not a bcfeat autoencoder file"):
        load_checkpoint(files / "aecfe.pt")
    payload = load_model_file(files / "aecfe.pt", "aecfe", required=())
    del payload["autoencoder"]
    torch.save(payload, tmp_path / "partial.pt")
    with pytest.raises(ModelFileError, match=r"partial.pt: is incomplete: its 'autoencoder' part"):
        load_model(tmp_path / "partial.pt")
    payload = load_model_file(files / "aecfe.pt", "aecfe", required=())
    payload["detector"]["state_dict"] = {}
    torch.save(payload, tmp_path / "wrong_weights.pt")
    with pytest.raises(ModelFileError, match="wrong_weights.pt: its detector configuration or weights do"):
        load_model(tmp_path / "wrong_weights.pt")
    torch.save({"format": "bcfeat.aecfe/9"}, tmp_path / "future.pt")
    with pytest.raises(ModelFileError, match="future.pt: is a aecfe file of version 9"):
        load_model(tmp_path / "future.pt")


def test_model_files_load_with_the_plain_weights_only_unpickler(files):
    for name in ("aecfe.pt", "detector.pt", "ae.pt"):
        payload = torch.load(files / name, weights_only=True)
        assert payload["format"].startswith("bcfeat.")


def test_an_oracle_file_from_before_the_format_entry_still_loads(tmp_path):
    cfg = oracle.OracleConfig(arch="narrow_resnet", width=4, image_size=16, epochs=1, batch_size=4)
    model = oracle.build_oracle(cfg, 2)
    from dataclasses import asdict

    old = {"kind": "oracle", "config": asdict(cfg), "classes": ["a", "b"],
           "state_dict": model.state_dict(), "history": []}
    torch.save(old, tmp_path / "old_oracle.pt")
    assert oracle.load_checkpoint(tmp_path / "old_oracle.pt").classes == ["a", "b"]
