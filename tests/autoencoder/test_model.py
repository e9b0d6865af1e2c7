"""Contract tests of bcfeat.autoencoder.model: sub-network shapes, config checks, checkpoints."""

from __future__ import annotations

import doctest
import json
from dataclasses import asdict

import pytest
import torch

import bcfeat.autoencoder.model as model_mod
from bcfeat.autoencoder.model import AEConfig, AEOutput, CrossDomainAutoencoder, load_checkpoint, save_checkpoint


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # the CPU is shared


@torch.no_grad()
def test_paper_shapes_per_subnetwork():
    cfg = AEConfig.paper()
    assert cfg == AEConfig()
    torch.manual_seed(0)
    m = CrossDomainAutoencoder(cfg)
    x = torch.randn(2, 256, 14, 14)
    z = m.encode(x)
    assert z.shape == (2, 50)
    f = m.decode_features(z)
    assert f.shape == (2, 256, 14, 14)
    img = m.decode_image(f[:1])
    assert img.shape == (1, 3, 128, 128)
    # The released sizes, layer by layer.
    assert cfg.encoder_sizes() == [14, 12, 5, 3, 2, 1]
    assert cfg.feature_decoder_sizes() == [1, 5, 12, 14]
    assert cfg.image_decoder_sizes() == [14, 31, 63, 127, 128]


@pytest.mark.parametrize("preset, c, s", [(AEConfig.cpu, 64, 64), (AEConfig.tiny, 16, 32)])
@torch.no_grad()
def test_small_presets_forward(preset, c, s):
    cfg = preset()
    torch.manual_seed(0)
    m = CrossDomainAutoencoder(cfg)
    out = m(torch.randn(3, c, 14, 14) * 3)
    assert isinstance(out, AEOutput)
    assert out.latent.shape == (3, 50) and out.features.shape == (3, c, 14, 14) and out.image.shape == (3, 3, s, s)
    # tanh latent / tanh features / sigmoid image
    assert out.latent.abs().max() <= 1 and out.features.abs().max() <= 1
    assert 0 <= out.image.min() and out.image.max() <= 1
    # The image is decoded from the decoded features, not from the input.
    assert torch.equal(m.decode_image(out.features), out.image)


def test_identity_feature_output_is_unbounded():
    cfg = AEConfig.tiny(feature_output="identity")
    torch.manual_seed(0)
    m = CrossDomainAutoencoder(cfg)
    assert isinstance(m.feature_decoder[-1], torch.nn.Identity)
    assert isinstance(CrossDomainAutoencoder(AEConfig.tiny()).feature_decoder[-1], torch.nn.Tanh)


@pytest.mark.parametrize("overrides, message", [
    (dict(encoder_groups=(3, 4, 4, 4, 4)), "do not divide"),
    (dict(encoder_kernels=(3, 3, 3, 2, 1)), "must end at 1x1"),
    (dict(image_size=48), "must end at image_size=48"),
    (dict(feature_decoder_kernels=(5, 4, 4)), "must end at roi_size=14"),
    (dict(encoder_strides=(1, 2, 1, 1)), "expected 5"),
    (dict(feature_output="relu"), "feature_output"),
])
def test_invalid_configs_are_rejected_with_the_reason(overrides, message):
    with pytest.raises(ValueError, match=message):
        AEConfig.tiny(**overrides)


def test_config_from_json_dict_restores_tuples_and_rejects_unknown_keys():
    cfg = AEConfig.cpu()
    back = AEConfig.from_dict(json.loads(json.dumps(asdict(cfg))))
    assert back == cfg and isinstance(back.encoder_widths, tuple)
    with pytest.raises(ValueError, match="unknown AEConfig keys.*'dropout'"):
        AEConfig.from_dict({**asdict(cfg), "dropout": 0.1})


def test_wrong_input_shape_names_the_expected_shape():
    m = CrossDomainAutoencoder(AEConfig.tiny())
    with pytest.raises(ValueError, match=r"\(n, 16, 14, 14\).*\(2, 8, 14, 14\)"):
        m(torch.zeros(2, 8, 14, 14))


def test_checkpoint_round_trip(tmp_path):
    cfg = AEConfig.tiny(latent_dim=12)
    torch.manual_seed(1)
    m = CrossDomainAutoencoder(cfg).eval()
    path = save_checkpoint(tmp_path / "sub" / "ae.pt", m, cfg, {"epoch": 3, "note": "x"})
    m2, cfg2, extra = load_checkpoint(path)
    assert cfg2 == cfg and extra == {"epoch": 3, "note": "x"}
    payload = torch.load(path, weights_only=True)
    assert payload["config"] == asdict(cfg) and set(payload["state_dict"]) == set(m.state_dict())
    x = torch.randn(4, 16, 14, 14)
    with torch.no_grad():
        a, b = m(x), m2(x)
    for u, v in zip(a, b):
        assert torch.equal(u, v)
    assert [p.name for p in tmp_path.joinpath("sub").iterdir()] == ["ae.pt"]  # no temporary left behind


def test_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    cfg = AEConfig.tiny()
    m = CrossDomainAutoencoder(cfg)
    path = save_checkpoint(tmp_path / "ae.pt", m, cfg, {"epoch": 1})
    before = path.read_bytes()

    def broken_save(obj, fh):
        fh.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(model_mod.torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, m, cfg, {"epoch": 2})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert load_checkpoint(path)[2]["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["ae.pt"]


def test_checkpoint_errors_name_the_file(tmp_path):
    cfg = AEConfig.tiny()
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_checkpoint(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pt"):
        load_checkpoint(junk)
    other = tmp_path / "other.pt"
    torch.save({"state_dict": {}}, other)
    with pytest.raises(ValueError, match="other.pt: is not a bcfeat autoencoder file"):
        load_checkpoint(other)
    with pytest.raises(ValueError, match="reserved"):
        save_checkpoint(tmp_path / "x.pt", CrossDomainAutoencoder(cfg), cfg, {"config": {}})


def test_docstring_examples():
    assert doctest.testmod(model_mod).failed == 0
