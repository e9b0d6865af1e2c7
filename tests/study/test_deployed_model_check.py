import numpy as np
import pytest

from bcfeat.crosslab.adaptation import CrossLabClassifier
from bcfeat.crosslab.model import CrossLabConfig, CrossLabModel
from bcfeat.crosslab.view_agreement import AccuracyFromDisagreement, view_disagreement
from bcfeat.study import deployed_model_check as dmc


def _lab(rng, n_per_class=80, texture_lies=False):
    """Three classes told apart by 3 'shape' and 4 'texture' columns; where the texture lies,
    class a's texture looks like class c's."""
    y = np.repeat(["a", "b", "c"], n_per_class)
    k = np.searchsorted(["a", "b", "c"], y)
    kt = np.where(k == 0, 2, k) if texture_lies else k
    return np.hstack([k[:, None] * 2.5 + rng.normal(size=(len(y), 3)),
                      kt[:, None] * 2.0 + rng.normal(size=(len(y), 4))]), y


def _model(rng, with_line=True):
    """A classifier with a texture gate (two readings) and, optionally, an accuracy line: 95 % at no
    disagreement, half a point less per point of disagreement."""
    X, y = _lab(rng)
    clf = CrossLabClassifier(C=1.0, statistics="cbr", gate_columns=(3, 4, 5, 6), gate_threshold=float("inf")).fit(X, y)
    line = AccuracyFromDisagreement(intercept=0.95, slope=-0.5, floor=0.34, n_calls=9, residual_std=0.05)
    clf.calibration_ = {"uncertain_min_probability": 0.6,
                        **({"accuracy_from_disagreement": line.to_dict()} if with_line else {})}
    return CrossLabModel(CrossLabConfig(mask_source="stain"), None, clf)


def test_the_deployed_file_is_scored_as_classify_gives_it_its_probabilities_brought_to_the_calls_estimate():
    rng = np.random.default_rng(5)
    labs = {"ordinary": _lab(rng), "lying": _lab(rng, texture_lies=True)}
    table = dmc.deployed_file_table(_model(np.random.default_rng(6)), labs).set_index("lab")
    plain = dmc.deployed_file_table(_model(np.random.default_rng(6), with_line=False), labs).set_index("lab")
    lying, raw = table.loc["lying"], plain.loc["lying"]
    assert lying["accuracy"] == pytest.approx(raw["accuracy"])     # the classes never change
    # the call's probabilities are brought to the line's estimate at the call's disagreement
    full, fallback = _model(np.random.default_rng(6)).classifier.view_probabilities(labs["lying"][0])
    assert lying["estimated_accuracy"] == pytest.approx(max(0.34, 0.95 - 0.5 * view_disagreement(full, fallback)))
    assert lying["estimated_accuracy"] == pytest.approx(lying["mean_probability"], abs=1e-3)
    assert lying["confidence_gap"] == pytest.approx(lying["mean_probability"] - lying["accuracy"])
    assert raw["confidence_gap"] > 0.15 and abs(lying["confidence_gap"]) < raw["confidence_gap"]
    assert np.isnan(raw["estimated_accuracy"]) and lying["n_warnings"] >= 1
    assert lying["uncertain_share"] > raw["uncertain_share"] and 0 < lying["uncertain_catch"] <= 1
    assert table.loc["ordinary", "accuracy"] > 0.9 and table.loc["ordinary", "n_cells"] == 240
    glue = dmc.deployed_file_glue(table.reset_index())
    assert glue["crosslab_deployed_lying_confidence_gap"] == pytest.approx(lying["confidence_gap"])
    assert isinstance(glue["crosslab_deployed_ordinary_n_cells"], int)


def test_labels_the_model_file_does_not_know_are_named():
    rng = np.random.default_rng(7)
    X, y = _lab(rng)
    with pytest.raises(ValueError, match="lab odd: labels \\['z'\\]"):
        dmc.deployed_file_table(_model(rng), {"odd": (X, np.where(y == "a", "z", y))})
    with pytest.raises(ValueError, match="no classifier"):
        dmc.deployed_file_table(CrossLabModel(CrossLabConfig(mask_source="stain")), {"lab": (X, y)})
