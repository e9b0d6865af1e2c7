"""Tests of bcfeat.autoencoder.training: batching, gradients, overfitting, resumption, guards."""

from __future__ import annotations

import dataclasses
import doctest

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

import bcfeat.autoencoder.training as train_mod
from bcfeat.autoencoder.losses import LossWeights, autoencoder_loss
from bcfeat.autoencoder.model import AEConfig, CrossDomainAutoencoder, load_checkpoint
from bcfeat.autoencoder.training import NonFiniteLossError, AutoencoderTrainingConfig, fit_autoencoder, mixed_domain_batches
from bcfeat.training.device import resolve_device

LOSS_COLUMNS = ["total", "image", "features", "alignment", "alignment_pairs", "alignment_skipped", "batches", "samples"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # the CPU is shared


def toy_data(n_per_domain=(12, 8, 4), seed=0, cfg: AEConfig | None = None):
    """Smooth instance features in [-1, 1], smooth crops in [0, 1], domain ids 0, 1, 2, ..."""
    cfg = cfg or AEConfig.tiny()
    g = torch.Generator().manual_seed(seed)
    n = sum(n_per_domain)
    dom = torch.cat([torch.full((k,), d) for d, k in enumerate(n_per_domain)])
    shift = dom.float()[:, None, None, None] * 0.3  # domains differ a little
    x = torch.tanh(2 * F.interpolate(torch.randn(n, cfg.in_channels, 4, 4, generator=g), size=cfg.roi_size,
                                     mode="bilinear") + shift)
    s = cfg.image_size
    crops = F.avg_pool2d(F.interpolate(torch.rand(n, 3, 8, 8, generator=g), size=s, mode="bilinear"), 3, 1, 1)
    return x, crops, dom


def cfg_(**kw) -> AutoencoderTrainingConfig:
    base = dict(epochs=2, batch_size=8, progress=False, num_threads=1, device="cpu")
    base.update(kw)
    return AutoencoderTrainingConfig(**base)


# --------------------------------------------------------------- batching
def test_mixed_domain_batches_cover_every_domain_and_every_sample():
    domain = np.array([0] * 40 + [1] * 12 + [2] * 3)
    index = np.arange(100, 155)
    batches = mixed_domain_batches(index, domain, batch_size=10, seed=0, epoch=0)
    assert len(batches) == 6
    by_domain = {d: index[domain == d] for d in (0, 1, 2)}
    for b in batches:
        for d in (0, 1, 2):
            assert np.isin(b, by_domain[d]).sum() >= 2
    used = np.concatenate(batches)
    # Domains big enough are split exactly once; the 3-sample domain is cycled.
    for d in (0, 1):
        assert sorted(used[np.isin(used, by_domain[d])]) == sorted(by_domain[d])
    assert np.isin(used, by_domain[2]).sum() == 12
    again = mixed_domain_batches(index, domain, batch_size=10, seed=0, epoch=0)
    assert all(np.array_equal(a, b) for a, b in zip(batches, again))
    other = mixed_domain_batches(index, domain, batch_size=10, seed=0, epoch=1)
    assert not all(np.array_equal(a, b) for a, b in zip(batches, other))


def test_single_domain_batches_are_balanced_shuffles():
    batches = mixed_domain_batches(np.arange(21), np.zeros(21, int), batch_size=8, seed=1, epoch=0)
    assert [len(b) for b in batches] == [7, 7, 7]
    assert sorted(np.concatenate(batches)) == list(range(21))


# --------------------------------------------------------- learning signal
@pytest.mark.parametrize("kind", ["moment", "mmd"])
def test_gradients_reach_every_parameter(kind):
    cfg = AEConfig.tiny()
    torch.manual_seed(0)
    model = CrossDomainAutoencoder(cfg)
    x, crops, dom = toy_data((6, 6))
    out = model(x)
    loss = autoencoder_loss(out.latent, out.features, out.image, x, crops, dom, alignment=kind)
    assert float(loss.terms["alignment"]) > 0
    loss.total.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_a_tiny_batch_can_be_overfit(tmp_path):
    x, crops, dom = toy_data((4, 4))
    cfg = cfg_(epochs=300, batch_size=8, lr=3e-3, checkpoint_every=1000)
    _, hist = fit_autoencoder((x, crops, dom), AEConfig.tiny(), cfg, tmp_path / "ae.pt")
    first, last = hist["total"].iloc[0], hist["total"].iloc[-5:].mean()
    assert last < first / 8, (first, last)
    assert hist["image"].iloc[-1] < 0.1


# ------------------------------------------------ checkpoints and resumption
def test_fit_writes_a_loadable_checkpoint_with_configs_and_history(tmp_path):
    data = toy_data()
    cfg = cfg_(epochs=2, alignment="mmd")
    model, hist = fit_autoencoder(data, AEConfig.tiny(), cfg, tmp_path / "ae.pt")
    assert list(hist["epoch"]) == [1, 2] and hist["alignment_pairs"].gt(0).all()
    loaded, ae_cfg, extra = load_checkpoint(tmp_path / "ae.pt")
    assert ae_cfg == AEConfig.tiny()
    assert AutoencoderTrainingConfig.from_dict(extra["train_config"]) == cfg
    assert extra["epoch"] == 2 and extra["scaler"] is None  # no mixed precision on the CPU
    assert set(extra) >= {"optimizer", "rng", "history", "data"}
    assert extra["data"] == {"n_samples": 24, "domains": [[0, 12], [1, 8], [2, 4]]}
    pd.testing.assert_frame_equal(pd.DataFrame(extra["history"])[LOSS_COLUMNS], hist[LOSS_COLUMNS])
    with torch.no_grad():
        for a, b in zip(model(data[0]), loaded(data[0])):
            assert torch.equal(a, b)


def _assert_same_run(a, b):
    (ma, ha), (mb, hb) = a, b
    for (k, va), vb in zip(ma.state_dict().items(), mb.state_dict().values()):
        assert torch.equal(va, vb), k
    pd.testing.assert_frame_equal(ha[LOSS_COLUMNS], hb[LOSS_COLUMNS], check_exact=True)


def test_resume_after_two_epochs_equals_four_straight(tmp_path):
    data = toy_data()
    straight = fit_autoencoder(data, AEConfig.tiny(), cfg_(epochs=4), tmp_path / "straight.pt")
    fit_autoencoder(data, AEConfig.tiny(), cfg_(epochs=2), tmp_path / "resumed.pt")
    resumed = fit_autoencoder(data, AEConfig.tiny(), cfg_(epochs=4), tmp_path / "resumed.pt", resume=True)
    assert list(resumed[1]["epoch"]) == [1, 2, 3, 4]
    _assert_same_run(straight, resumed)
    # Same seed twice: the same run; another seed: another run.
    _assert_same_run(straight, fit_autoencoder(data, AEConfig.tiny(), cfg_(epochs=4), tmp_path / "again.pt"))
    other, _ = fit_autoencoder(data, AEConfig.tiny(), cfg_(epochs=1, seed=1), tmp_path / "other.pt")
    assert not torch.equal(other.encoder[0].weight, straight[0].encoder[0].weight)


def test_resume_after_an_interruption_mid_epoch(tmp_path, monkeypatch):
    data = toy_data()
    straight = fit_autoencoder(data, AEConfig.tiny(), cfg_(epochs=4), tmp_path / "straight.pt")
    calls = {"n": 0}

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2 * 3 + 2:  # 3 batches per epoch: second batch of epoch 3
            raise KeyboardInterrupt
        return autoencoder_loss(*args, **kwargs)

    monkeypatch.setattr(train_mod, "autoencoder_loss", interrupted)
    with pytest.raises(KeyboardInterrupt):
        fit_autoencoder(data, AEConfig.tiny(), cfg_(epochs=4), tmp_path / "ae.pt")
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "ae.pt")[2]["epoch"] == 2
    resumed = fit_autoencoder(data, AEConfig.tiny(), cfg_(epochs=4), tmp_path / "ae.pt")
    _assert_same_run(straight, resumed)
    # Finished runs resume to themselves without training.
    again = fit_autoencoder(data, AEConfig.tiny(), cfg_(epochs=4), tmp_path / "ae.pt")
    _assert_same_run(straight, again)
    with pytest.raises(ValueError, match="already trained 4 epochs, more than the 3 requested"):
        fit_autoencoder(data, AEConfig.tiny(), cfg_(epochs=3), tmp_path / "ae.pt")


def test_resume_refuses_a_changed_config_or_data(tmp_path):
    data = toy_data()
    fit_autoencoder(data, AEConfig.tiny(), cfg_(epochs=1), tmp_path / "ae.pt")
    with pytest.raises(ValueError, match=r"lr: 0.001 -> 0.01"):
        fit_autoencoder(data, AEConfig.tiny(), cfg_(epochs=2, lr=1e-2), tmp_path / "ae.pt")
    with pytest.raises(ValueError, match=r"cannot resume .*ae.pt: its AEConfig differs \(latent_dim: 50 -> 20\)"):
        fit_autoencoder(data, AEConfig.tiny(latent_dim=20), cfg_(epochs=2), tmp_path / "ae.pt")
    with pytest.raises(ValueError, match="other data"):
        fit_autoencoder(toy_data((12, 8, 6)), AEConfig.tiny(), cfg_(epochs=2), tmp_path / "ae.pt")
    # resume=False starts over.
    _, hist = fit_autoencoder(data, AEConfig.tiny(), cfg_(epochs=1, lr=1e-2), tmp_path / "ae.pt", resume=False)
    assert list(hist["epoch"]) == [1]


# ------------------------------------------------------------------- guards
def test_nan_in_the_data_stops_before_any_checkpoint(tmp_path):
    x, crops, dom = toy_data()
    x[5, 0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteLossError, match=r"epoch 1/2, batch \d/3: .*features=nan.*no checkpoint was written"):
        fit_autoencoder((x, crops, dom), AEConfig.tiny(), cfg_(), tmp_path / "ae.pt")
    assert not (tmp_path / "ae.pt").exists()


def test_nan_later_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    data = toy_data()
    path = tmp_path / "ae.pt"
    fit_autoencoder(data, AEConfig.tiny(), cfg_(epochs=2), path)
    good = path.read_bytes()

    def nan_image(*args, **kwargs):
        out = autoencoder_loss(*args, **kwargs)
        out.terms["image"] = out.terms["image"] * float("nan")
        out.total = out.total * float("nan")
        return out

    monkeypatch.setattr(train_mod, "autoencoder_loss", nan_image)
    with pytest.raises(NonFiniteLossError, match=r"epoch 3/4, batch 1/3: total=nan, image=nan;.*epoch 2\) is kept"):
        fit_autoencoder(data, AEConfig.tiny(), cfg_(epochs=4), path)
    assert path.read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ae.pt"]


# ----------------------------------------------------------------- settings
def test_source_only_uses_only_source_samples_and_no_alignment(tmp_path):
    data = toy_data()
    _, hist = fit_autoencoder(data, AEConfig.tiny(), cfg_(setting="source_only", source_domain=1), tmp_path / "ae.pt")
    assert hist["samples"].eq(8).all()
    assert hist["alignment"].eq(0).all() and hist["alignment_pairs"].eq(0).all()
    assert load_checkpoint(tmp_path / "ae.pt")[2]["data"] == {"n_samples": 8, "domains": [[1, 8]]}


def test_a_domain_with_a_single_sample_is_handled(tmp_path):
    with pytest.warns(UserWarning, match=r"domains \[2\] have a single sample"):
        _, hist = fit_autoencoder(toy_data((10, 5, 1)), AEConfig.tiny(), cfg_(), tmp_path / "ae.pt")
    assert np.isfinite(hist[["total", "alignment"]].to_numpy()).all()
    assert hist["alignment_skipped"].eq(2).all()  # domain 2 in both batches of each epoch
    assert hist["alignment_pairs"].eq(2).all()  # domain 1 aligned to 0 in both


def test_missing_source_domain_and_bad_shapes_are_clear_errors(tmp_path):
    data = toy_data()
    with pytest.raises(ValueError, match=r"source_domain 7 has no samples; domains present are \[0, 1, 2\]"):
        fit_autoencoder(data, AEConfig.tiny(), cfg_(source_domain=7), tmp_path / "a.pt")
    with pytest.raises(ValueError, match=r"crop has shape \(3, 32, 32\), the AEConfig expects \(3, 64, 64\)"):
        big_image = AEConfig.tiny(image_size=64, image_decoder_kernels=(4, 4, 3), image_decoder_widths=(8, 8, 8),
                                  image_decoder_strides=(2, 2, 1))
        fit_autoencoder(data, big_image, cfg_(), tmp_path / "b.pt")
    with pytest.raises(ValueError, match="setting must be one of"):
        AutoencoderTrainingConfig(setting="semi")


class DictDataset(torch.utils.data.Dataset):
    """A Dataset yielding mappings, without a domain attribute."""

    def __init__(self, x, crops, dom):
        self.x, self.crops, self.dom = x, crops, dom

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"features": self.x[i], "crop": self.crops[i], "domain": self.dom[i], "key": f"cell{i}"}


def test_a_dataset_of_mappings_trains_like_tensors(tmp_path, capsys):
    data = toy_data()
    tensors = fit_autoencoder(data, AEConfig.tiny(), cfg_(epochs=1), tmp_path / "t.pt")
    mapped = fit_autoencoder(DictDataset(*data), AEConfig.tiny(), cfg_(epochs=1, progress=True), tmp_path / "d.pt")
    _assert_same_run(tensors, mapped)
    err = capsys.readouterr().err
    assert "training: 100%" in err and "image=" in err and "alignment=" in err  # the progress bar shows the terms


def test_config_round_trip_and_device():
    cfg = AutoencoderTrainingConfig(weights=LossWeights(alignment=1.0), alignment="mmd")
    assert AutoencoderTrainingConfig.from_dict(dataclasses.asdict(cfg)) == cfg
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")


def test_docstring_examples():
    assert doctest.testmod(train_mod).failed == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_mixed_precision_training_is_finite_and_loads_on_the_cpu(tmp_path):
    data = toy_data((40, 24, 16))
    model, hist = fit_autoencoder(data, AEConfig.tiny(), cfg_(epochs=3, device="cuda", amp=True), tmp_path / "g.pt")
    assert next(model.parameters()).device.type == "cuda"
    assert np.isfinite(hist["total"]).all() and hist["total"].iloc[-1] < hist["total"].iloc[0]
    loaded, _, extra = load_checkpoint(tmp_path / "g.pt")
    assert extra["scaler"]  # the GradScaler state travels with the checkpoint
    assert all(p.device.type == "cpu" for p in loaded.parameters())
    with torch.no_grad():
        on_gpu = model.encode(data[0].cuda()).float().cpu()
        on_cpu = loaded.encode(data[0])
    assert torch.allclose(on_gpu, on_cpu, atol=1e-3)  # fp32 inference on both; only kernels differ
