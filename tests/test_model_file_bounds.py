"""Model files from someone else: loaded or refused in one line, never a hang or a memory blow-up
(sizes checked against storage, compressed or encrypted parts refused, settings range-checked)."""

from __future__ import annotations

import struct
import zipfile

import numpy as np
import pytest
import torch

from bcfeat.crosslab.adaptation import CrossLabClassifier
from bcfeat.crosslab.cell_features import feature_names
from bcfeat.crosslab.model import CrossLabModel, CrossLabConfig, load_model, save_model
from bcfeat.model_files import ModelFileError


@pytest.fixture
def model_file(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, len(feature_names())))
    y = np.repeat(["lymphocyte", "neutrophil"], 20)
    clf = CrossLabClassifier(C=0.5).fit(X, y)
    return save_model(tmp_path / "m.pt", CrossLabModel(CrossLabConfig(mask_source="stain"), None, clf))


def _edit(path, out, change):
    payload = torch.load(path, weights_only=True)
    change(payload)
    torch.save(payload, out)
    return out


@pytest.mark.parametrize("change, message", [
    (lambda p: p["classifier"]["params"].update(balance_rounds=10**12), "balance_rounds"),
    (lambda p: p["classifier"]["params"].update(C=float("nan")), "C must"),
    (lambda p: p["config"]["crop"].update(size=40000), "CropConfig.size"),
    (lambda p: p["classifier"].update(train_z=torch.zeros(1).expand(40000, 40000)), "claims more values"),
])
def test_settings_and_tensor_sizes_from_a_file_are_checked(model_file, tmp_path, change, message):
    bad = _edit(model_file, tmp_path / "bad.pt", change)
    with pytest.raises(ModelFileError, match=message):
        load_model(bad)


def test_compressed_or_encrypted_parts_are_refused_by_name(model_file, tmp_path):
    with zipfile.ZipFile(model_file) as src, zipfile.ZipFile(tmp_path / "zipped.pt", "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info.filename))
    with pytest.raises(ModelFileError, match="zipped.pt.*compressed"):
        load_model(tmp_path / "zipped.pt")
    data = bytearray(model_file.read_bytes())
    central = data.find(b"PK\x01\x02")  # first central-directory entry: set its "encrypted" flag
    flags = struct.unpack_from("<H", data, central + 8)[0]
    struct.pack_into("<H", data, central + 8, flags | 0x1)
    (tmp_path / "locked.pt").write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="locked.pt.*encrypted"):
        load_model(tmp_path / "locked.pt")
    data = bytearray(model_file.read_bytes())
    end = data.rfind(b"PK\x05\x06")  # end of central directory: flip its disk number
    struct.pack_into("<H", data, end + 4, 7)
    (tmp_path / "disk.pt").write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="disk.pt"):
        load_model(tmp_path / "disk.pt")


def test_a_file_with_code_is_refused_naming_the_global_without_torchs_advice(tmp_path):
    import pathlib

    class Evil:
        def __reduce__(self):
            return (pathlib.Path.touch, (tmp_path / "pwned",))

    torch.save({"format": "bcfeat.crosslab/1", "config": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(ModelFileError) as info:
        load_model(tmp_path / "evil.pt")
    assert "refused: getattr" in str(info.value)
    assert "can still be loaded" not in str(info.value) and "trust" not in str(info.value)
    assert not (tmp_path / "pwned").exists()
