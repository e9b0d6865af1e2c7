"""The supervised GroupNorm CNN with lab-shift augmentation (the ablation's objective lever)."""

import numpy as np
import pytest
import torch

from bcfeat.crosslab.supervised_encoder import (LabShiftAugmentation, SupervisedEncoderConfig, predict_crops,
                                                strong_lab_shift, train_supervised_encoder)


def _crops(n_per_class: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Class "round": one dark central disk; class "lobed": three small separate dark disks."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:40, :40]
    crops, labels = [], []
    for label in ("round", "lobed"):
        for _ in range(n_per_class):
            img = np.full((40, 40, 3), 235.0) + rng.normal(0, 4, (40, 40, 3))
            if label == "round":
                centres, radius = [(20 + rng.integers(-2, 3), 20 + rng.integers(-2, 3))], 11
            else:
                a = rng.uniform(0, 2 * np.pi)
                centres = [(20 + 10 * np.cos(a + k * 2.1), 20 + 10 * np.sin(a + k * 2.1)) for k in range(3)]
                radius = 5
            for cy, cx in centres:
                img[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2] = (90, 40, 120)
            crops.append(np.clip(img, 0, 255).astype(np.uint8))
            labels.append(label)
    return np.stack(crops), np.array(labels)


def test_strong_lab_shift_keeps_shape_and_range_and_is_seeded():
    x = torch.rand(6, 3, 32, 32)
    aug = LabShiftAugmentation()
    a = strong_lab_shift(x.clone(), aug, torch.Generator().manual_seed(3))
    b = strong_lab_shift(x.clone(), aug, torch.Generator().manual_seed(3))
    c = strong_lab_shift(x.clone(), aug, torch.Generator().manual_seed(4))
    assert a.shape == x.shape and float(a.min()) >= 0 and float(a.max()) <= 1
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_strong_lab_shift_changes_colour_but_grey_cells_lose_it():
    x = torch.zeros(64, 3, 16, 16)
    x[:, 0], x[:, 1], x[:, 2] = 0.8, 0.5, 0.7   # one flat pinkish colour
    out = strong_lab_shift(x, LabShiftAugmentation(grayscale_probability=0.5, noise_max=0.0),
                           torch.Generator().manual_seed(0))
    means = out.mean(dim=(2, 3))
    grey = (means.max(1).values - means.min(1).values) < 1e-5
    assert 10 < int(grey.sum()) < 54                    # about half turned grey
    colour = means[~grey]
    assert float(colour.std(0).min()) > 0.02            # the others vary in colour from cell to cell


def test_training_learns_shape_under_the_shifts_and_predicts_probabilities():
    crops, labels = _crops(48)
    cfg = SupervisedEncoderConfig(image_size=24, width=8, epochs=12, batch_size=16, lr=5e-3, seed=0)
    net, classes, history = train_supervised_encoder(crops, labels, cfg)
    assert list(classes) == ["lobed", "round"] and len(history) == 12
    assert history[-1]["loss"] < history[0]["loss"]
    test, truth = _crops(20, seed=1)
    proba, emb = predict_crops(net, test, cfg.image_size)
    assert proba.shape == (40, 2) and emb.shape == (40, 4 * cfg.width)
    np.testing.assert_allclose(proba.sum(1), 1, atol=1e-5)
    assert (classes[proba.argmax(1)] == truth).mean() >= 0.9


@pytest.mark.parametrize("bad, match", [
    ({"epochs": 0}, "epochs"), ({"image_size": 8}, "image_size"), ({"dropout": 1.0}, "dropout"),
    ({"width": 2.5}, "width"),
])
def test_config_rejects_bad_values(bad, match):
    with pytest.raises(ValueError, match=match):
        SupervisedEncoderConfig(**bad)


def test_augmentation_rejects_bad_values():
    with pytest.raises(ValueError, match="blur_probability"):
        LabShiftAugmentation(blur_probability=1.5)
    with pytest.raises(ValueError, match="resolution_min"):
        LabShiftAugmentation(resolution_min=0)


def test_training_refuses_one_class_or_too_few_crops():
    crops, labels = _crops(8)
    with pytest.raises(ValueError, match="two classes"):
        train_supervised_encoder(crops, np.array(["a"] * len(crops)), SupervisedEncoderConfig(image_size=24, batch_size=4))
    with pytest.raises(ValueError, match="fewer than one batch"):
        train_supervised_encoder(crops[6:9], labels[6:9], SupervisedEncoderConfig(image_size=24, batch_size=4))
    with pytest.raises(ValueError, match="labels"):
        train_supervised_encoder(crops, labels[:-1], SupervisedEncoderConfig(image_size=24, batch_size=4))


def test_a_non_finite_loss_stops_training_and_says_where(monkeypatch):
    from bcfeat.crosslab import supervised_encoder
    from bcfeat.training.loop import NonFiniteLossError

    monkeypatch.setattr(supervised_encoder, "strong_lab_shift", lambda x, aug, gen: torch.full_like(x, float("nan")))
    crops, labels = _crops(8)
    cfg = SupervisedEncoderConfig(image_size=24, width=4, epochs=1, batch_size=4)
    with pytest.raises(NonFiniteLossError, match=r"supervised encoder, epoch 1/1, batch 1/4"):
        train_supervised_encoder(crops, labels, cfg)
