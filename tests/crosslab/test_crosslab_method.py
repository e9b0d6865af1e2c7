"""Adaptation, evaluation protocol, model files and the lab commands of the cross-lab method."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from bcfeat.crosslab import evaluation as ev
from bcfeat.crosslab.adaptation import (CrossLabClassifier, class_balanced_weights, em_class_priors,
                                        site_statistics, standardize)
from bcfeat.crosslab.cell_features import feature_names
from bcfeat.crosslab.model import CrossLabModel, CrossLabConfig, load_model, save_model
from bcfeat.extractors import open_extractor
from bcfeat.model_files import ModelFileError


def _lab(rng, n_per_class, shift, scale, d=6):
    """Two classes separated along every feature; a lab multiplies and shifts everything."""
    y = np.repeat([0, 1], n_per_class)
    X = (y[:, None] * 2.0 + rng.normal(size=(len(y), d))) * scale + shift
    return X, y


def test_site_statistics_weights_and_nans():
    X = np.array([[0.0, 1.0], [2.0, np.nan], [4.0, 3.0]] * 4)
    s = site_statistics(X)
    assert s.centre == pytest.approx([2.0, 2.0])
    Z = standardize(X, s)
    assert np.isfinite(Z).all() and Z[1, 1] == pytest.approx(0.0)
    w = site_statistics(X, np.array([1.0, 0.0, 0.0] * 4))
    assert w.centre[0] == pytest.approx(0.0)
    with pytest.raises(ValueError, match="at least"):
        site_statistics(X[:3])


def test_class_balanced_weights_equalise_classes():
    P = np.eye(3)[[0] * 8 + [1] * 2 + [2] * 1]
    w = class_balanced_weights(P)
    totals = [w[P[:, c] == 1].sum() for c in range(3)]
    assert totals == pytest.approx([1.0, 1.0, 1.0])


def test_em_recovers_a_known_class_mix():
    rng = np.random.default_rng(0)
    y = rng.random(4000) < 0.8  # 80 % class 1 at the target
    x = rng.normal(np.where(y, 1.0, -1.0), 1.0)
    # posteriors of a classifier trained under equal priors: logistic of the log-likelihood ratio 2x
    p1 = 1 / (1 + np.exp(-2 * x))
    _, priors = em_class_priors(np.stack([1 - p1, p1], axis=1), np.array([0.5, 0.5]))
    assert priors[1] == pytest.approx(0.8, abs=0.03)


def test_per_site_standardisation_carries_a_classifier_to_a_shifted_lab():
    rng = np.random.default_rng(1)
    Xs, ys = _lab(rng, 100, 0.0, 1.0)
    Xt, yt = _lab(rng, 100, 7.0, 3.0)
    adapted = CrossLabClassifier(random_state=0).fit(Xs, ys)
    plain = CrossLabClassifier(site_standardize=False, random_state=0).fit(Xs, ys)
    assert (adapted.predict(Xt) == yt).mean() > 0.9
    assert (plain.predict(Xt) == yt).mean() < 0.7


def test_class_balanced_statistics_undo_a_skewed_class_mix():
    rng = np.random.default_rng(2)
    Xs, ys = _lab(rng, 200, 0.0, 1.0)
    yt = np.array([0] * 20 + [1] * 380)  # the target lab is 95 % class 1
    Xt = (yt[:, None] * 2.0 + rng.normal(size=(400, 6))) * 2.0 + 5.0
    from sklearn.metrics import balanced_accuracy_score as bas

    plain = CrossLabClassifier(balance_rounds=0).fit(Xs, ys)
    balanced = CrossLabClassifier(balance_rounds=3).fit(Xs, ys)
    assert bas(yt, balanced.predict(Xt)) > bas(yt, plain.predict(Xt))
    # the mechanism: the plain centre sits near class 1 (its mean is 9, class 0's is 5); the balanced
    # one moves towards the midpoint
    weights = class_balanced_weights(np.eye(2)[balanced.predict(Xt)])
    plain_centre = site_statistics(Xt).centre.mean()
    assert plain_centre == pytest.approx(8.8, abs=0.3)
    assert site_statistics(Xt, weights).centre.mean() < plain_centre - 0.15


def test_crosslab_classifier_refuses_bad_settings_and_shapes():
    X, y = _lab(np.random.default_rng(3), 20, 0.0, 1.0)
    with pytest.raises(ValueError, match="model must be"):
        CrossLabClassifier(model="svm").fit(X, y)
    with pytest.raises(ValueError, match="C must lie in"):
        CrossLabClassifier(C=0).fit(X, y)
    clf = CrossLabClassifier(columns=(0, 2)).fit(X, y)
    with pytest.raises(ValueError, match=r"\(n, 6\)"):
        clf.predict(X[:, :3])
    with pytest.raises(ValueError, match="columns must index"):
        CrossLabClassifier(columns=(0, 9)).fit(X, y)


def test_bootstrap_interval_covers_the_estimate_and_narrows_with_more_cells():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 40)
    p = np.where(rng.random(len(y)) < 0.8, y, (y + 1) % 3)
    lo, hi = ev.bootstrap_interval(y, p, n_boot=300)
    est = ev.score_row(y, p, [0, 1, 2])["balanced_accuracy"]
    assert lo <= est <= hi
    y4, p4 = np.tile(y, 4), np.tile(p, 4)
    lo4, hi4 = ev.bootstrap_interval(y4, p4, n_boot=300)
    assert hi4 - lo4 < hi - lo


def test_few_shot_curve_adds_target_cells_and_tests_on_the_rest():
    rng = np.random.default_rng(4)
    Xs, ys = _lab(rng, 60, 0.0, 1.0)
    Xt, yt = _lab(rng, 30, 0.0, 1.0)
    Xt[:, 0] += np.where(yt == 1, -6.0, 6.0)  # the target lab flips the first feature: labels help
    X = np.vstack([Xs, Xt])
    y = np.concatenate([ys, yt])
    dom = np.array(["s"] * len(ys) + ["t"] * len(yt))
    from sklearn.linear_model import LogisticRegression

    curve = ev.few_shot_curve(X, y, dom, np.flatnonzero(dom == "s"), "t", [0, 1, 10], 3,
                              lambda: LogisticRegression(max_iter=500), seed=0)
    assert set(curve["k"]) == {0, 1, 10} and (curve.groupby("k")["draw"].nunique() == 3).all()
    assert (curve.loc[curve["k"] == 10, "n_test"] == 60 - 20).all()
    means = curve.groupby("k")["balanced_accuracy"].mean()
    assert means[10] > means[0]


def test_the_few_shot_curve_as_corrections_is_what_train_classifier_corrections_teach():
    from bcfeat.crosslab.adaptation import LabelledCall

    source, target, y = _relabelled_lab(np.random.default_rng(2), 40)
    target = target * 3.0 - 2.0  # another lab's offsets and scales
    X, yy = np.vstack([source, target]), np.concatenate([y, y])
    dom = np.array(["s"] * len(y) + ["t"] * len(y))
    make = lambda: CrossLabClassifier(C=1.0, statistics="cbr")  # noqa: E731
    curve = ev.few_shot_curve(X, yy, dom, np.flatnonzero(dom == "s"), "t", [0, 5], 2, make, seed=3,
                              as_corrections=True)
    assert (curve.loc[curve["k"] == 5, "n_added"] == 15).all() and (curve["n_test"] == curve["n_added"].rsub(120)).all()
    # the first draw at k = 5 by hand: the same cells as a LabelledCall of the whole target lab
    rng = np.random.default_rng(3)
    t_rows = np.flatnonzero(dom == "t")
    order = {c: rng.permutation(t_rows[yy[t_rows] == c]) for c in np.unique(y)}
    added = np.concatenate([order[c][:5] for c in np.unique(y)])
    clf = make().fit(source, y, [LabelledCall(target, added - len(y), yy[added])])
    test = np.setdiff1d(t_rows, added)
    from sklearn.metrics import balanced_accuracy_score
    expected = balanced_accuracy_score(yy[test], clf.predict(target)[np.isin(t_rows, test)])
    got = curve[(curve["k"] == 5) & (curve["draw"] == 0)]["balanced_accuracy"].item()
    assert got == pytest.approx(expected)
    assert curve[curve["k"] == 0]["balanced_accuracy"].nunique() == 1  # nothing added: the same classifier


def _stain_model(tmp_path: Path, with_classifier: bool):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, len(feature_names())))
    y = np.repeat(["lymphocyte", "neutrophil"], 20)
    X[y == "neutrophil", 0] += 3
    clf = CrossLabClassifier(C=0.5).fit(X, y) if with_classifier else None
    model = CrossLabModel(CrossLabConfig(mask_source="stain"), None, clf, {"trained_on": "synthetic"})
    return save_model(tmp_path / "m.pt", model), X, clf


def test_site_statistics_of_many_columns_are_each_columns_own_and_standardize_keeps_its_input():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(300, 40)) * rng.uniform(0.1, 5, 40) + rng.normal(size=40)
    X[rng.random(X.shape) < 0.05] = np.nan
    w = rng.uniform(0, 2, 300)
    whole = site_statistics(X, w)
    for j in (0, 15, 16, 39):  # columns on both sides of a block boundary
        alone = site_statistics(X[:, [j]], w)
        np.testing.assert_allclose([whole.centre[j], whole.scale[j], whole.fill[j]],
                                   [alone.centre[0], alone.scale[0], alone.fill[0]], rtol=1e-12)
    before = X.copy()
    Z = standardize(X, whole)
    np.testing.assert_array_equal(X, before)  # the input is not written to
    assert np.isfinite(Z).all() and np.abs(Z).max() <= 10


def test_model_file_round_trip_keeps_predictions(tmp_path):
    path, X, clf = _stain_model(tmp_path, True)
    assert open_extractor(path).kind == "crosslab"
    loaded = load_model(path)
    assert loaded.record == {"trained_on": "synthetic"}
    np.testing.assert_allclose(loaded.classifier.predict_proba(X), clf.predict_proba(X), rtol=1e-6)


def test_model_file_round_trip_of_a_classifier_on_some_columns(tmp_path):
    """The study's deployed setting reads a subset of the features (e.g. no red-cell ruler)."""
    rng = np.random.default_rng(1)
    X = rng.normal(size=(40, len(feature_names())))
    y = np.repeat(["lymphocyte", "neutrophil"], 20)
    X[y == "neutrophil", 0] += 3
    clf = CrossLabClassifier(C=0.5, columns=tuple(range(1, len(feature_names())))).fit(X, y)
    path = save_model(tmp_path / "m.pt", CrossLabModel(CrossLabConfig(mask_source="stain"), None, clf))
    loaded = load_model(path).classifier
    assert loaded.n_features_in_ == len(feature_names())
    np.testing.assert_allclose(loaded.predict_proba(X), clf.predict_proba(X), rtol=1e-6)


def test_model_files_keep_their_segmentation_and_older_files_segment_as_before(tmp_path):
    from bcfeat.detection.pseudo_masks import SegmentationConfig

    assert CrossLabConfig(mask_source="stain").segmentation.resampler == "pillow"
    assert len({CrossLabConfig(mask_source="stain"), CrossLabConfig(mask_source="stain")}) == 1  # frozen, hashable
    path = save_model(tmp_path / "m.pt", CrossLabModel(CrossLabConfig(
        mask_source="stain", segmentation=SegmentationConfig(resampler="skimage", inside_shrink=(1.0, 0.6)))))
    assert load_model(path).config.segmentation == SegmentationConfig(resampler="skimage", inside_shrink=(1.0, 0.6))
    payload = torch.load(path, weights_only=True)
    del payload["config"]["segmentation"]  # a file written before the field
    torch.save(payload, tmp_path / "old.pt")
    assert load_model(tmp_path / "old.pt").config.segmentation == SegmentationConfig()


def test_the_stain_segmentation_settings_reach_the_features_and_the_cache_key():
    from bcfeat.detection.pseudo_masks import SegmentationConfig
    from bcfeat.study.crosslab_measurement import measurement_settings

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:300, :300]
    image = np.full((300, 300, 3), (235, 215, 200), np.float64)
    image[(yy - 150) ** 2 + (xx - 150) ** 2 < 70 ** 2] = (175, 150, 205)
    image[(yy - 150) ** 2 + (xx - 140) ** 2 < 30 ** 2] = (90, 40, 130)
    image = np.clip(image + rng.normal(0, 4, image.shape), 0, 255).astype(np.uint8)
    configs = [CrossLabConfig(mask_source="stain", segmentation=SegmentationConfig(resampler=r))
               for r in ("skimage", "pillow")]
    feats = [CrossLabModel(c).measure([image])[0][0] for c in configs]
    assert not np.array_equal(feats[0], feats[1], equal_nan=True)  # each model measures with its own setting
    np.testing.assert_allclose(feats[0][:2], feats[1][:2], rtol=0.02)  # ... of the same cell
    keys = [measurement_settings(c) for c in configs]
    assert keys[0] != keys[1] and keys[0]["segmentation"]["resampler"] == "skimage"
    detector = [measurement_settings(CrossLabConfig(mask_source="detector", segmentation=SegmentationConfig(resampler=r)))
                for r in ("skimage", "pillow")]
    assert detector[0] == detector[1] and "segmentation" not in detector[0]


def test_model_file_with_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    path = tmp_path / "evil.pt"
    torch.save({"format": "bcfeat.crosslab/1", "config": Evil()}, path)
    with pytest.raises(ModelFileError, match="evil.pt"):
        load_model(path)
    with pytest.raises(ModelFileError, match="evil.pt"):
        open_extractor(path)
    assert not marker.exists()


def test_damaged_or_foreign_model_files_are_refused_by_name(tmp_path):
    path, _, _ = _stain_model(tmp_path, False)
    data = path.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="cut.pt"):
        load_model(tmp_path / "cut.pt")
    torch.save({"format": "bcfeat.oracle/1", "config": {}, "state_dict": {}}, tmp_path / "oracle.pt")
    with pytest.raises(ModelFileError, match="not a bcfeat crosslab file"):
        load_model(tmp_path / "oracle.pt")
    payload = torch.load(path, weights_only=True)
    payload["feature_names"] = payload["feature_names"][:-1]
    torch.save(payload, tmp_path / "old.pt")
    with pytest.raises(ModelFileError, match="other cell features"):
        load_model(tmp_path / "old.pt")
    (tmp_path / "pickle.pt").write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(ModelFileError):
        load_model(tmp_path / "pickle.pt")


def _write_cell(path: Path, nucleus_lobes: int, radius: int, rng) -> None:
    img = np.full((120, 120, 3), (235, 225, 215), np.uint8)
    yy, xx = np.mgrid[:120, :120]
    img[(yy - 60) ** 2 + (xx - 60) ** 2 < radius ** 2] = (200, 170, 210)
    for k in range(nucleus_lobes):
        a = 2 * np.pi * k / max(nucleus_lobes, 1)
        cy, cx = (60 + 0.45 * radius * np.sin(a), 60 + 0.45 * radius * np.cos(a)) if nucleus_lobes > 1 else (60, 60)
        r = radius * (0.25 if nucleus_lobes > 1 else 0.55)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < r ** 2] = (90, 40, 130)
    img = np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path)


def two_class_lab(tmp_path: Path) -> None:
    """``lab/{lymph,neut}/`` (8 labelled cells each) and ``new/`` (8 + 8 unlabelled) of synthetic cells."""
    rng = np.random.default_rng(0)
    for i in range(8):
        _write_cell(tmp_path / "lab" / "lymph" / f"l{i}.png", 1, 22 + i % 3, rng)
        _write_cell(tmp_path / "lab" / "neut" / f"n{i}.png", 3, 34 + i % 3, rng)
        _write_cell(tmp_path / "new" / f"l{i}.png", 1, 22 + i % 3, rng)
        _write_cell(tmp_path / "new" / f"n{i}.png", 3, 34 + i % 3, rng)


def test_train_classifier_and_classify_a_folder_from_the_command_line(tmp_path):
    from bcfeat.runner.cli import main

    two_class_lab(tmp_path)
    (tmp_path / "lab" / "stray.png").write_bytes(b"not in a class folder")
    (tmp_path / "new" / "broken.png").write_bytes(b"not an image")
    base = save_model(tmp_path / "base.pt", CrossLabModel(CrossLabConfig(mask_source="stain")))
    clf_file = tmp_path / "out" / "clf.pt"
    assert main(["train-classifier", str(base), str(tmp_path / "lab"), "--output", str(clf_file)]) == 0
    assert load_model(clf_file).record["class_counts"] == {"lymph": 8, "neut": 8}
    table_file = tmp_path / "out" / "pred.csv"
    assert main(["classify", str(clf_file), str(tmp_path / "new"), "--output", str(table_file)]) == 0
    table = pd.read_csv(table_file)
    assert len(table) == 16 and "broken.png" not in set(table["relpath"])
    truth = table["relpath"].str.startswith("l").map({True: "lymph", False: "neut"})
    assert (table["predicted"] == truth).mean() >= 0.9
    assert table["probability"].between(0.5, 1).all()
    # a model file without the study's calibration flags cells below the documented default
    assert (table["uncertain"] == (table["probability"] < 0.5)).all()
    assert main(["extract", str(base), str(tmp_path / "new"), "--output", str(tmp_path / "f.csv")]) == 0
    assert list(pd.read_csv(tmp_path / "f.csv").columns[1:]) == feature_names()
    # a model without classifier, and a bad --groups, are user errors (exit 2) with one line
    assert main(["classify", str(base), str(tmp_path / "new"), "--output", str(tmp_path / "x.csv")]) == 2
    assert main(["train-classifier", str(base), str(tmp_path / "lab"), "--output", str(tmp_path / "y.pt"),
                 "--groups", "no_colours"]) == 2
    assert not (tmp_path / "y.pt").exists()


def test_adabn_re_estimates_batch_norm_statistics_without_touching_weights():
    from bcfeat.evaluation.oracle_model import OracleConfig, build_oracle
    from bcfeat.evaluation.oracle import adapt_batch_norm, embed

    torch.manual_seed(0)
    model = build_oracle(OracleConfig(arch="narrow_resnet", width=4, norm="batch"), 3).eval()
    x = torch.randint(0, 255, (12, 3, 16, 16), dtype=torch.uint8)
    adapted = adapt_batch_norm(model, x)
    first_bn = [m for m in adapted.modules() if isinstance(m, torch.nn.BatchNorm2d)][0]
    with torch.no_grad():
        stem_out = adapted[1].stem[0](adapted[0](x))
    assert first_bn.running_mean == pytest.approx(stem_out.mean(dim=(0, 2, 3)), abs=1e-4)
    for (k, a), (_, b) in zip(adapted.state_dict().items(), model.state_dict().items()):
        if "running" not in k and "num_batches" not in k:
            assert torch.equal(a, b), k
    assert embed(adapted, x).shape == (12, 32)
    group = build_oracle(OracleConfig(arch="narrow_resnet", width=4, norm="group"), 3).eval()
    same = adapt_batch_norm(group, x)
    assert all(torch.equal(a, b) for a, b in zip(same.state_dict().values(), group.state_dict().values()))


def test_self_supervised_encoder_trains_and_embeds():
    from bcfeat.crosslab.self_supervised import SelfSupervisedConfig, embed_crops, lab_shift_views, train_encoder

    rng = np.random.default_rng(0)
    crops = rng.integers(0, 255, (16, 24, 24, 3), dtype=np.uint8)
    view = lab_shift_views(torch.rand(4, 3, 24, 24), torch.Generator().manual_seed(0))
    assert view.shape == (4, 3, 24, 24) and 0 <= float(view.min()) and float(view.max()) <= 1
    cfg = SelfSupervisedConfig(image_size=24, width=4, projection_dim=8, epochs=2, batch_size=8)
    encoder, history = train_encoder(crops, cfg)
    assert len(history) == 2 and all(np.isfinite(h["loss"]) for h in history)
    assert embed_crops(encoder, crops, 24).shape == (16, 16)
    with pytest.raises(ValueError, match="objective"):
        SelfSupervisedConfig(objective="byol")


def test_self_supervised_encoder_file_round_trip_and_refusals(tmp_path):
    from bcfeat.crosslab.self_supervised import (SelfSupervisedConfig, embed_crops, load_encoder, save_encoder,
                                                 train_encoder)

    crops = np.random.default_rng(0).integers(0, 255, (16, 24, 24, 3), dtype=np.uint8)
    cfg = SelfSupervisedConfig(image_size=24, width=4, projection_dim=8, epochs=1, batch_size=8)
    encoder, history = train_encoder(crops, cfg)
    path = save_encoder(tmp_path / "encoder.pt", encoder, cfg, history)
    assert torch.load(path, weights_only=True)["format"] == "bcfeat.ssl_encoder/1"
    loaded, loaded_cfg, loaded_history = load_encoder(path)
    assert loaded_cfg == cfg and loaded_history == history
    np.testing.assert_array_equal(embed_crops(loaded, crops, 24), embed_crops(encoder, crops, 24))
    other = save_model(tmp_path / "crosslab.pt", CrossLabModel(CrossLabConfig(mask_source="stain")))
    with pytest.raises(ModelFileError, match="crosslab.pt.*bcfeat crosslab file, not a bcfeat ssl_encoder"):
        load_encoder(other)
    payload = torch.load(path, weights_only=True)
    payload["config"]["width"] = 6  # weights of another width
    torch.save(payload, tmp_path / "wide.pt")
    with pytest.raises(ModelFileError, match="wide.pt.*self-supervised encoder does not fit"):
        load_encoder(tmp_path / "wide.pt")


def test_the_scikit_learn_transformer_loads_a_crosslab_model_file(tmp_path):
    from sklearn.pipeline import make_pipeline

    from bcfeat.extraction.transformer import AECFEFeatures

    rng = np.random.default_rng(1)
    paths, labels = [], []
    for i in range(6):
        for lobes, radius, label in ((1, 22, "lymph"), (3, 34, "neut")):
            p = tmp_path / f"{label}{i}.png"
            _write_cell(p, lobes, radius + i % 3, rng)
            paths.append(str(p))
            labels.append(label)
    base = save_model(tmp_path / "base.pt", CrossLabModel(CrossLabConfig(mask_source="stain")))
    features = AECFEFeatures(str(base), on_error="nan").fit()
    out = features.transform(paths + [str(tmp_path / "missing.png")])
    assert out.shape == (13, len(feature_names())) and np.isnan(out[-1]).all() and features.n_skipped_ == 1
    assert list(features.get_feature_names_out()) == feature_names()
    clf = make_pipeline(AECFEFeatures(str(base)), CrossLabClassifier()).fit(paths, labels)
    assert (clf.predict(paths) == np.array(labels)).mean() >= 0.9


def test_an_empty_mask_falls_back_to_the_centred_ellipse():
    from bcfeat.crosslab.model import _measure
    from bcfeat.crosslab.cell_crop import CropConfig

    image = np.full((60, 60, 3), 200, np.uint8)
    feats, crop, found = _measure(image, np.zeros((60, 60), bool), CropConfig())
    assert feats.shape == (len(feature_names()),) and crop.shape == (80, 80, 3)
    assert not found  # the fallback is said, not hidden


@pytest.mark.parametrize("prior_correction", ["none", "em"])
def test_predicting_leaves_the_classifier_unchanged(prior_correction):
    rng = np.random.default_rng(0)
    X = np.vstack([rng.normal(0, 1, (40, 6)), rng.normal(2, 1, (40, 6))])
    y = np.repeat(["a", "b"], 40)
    clf = CrossLabClassifier(prior_correction=prior_correction, random_state=0).fit(X, y)
    before = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in vars(clf).items()}
    first = clf.predict_proba(X[::3] + 1.0)
    assert set(vars(clf)) == set(before)
    for key, value in before.items():
        if isinstance(value, np.ndarray):
            assert np.array_equal(vars(clf)[key], value), key
    assert np.array_equal(clf.predict_proba(X[::3] + 1.0), first)


def test_self_supervised_training_resumes_to_the_uninterrupted_weights(tmp_path):
    from bcfeat.crosslab.self_supervised import SelfSupervisedConfig, load_encoder, train_encoder

    crops = np.random.default_rng(1).integers(0, 255, (24, 24, 24, 3), dtype=np.uint8)
    cfg = SelfSupervisedConfig(image_size=24, width=4, projection_dim=8, epochs=3, batch_size=8)
    whole, whole_history = train_encoder(crops, cfg)

    class Interrupted(Exception):
        pass

    def stop_after_first(record):
        if record["epoch"] == 0:
            raise Interrupted

    path = tmp_path / "encoder.pt"
    with pytest.raises(Interrupted):
        train_encoder(crops, cfg, callback=stop_after_first, checkpoint_path=path)
    assert len(load_encoder(path)[2]) == 1  # the first epoch was kept
    resumed, history = train_encoder(crops, cfg, checkpoint_path=path)
    assert [h["loss"] for h in history] == [h["loss"] for h in whole_history]
    assert all(torch.equal(a, b) for a, b in zip(resumed.state_dict().values(), whole.state_dict().values()))

    calls = []
    again, _ = train_encoder(crops, cfg, callback=calls.append, checkpoint_path=path)  # finished: returns at once
    assert calls == [] and all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), whole.state_dict().values()))
    with pytest.raises(ValueError, match="cannot resume.*lr"):
        train_encoder(crops, SelfSupervisedConfig(**{**cfg.__dict__, "lr": 1e-3}), checkpoint_path=path)
    with pytest.raises(ValueError, match="cannot resume.*other data"):
        train_encoder(crops[::-1].copy(), cfg, checkpoint_path=path)
    fresh, _ = train_encoder(crops, cfg, checkpoint_path=path, resume=False)  # start over
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), whole.state_dict().values()))


def test_a_non_finite_self_supervised_loss_stops_naming_where(monkeypatch):
    import bcfeat.crosslab.self_supervised as ssl
    from bcfeat.training.loop import NonFiniteLossError

    crops = np.random.default_rng(0).integers(0, 255, (16, 24, 24, 3), dtype=np.uint8)
    monkeypatch.setattr(ssl, "nt_xent", lambda z1, z2, t: (z1 * float("nan")).sum())
    with pytest.raises(NonFiniteLossError, match="self-supervised epoch 0, step 0.*total=nan"):
        ssl.train_encoder(crops, ssl.SelfSupervisedConfig(image_size=24, width=4, projection_dim=8, epochs=1,
                                                          batch_size=8))


def test_model_files_keep_their_texture_reading_and_older_files_read_texture_raw(tmp_path):
    from bcfeat.study.crosslab_measurement import measurement_parts, measurement_settings

    path = save_model(tmp_path / "m.pt", CrossLabModel(CrossLabConfig(mask_source="stain", texture_od="nucleus")))
    assert load_model(path).config.texture_od == "nucleus"
    payload = torch.load(path, weights_only=True)
    del payload["config"]["texture_od"]  # a file written before the field
    torch.save(payload, tmp_path / "old.pt")
    assert load_model(tmp_path / "old.pt").config.texture_od == "raw"
    with pytest.raises(ValueError, match="texture_od must be one of"):
        CrossLabConfig(mask_source="stain", texture_od="median")
    # the study's measurement names, and cache keys that keep the raw reading's old keys
    assert measurement_parts("stain+normtex") == ("stain", "nucleus")
    assert measurement_parts("detector") == ("detector", "raw")
    with pytest.raises(ValueError, match="unknown measurement 'stain\\+texture'"):
        measurement_parts("stain+texture")
    raw, normalised = (measurement_settings(CrossLabConfig(mask_source="stain", texture_od=t)) for t in ("raw", "nucleus"))
    assert "texture_od" not in raw and normalised == {**raw, "texture_od": "nucleus"}


def _lab_with_a_texture_block(rng, n_per_class=80, texture_noise=0.0):
    """Three classes separated by 3 'shape' columns and by 4 'texture' columns; a lab whose texture
    means something else gets its texture columns replaced by noise."""
    y = np.repeat(["a", "b", "c"], n_per_class)
    k = np.searchsorted(["a", "b", "c"], y)
    shape = k[:, None] * 1.5 + rng.normal(size=(len(y), 3))
    texture = k[:, None] * 2.0 + rng.normal(size=(len(y), 4))
    if texture_noise:
        texture = rng.normal(0, texture_noise, size=texture.shape) + 4 * (k[:, None] == 0)  # class a looks like c
    return np.hstack([shape, texture]), y


def test_the_texture_gate_closes_only_on_a_call_whose_texture_is_foreign():
    rng = np.random.default_rng(0)
    X, y = _lab_with_a_texture_block(rng)
    gate = (3, 4, 5, 6)
    clf = CrossLabClassifier(C=1.0, statistics="cbr", gate_columns=gate, gate_threshold=1.5).fit(X, y)
    assert clf.fallback_.columns == (0, 1, 2)
    same, y_same = _lab_with_a_texture_block(rng)
    foreign, y_foreign = _lab_with_a_texture_block(rng, texture_noise=3.0)
    assert clf.gate_novelty(same) < 1.0 < 1.5 < clf.gate_novelty(foreign)
    # an ordinary lab: the gate stays open and every probability is the full classifier's
    ungated = CrossLabClassifier(C=1.0, statistics="cbr").fit(X, y)
    assert not clf.gate_closed(same)
    np.testing.assert_allclose(clf.predict_proba(same), ungated.predict_proba(same))
    # a lab whose texture means something else: the classifier without texture decides, and does better
    assert clf.gate_closed(foreign)
    np.testing.assert_allclose(clf.predict_proba(foreign), clf.fallback_.predict_proba(foreign))
    np.testing.assert_allclose(clf.transform(same), ungated.transform(same))
    assert (clf.predict(foreign) == y_foreign).mean() > (ungated.predict(foreign) == y_foreign).mean() + 0.2
    assert clf.lab_novelty(foreign) == pytest.approx(ev_novelty(clf.fallback_, foreign))
    from bcfeat.crosslab.folders import gate_warning

    assert "classified without the texture features" in gate_warning(clf, foreign)
    assert gate_warning(clf, same) is None and gate_warning(ungated, foreign) is None
    # a threshold of None or inf never closes it; the novelty can still be read (to fit a threshold)
    for never in (None, float("inf")):
        clf.set_params(gate_threshold=never)
        assert not clf.gate_closed(foreign)
        np.testing.assert_allclose(clf.predict_proba(foreign), ungated.predict_proba(foreign))


def ev_novelty(clf, X):
    from bcfeat.crosslab.novelty import lab_novelty_score

    return lab_novelty_score(clf.discriminant_view(X), clf.discriminant_means_)


def test_the_texture_gate_refuses_columns_it_cannot_gate_and_survives_a_model_file(tmp_path):
    rng = np.random.default_rng(1)
    X, y = _lab_with_a_texture_block(rng)
    with pytest.raises(ValueError, match="non-empty subset of the columns used"):
        CrossLabClassifier(columns=(0, 1, 2), gate_columns=(3,)).fit(X, y)
    with pytest.raises(ValueError, match="at least one column"):
        CrossLabClassifier(gate_columns=tuple(range(7))).fit(X, y)
    with pytest.raises(ValueError, match="gate_threshold must be >= 0"):
        CrossLabClassifier(gate_columns=(3,), gate_threshold=-1.0).fit(X, y)
    for bad in (((100, 1.0), (100, 2.0)), ((0, 1.0),), ((100, -1.0),), "high", ()):
        with pytest.raises(ValueError, match="gate_threshold"):
            CrossLabClassifier(gate_columns=(3,), gate_threshold=bad).fit(X, y)
    # per call size: a small call must look more foreign than a large one before the gate closes
    by_size = CrossLabClassifier(C=1.0, statistics="cbr", gate_columns=(3, 4, 5, 6),
                                 gate_threshold=((400, 1.0), (100, 2.0))).fit(X, y)
    assert by_size.gate_threshold_for(50) == 2.0 and by_size.gate_threshold_for(1000) == 1.0
    assert 1.0 < by_size.gate_threshold_for(200) < 2.0
    # in a model file: the same gate, threshold and fallback; a file without its fallback is refused
    d = len(feature_names())
    Xw = np.hstack([X, rng.normal(size=(len(X), d - X.shape[1]))])
    clf = CrossLabClassifier(C=1.0, statistics="cbr", columns=tuple(range(7)), gate_columns=(3, 4, 5, 6),
                             gate_threshold=1.5).fit(Xw, y)
    foreign, _ = _lab_with_a_texture_block(rng, texture_noise=3.0)
    foreign = np.hstack([foreign, rng.normal(size=(len(foreign), d - 7))])
    path = save_model(tmp_path / "m.pt", CrossLabModel(CrossLabConfig(mask_source="stain"), None, clf))
    loaded = load_model(path).classifier
    assert loaded.gate_threshold == 1.5 and loaded.gate_columns == (3, 4, 5, 6) and loaded.gate_closed(foreign)
    clf.set_params(gate_threshold=((100, 1.4), (400, 1.2)))
    pairs = load_model(save_model(tmp_path / "pairs.pt", CrossLabModel(CrossLabConfig(mask_source="stain"), None,
                                                                         clf))).classifier
    assert pairs.gate_threshold == ((100, 1.4), (400, 1.2))
    assert pairs.gate_threshold_for(len(foreign)) == pytest.approx(clf.gate_threshold_for(len(foreign)))
    clf.set_params(gate_threshold=1.5)
    assert loaded.gate_novelty(foreign) == pytest.approx(clf.gate_novelty(foreign))
    np.testing.assert_allclose(loaded.predict_proba(foreign), clf.predict_proba(foreign), rtol=1e-6)
    payload = clf.to_payload()
    del payload["fallback"]
    with pytest.raises(ValueError, match="needs its fallback classifier"):
        CrossLabClassifier.from_payload(payload, d)


def test_the_nucleus_sized_centre_sample_is_a_measurement_kept_in_model_files_and_cache_keys(tmp_path):
    from bcfeat.detection.pseudo_masks import SegmentationConfig
    from bcfeat.study.crosslab_measurement import NUCLEUS_DISK_FACTOR, _model, measurement_settings

    model = _model(None, "stain+nucdisk+normtex", 1)
    assert model.config.mask_source == "stain" and model.config.texture_od == "nucleus"
    assert model.config.segmentation.inside_from_nucleus == NUCLEUS_DISK_FACTOR > 0
    assert _model(None, "stain+normtex", 1).config.segmentation.inside_from_nucleus == 0
    # bcfeat classify reads the same segmentation back from the model file
    path = save_model(tmp_path / "m.pt", model)
    assert load_model(path).config.segmentation.inside_from_nucleus == NUCLEUS_DISK_FACTOR
    # a cache written before the setting existed keeps its key; the new measurement gets its own
    crop_sized = measurement_settings(CrossLabConfig(mask_source="stain", segmentation=SegmentationConfig(resampler="pillow")))
    assert "inside_from_nucleus" not in crop_sized["segmentation"]
    assert measurement_settings(model.config)["segmentation"] == {**crop_sized["segmentation"],
                                                                  "inside_from_nucleus": NUCLEUS_DISK_FACTOR}
    for bad in ("detector+nucdisk", "stain+normtex+nucdisk"):
        with pytest.raises(ValueError, match="unknown measurement"):
            _model(None, bad, 1)


def test_the_red_nucleus_is_a_measurement_kept_in_model_files_that_measures_and_keys_apart(tmp_path):
    from bcfeat.study.crosslab_measurement import _model, measurement_settings

    model = _model(None, "stain+nucdisk+rednuc+normtex", 1)
    assert (model.config.nucleus_od, model.config.texture_od) == ("red", "nucleus")
    assert model.config.segmentation.inside_from_nucleus > 0
    total = _model(None, "stain+nucdisk+normtex", 1)
    assert total.config.nucleus_od == "total"
    # bcfeat classify reads the reading back; files from before the field find the nucleus in every dye
    path = save_model(tmp_path / "m.pt", model)
    assert load_model(path).config.nucleus_od == "red"
    payload = torch.load(path, weights_only=True)
    del payload["config"]["nucleus_od"]
    torch.save(payload, tmp_path / "old.pt")
    assert load_model(tmp_path / "old.pt").config.nucleus_od == "total"
    with pytest.raises(ValueError, match="nucleus_od must be one of"):
        CrossLabConfig(mask_source="stain", nucleus_od="blue")
    # the deployed measurement keeps its cache key; the red reading gets its own
    assert "nucleus_od" not in measurement_settings(total.config)
    assert measurement_settings(model.config) == {**measurement_settings(total.config), "nucleus_od": "red"}
    for bad in ("stain+normtex+rednuc", "stain+rednuc+nucdisk"):
        with pytest.raises(ValueError, match="unknown measurement"):
            _model(None, bad, 1)
    # and the model measures with it: an image's features differ only where the nucleus is read
    img = np.full((90, 90, 3), 235, np.uint8)
    yy, xx = np.mgrid[:90, :90]
    cell = (yy - 45) ** 2 + (xx - 45) ** 2 < 30 ** 2
    img[cell] = (200, 170, 210)
    img[(yy - 45) ** 2 + (xx - 45) ** 2 < 12 ** 2] = (90, 40, 130)
    for angle in np.linspace(0, 2 * np.pi, 8, endpoint=False):
        img[(yy - 45 - 21 * np.sin(angle)) ** 2 + (xx - 45 - 21 * np.cos(angle)) ** 2 < 3.5 ** 2] = (190, 60, 40)
    from bcfeat.data.images import SkippedImages

    skipped = SkippedImages()
    share = feature_names().index("nucleus_share")
    f_total, f_red = (m.measure([img], skipped)[0][0] for m in (total, model))
    assert f_red[share] < f_total[share] - 0.05
    assert f_red[0] == f_total[0]  # the same mask and crop


def test_both_centre_samples_are_scored_against_the_expert_masks(data_root, tmp_path):
    from bcfeat.study.crosslab_measurement import stain_masks_against_experts

    table = stain_masks_against_experts(["detector", "stain+normtex", "stain+nucdisk+normtex"], data_root, max_images=6)
    assert sorted(set(zip(table.segmentation, table.dataset))) == sorted(
        (s, d) for s in ("stain", "stain+nucdisk") for d in ("cellavision_zheng18", "jtsc_zheng18"))
    assert (table.n_images == 6).all() and (table.mean_iou > 0.7).all() and (table.mean_iou <= 1).all()
    assert stain_masks_against_experts(["stain"], tmp_path).empty  # no datasets, no masks: no rows


def test_mask_area_change_counts_the_cells_whose_mask_grew_or_shrank_per_site():
    import pandas as pd

    from bcfeat.crosslab.cell_features import feature_names
    from bcfeat.study.crosslab_measurement import Measured, mask_area_change

    d = feature_names().index("log_cell_diameter_px")
    a = np.zeros((6, len(feature_names())))
    a[:, d] = np.log(100.0)
    b = a.copy()
    b[0, d] = np.log(100.0 * np.sqrt(0.5))  # half the area
    b[4, d] = np.log(100.0 * np.sqrt(1.05))  # 5 % more: within the tolerance
    samples = pd.DataFrame({"domain": ["x", "x", "x", "y", "y", "y"]})
    crops = np.zeros((6, 2, 2, 3), np.uint8)
    table = mask_area_change({"a": Measured(a, crops, 0.0, None), "b": Measured(b, crops, 0.0, None)}, samples, "a", "b")
    assert table.set_index("site")["changed_share"].to_dict() == pytest.approx({"x": 1 / 3, "y": 0.0})
    assert table.set_index("site").loc["x", "median_area_ratio"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="'c' was not measured"):
        mask_area_change({"a": Measured(a, crops, 0.0, None)}, samples, "a", "c")


def _relabelled_lab(rng, n_per_class=60):
    """A training lab where class "b" is told by column 0, and a new lab whose class "b" is told by
    column 1 instead (its column 0 looks like "a")."""
    y = np.repeat(["a", "b", "c"], n_per_class)
    source = rng.normal(size=(len(y), 4))
    source[y == "b", 0] += 3.0
    source[y == "c", 2] += 3.0
    target = rng.normal(size=(len(y), 4))
    target[y == "b", 1] += 3.0
    target[y == "c", 2] += 3.0
    return source, target, y


def test_labelled_cells_of_another_lab_are_read_in_that_labs_own_statistics():
    """A correction means the same whatever the new lab's stain does to every feature's offset and
    scale: the classifier taught by it reads the lab the same way before and after such a shift."""
    from bcfeat.crosslab.adaptation import LabelledCall

    source, target, y = _relabelled_lab(np.random.default_rng(0))
    labelled = np.concatenate([np.flatnonzero(y == c)[:8] for c in ("a", "b", "c")])
    params = dict(model="logistic", C=1.0, statistics="cbr")
    shifted = target * 4.0 + 10.0
    taught = CrossLabClassifier(**params).fit(source, y, [LabelledCall(target, labelled, y[labelled])])
    taught_shifted = CrossLabClassifier(**params).fit(source, y, [LabelledCall(shifted, labelled, y[labelled])])
    assert np.allclose(taught.predict_proba(target), taught_shifted.predict_proba(shifted), atol=1e-6)
    alone = CrossLabClassifier(**params).fit(source, y)
    assert not np.allclose(taught.predict_proba(target), alone.predict_proba(target), atol=0.05)  # they taught it
    assert len(taught._y_train) == len(y) + len(labelled)  # kept with the model file's training cells
    # pooled with the training lab's cells (read in its statistics), the same corrections depend on the shift
    def pooled(X):
        return CrossLabClassifier(**params).fit(np.vstack([source, X[labelled]]), np.concatenate([y, y[labelled]]))
    assert not np.allclose(pooled(target).predict_proba(target), pooled(shifted).predict_proba(shifted), atol=0.05)


def test_labelled_calls_are_checked_by_name():
    from bcfeat.crosslab.adaptation import LabelledCall

    rng = np.random.default_rng(1)
    source, target, y = _relabelled_lab(rng, 20)
    target = target * 4.0 + 10.0
    clf = CrossLabClassifier(C=1.0, statistics="cbr")
    with pytest.raises(ValueError, match=r"labels \['z'\] are not classes"):
        clf.fit(source, y, [LabelledCall(target, np.array([0, 1]), np.array(["a", "z"]))])
    with pytest.raises(ValueError, match="distinct indices"):
        clf.fit(source, y, [LabelledCall(target, np.array([0, 999]), np.array(["a", "b"]))])
    with pytest.raises(ValueError, match=r"must be \(m, 4\)"):
        clf.fit(source, y, [LabelledCall(target[:, :3], np.array([0]), np.array(["a"]))])


def test_train_classifier_leaves_out_the_columns_the_study_s_setting_leaves_out(tmp_path):
    from bcfeat.crosslab.folders import train_classifier

    two_class_lab(tmp_path)
    model = CrossLabModel(CrossLabConfig(mask_source="stain"))
    model.record = {"setting": "logistic C=0.5 all stain plain drop=0,5"}
    base = save_model(tmp_path / "base.pt", model)
    path, _, _ = train_classifier(base, tmp_path / "lab", tmp_path / "clf.pt")
    trained = load_model(path)
    assert not {0, 5} & set(trained.classifier.columns) and len(trained.classifier.columns) == len(feature_names()) - 2
    assert trained.record["dropped_columns"] == [0, 5] and trained.classifier.C == 0.5
    # a feature set named by the user is read as named
    path, _, _ = train_classifier(base, tmp_path / "lab", tmp_path / "named.pt", groups="all")
    assert load_model(path).classifier.columns is None and load_model(path).record["dropped_columns"] == []
