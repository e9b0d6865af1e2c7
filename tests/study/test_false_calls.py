"""bcfeat.study.false_calls: the push of a lab's false calls, split over features, groups and cell parts."""

from __future__ import annotations

import numpy as np
import pytest

from bcfeat.crosslab.adaptation import CrossLabClassifier
from bcfeat.study import false_calls as fc

NAMES = ["nucleus_od", "cytoplasm_chroma_r", "cell_area"]
GROUPS = {"colour": [0, 1], "size": [2]}


@pytest.fixture(scope="module")
def classifier():
    rng = np.random.default_rng(0)
    y = np.repeat(np.array(["a", "b", "c"]), 150)
    centres = {"a": (0.0, 0.0, 0.0), "b": (3.0, 0.0, 0.0), "c": (0.0, 3.0, 0.0)}
    X = np.array([centres[c] for c in y]) + rng.normal(size=(len(y), 3))
    return CrossLabClassifier(site_standardize=False, balance_rounds=0).fit(X, y)


def test_the_push_into_a_class_is_carried_by_the_feature_that_moved(classifier):
    rng = np.random.default_rng(1)
    # "a" cells whose cytoplasm reads like "c"'s (feature 1 shifted), and "b" cells read correctly
    shifted = np.c_[rng.normal(0, 0.3, 40), np.full(40, 3.0), rng.normal(0, 0.3, 40)]
    fine = np.c_[np.full(30, 3.0), rng.normal(0, 0.3, 30), rng.normal(0, 0.3, 30)]
    lab = (np.vstack([shifted, fine]), np.array(["a"] * 40 + ["b"] * 30))
    push, top = fc.false_call_push(classifier, {"lab": lab}, "c", GROUPS, NAMES)
    assert set(push["n_false"]) == {40}
    by = push.set_index(["grouping", "group"])["push"]
    assert by[("part", "cytoplasm")] > 1.0 > abs(by[("part", "nucleus")])
    assert by[("group", "colour")] == pytest.approx(by[("part", "cytoplasm")] + by[("part", "nucleus")])
    assert abs(by[("group", "size")]) < 0.3
    assert top.iloc[0]["feature"] == "cytoplasm_chroma_r" and list(top["rank"]) == [1, 2, 3]
    assert top.iloc[0]["value"] > 1.0  # the shifted feature sits far above the classifier's centre
    shown = fc.false_call_display(push, top)
    assert shown.loc["false calls", "lab"] == 40 and shown.loc["features pushing most", "lab"].startswith("cytoplasm")
    glued = fc.false_call_glue(push, top)
    assert glued["crosslab_false_c_lab_n"] == 40 and glued["crosslab_false_c_lab_top_feature"] == "cytoplasm_chroma_r"
    assert glued["crosslab_false_c_lab_part_cytoplasm"] == pytest.approx(by[("part", "cytoplasm")])
    assert glued["crosslab_false_c_lab_top_value"] == pytest.approx(top.iloc[0]["value"])


def test_a_lab_without_false_calls_has_no_push_and_no_top_features(classifier):
    rng = np.random.default_rng(2)
    lab = (np.c_[np.full(30, 3.0), rng.normal(0, 0.3, 30), rng.normal(0, 0.3, 30)], np.array(["b"] * 30))
    push, top = fc.false_call_push(classifier, {"clean": lab}, "c", GROUPS, NAMES)
    assert set(push["n_false"]) == {0} and push["push"].isna().all() and top.empty
    assert fc.false_call_display(push, top).loc["false calls", "clean"] == 0


def test_cell_part_reads_the_feature_name():
    assert [fc.cell_part(n) for n in ("ring0_od_sum", "cell_od_r_std", "contrast_nucleus", "cytoplasm_dog_s1")] == [
        "rings", "cell", "other", "cytoplasm"]
