"""The cross-lab classifier without scikit-learn at classification time: a model file's logistic
regression computes scikit-learn's numbers, the classifier keeps scikit-learn's parameter protocol,
and ``bcfeat classify`` never imports scikit-learn."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression

from bcfeat.crosslab.adaptation import CrossLabClassifier
from bcfeat.crosslab.estimator_api import FittedLogistic
from bcfeat.crosslab.model import CrossLabConfig, CrossLabModel, save_model
from tests.crosslab.test_crosslab_method import two_class_lab


@pytest.mark.parametrize("n_classes", [2, 3, 5])
def test_the_file_logistic_regression_gives_scikit_learns_numbers_bit_for_bit(n_classes):
    rng = np.random.default_rng(n_classes)
    y = np.repeat(np.array(["a", "b", "c", "d", "e"][:n_classes]), 40)
    X = rng.normal(size=(len(y), 7)) + (np.searchsorted(np.unique(y), y)[:, None] * 0.7)
    fitted = LogisticRegression(C=0.1, max_iter=3000, class_weight="balanced").fit(X, y)
    ours = FittedLogistic(fitted.classes_, fitted.coef_, fitted.intercept_)
    Z = rng.normal(scale=3.0, size=(300, 7))
    Z_f = np.asfortranarray(Z)  # a column-major call, as a slice of a feature table can be
    for data in (Z, Z_f, Z[::2]):
        assert np.array_equal(ours.decision_function(data), fitted.decision_function(data))
        assert np.array_equal(ours.predict_proba(data), fitted.predict_proba(data))
        assert np.array_equal(ours.predict(data), fitted.predict(data))
    with pytest.raises(ValueError, match="reads 7 features"):
        ours.predict_proba(Z[:, :3])
    with pytest.raises(ValueError, match="needs coef"):
        FittedLogistic(fitted.classes_, fitted.coef_, np.zeros(len(fitted.intercept_) + 1))


def test_the_classifier_keeps_scikit_learns_parameter_protocol():
    clf = CrossLabClassifier(C=0.5, columns=(0, 2), statistics="cbr")
    twin = clone(clf)
    assert twin is not clf and twin.get_params() == clf.get_params()
    assert twin.set_params(C=2.0).C == 2.0 and clf.C == 0.5
    with pytest.raises(ValueError, match="invalid parameter 'c'"):
        clf.set_params(c=1.0)
    assert repr(clf) == "CrossLabClassifier(C=0.5, columns=(0, 2), statistics='cbr')"
    with pytest.raises(NotFittedError):
        clf.predict(np.zeros((20, 3)))
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 30)
    X = y[:, None] * 3.0 + rng.normal(size=(60, 3))
    assert clone(clf).fit(X, y).score(X, y) == pytest.approx(1.0)
    assert clf.__sklearn_tags__().estimator_type == "classifier"


def test_a_classifier_read_from_its_file_classifies_as_the_fitted_one(tmp_path):
    """The fitted classifier's scikit-learn estimator and the file's FittedLogistic give one table."""
    from bcfeat.crosslab.folders import classify_cells
    from bcfeat.crosslab.model import load_model
    from bcfeat.runner.cli import main

    two_class_lab(tmp_path)
    base = save_model(tmp_path / "base.pt", CrossLabModel(CrossLabConfig(mask_source="stain")))
    clf_file = tmp_path / "clf.pt"
    assert main(["train-classifier", str(base), str(tmp_path / "lab"), "--output", str(clf_file)]) == 0
    read = load_model(clf_file)
    assert isinstance(read.classifier.estimator_, FittedLogistic)
    files = sorted(str(p) for p in (tmp_path / "lab").rglob("*.png"))
    labels = [p.split("/")[-2] for p in files]
    feats, _ = read.measure(files)
    fitted = CrossLabClassifier(**read.classifier.get_params()).fit(feats, labels)
    assert isinstance(fitted.estimator_, LogisticRegression)
    new = sorted(str(p) for p in (tmp_path / "new").glob("*.png"))
    found: list[bool] = []
    new_feats, _ = read.measure(new, found=found)
    found = np.asarray(found)
    tables = []
    for clf in (read.classifier, fitted):
        model = CrossLabModel(read.config, classifier=clf)
        tables.append(classify_cells(model, pd.Series(new), new_feats, found, tmp_path / "new"))
    pd.testing.assert_frame_equal(tables[0], tables[1], check_exact=True)


def test_classify_never_imports_scikit_learn(tmp_path):
    from bcfeat.runner.cli import main

    two_class_lab(tmp_path)
    base = save_model(tmp_path / "base.pt", CrossLabModel(CrossLabConfig(mask_source="stain")))
    clf = tmp_path / "clf.pt"
    assert main(["train-classifier", str(base), str(tmp_path / "lab"), "--output", str(clf)]) == 0
    out = tmp_path / "p.csv"
    code = ("import sys; from bcfeat.runner.cli import main; "
            f"status = main(['classify', {str(clf)!r}, {str(tmp_path / 'new')!r}, '--output', {str(out)!r}]); "
            "print(status, sorted({m.split('.')[0] for m in sys.modules} & {'sklearn', 'torch'}))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip().splitlines()[-1] == "0 []", result.stdout + result.stderr
    assert len(pd.read_csv(out)) == len(list((tmp_path / "new").glob("*.png")))
