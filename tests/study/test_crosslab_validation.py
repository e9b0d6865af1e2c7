"""The cross-lab validation: CBR statistics, setting names, selection on virtual labs only,
calibration carried in the model file, the `uncertain` column and the lab warning, box crops."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.metrics import balanced_accuracy_score as bas

from bcfeat.crosslab.adaptation import CrossLabClassifier, class_conditional_statistics, site_statistics
from bcfeat.study import crosslab_validation as cv
from bcfeat.study import real_lab_selection as rs
from bcfeat.study import texture_gate as tg


def _three_class_lab(rng, counts, scale=1.0, shift=0.0, d=6):
    y = np.repeat([0, 1, 2], counts)
    centres = np.array([[0.0] * d, [3.0] * d, [0.0, 3.0] * (d // 2)])
    X = (centres[y] + rng.normal(size=(len(y), d))) * scale + shift
    return X, y


def test_cbr_statistics_do_not_move_with_the_class_mix():
    rng = np.random.default_rng(0)
    Xa, ya = _three_class_lab(rng, [300, 300, 300])
    Xb, yb = _three_class_lab(rng, [810, 60, 30])  # 90 % one class
    a, b = class_conditional_statistics(Xa, ya), class_conditional_statistics(Xb, yb)
    np.testing.assert_allclose(a.centre, b.centre, atol=0.25)
    np.testing.assert_allclose(a.scale, b.scale, atol=0.15)
    # the plain statistics do move: the centre goes to the majority class
    assert np.abs(site_statistics(Xa).centre - site_statistics(Xb).centre).max() > 0.8
    # the within-class spread is ~1 whatever the separation of the classes
    np.testing.assert_allclose(b.scale, 1.0, atol=0.15)


def test_cbr_falls_back_to_plain_statistics_on_a_small_call():
    rng = np.random.default_rng(1)
    X, y = _three_class_lab(rng, [10, 10, 5])
    s = class_conditional_statistics(X, y, fallback_ratio=np.full(6, 0.5))
    np.testing.assert_allclose(s.centre, site_statistics(X).centre)
    np.testing.assert_allclose(s.scale, 0.5 * site_statistics(X).scale)


def test_cbr_classifier_holds_a_skewed_lab_better_than_plain_statistics():
    rng = np.random.default_rng(2)
    Xs, ys = _three_class_lab(rng, [300, 300, 300])
    Xt, yt = _three_class_lab(rng, [720, 60, 20], scale=2.5, shift=4.0)
    plain = CrossLabClassifier(balance_rounds=0).fit(Xs, ys)
    cbr = CrossLabClassifier(balance_rounds=2, statistics="cbr").fit(Xs, ys)
    assert bas(yt, cbr.predict(Xt)) > bas(yt, plain.predict(Xt)) + 0.05
    assert bas(yt, cbr.predict(Xt)) > 0.85
    assert cbr.class_means_.shape == (3, 6)
    assert cbr.transform(Xt).shape == (800, 6)
    with pytest.raises(ValueError, match="statistics"):
        CrossLabClassifier(statistics="median").fit(Xs, ys)
    with pytest.raises(ValueError, match="temperature"):
        CrossLabClassifier(temperature=0).fit(Xs, ys)


def test_the_mix_corrected_spread_reads_every_cell_and_only_the_predicted_shares():
    from bcfeat.crosslab.site_statistics import class_moments, mix_corrected_statistics, standardize

    rng = np.random.default_rng(4)
    Xs, ys = _three_class_lab(rng, [300, 300, 300])
    means, variances = class_moments(standardize(Xs, class_conditional_statistics(Xs, ys)), ys, 3)
    Xt, yt = _three_class_lab(rng, [720, 60, 20], scale=2.5, shift=4.0)  # stretched 2.5 times, 90 % one class
    right = mix_corrected_statistics(Xt, yt, means, variances)
    np.testing.assert_allclose(right.scale, 2.5, rtol=0.1)
    np.testing.assert_allclose(right.centre, class_conditional_statistics(Xt, yt).centre)  # CBR's centre
    # 30 cells of the first class and 30 of the second predicted the other way round: the shares,
    # and so the spread, stay; CBR's within-class spread takes the misplaced cells in
    swapped = yt.copy()
    swapped[np.flatnonzero(yt == 0)[:30]], swapped[np.flatnonzero(yt == 1)[:30]] = 1, 0
    np.testing.assert_array_equal(mix_corrected_statistics(Xt, swapped, means, variances).scale, right.scale)
    assert np.abs(class_conditional_statistics(Xt, swapped).scale / 2.5 - 1).max() > 0.3
    # a small call falls back as CBR does; a feature constant in training keeps CBR's spread
    np.testing.assert_allclose(mix_corrected_statistics(Xt[:20], yt[:20], means, variances).scale,
                               class_conditional_statistics(Xt[:20], yt[:20]).scale)
    flat = variances.copy(); flat[:, 0] = 0.0
    flat_means = means.copy(); flat_means[:, 0] = 0.0
    np.testing.assert_allclose(mix_corrected_statistics(Xt, yt, flat_means, flat).scale[0],
                               class_conditional_statistics(Xt, yt).scale[0])
    with pytest.raises(ValueError, match="class indices"):
        mix_corrected_statistics(Xt, yt + 1, means, variances)
    with pytest.raises(ValueError, match=r"classes \[2\] have none"):
        class_moments(Xs, np.minimum(ys, 1), 3)


def test_the_mix_corrected_classifier_holds_a_skewed_lab_and_keeps_its_moments_in_the_model_file():
    rng = np.random.default_rng(5)
    Xs, ys = _three_class_lab(rng, [300, 300, 300])
    Xt, yt = _three_class_lab(rng, [720, 60, 20], scale=2.5, shift=4.0)
    mixed = CrossLabClassifier(balance_rounds=2, statistics="cbr_mix").fit(Xs, ys)
    assert bas(yt, mixed.predict(Xt)) > 0.85
    assert mixed.source_class_means_.shape == mixed.source_class_variances_.shape == (3, 6)
    stored = CrossLabClassifier.from_payload(mixed.to_payload(), 6)
    np.testing.assert_array_equal(stored.predict_proba(Xt), mixed.predict_proba(Xt))
    payload = mixed.to_payload()
    del payload["class_moments"]
    with pytest.raises(ValueError, match="needs its class moments"):
        CrossLabClassifier.from_payload(payload, 6)
    assert "class_moments" not in CrossLabClassifier(statistics="cbr").fit(Xs, ys).to_payload()
    assert cv.parse_setting(cv.setting_name(0.03, "all", "stain", "cbr_mix"))["statistics"] == "cbr_mix"
    assert cv.classifier_for("logistic C=0.03 all stain cbr_mix").statistics == "cbr_mix"


def test_temperature_softens_without_changing_the_prediction():
    rng = np.random.default_rng(3)
    Xs, ys = _three_class_lab(rng, [100, 100, 100])
    sharp = CrossLabClassifier().fit(Xs, ys)
    soft = CrossLabClassifier(temperature=3.0).fit(Xs, ys)
    p, q = sharp.predict_proba(Xs), soft.predict_proba(Xs)
    assert (p.argmax(1) == q.argmax(1)).all()
    assert q.max(1).mean() < p.max(1).mean() - 0.05
    np.testing.assert_allclose(q.sum(1), 1.0)


def test_setting_names_round_trip_and_unknown_parts_fail():
    name = cv.setting_name(0.03, "no_texture", "stain", "cbr")
    assert cv.parse_setting(name) == {"name": name, "model": "logistic", "C": 0.03, "groups": "no_texture",
                                      "source": "stain", "statistics": "cbr", "drop": ()}
    assert cv.plain_name(name) == "logistic C=0.03 no_texture stain"
    assert len(cv.candidate_settings([0.01, 0.1], ["all"], ["stain"])) == 8  # plain, balanced, cbr, cbr_mix
    with pytest.raises(ValueError):
        cv.candidate_settings([0.1], ["no_colours"], ["stain"])
    with pytest.raises(ValueError, match="statistics"):
        cv.parse_setting("logistic C=0.1 all stain median")
    assert cv.classifier_for(name).statistics == "cbr" and cv.classifier_for(name).balance_rounds == 2
    assert cv.classifier_for(cv.plain_name(name)).balance_rounds == 0


class _Measured:
    def __init__(self, features):
        self.features = features


def _study(rng, n_features):
    """A source site (train + test split) and virtual labs where only some features survive."""
    from bcfeat.data.splits import make_splits

    from bcfeat.crosslab.cell_features import feature_names
    d = len(feature_names())
    y = np.repeat(["basophil", "eosinophil", "lymphocyte", "monocyte", "neutrophil"], 60)
    codes = pd.factorize(y, sort=True)[0]
    X = rng.normal(size=(len(y), d))
    X[:, :n_features] += 3.0 * (codes[:, None] == np.arange(n_features)[None, :] % 5)
    samples = pd.DataFrame({"domain": "pbc_acevedo20", "label": y, "path": [f"c{i}.png" for i in range(len(y))]})
    plan = make_splits(y, samples["domain"].to_numpy(), n_repetitions=1, test_size=0.2, random_state=0)
    return samples, plan, X, y


def test_selection_reads_only_the_virtual_labs_and_ranks_the_better_setting_first():
    from bcfeat.crosslab.virtual_labs import VirtualLab

    rng = np.random.default_rng(4)
    samples, plan, X, y = _study(rng, 10)
    rows = cv.development_rows(samples, plan, 0, 0, source="pbc_acevedo20")
    assert set(samples["domain"].to_numpy()[rows]) == {"pbc_acevedo20"} and len(rows) == 60
    labs = [VirtualLab("v0"), VirtualLab("v1")]
    features = {}
    for k, lab in enumerate(labs):
        Xv = X[rows] * (1.5 + k) + 2.0
        Xv[:, 10:] = rng.normal(size=(len(rows), Xv.shape[1] - 10)) * 5  # the rest carries nothing there
        features[(lab.name, "stain")] = Xv
    virtual = cv.VirtualLabs(rows, y[rows], features, labs, 0.0)
    measured = {"stain": _Measured(X)}
    table = cv.select_on_virtual_labs(measured, samples, plan, virtual,
                                      cv.candidate_settings([0.001, 1.0], ["all"], ["stain"], ["plain"]), 0,
                                      call_size=40, n_calls=2, mixes=("own", "typical"), source="pbc_acevedo20")
    assert list(table.columns[:6]) == ["setting", "source", "groups", "C", "statistics", "selection_score"]
    assert table["selection_score"].is_monotonic_decreasing
    # the strongly regularised model ignores the noise features' spread less badly
    assert table["setting"].iloc[0] == "logistic C=0.001 all stain plain"
    clf = cv.fit_setting(measured, samples, plan, table["setting"].iloc[0], 0, source="pbc_acevedo20")
    calibration = cv.fit_calibration(clf, virtual, "stain", target_catch=0.5, max_review=0.5)
    assert 0.05 <= calibration.temperature <= 20
    assert len(calibration.reference_novelty) == 2
    assert calibration.novelty_threshold >= max(calibration.reference_novelty)


def test_deployed_model_file_carries_calibration_and_classify_flags_uncertain_cells(tmp_path):
    from bcfeat.crosslab.folders import DEFAULT_UNCERTAIN_BELOW, lab_warning, uncertain_cells
    from bcfeat.crosslab.model import CrossLabModel, CrossLabConfig, load_model, save_model

    rng = np.random.default_rng(5)
    samples, plan, X, y = _study(rng, 10)
    clf = cv.classifier_for("logistic C=0.1 all stain cbr", 0, temperature=2.0).fit(X, y)
    clf.calibration_ = cv.Calibration(2.0, 0.6, 1.2, [0.8, 0.9]).to_dict()
    path = save_model(tmp_path / "m.pt", CrossLabModel(CrossLabConfig(mask_source="stain"), None, clf))
    loaded = load_model(path).classifier
    assert loaded.calibration_["uncertain_min_probability"] == 0.6
    assert loaded.statistics == "cbr" and loaded.temperature == 2.0
    np.testing.assert_allclose(loaded.predict_proba(X), clf.predict_proba(X), rtol=1e-6)
    np.testing.assert_allclose(loaded.class_means_, clf.class_means_, atol=1e-5)
    P = loaded.predict_proba(X)
    np.testing.assert_array_equal(uncertain_cells(loaded, P), P.max(1) < 0.6)
    # a familiar lab gets no warning; a lab whose class signal sits in other features does
    from bcfeat.crosslab.novelty import lab_novelty_score

    familiar = lab_novelty_score(loaded.discriminant_view(X), loaded.discriminant_means_)
    loaded.calibration_ = {**loaded.calibration_, "reference_novelty": [familiar], "novelty_threshold": 1.5 * familiar}
    assert lab_warning(loaded, X * 3 + 1) is None
    moved = X[:, np.r_[np.arange(10, 20), np.arange(0, 10), np.arange(20, X.shape[1])]]
    assert lab_novelty_score(loaded.discriminant_view(moved), loaded.discriminant_means_) > 1.6 * familiar
    assert "above the warning threshold" in lab_warning(loaded, moved)
    loaded.calibration_ = {}
    np.testing.assert_array_equal(uncertain_cells(loaded, P), P.max(1) < DEFAULT_UNCERTAIN_BELOW)
    assert lab_warning(loaded, X) is None


def test_box_crops_cut_one_square_per_labelled_cell(tmp_path):
    from bcfeat.data.box_crops import crop_boxes, parse_yolo_labels

    frames, labels = tmp_path / "set" / "images", tmp_path / "set" / "labels"
    frames.mkdir(parents=True), labels.mkdir(parents=True)
    img = np.full((100, 160, 3), 230, np.uint8)
    img[40:60, 70:90] = (90, 40, 130)  # a cell at (80, 50), 20 px
    Image.fromarray(img).save(frames / "a.jpg", quality=95)
    (labels / "a.txt").write_text("3 0.5 0.5 0.125 0.2\n0 0.05 0.1 0.05 0.1\n")
    Image.fromarray(img).save(frames / "nolabel.jpg")
    table = crop_boxes([frames], tmp_path / "out", ("neutrophil", "eosinophil", "basophil", "lymphocyte"), 2.0)
    assert list(table["relpath"]) == ["lymphocyte/a_0.png", "neutrophil/a_1.png"]
    crop = np.asarray(Image.open(tmp_path / "out" / "lymphocyte" / "a_0.png"))
    assert crop.shape == (40, 40, 3)
    assert crop[20, 20].tolist() != [230, 230, 230] and crop[2, 2].min() > 200  # the cell centred, background around
    edge = np.asarray(Image.open(tmp_path / "out" / "neutrophil" / "a_1.png"))
    assert edge.shape == (20, 20, 3)  # moved inside the frame at the corner
    assert (tmp_path / "out" / "crops.csv").exists()
    with pytest.raises(FileExistsError):
        crop_boxes([frames], tmp_path / "out")
    with pytest.raises(ValueError, match="line 1"):
        parse_yolo_labels("3 0.5 0.5 0\n", "x.txt")
    with pytest.raises(ValueError, match="outside the frame"):
        parse_yolo_labels("3 1.5 0.5 0.1 0.1\n", "x.txt")


def test_crop_boxes_command_writes_class_folders_and_refuses_an_existing_output(tmp_path, capsys):
    from bcfeat.runner.cli import main

    frames, labels = tmp_path / "set" / "images", tmp_path / "set" / "labels"
    frames.mkdir(parents=True), labels.mkdir(parents=True)
    Image.fromarray(np.full((60, 80, 3), 200, np.uint8)).save(frames / "f.png")
    (labels / "f.txt").write_text("1 0.5 0.5 0.2 0.2\n")
    out = tmp_path / "cells"
    assert main(["crop-boxes", str(frames), "--output", str(out)]) == 0
    assert (out / "eosinophil" / "f_0.png").exists()
    assert "1 crops (eosinophil 1)" in capsys.readouterr().out
    assert main(["crop-boxes", str(frames), "--output", str(out)]) == 2
    with pytest.raises(SystemExit) as exit_info:  # argparse refuses the value before any work
        main(["crop-boxes", str(frames), "--output", str(tmp_path / "x"), "--margin", "9"])
    assert exit_info.value.code == 2
    assert not (tmp_path / "x").exists()


def test_train_classifier_checks_its_output_before_measuring_anything(tmp_path, monkeypatch):
    from bcfeat.crosslab import folders
    from bcfeat.crosslab.model import CrossLabModel, CrossLabConfig, save_model
    from bcfeat.runner.cli import main

    model = save_model(tmp_path / "model.pt", CrossLabModel(CrossLabConfig(mask_source="stain")))
    measured = []
    monkeypatch.setattr(folders, "_measure_folder", lambda *a, **k: measured.append(a) or (_ for _ in ()).throw(
        AssertionError("measured before the output was checked")))
    (tmp_path / "lab" / "a").mkdir(parents=True)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        for output in (tmp_path / "model.csv", tmp_path / "lab", locked / "m.pt"):
            if output.parent == locked and os.access(locked, os.W_OK):  # root writes anywhere: not testable
                continue
            assert main(["train-classifier", str(model), str(tmp_path / "lab"), "--output", str(output)]) == 2
    finally:
        locked.chmod(0o700)
    assert measured == []
    (tmp_path / "lab" / "file").write_text("x")
    assert main(["train-classifier", str(model), str(tmp_path / "lab"),
                 "--output", str(tmp_path / "lab" / "file" / "m.pt")]) == 2
    assert measured == []


def test_classify_marks_images_without_a_cell_and_leaves_them_out_of_the_statistics(tmp_path, caplog):
    from tests.crosslab.test_crosslab_method import two_class_lab

    from bcfeat.crosslab.folders import NO_CELL, classify_folder, train_classifier
    from bcfeat.crosslab.model import CrossLabModel, CrossLabConfig, save_model

    two_class_lab(tmp_path)
    Image.fromarray(np.full((120, 120, 3), 255, np.uint8)).save(tmp_path / "new" / "white.png")
    base = save_model(tmp_path / "base.pt", CrossLabModel(CrossLabConfig(mask_source="stain")))
    clf_file, _, _ = train_classifier(base, tmp_path / "lab", tmp_path / "clf.pt")
    table, _ = classify_folder(clf_file, tmp_path / "new")
    white = table.set_index("relpath").loc["white.png"]
    assert not white["cell_found"] and white["predicted"] == NO_CELL and white["uncertain"]
    assert np.isnan(white["probability"]) and np.isnan(white["p_lymph"])
    cells = table[table["cell_found"]]
    assert len(cells) == 16 and cells["probability"].between(0, 1).all()
    truth = cells["relpath"].str.startswith("l").map({True: "lymph", False: "neut"})
    assert (cells["predicted"] == truth).mean() >= 0.9
    # copies of one cell: no spread, one class -> both warnings
    for i in range(12):
        (tmp_path / "same").mkdir(exist_ok=True)
        (tmp_path / "same" / f"c{i}.png").write_bytes((tmp_path / "new" / "l0.png").read_bytes())
    with caplog.at_level("WARNING"):
        classify_folder(clf_file, tmp_path / "same")
    assert "do not vary at all" in caplog.text and "all 12 cells were called" in caplog.text


def test_series_confound_and_call_modes_on_a_lab_whose_stain_follows_the_class(tmp_path):
    from bcfeat.crosslab.adaptation import CrossLabClassifier
    from bcfeat.study.crosslab_validation import call_modes, series_confound, untouched_series

    rng = np.random.default_rng(0)
    y_train = np.repeat(["a", "b"], 60)
    X_train = rng.normal(0, 1, (120, 4)) + np.where(y_train == "a", 0, 3)[:, None]
    clf = CrossLabClassifier(random_state=0).fit(X_train, y_train)
    # a new lab: every class photographed in its own series, each series with its own offset ("stain")
    y = np.repeat(["a", "b"], 40)
    series = np.repeat(["s1", "s2"], 40)
    X = rng.normal(0, 1, (80, 4)) + np.where(y == "a", 0, 3)[:, None] + 10 + np.where(series == "s1", 0.5, -0.5)[:, None]
    assert series_confound(series, y) == {"n_series": 2, "single_class_series": 2, "majority_share": 1.0}
    modes = call_modes(clf, X, y, series).set_index("calls")["balanced_accuracy"]
    assert list(modes.index) == ["whole folder, one call", "training lab's statistics (no adaptation)",
                                 "one call per photograph series"]
    # the folder's own statistics undo the lab's shift; without them every cell looks like "b";
    # one-class calls cannot tell the classes apart
    assert modes.iloc[0] >= 0.9 and modes.iloc[1] <= 0.6 and modes.iloc[2] <= 0.75
    # a gated classifier, and a series too small for its own statistics (its fallback goes unadapted too)
    gated = CrossLabClassifier(random_state=0, gate_columns=(2, 3), gate_threshold=1.0).fit(X_train, y_train)
    small = np.where(np.arange(80) < 5, "s0", series)
    assert len(call_modes(gated, X, y, small)) == 3
    (tmp_path / "b").mkdir()
    for name in ("B-57_0018_0.png", "B-57_0020_1.png"):
        (tmp_path / "b" / name).write_bytes(b"")
    assert sorted(untouched_series(tmp_path)) == ["B-57", "B-57"]
    assert untouched_series(tmp_path / "absent") is None


def test_shift_glue_splits_the_staining_protocol_shifts_from_the_others():
    table = pd.DataFrame({"shift": ["defocus", "tight_crop", "cytoplasm_dye_strong", "rapid_stain_hue"],
                          "chosen": [0.91, 0.88, 0.62, 0.75]})
    glue = cv.shift_glue(table, "chosen")
    assert glue == {"crosslab_shift_worst_dye": 0.62, "crosslab_shift_worst_other": 0.88, "crosslab_shift_defocus": 0.91,
                    "crosslab_shift_tight_crop": 0.88, "crosslab_shift_cytoplasm_dye_strong": 0.62,
                    "crosslab_shift_rapid_stain_hue": 0.75}
    assert np.isnan(cv.shift_glue(table, "another setting")["crosslab_shift_worst_dye"])
    only_others = cv.shift_glue(table.iloc[:2], "chosen")
    assert np.isnan(only_others["crosslab_shift_worst_dye"]) and only_others["crosslab_shift_worst_other"] == 0.88


def test_ablation_glue_reports_the_supervised_cnn_rows_when_the_lever_ran():
    from bcfeat.study.crosslab import ablation_glue

    rows = [("adaptation", "no adaptation (source statistics for every site)", 0.4, 0.2, 0.01),
            ("adaptation", "per-site standardisation (plain)", 0.6, 0.5, 0.01),
            ("objective", "objective: supervised GroupNorm CNN with lab-shift augmentation (2 epochs), alone",
             0.5, 0.35, 3.0),
            ("objective", "objective: hand features + supervised GroupNorm CNN with lab-shift augmentation (2 epochs)",
             0.62, 0.45, 3.0)]
    table = pd.DataFrame(rows, columns=["lever", "variant", "mean_unseen", "min_unseen", "cpu_minutes"])
    glue = ablation_glue(table)
    assert glue["crosslab_cnn_alone_mean_unseen"] == 0.5 and glue["crosslab_cnn_alone_min_unseen"] == 0.35
    assert glue["crosslab_cnn_with_hand_mean_unseen"] == 0.62 and glue["crosslab_cnn_minutes"] == 3.0
    assert glue["crosslab_ablation_best_objective"].startswith("objective: hand features")
    without = ablation_glue(table.iloc[:2])
    assert np.isnan(without["crosslab_cnn_alone_mean_unseen"]) and np.isnan(without["crosslab_cnn_minutes"])
    assert np.isnan(without["crosslab_gate_on_mean_unseen"])
    gate = pd.DataFrame([("adaptation", "chosen setting, texture trusted on every call", 0.55, 0.40, 0.02),
                         ("adaptation", "chosen setting + texture gate (threshold from the virtual labs)", 0.65, 0.6,
                          0.03)], columns=table.columns)
    glue = ablation_glue(pd.concat([table, gate], ignore_index=True))
    assert (glue["crosslab_gate_off_mean_unseen"], glue["crosslab_gate_on_min_unseen"]) == (0.55, 0.6)


def test_gate_glue_names_the_labs_where_the_gate_closed():
    calib = pd.DataFrame({"lab": ["a", "b", "c"], "gate_closed": [False, True, True]})
    assert tg.gate_glue(calib) == {"crosslab_gate_closed_labs": "b, c", "crosslab_gate_open_labs": "a"}
    assert tg.gate_glue(calib.assign(gate_closed=False))["crosslab_gate_closed_labs"] == "none"
    assert tg.gate_glue(calib.drop(columns=["gate_closed"]))["crosslab_gate_closed_labs"] == "no gate"


def test_calibration_table_applies_the_temperature_once_as_the_deployed_classifier_does():
    from bcfeat.crosslab import calibration as cal

    rng = np.random.default_rng(5)
    Xs, ys = _three_class_lab(rng, [80, 80, 80])
    Xt, yt = _three_class_lab(rng, [40, 40, 40])
    calibration = cv.Calibration(temperature=2.0, uncertain_min_probability=0.6, novelty_threshold=99.0,
                                 reference_novelty=[1.0])
    raw = CrossLabClassifier().fit(Xs, ys)
    deployed = CrossLabClassifier(temperature=2.0).fit(Xs, ys)
    table, _ = cv.calibration_table(raw, calibration, {"lab": (Xt, yt)})
    row = table.iloc[0]
    P = deployed.predict_proba(Xt)
    assert row["mean_confidence"] == pytest.approx(P.max(1).mean())
    assert row["mean_confidence_raw"] == pytest.approx(raw.predict_proba(Xt).max(1).mean())
    assert row["ece"] == pytest.approx(cal.expected_calibration_error(P, cv._index(yt, deployed.classes_)))
    assert row["review_share"] == pytest.approx((P.max(1) < 0.6).mean())
    with pytest.raises(ValueError, match="untempered"):
        cv.calibration_table(deployed, calibration, {"lab": (Xt, yt)})


def test_texture_gate_threshold_is_the_envelope_of_the_virtual_labs_and_closes_beyond_it():
    from bcfeat.crosslab.cell_features import feature_groups, feature_set_columns
    from bcfeat.crosslab.virtual_labs import VirtualLab

    texture = feature_groups()["texture"]
    assert cv.texture_gate_columns("all") == tuple(texture)
    assert cv.texture_gate_columns("no_texture") is None
    fine_left = cv.texture_gate_columns("no_fine_texture")
    assert fine_left and set(fine_left) < set(texture) and set(fine_left) <= set(feature_set_columns("no_fine_texture"))
    assert cv.classifier_for("logistic C=0.1 all stain cbr").gate_columns is None  # no threshold: no gate
    assert cv.classifier_for("logistic C=0.1 no_texture stain cbr", gate_threshold=1.0).gate_columns is None

    rng = np.random.default_rng(6)
    samples, plan, X, y = _study(rng, 10)
    codes = pd.factorize(y, sort=True)[0]
    X[:, texture[:10]] += 2.0 * (codes[:, None] == np.arange(10)[None, :] % 5)  # texture carries the class too
    rows = cv.development_rows(samples, plan, 0, 0, source="pbc_acevedo20")
    labs = [VirtualLab("v0"), VirtualLab("v1")]
    virtual = cv.VirtualLabs(rows, y[rows], {(lab.name, "stain"): X[rows] * (1.5 + k) + 2.0
                                             for k, lab in enumerate(labs)}, labs, 0.0)
    measured = {"stain": _Measured(X)}
    clf = cv.fit_setting(measured, samples, plan, "logistic C=0.1 all stain cbr", 0, gate_threshold=float("inf"),
                         source="pbc_acevedo20")
    envelope, calls = tg.fit_gate_threshold(clf, virtual, "stain", 0, call_sizes=(20, 40), n_calls=2,
                                            mixes=("own", "typical"))
    n_dev = len(rows)
    assert set(calls["lab"]) == {"v0", "v1"} and len(calls) == 2 * (1 + 2 * 2 * 2)
    assert [n for n, _ in envelope] == sorted({20, 40, n_dev})
    # per size the largest novelty of calls that size or larger, never rising with the size
    for n, t in envelope:
        assert t == calls.loc[calls["call_size"] >= n, "gate_novelty"].max()
    assert all(a[1] >= b[1] for a, b in zip(envelope, envelope[1:]))
    # a lab whose texture means nothing there sits beyond every virtual lab's call: the gate closes
    foreign = X[rows].copy()
    foreign[:, texture] = rng.normal(size=(len(rows), len(texture))) * 3
    clf.set_params(gate_threshold=envelope)
    assert not clf.gate_closed(virtual.features[("v0", "stain")]) and clf.gate_closed(foreign)
    loo = tg.gate_leave_one_lab_out(clf, virtual, "stain", calls)
    assert list(loo["lab"]) == ["v0", "v1"] and clf.gate_threshold == envelope  # left as it was
    v0 = calls["lab"] == "v0"
    from bcfeat.crosslab.adaptation import gate_threshold_at

    others = tg.gate_envelope(calls[~v0])
    expected = np.mean([nov > gate_threshold_at(others, n) for nov, n in
                        zip(calls.loc[v0, "gate_novelty"], calls.loc[v0, "call_size"])])
    assert loo["share_of_calls_closed"].iloc[0] == expected
    assert loo["balanced_accuracy_with_texture"].between(0, 1).all()
    threshold = envelope
    calibration = cv.fit_calibration(clf, virtual, "stain", 0.5, 0.5, threshold)
    assert calibration.gate_threshold == [[n, t] for n, t in envelope]
    assert cv.classifier_for("logistic C=0.1 all stain cbr", gate_threshold=calibration.gate_threshold
                             ).gate_threshold_for(n_dev) == gate_threshold_at(envelope, n_dev)
    table, _ = cv.calibration_table(clf, calibration, {"foreign": (foreign, y[rows]), "same": (X[rows], y[rows])})
    assert table.set_index("lab")["gate_closed"].to_dict() == {"foreign": True, "same": False}
    # a setting without texture has no gate and no threshold
    plain = cv.fit_setting(measured, samples, plan, "logistic C=0.1 no_texture stain cbr", 0,
                           gate_threshold=float("inf"), source="pbc_acevedo20")
    assert tg.fit_gate_threshold(plain, virtual, "stain", 0)[0] is None


def test_gate_envelope_glue_reads_the_thresholds_at_100_cells_and_the_largest_call():
    per_lab = pd.DataFrame({"lab": ["v0", "v1"], "share_of_calls_closed": [0.0, 0.5]})
    glue = tg.gate_envelope_glue(((32, 3.0), (100, 2.0), (400, 1.0)), per_lab)
    assert glue == {"crosslab_gate_threshold_100": 2.0, "crosslab_gate_threshold_largest": 1.0,
                    "crosslab_gate_largest_call": 400, "crosslab_gate_loo_closed": 0.25}
    assert np.isnan(tg.gate_envelope_glue(None, per_lab)["crosslab_gate_threshold_100"])


def test_virtual_labs_report_their_measuring_cost_again_when_read_from_the_cache(data_root, tmp_path, monkeypatch):
    """The chapter's "CPU minutes" of the virtual labs are those of measuring them, also on a run that
    finds them measured already (the cache keeps each image's seconds)."""
    from bcfeat.crosslab.virtual_labs import VirtualLab
    from bcfeat.data import scan_dataset

    paths = scan_dataset("cellavision_zheng18", root=data_root).samples["path"].tolist()[:4]
    samples = pd.DataFrame({"path": paths, "label": ["neutrophil"] * 4, "domain": "cellavision_zheng18"})
    labs = [VirtualLab("blurred", blur_sigma=1.0)]
    first = cv.build_virtual_labs(samples, np.arange(4), labs, tmp_path, ["stain+normtex"], 1, 0)
    assert first.minutes > 0 and first.features[("blurred", "stain+normtex")].shape[0] == 4

    def must_not_measure(*args, **kwargs):
        raise AssertionError("measured again")

    monkeypatch.setattr("bcfeat.crosslab.model.CrossLabModel.measure", must_not_measure)
    again = cv.build_virtual_labs(samples, np.arange(4), labs, tmp_path, ["stain+normtex"], 1, 0)
    assert again.minutes == first.minutes
    np.testing.assert_array_equal(again.features[("blurred", "stain+normtex")],
                                  first.features[("blurred", "stain+normtex")])


def test_the_calibration_fits_a_call_accuracy_line_on_virtual_labs_and_judges_the_deployed_probabilities():
    """With a texture gate, the line from the views' disagreement to a call's accuracy is fitted on
    the virtual labs' calls; the calibration table reads every lab through it (what classify
    deploys), and the goals judge calibration on those probabilities."""
    from bcfeat.crosslab.cell_features import feature_groups
    from bcfeat.crosslab.virtual_labs import VirtualLab

    texture = feature_groups()["texture"]
    rng = np.random.default_rng(7)
    samples, plan, X, y = _study(rng, 10)
    codes = pd.factorize(y, sort=True)[0]
    X[:, texture[:10]] += 2.5 * (codes[:, None] == np.arange(10)[None, :] % 5)  # texture carries the class too
    rows = cv.development_rows(samples, plan, 0, 0, source="pbc_acevedo20")

    def lying(share, seed):
        """The development cells, a share of them with the texture of another class."""
        r = np.random.default_rng(seed)
        out = X[rows].copy()
        swap = r.uniform(size=len(rows)) < share
        out[np.ix_(swap, texture[:10])] = np.roll(out[np.ix_(swap, texture[:10])], 1, axis=1)
        return out

    labs = [VirtualLab(f"v{k}") for k in range(5)]
    virtual = cv.VirtualLabs(rows, y[rows], {(lab.name, "stain"): lying(k / 5, k) for k, lab in enumerate(labs)},
                             labs, 0.0)
    measured = {"stain": _Measured(X)}
    clf = cv.fit_setting(measured, samples, plan, "logistic C=0.1 all stain cbr", 0, gate_threshold=float("inf"),
                         source="pbc_acevedo20")
    calls = cv.disagreement_calls(clf, virtual, "stain", call_size=40, n_calls=2)
    assert len(calls) == 5 * (1 + 2 * len(cv.mx.MIXES)) and set(calls["mix"]) == {"all cells", *cv.mx.MIXES}
    whole = calls[calls["mix"] == "all cells"].set_index("lab")
    assert whole["disagreement"].is_monotonic_increasing and whole["accuracy"].iloc[0] > whole["accuracy"].iloc[-1]
    calibration = cv.fit_calibration(clf, virtual, "stain", 0.5, 0.5, calls=calls)
    line = calibration.accuracy_from_disagreement
    assert line["slope"] < 0 and line["n_calls"] == len(calls)
    assert cv.disagreement_glue(calibration)["crosslab_disagreement_slope"] == line["slope"]
    real = {"same": (X[rows], y[rows]), "lying": (lying(0.7, 11), y[rows])}
    table, _ = cv.calibration_table(clf, calibration, real)
    t = table.set_index("lab")
    assert t.loc["lying", "view_disagreement"] > t.loc["same", "view_disagreement"]
    assert t.loc["lying", "estimated_accuracy"] < t.loc["same", "estimated_accuracy"]
    for lab in ("same", "lying"):  # each lab's mean probability is brought to its estimated accuracy
        assert t.loc[lab, "mean_confidence_call"] == pytest.approx(t.loc[lab, "estimated_accuracy"], abs=1e-4)
    assert abs(t.loc["lying", "confidence_gap_call"]) < 0.1
    # goals: calibration judged on the call-calibrated probabilities where they exist
    summary = pd.DataFrame([{"lab": lab, "mix": "own", "call_size": size, "balanced_accuracy": 0.9, "macro_f1": 0.9,
                             "diff_mae_pp": 1.0, "diff_worst_pp": 2.0} for lab in ("same", "lying") for size in (0, 100)])
    goals = cv.goals_table(summary, table, ["lying"])
    glue = cv.goals_glue(goals, "same", ["lying"], "untouched")
    assert glue["crosslab_goal_lying_confidence_gap_call"] == pytest.approx(t.loc["lying", "confidence_gap_call"])
    wide = table.assign(confidence_gap=0.5, confidence_gap_call=0.05)
    assert cv.goals_glue(cv.goals_table(summary, wide, ["lying"]), "same", ["lying"], "u")["crosslab_goal_milestone"] == "met"
    assert cv.goals_glue(cv.goals_table(summary, wide.assign(confidence_gap_call=0.5), ["lying"]), "same", ["lying"],
                         "u")["crosslab_goal_milestone"] == "not met"
    # a classifier without a gate has one view: no calls, no line, the table as before
    plain = cv.fit_setting(measured, samples, plan, "logistic C=0.1 all stain cbr", 0, source="pbc_acevedo20")
    assert cv.disagreement_calls(plain, virtual, "stain").empty
    assert cv.fit_calibration(plain, virtual, "stain", 0.5, 0.5).accuracy_from_disagreement is None
    assert "view_disagreement" not in cv.calibration_table(plain, calibration, real)[0].columns


def test_the_training_labs_out_of_fold_calls_join_the_line_only_where_they_lower_its_error_on_the_virtual_labs():
    """The training lab's own calls are read by fold classifiers that never saw them (same gate,
    same parameters); they sit at low disagreement and high accuracy, and join the line's calls
    only when the line, fitted without a virtual lab, then misses that lab's calls by less."""
    from bcfeat.crosslab.cell_features import feature_groups

    texture = feature_groups()["texture"]
    rng = np.random.default_rng(3)
    samples, plan, X, y = _study(rng, 10)
    codes = pd.factorize(y, sort=True)[0]
    X[:, texture[:10]] += 2.5 * (codes[:, None] == np.arange(10)[None, :] % 5)
    measured = {"stain": _Measured(X)}
    setting = "logistic C=0.1 all stain cbr"
    clf = cv.fit_setting(measured, samples, plan, setting, 0, gate_threshold=float("inf"), source="pbc_acevedo20")
    Xs, ys = cv.source_training_cells(measured, samples, plan, setting, source="pbc_acevedo20")
    assert len(Xs) == len(ys) and set(ys) == set(y)
    calls = cv.source_out_of_fold_calls(clf, Xs, ys, n_folds=3, call_size=20, n_calls=1)
    assert len(calls) == 3 * (1 + len(cv.mx.MIXES))
    assert set(calls["lab"]) == {"source fold 0", "source fold 1", "source fold 2"}
    whole = calls[calls["mix"] == "all cells"]
    assert whole["n_cells"].sum() == len(ys)  # every training cell is read once, by a classifier without it
    assert whole["accuracy"].min() > 0.8 and whole["disagreement"].max() < 0.2
    # a copy of the classifier trained on the same cells would read them all correctly: the folds do not
    refit = cv.CrossLabClassifier(**clf.get_params()).fit(Xs, ys)
    assert np.mean(refit.predict(Xs) == ys) >= whole["accuracy"].mean()
    # no gate, no folds, or a class smaller than the folds: no calls
    plain = cv.fit_setting(measured, samples, plan, setting, 0, source="pbc_acevedo20")
    assert cv.source_out_of_fold_calls(plain, Xs, ys).empty
    assert cv.source_out_of_fold_calls(clf, Xs, ys, n_folds=0).empty
    assert cv.source_out_of_fold_calls(clf, Xs, ys, n_folds=10 ** 6).empty
    few = np.concatenate([np.flatnonzero(ys == c)[:4] for c in np.unique(ys)])  # folds of ~7 cells
    small = cv.source_out_of_fold_calls(clf, Xs[few], ys[few], n_folds=3, call_size=20, n_calls=1)
    # each held-out fold (~7 cells) is below MIN_SITE_CELLS: it is not read as one call, the drawn calls of 20 are
    assert len(small) and (small["n_cells"] >= cv.MIN_SITE_CELLS).all() and "all cells" not in set(small["mix"])
    with pytest.raises(ValueError, match="labels"):
        cv.source_out_of_fold_calls(clf, Xs, ys[:-1])

    # the choice between the readings: virtual labs whose accuracy falls with disagreement from
    # the source's level are fitted better with the source's calls; labs that say otherwise are not
    def virtual_calls(intercept, slope, novelty_slope=0.0, novelty_noise=0.0, seed=0, novelty_step=0.1):
        r = np.random.default_rng(seed)
        rows = []
        for lab in range(4):
            d = r.uniform(0.05, 0.3, 6)
            v = 1.0 + novelty_step * lab + r.normal(0, novelty_noise, 6)  # the labs' novelty: a level per lab
            rows += [{"lab": f"v{lab}", "mix": "own", "n_cells": 100, "disagreement": x, "novelty": n,
                      "accuracy": float(np.clip(intercept + slope * x + novelty_slope * (n - 1) + r.normal(0, 0.01), 0, 1))}
                     for x, n in zip(d, v)]
        return pd.DataFrame(rows)

    source = pd.DataFrame([{"lab": "source fold 0", "mix": "own", "n_cells": 100, "disagreement": 0.0,
                            "novelty": 0.8, "accuracy": 0.98}] * 5)
    agreeing = virtual_calls(0.98, -1.5, novelty_step=0.0)  # one novelty for every call: no line can read it
    used, table = cv.calibration_calls(agreeing, source, 5)
    assert table["novelty"].tolist() == [False, False, True, True] and np.isnan(table["error"].iloc[2])
    assert table["used"].tolist() == [False, True, False, False] and len(used) == len(agreeing) + len(source)
    assert table["error"].iloc[1] < table["error"].iloc[0]
    contrary = virtual_calls(0.6, -0.2, novelty_step=0.0)  # the virtual labs say a shift-free call is far from 0.98
    used, table = cv.calibration_calls(contrary, source, 5)
    assert table["used"].tolist() == [True, False, False, False] and len(used) == len(contrary)
    used, table = cv.calibration_calls(agreeing, source.iloc[:0], 5)  # no source calls: two readings
    assert table["used"].tolist() == [True, False] and len(used) == len(agreeing)
    assert np.isnan(cv.line_error_leave_one_lab_out(agreeing[agreeing["lab"] == "v0"], 5))
    # labs whose accuracy falls with their novelty at the same disagreement: the two-term line wins,
    # and the line it fits reads novelty with a negative slope
    far = virtual_calls(0.9, -0.5, novelty_slope=-1.0)
    used, table = cv.calibration_calls(far, source.iloc[:0], 5)
    assert table["used"].tolist() == [False, True] and table["error"].iloc[1] < table["error"].iloc[0] / 2
    assert cv.line_error_leave_one_lab_out(far, 5, with_novelty=True) == table["error"].iloc[1]
    # novelty that tells nothing of accuracy can still shave the error by chance: by less than one
    # standard error, so the line without it is kept
    noise = virtual_calls(0.98, -1.5, novelty_noise=0.05, seed=1)
    used, table = cv.calibration_calls(noise, source, 5)
    assert table["novelty"].iloc[int(table["error"].idxmin())]
    assert table["used"].tolist() == [False, True, False, False]


def test_real_lab_rule_reports_each_given_site_from_a_choice_made_without_it():
    """Two unseen sites agree on a strong linear model, a third rewards a weak one: the deployed
    setting follows the majority, and the odd site's number is the one its fold (chosen on the
    other two) gives, not its own best."""
    from bcfeat.data.splits import make_splits
    from bcfeat.study.design import StudySites

    rng = np.random.default_rng(7)
    classes = ["basophil", "eosinophil", "lymphocyte", "monocyte", "neutrophil"]
    from bcfeat.crosslab.cell_features import feature_names
    d = len(feature_names())
    y1 = np.repeat(classes, 40)
    codes = pd.factorize(y1, sort=True)[0]
    blocks, domains = [], []
    for site in ("pbc_acevedo20", "jtsc_zheng18", "cellavision_zheng18", "bccd_crops"):
        Xs = rng.normal(size=(len(y1), d))
        Xs[:, :5] += 5.0 * (codes[:, None] == np.arange(5)[None, :])
        blocks.append(Xs)
        domains += [site] * len(y1)
    X = np.vstack(blocks)
    y = np.tile(y1, 4)
    samples = pd.DataFrame({"domain": domains, "label": y, "path": [f"c{i}.png" for i in range(len(y))]})
    plan = make_splits(y, samples["domain"].to_numpy(), n_repetitions=1, test_size=0.2, random_state=0)
    design = StudySites.from_parameters("pbc_acevedo20,jtsc_zheng18,cellavision_zheng18,bccd_crops", "pbc_acevedo20")
    measured = {"stain": _Measured(X)}
    candidates = cv.candidate_settings([0.01, 1.0], ["all"], ["stain"], ["plain"])
    scores = rs.score_on_given_sites(measured, samples, plan, candidates, 0, call_size=40, n_calls=2,
                                     mixes=("own", "typical"), design=design)
    assert set(scores["lab"]) == {"jtsc_zheng18", "cellavision_zheng18", "bccd_crops"}
    assert len(scores) == 6 and scores["balanced_accuracy_all"].between(0.6, 1.0).all()  # chance is 0.2
    assert (scores["balanced_accuracy_se"] > 0).all()
    # the readings table scores each chosen setting on the in-domain site and the untouched lab
    far = {"stain": (X[samples["domain"].to_numpy() == "bccd_crops"] * 3.0, y1)}
    readings = rs.rule_readings(measured, samples, plan, {"weak": candidates[0], "strong": candidates[1]}, far.get, 0,
                                n_calls=2, design=design)
    assert list(readings["reading"]) == ["weak", "strong"]
    assert (readings["in_domain_worst_mix_100"] <= readings["in_domain_all"] + 0.1).all()
    clf = cv.fit_setting(measured, samples, plan, candidates[1], 0, source="pbc_acevedo20")
    assert readings["untouched_all"].iloc[1] == pytest.approx(bas(y1, clf.predict(far["stain"][0])))
    scorer = rs.untouched_scorer(measured, samples, plan, far.get, 0, design=design)
    assert scorer(candidates[1]) == readings["untouched_all"].iloc[1]
    assert np.isnan(rs.untouched_scorer(measured, samples, plan, lambda src: None, 0, design=design)(candidates[1]))
    named = readings.assign(reading=["virtual labs", "real labs, one standard error (nested)"])
    assert rs.rule_readings_glue(named)["crosslab_reading_nested_untouched"] == readings["untouched_all"].iloc[1]
    assert np.isnan(rs.rule_readings(measured, samples, plan, {"w": candidates[0]}, lambda src: None, 0, n_calls=2,
                                     design=design)["untouched_all"].iloc[0])

    # hand-made scores: "strong" wins on x and y, "weak" on z
    sc = pd.DataFrame({"setting": ["strong"] * 3 + ["weak"] * 3, "lab": ["x", "y", "z"] * 2,
                       "balanced_accuracy": [0.80, 0.82, 0.50, 0.70, 0.71, 0.90],
                       "macro_f1": 0.5, "balanced_accuracy_all": [0.81, 0.83, 0.52, 0.69, 0.72, 0.91],
                       "macro_f1_all": 0.5})
    selection = pd.DataFrame({"setting": ["weak", "strong", "detector"], "selection_score": [0.9, 0.8, 0.99],
                              "eligible": [True, True, False]})
    deployed, folds = rs.nested_choice(sc, selection)
    assert deployed == "weak"  # mean 0.770 against 0.707 over all three sites
    folds = folds.set_index("held_out")
    assert folds.loc["z", "chosen"] == "strong"  # chosen on x and y only
    assert folds.loc["z", "held_out_balanced_accuracy_all"] == pytest.approx(0.52)  # not z's own best, 0.91
    assert folds.loc["x", "chosen"] == "weak" and folds.loc["x", "development_score"] == pytest.approx(0.805)
    assert not folds.loc["z", "chose_deployed"] and folds.loc["x", "chose_deployed"]
    assert (folds["virtual_rule_setting"] == "weak").all()  # the detector is not eligible
    shown = rs.nested_display(folds.reset_index())
    assert list(shown.index) == ["x", "y", "z"] and shown.loc["z", "held out, all cells"] == pytest.approx(0.52)
    glue = rs.nested_glue(folds.reset_index(), deployed)
    assert glue["crosslab_nested_worst_all"] == pytest.approx(0.52) and glue["crosslab_nested_all_folds_agree"] == "no"
    with pytest.raises(ValueError, match="at least two"):
        rs.nested_choice(sc[sc["lab"] == "x"], selection)


def test_real_lab_rule_lets_the_virtual_labs_choose_among_settings_the_real_labs_cannot_tell_apart():
    sc = pd.DataFrame({"setting": ["plain", "plain", "cbr", "cbr", "texture", "texture"], "lab": ["x", "y"] * 3,
                       "balanced_accuracy": [0.74, 0.72, 0.73, 0.71, 0.60, 0.62],
                       "balanced_accuracy_se": [0.02, 0.02, 0.02, 0.02, 0.02, 0.02],
                       "macro_f1": 0.5, "balanced_accuracy_all": 0.5, "macro_f1_all": 0.5})
    selection = pd.DataFrame({"setting": ["texture", "cbr", "plain"], "selection_score": [0.81, 0.77, 0.74],
                              "eligible": True})
    # plain is best (0.73) but cbr (0.72) is within its standard error (0.014): the virtual labs decide
    deployed, folds = rs.nested_choice(sc, selection)
    assert deployed == "cbr"
    # texture is the virtual labs' favourite but far below on the real labs: never chosen
    assert "texture" not in set(folds["chosen"])
    # without standard errors the rule is the plain argmax
    deployed, _ = rs.nested_choice(sc.drop(columns="balanced_accuracy_se"), selection)
    assert deployed == "plain"


def test_the_differential_check_table_counts_flagged_calls_per_lab():
    from bcfeat.crosslab.adaptation import CrossLabClassifier
    from bcfeat.crosslab.mixes import CLASSES

    rng = np.random.default_rng(0)
    centres = rng.normal(0, 4, (5, 6))
    y = np.repeat(CLASSES, 80)
    X = centres[np.repeat(np.arange(5), 80)] + rng.normal(size=(len(y), 6))
    clf = CrossLabClassifier().fit(X, y)
    # a lab whose neutrophils look like the training lab's basophils
    Xb = X.copy()
    Xb[y == "neutrophil"] = centres[0] + rng.normal(size=((y == "neutrophil").sum(), 6))
    labs = {"same": (X, y), "misread": (Xb, y), "four classes": (X[y != "basophil"], y[y != "basophil"])}
    table = cv.differential_flag_table(clf, labs, n_calls=6, seed=0).set_index("lab")
    assert list(table.index) == ["same", "misread"]              # a lab without every class cannot be drawn
    assert table.loc["same", "flagged"] == 0 and table.loc["misread", "flagged"] == 1
    assert table.loc["same", "predicted_basophil"] < 5 < 40 < table.loc["misread", "predicted_basophil"]
    assert table["calls"].tolist() == [6, 6] and table["call_size"].tolist() == [100, 100]
    shown = cv.differential_flag_display(table.reset_index())
    assert shown.loc["misread", "share of calls flagged"] == 1 and "% basophil" in shown.columns


def test_the_statistics_comparison_puts_the_deployed_setting_beside_its_other_statistics():
    names = [cv.setting_name(0.03, "all", "stain", st) for st in ("plain", "cbr", "cbr_mix")]
    other = cv.setting_name(0.1, "all", "stain", "cbr")  # another strength: not compared
    sc = pd.DataFrame({"setting": [n for n in names + [other] for _ in range(2)], "lab": ["x", "y"] * 4,
                       "balanced_accuracy": [0.70, 0.60, 0.72, 0.64, 0.75, 0.69, 0.1, 0.1],
                       "balanced_accuracy_all": [0.71, 0.61, 0.73, 0.65, 0.76, 0.70, 0.1, 0.1]})
    selection = pd.DataFrame({"setting": names + [other], "selection_score": [0.80, 0.85, 0.84, 0.9]})
    seen = []
    table = rs.statistics_comparison(sc, selection, names[2], lambda s: seen.append(s) or len(seen) / 10)
    assert table["statistics"].tolist() == ["plain", "cbr", "cbr_mix"] and table["deployed"].tolist() == [False, False, True]
    assert seen == names  # the untouched lab is scored for each, in the table's order
    row = table.set_index("statistics").loc["cbr_mix"]
    assert row["x_mixes"] == 0.75 and row["y_all"] == 0.70 and row["mean_mixes"] == pytest.approx(0.72)
    assert row["virtual_labs"] == 0.84 and row["untouched_all"] == pytest.approx(0.3)
    glue = rs.statistics_glue(table)
    assert glue["crosslab_stats_cbr_mean_all"] == pytest.approx(0.69) and glue["crosslab_stats_plain_untouched_all"] == 0.1
    assert "untouched_all" not in rs.statistics_comparison(sc, selection, names[1]).columns  # no lab given


def test_the_statistics_comparison_keeps_the_columns_every_candidate_left_out():
    """With the ruler check, every candidate's name carries ``drop=1``: the deployed lever variant
    is compared with its candidate's other statistics under those names, not the names without it."""
    names = [cv.setting_name(0.03, "no_fine_texture", "stain", st, drop=[1]) for st in ("plain", "cbr", "cbr_mix")]
    sc = pd.DataFrame({"setting": [n + " stable" for n in names for _ in range(2)], "lab": ["x", "y"] * 3,
                       "balanced_accuracy": [0.70, 0.60, 0.72, 0.64, 0.75, 0.69],
                       "balanced_accuracy_all": [0.71, 0.61, 0.73, 0.65, 0.76, 0.70]})
    selection = pd.DataFrame({"setting": names, "selection_score": [0.80, 0.85, 0.84]})
    table = rs.statistics_comparison(sc, selection, names[2] + " stable")
    assert table["statistics"].tolist() == ["plain", "cbr", "cbr_mix"] and table["deployed"].tolist() == [False, False, True]
    assert table["virtual_labs"].tolist() == [0.80, 0.85, 0.84]


def test_the_mix_cost_names_the_worst_mix_and_its_standard_error_from_the_calls():
    """The cost is the own mix's mean in calls of 100 minus the worst mix's, and its standard error
    combines the two means' (independent draws); few noisy calls give a wide one."""
    from bcfeat.crosslab import mixes as mx

    rng = np.random.default_rng(0)
    rows = []
    for mix, mean in [("own", 0.80), ("balanced", 0.79), ("lymphocyte_heavy", 0.74), ("typical", 0.81)]:
        for size, n in [(0, 1 if mix == "own" else 8), (100, 8)]:
            rows += [{"lab": "lab", "mix": mix, "call_size": size, "call": i, "balanced_accuracy": mean + rng.normal(0, 0.05),
                      "macro_f1": 0.7, "diff_mae_pp": 1.0, "diff_worst_pp": 2.0} for i in range(n)]
    summary = mx.summarize_mixes(pd.DataFrame(rows), group=("lab", "mix", "call_size"))
    calibration = pd.DataFrame([{"lab": "lab", "ece": 0.05, "confidence_gap": 0.01}])
    goals = cv.goals_table(summary, calibration, ["lab"]).iloc[0]
    c100 = summary[summary["call_size"] == 100].set_index("mix")
    worst = c100["balanced_accuracy"].idxmin()
    assert goals["worst_mix"] == worst
    assert goals["worst_mix_cost"] == pytest.approx(c100.loc["own", "balanced_accuracy"] - c100.loc[worst, "balanced_accuracy"])
    expected_se = np.hypot(c100.loc["own", "balanced_accuracy_se"], c100.loc[worst, "balanced_accuracy_se"])
    assert goals["worst_mix_cost_se"] == pytest.approx(expected_se) and 0.015 < expected_se < 0.05
    glue = cv.goals_glue(cv.goals_table(summary, calibration, ["lab"]), "lab", ["lab"], "untouched")
    assert glue["crosslab_goal_lab_worst_mix"] == worst.replace("_", "-")
    assert glue["crosslab_goal_lab_worst_mix_cost_se"] == pytest.approx(expected_se)
    # a summary from before the standard error: the cost as before, its error unknown
    old = cv.goals_table(summary.drop(columns="balanced_accuracy_se"), calibration, ["lab"]).iloc[0]
    assert old["worst_mix_cost"] == goals["worst_mix_cost"] and np.isnan(old["worst_mix_cost_se"])
