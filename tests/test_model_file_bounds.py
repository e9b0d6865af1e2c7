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


def _same(a, b):
    """A payload read with torch and one read as numpy arrays hold the same values."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, np.ndarray) and a.dtype == torch.from_numpy(b).dtype and np.array_equal(a.numpy(), b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def test_a_crosslab_file_reads_without_torch_as_the_same_values(model_file, tmp_path):
    """The classify path reads a stain-mask model file with numpy arrays in place of tensors: the same
    values, dtypes and probabilities as torch's reader, and PyTorch is never imported for it."""
    import subprocess
    import sys

    from bcfeat.model_files import read_payload, read_payload_arrays

    # strided and offset views, the dtypes a file may hold, and a state_dict with its _metadata
    state = torch.nn.Linear(3, 2).state_dict()
    extra = {"format": "bcfeat.crosslab/1", "view": torch.arange(24, dtype=torch.float32).reshape(4, 6)[1:, ::2],
             "ints": torch.arange(5), "flags": torch.tensor([True, False]), "half": torch.ones(3, dtype=torch.float16),
             "empty": torch.zeros(0, 4), "scalar": torch.tensor(2.5, dtype=torch.float64), "state": state}
    torch.save(extra, tmp_path / "extra.pt")
    arrays = read_payload_arrays(tmp_path / "extra.pt")
    assert _same(read_payload(tmp_path / "extra.pt"), arrays)
    assert arrays["state"]._metadata == state._metadata and arrays["view"].flags.writeable
    assert _same(read_payload(model_file), read_payload_arrays(model_file))
    # a file naming an object this reader does not build goes to torch's reader (torch.Size here)
    torch.save({"format": "bcfeat.crosslab/1", "shape": torch.Size([2, 3])}, tmp_path / "size.pt")
    assert read_payload_arrays(tmp_path / "size.pt")["shape"] == torch.Size([2, 3])
    code = ("import sys, numpy as np\n"
            "from bcfeat.crosslab.model import load_model\n"
            f"m = load_model({str(model_file)!r})\n"
            "p = m.classifier.predict_proba(np.random.default_rng(0).normal(size=(30, len(m.feature_names))))\n"
            "from bcfeat.extractors import open_extractor\n"
            f"assert open_extractor({str(model_file)!r}).kind == 'crosslab'\n"
            "print('torch' in sys.modules, repr(float((p[:, 0] * np.arange(30)).sum())))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    expected = (load_model(model_file).classifier.predict_proba(
        np.random.default_rng(0).normal(size=(30, len(feature_names()))))[:, 0] * np.arange(30)).sum()
    assert out[0] == "False" and float(out[1]) == pytest.approx(float(expected), rel=1e-12)


def test_a_crafted_view_or_object_is_refused_by_the_torch_free_reader(model_file, tmp_path):
    from bcfeat.model_files import read_payload_arrays

    wide = _edit(model_file, tmp_path / "wide.pt", lambda p: p.update(x=torch.zeros(1).expand(40000, 40000)))
    with pytest.raises(ModelFileError, match="wide.pt: is damaged .*claims more values"):
        read_payload_arrays(wide)
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (marker.touch, ())

    torch.save({"format": "bcfeat.crosslab/1", "config": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(ModelFileError, match="evil.pt: holds Python objects other than weights"):
        read_payload_arrays(tmp_path / "evil.pt")
    assert not marker.exists()


def test_a_crosslab_file_with_a_detector_loads_its_weights_through_the_arrays(tmp_path):
    from bcfeat.detection.architecture import build_detector
    from bcfeat.detection.config import DetectorConfig

    torch.manual_seed(0)
    detector = build_detector(DetectorConfig.tiny()).eval()
    path = save_model(tmp_path / "d.pt", CrossLabModel(CrossLabConfig(mask_source="detector"), detector))
    loaded = load_model(path).detector
    original, again = detector.state_dict(), loaded.state_dict()
    assert original.keys() == again.keys()
    assert all(torch.equal(original[k], again[k]) and original[k].dtype == again[k].dtype for k in original)
    image = torch.rand(3, 64, 64)
    with torch.inference_mode():
        a, b = detector([image])[0], loaded([image])[0]
    assert torch.equal(a["boxes"], b["boxes"])
