"""The cross-domain benchmark on synthetic domains whose answer is known."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn.ensemble import RandomForestClassifier
from sklearn.metrics import balanced_accuracy_score, f1_score

from bcfeat.atomic_io import save_table
from bcfeat.evaluation.benchmark import METRICS, classification_scores, confusion_matrices, default_classifier, domain_matrix, matrix_table, per_class_f1, summarize
from bcfeat.data.splits import as_test_masks, make_splits, SplitPlan

LABELS = ("a", "b", "c")


def small_rf(seed: int) -> RandomForestClassifier:
    return RandomForestClassifier(n_estimators=25, max_depth=16, random_state=seed, n_jobs=1)


def make_domains(n_per_class=40, shift=0.0, noise=0.3, seed=0):
    """Domain "src": three Gaussian blobs on the diagonal; domain "tgt": the same, shifted by ``shift``.

    Both features carry the class, so every split a forest can pick separates the blobs.
    """
    rng = np.random.default_rng(seed)
    X, y, d = [], [], []
    for dom, off in (("src", 0.0), ("tgt", shift)):
        for k, lab in enumerate(LABELS):
            X.append(rng.normal(loc=[2.0 * k + off, 2.0 * k + off], scale=noise, size=(n_per_class, 2)))
            y += [lab] * n_per_class
            d += [dom] * n_per_class
    return np.vstack(X), np.asarray(y), np.asarray(d)


def cell(df, train, test, metric="accuracy"):
    return df[(df.train_domain == train) & (df.test_domain == test)][metric].mean()


def test_separable_domains_score_one_everywhere():
    X, y, d = make_domains(noise=0.1)
    df = domain_matrix(X, y, d, make_classifier=small_rf, random_state=0)
    for m in METRICS:
        assert (df[m] == 1.0).all(), m


def test_shifted_domain_loses_accuracy_across_but_not_within():
    # tgt is shifted by one class spacing: a model trained on src calls tgt's "a" a "b", and so on.
    X, y, d = make_domains(shift=2.0, noise=0.3)
    df = domain_matrix(X, y, d, make_classifier=small_rf, random_state=0)
    assert cell(df, "src", "src") > 0.95 and cell(df, "tgt", "tgt") > 0.95
    assert cell(df, "src", "tgt") < 0.5
    assert cell(df, "tgt", "src") < 0.5
    assert cell(df, "src", "tgt", "balanced_accuracy") < 0.5


def test_rows_columns_and_sizes():
    X, y, d = make_domains(n_per_class=20)
    df = domain_matrix(X, y, d, make_classifier=small_rf, label_space_name="toy3", feature_set_name="blobs",
                       random_state=1, n_repetitions=3)
    assert len(df) == 3 * 2 * 2
    assert list(df.columns) == [
        "feature_set", "label_space", "classifier", "cross_domain_test", "train_domain", "test_domain",
        "in_domain", "repetition",
        "n_train", "n_test", "n_test_classes", "accuracy", "balanced_accuracy", "macro_f1",
    ]
    assert set(df.feature_set) == {"blobs"} and set(df.label_space) == {"toy3"}
    assert set(df.classifier) == {"RandomForestClassifier"} and set(df.cross_domain_test) == {"test"}
    # 60 samples per domain, 20 % test = 12 (4 per class), the rest trains.
    assert (df.n_test == 12).all() and (df.n_train == 48).all()
    assert (df.in_domain == (df.train_domain == df.test_domain)).all()


def test_cross_domain_all_scores_every_sample_of_the_other_domain():
    X, y, d = make_domains(n_per_class=20)
    df = domain_matrix(X, y, d, make_classifier=small_rf, cross_domain_test="all", n_repetitions=2)
    assert (df[~df.in_domain].n_test == 60).all()
    assert (df[df.in_domain].n_test == 12).all()


def test_deterministic_under_random_state_and_sensitive_to_it():
    X, y, d = make_domains(shift=1.0, noise=0.8)
    a = domain_matrix(X, y, d, make_classifier=small_rf, random_state=7)
    b = domain_matrix(X, y, d, make_classifier=small_rf, random_state=7)
    pd.testing.assert_frame_equal(a, b)
    p1 = make_splits(y, d, random_state=7).is_test
    p2 = make_splits(y, d, random_state=8).is_test
    assert not np.array_equal(p1, p2)


def test_splits_are_stratified_within_each_domain():
    X, y, d = make_domains(n_per_class=30)
    plan = make_splits(y, d, n_repetitions=4, test_size=0.2, random_state=0)
    assert plan.is_test.shape == (4, len(y))
    for r in range(4):
        for dom in ("src", "tgt"):
            counts = pd.Series(y[(d == dom) & plan.is_test[r]]).value_counts()
            assert counts.to_dict() == {"a": 6, "b": 6, "c": 6}
    # Repetitions are different random splits.
    assert not np.array_equal(plan.is_test[0], plan.is_test[1])
    assert plan.to_frame().shape == (len(y), 4)


def test_kfold_tests_every_sample_once():
    X, y, d = make_domains(n_per_class=10)
    plan = make_splits(y, d, n_repetitions=5, method="kfold", random_state=0)
    assert (plan.is_test.sum(axis=0) == 1).all()


def test_tiny_classes_go_to_training_and_are_reported():
    X, y, d = make_domains(n_per_class=20)
    # One "d" sample in tgt (like jtsc's single basophil) and one in src.
    X = np.vstack([X, [[10.0, 10.0]], [[10.0, 10.0]]])
    y = np.append(y, ["d", "d"])
    d = np.append(d, ["tgt", "src"])
    with pytest.warns(UserWarning, match="tgt/d"):
        plan = make_splits(y, d, random_state=0)
    assert set(zip(plan.train_only.domain, plan.train_only.label)) == {("tgt", "d"), ("src", "d")}
    assert not plan.is_test[:, y == "d"].any()
    df = domain_matrix(X, y, d, splits=plan, make_classifier=small_rf, labels=("a", "b", "c", "d"))
    assert len(df) == 5 * 4 and df.accuracy.notna().all()


def test_two_sample_class_and_tiny_domain_do_not_crash():
    rng = np.random.default_rng(0)
    y = np.array(["a"] * 12 + ["b"] * 2)
    X = rng.normal(size=(14, 3)) + (y == "b")[:, None] * 5
    d = np.array(["only"] * 14)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to report: every class has >= 2 samples
        df = domain_matrix(X, y, d, make_classifier=small_rf, n_repetitions=5)
    assert len(df) == 5


def test_given_splits_fold_ids_and_masks():
    masks = as_test_masks(np.array([0, 1, 2, -1, 0]), 5)
    assert masks.astype(int).tolist() == [[1, 0, 0, 0, 1], [0, 1, 0, 0, 0], [0, 0, 1, 0, 0]]
    assert as_test_masks(np.array([[0, 1], [1, 0]]), 2).dtype == bool
    assert as_test_masks(np.array(["test", "train", "train"]), 3).tolist() == [[True, False, False]]
    with pytest.raises(ValueError, match="'val'"):
        as_test_masks(np.array(["test", "val"]), 2)
    with pytest.raises(ValueError, match="cover 3 samples"):
        as_test_masks(np.zeros((2, 3), bool), 4)
    with pytest.raises(ValueError, match="0/1"):
        as_test_masks(np.full((2, 3), 2), 3)
    X, y, d = make_domains(n_per_class=10)
    folds = np.arange(len(y)) % 3
    df = domain_matrix(X, y, d, splits=folds, make_classifier=small_rf)
    assert sorted(df.repetition.unique()) == [0, 1, 2]


def test_bad_inputs_name_the_problem():
    X, y, d = make_domains(n_per_class=10)
    with pytest.raises(ValueError, match="outside the label space"):
        domain_matrix(X, y, d, labels=("a", "b"), label_space_name="ab", make_classifier=small_rf)
    with pytest.raises(ValueError, match="equal length"):
        domain_matrix(X[:-1], y, d)
    with pytest.raises(ValueError, match="no samples"):
        domain_matrix(X, y, d, train_domains=["nowhere"], make_classifier=small_rf)


def test_metrics_follow_the_documented_label_rules():
    y_true = ["a", "a", "b", "b"]
    y_pred = ["a", "a", "a", "c"]  # "b" never predicted, "c" never true
    s = classification_scores(y_true, y_pred, labels=("a", "b", "c"))
    assert s["accuracy"] == 0.5
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "y_pred contains classes not in y_true")
        reference = balanced_accuracy_score(y_true, y_pred)
    assert s["balanced_accuracy"] == pytest.approx(reference) == 0.5
    # Macro F1 over the present classes a and b only: F1(a) = 0.8, F1(b) = 0.
    assert s["macro_f1"] == pytest.approx(0.4)
    assert s["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, labels=["a", "b"], average="macro"))


def test_summary_confusion_and_per_class_tables(tmp_path):
    X, y, d = make_domains(shift=1.0, noise=0.6)
    df, preds = domain_matrix(X, y, d, make_classifier=small_rf, labels=LABELS, return_predictions=True,
                              feature_set_name="blobs")
    summ = summarize(df)
    assert len(summ) == 4 and (summ.n_repetitions == 5).all()
    row = summ[(summ.train_domain == "src") & (summ.test_domain == "tgt")].iloc[0]
    sel = df[(df.train_domain == "src") & (df.test_domain == "tgt")]
    assert row.accuracy_mean == pytest.approx(sel.accuracy.mean())
    assert row.accuracy_std == pytest.approx(sel.accuracy.std(ddof=1))
    table = matrix_table(summ)
    assert table.shape == (2, 2) and "±" in table.loc["src", "tgt"]

    # Predictions reproduce the scores.
    assert len(preds) == df.n_test.sum()
    cm = confusion_matrices(preds, labels=LABELS, normalize="true")
    one = cm[(cm.train_domain == "src") & (cm.test_domain == "tgt")]
    assert len(one) == 9 and one["count"].sum() == sel.n_test.sum()
    diag = one[one.true_label == one.predicted_label]["count"].sum()
    assert diag / one["count"].sum() == pytest.approx((sel.accuracy * sel.n_test).sum() / sel.n_test.sum())
    assert one.groupby("true_label")["fraction"].sum().to_numpy() == pytest.approx(1.0)
    square = one.pivot(index="true_label", columns="predicted_label", values="count")
    assert square.shape == (3, 3)

    pcf = per_class_f1(preds, labels=LABELS)
    mean_f1 = pcf.groupby(["train_domain", "test_domain", "repetition"])["f1"].mean()
    merged = df.set_index(["train_domain", "test_domain", "repetition"])["macro_f1"]
    assert mean_f1.sort_index().to_numpy() == pytest.approx(merged.sort_index().to_numpy())

    path = save_table(summ, tmp_path / "sub" / "summary.csv")
    back = pd.read_csv(path)
    assert back.shape == summ.shape and list(back.columns) == list(summ.columns)


def test_default_classifier_is_the_released_forest():
    rf = default_classifier(3)
    assert (rf.max_depth, rf.n_estimators, rf.random_state) == (16, 100, 3)


def test_split_plan_is_accepted_directly():
    X, y, d = make_domains(n_per_class=10)
    plan = make_splits(y, d, n_repetitions=2, random_state=0)
    df = domain_matrix(X, y, d, splits=plan, make_classifier=small_rf)
    assert isinstance(plan, SplitPlan) and df.repetition.nunique() == 2


# --- domain invariance (bcfeat.evaluation.domain_invariance) -------------------------------------------------

from bcfeat.evaluation.domain_invariance import balanced_subsample, median_bandwidth, mmd2_unbiased, pairwise_mmd, site_classification


def two_sites(shift, n_a=400, n_b=120, d=5, seed=0):
    rng = np.random.default_rng(seed)
    X = np.r_[rng.normal(0, 1, (n_a, d)), rng.normal(0, 1, (n_b, d)) + shift]
    return X, np.asarray(["big"] * n_a + ["small"] * n_b)


def test_mmd_matches_a_direct_double_sum():
    rng = np.random.default_rng(0)
    X, Y, bw = rng.normal(size=(6, 3)), rng.normal(1, 1, size=(5, 3)), 1.3
    k = lambda a, b: np.exp(-np.sum((a - b) ** 2) / (2 * bw**2))  # noqa: E731
    xx = sum(k(X[i], X[j]) for i in range(6) for j in range(6) if i != j) / 30
    yy = sum(k(Y[i], Y[j]) for i in range(5) for j in range(5) if i != j) / 20
    xy = sum(k(x, y) for x in X for y in Y) / 30
    assert mmd2_unbiased(X, Y, bw) == pytest.approx(xx + yy - 2 * xy)
    assert median_bandwidth(np.array([[0.0, 0.0], [3.0, 4.0], [0.0, 0.0]])) == 5.0


def test_mmd_near_zero_for_one_distribution_and_large_for_a_shift():
    same = pairwise_mmd(*two_sites(0.0), random_state=0)
    moved = pairwise_mmd(*two_sites(1.5), random_state=0)
    assert len(same) == 1 and same.n_a.iloc[0] == 400 and same.n_b.iloc[0] == 120
    assert abs(same.mmd2.iloc[0]) < 0.02
    assert moved.mmd2.iloc[0] > 0.3
    three = pairwise_mmd(np.r_[two_sites(0.0)[0], np.zeros((10, 5)) + 4],
                         np.r_[two_sites(0.0)[1], ["far"] * 10], max_per_site=100)
    assert len(three) == 3 and (three.n_a <= 100).all()
    assert three.set_index(["site_a", "site_b"]).mmd2.idxmax() == ("big", "far")


@pytest.mark.parametrize("classifier", ["rf", "logreg"])
def test_site_classifier_at_chance_for_one_distribution_high_for_a_shift(classifier):
    same = site_classification(*two_sites(0.0), classifier=classifier, n_repeats=2, n_jobs=1)
    moved = site_classification(*two_sites(2.0), classifier=classifier, n_repeats=2, n_jobs=1)
    # Balanced subsample: 120 per site however big the other one is, so chance is 0.5.
    assert (same.n_per_site == 120).all() and (same.chance == 0.5).all()
    assert len(same) == 2 * 5
    assert abs(same.accuracy.mean() - 0.5) < 0.1
    assert moved.accuracy.mean() > 0.9 and moved.balanced_accuracy.mean() > 0.9


def test_balanced_subsample_is_seeded_and_checks_sizes():
    dom = np.array(["a"] * 10 + ["b"] * 4)
    i1, i2 = balanced_subsample(dom, 3, 1), balanced_subsample(dom, 3, 1)
    np.testing.assert_array_equal(i1, i2)
    assert (dom[i1] == "a").sum() == 3 and (dom[i1] == "b").sum() == 3
    with pytest.raises(ValueError, match="'b' has 4 samples"):
        balanced_subsample(dom, 5)
    with pytest.raises(ValueError, match="at least 2 sites"):
        site_classification(np.zeros((10, 2)), ["a"] * 10)
