"""The supervised oracle CNN: builds, learns a toy problem, checkpoints and resumes exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from torch import nn

from bcfeat.evaluation.benchmark import domain_matrix
from bcfeat.evaluation.oracle import OracleClassifier, load_checkpoint, prepare_images, train_oracle
from bcfeat.evaluation.oracle_model import OracleConfig, build_oracle, oracle_config

TINY = dict(arch="narrow_resnet", width=8, image_size=24, batch_size=16, lr=5e-3, epochs=4, num_threads=1,
            device="cpu")


def toy_images(n, seed):
    """Class "red": a reddish blob; class "blue": a bluish blob; random size and position, noisy."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(["red", "blue"] * (n // 2))
    images = []
    for lab in labels:
        size = int(rng.integers(28, 48))
        img = rng.normal(220, 10, (size, size, 3))
        yy, xx = np.mgrid[:size, :size] / size
        c = 0.5 + rng.uniform(-0.1, 0.1, 2)
        blob = (yy - c[0]) ** 2 + (xx - c[1]) ** 2 < rng.uniform(0.15, 0.3) ** 2
        img[blob] = (170, 60, 90) if lab == "red" else (70, 60, 170)
        images.append(np.clip(img, 0, 255).astype(np.uint8))
    return images, labels


@pytest.fixture(scope="module")
def toy():
    return toy_images(64, 0), toy_images(40, 1)


def count(model, kind):
    return sum(isinstance(m, kind) for m in model.modules())


@pytest.mark.parametrize("arch", ["narrow_resnet", "resnet18", "resnext50_32x4d"])
def test_batch_and_group_norm_builds(arch):
    bn = build_oracle(OracleConfig(arch=arch, norm="batch", width=8), 5)
    gn = build_oracle(OracleConfig(arch=arch, norm="group", width=8), 5)
    assert count(bn, nn.BatchNorm2d) > 0 and count(bn, nn.GroupNorm) == 0
    assert count(gn, nn.GroupNorm) == count(bn, nn.BatchNorm2d) and count(gn, nn.BatchNorm2d) == 0
    if arch == "narrow_resnet":
        x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
        assert gn(x).shape == (2, 5)


def test_config_validation_and_profiles():
    with pytest.raises(ValueError, match="arch"):
        OracleConfig(arch="vgg")
    with pytest.raises(ValueError, match="norm"):
        OracleConfig(norm="layer")
    assert oracle_config("cpu").arch == "narrow_resnet" and oracle_config("gpu").arch == "resnext50_32x4d"
    assert oracle_config("gpu").image_size == 224
    with pytest.raises(ValueError, match="profile"):
        oracle_config("tpu")


def test_prepare_images_makes_a_uint8_tensor(toy):
    (images, _), _ = toy
    x = prepare_images(images, 24)
    assert x.shape == (len(images), 3, 24, 24) and x.dtype == torch.uint8
    assert prepare_images(x, 24) is x
    with pytest.raises(ValueError, match="uint8"):
        prepare_images(x.float(), 24)


@pytest.mark.parametrize("norm", ["batch", "group"])
def test_learns_a_toy_problem(toy, norm):
    (train_x, train_y), (test_x, test_y) = toy
    oracle = train_oracle(train_x, train_y, OracleConfig(**TINY, norm=norm))
    assert oracle.classes == ["blue", "red"]
    assert [h["epoch"] for h in oracle.history] == [1, 2, 3, 4]
    proba = oracle.predict_proba(test_x)
    assert proba.shape == (len(test_y), 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
    acc = (np.asarray(oracle.classes)[proba.argmax(1)] == test_y).mean()
    assert acc >= 0.9


def test_checkpoint_round_trip_and_resume_is_exact(toy, tmp_path):
    (train_x, train_y), (test_x, _) = toy
    cfg = OracleConfig(**{**TINY, "epochs": 3})
    straight = train_oracle(train_x, train_y, cfg)

    path = tmp_path / "oracle.pt"
    # Interrupted after epoch 1 (the callback stops it), then resumed to the end.
    first = train_oracle(train_x, train_y, cfg, path, callback=lambda rec: rec["epoch"] == 1)
    assert len(first.history) == 1
    ckpt = torch.load(path, weights_only=True)  # plain data: no code can run
    assert ckpt["epoch"] == 1 and ckpt["config"]["arch"] == "narrow_resnet"
    assert set(ckpt) >= {"config", "state_dict", "classes", "optimizer", "data_fingerprint"}
    resumed = train_oracle(train_x, train_y, cfg, path)
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    for (k, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        torch.testing.assert_close(a, b, msg=k)

    loaded = load_checkpoint(path)
    assert loaded.config == cfg and loaded.classes == ["blue", "red"]
    np.testing.assert_allclose(loaded.predict_proba(test_x), resumed.predict_proba(test_x), rtol=1e-5, atol=1e-6)

    # A complete checkpoint restores without training.
    calls = []
    restored = train_oracle(train_x, train_y, cfg, path, callback=calls.append)
    assert calls == [] and len(restored.history) == 3


def test_resume_refuses_another_config_or_data(toy, tmp_path):
    (train_x, train_y), _ = toy
    cfg = OracleConfig(**{**TINY, "epochs": 1})
    path = tmp_path / "o.pt"
    train_oracle(train_x, train_y, cfg, path)
    with pytest.raises(ValueError, match=r"cannot resume .*o.pt: its OracleConfig differs \(lr: 0.005 -> 0.01\)"):
        train_oracle(train_x, train_y, OracleConfig(**{**TINY, "epochs": 1, "lr": 1e-2}), path)
    with pytest.raises(ValueError, match=r"cannot resume .*o.pt: it was trained on other data \(data_fingerprint: "):
        train_oracle(train_x[::-1], train_y, cfg, path)
    with pytest.raises(ValueError, match=r"other data \(classes: \['blue', 'red'\] -> \['blue', 'green', 'red'\]"):
        train_oracle(train_x, train_y, cfg, path, classes=["blue", "green", "red"])
    # resume=False starts over and overwrites.
    again = train_oracle(train_x, train_y, OracleConfig(**{**TINY, "epochs": 1, "seed": 5}), path, resume=False)
    assert load_checkpoint(path).config.seed == 5 and len(again.history) == 1
    with pytest.raises(ValueError, match="other.pt: is not a bcfeat oracle file"):
        torch.save({"state_dict": {}}, tmp_path / "other.pt")
        load_checkpoint(tmp_path / "other.pt")


def test_classifier_checkpoint_per_seed(toy, tmp_path):
    (train_x, train_y), _ = toy
    cfg = OracleConfig(**{**TINY, "epochs": 1})
    for seed in (3, 4):
        OracleClassifier(cfg, random_state=seed, checkpoint_path=tmp_path / "o_{seed}.pt").fit(train_x, train_y)
    assert sorted(p.name for p in tmp_path.glob("*.pt")) == ["o_3.pt", "o_4.pt"]
    assert load_checkpoint(tmp_path / "o_4.pt").config.seed == 4


def test_sklearn_classifier_and_domain_matrix(toy):
    (train_x, train_y), (test_x, test_y) = toy
    clf = OracleClassifier(config=OracleConfig(**TINY), random_state=0)
    with pytest.raises(NotFittedError):
        clf.predict(test_x)
    c2 = clone(clf)
    assert c2.get_params()["config"] == clf.config and c2.random_state == 0
    clf.fit(train_x, train_y)
    assert list(clf.classes_) == ["blue", "red"] and clf.config_.seed == 0
    assert clf.predict_proba(test_x).shape == (len(test_y), 2)
    assert clf.score(test_x, test_y) >= 0.9

    x = np.stack(list(prepare_images(train_x, 24).permute(0, 2, 3, 1).numpy()))  # pre-resized once
    domain = np.asarray(["a", "b"] * 32)
    df = domain_matrix(x, train_y, domain, make_classifier=lambda s: OracleClassifier(OracleConfig(**{**TINY, "epochs": 2}), random_state=s),
                       n_repetitions=1, train_domains=["a"])
    assert len(df) == 2 and set(df.classifier) == {"OracleClassifier"}
