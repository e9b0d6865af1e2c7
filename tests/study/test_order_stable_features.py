import numpy as np
import pandas as pd
import pytest

from bcfeat.crosslab.cell_features import feature_names
from bcfeat.study import order_stable_features as osf
from bcfeat.study.crosslab_settings import feature_set_columns

CLASSES = np.array(["basophil", "eosinophil", "lymphocyte", "monocyte", "neutrophil"])
SETTING = "logistic C=0.1 no_fine_texture stain cbr"


def _lab(rng, centres, n=60, noise=1.0):
    y = np.repeat(CLASSES, n)
    return np.repeat(centres, n, axis=0) + rng.normal(0, noise, (len(y), centres.shape[1])), y


def _labs(reversed_on: dict[str, list[int]], seed: int = 0):
    """A training lab and labs that keep its class order except on the columns named per lab,
    where the classes sit the other way round."""
    rng = np.random.default_rng(seed)
    d = len(feature_names())
    centres = np.zeros((5, d))
    used = list(feature_set_columns("no_fine_texture"))
    centres[:, used[:12]] = rng.normal(0, 2.0, (5, 12))  # twelve informative features, the rest noise
    source = _lab(rng, centres)
    labs = {}
    for name, cols in reversed_on.items():
        c = centres.copy()
        c[:, cols] = -c[:, cols]
        labs[name] = _lab(rng, c, n=40)
    return source, labs, used


def test_a_feature_reversed_on_one_given_lab_is_dropped_for_the_others_not_for_that_lab():
    source, labs, used = _labs({"a": [], "b": [], "flipped": [0, 1, 2, 3, 4, 5]}, seed=0)
    flipped_cols = used[:6]
    corr = osf.profile_correlations(source, labs)
    assert (corr.loc["flipped", flipped_cols] < -0.9).all() and (corr.loc["a", used[:12]] > 0.9).all()
    kept_without = osf.order_stable_columns(corr, used, ["a", "b"])
    kept_all = osf.order_stable_columns(corr, used, ["a", "b", "flipped"])
    assert set(flipped_cols) <= set(kept_without) and not set(flipped_cols) & set(kept_all)

    table = osf.order_stable_table(source, {**labs, "untouched": labs["flipped"]}, ["a", "b", "flipped"],
                                   SETTING, 0).set_index("lab")
    # the flipped lab is read with the features kept on a and b: its reversal is not seen, nothing gained
    assert table.loc["flipped", "kept_on"] == "a, b" and table.loc["flipped", "gain"] == pytest.approx(0.0, abs=0.02)
    # a lab not among the given ones gets the features kept on all three: the reversed ones are gone
    assert table.loc["untouched", "n_dropped"] >= 6
    assert table.loc["untouched", "gain"] > 0.2 and table.loc["untouched", "balanced_accuracy_all"] > 0.9
    assert set(table.columns) == set(osf.COLUMNS) - {"lab"}
    # a setting that reads every feature: the same features dropped
    every = osf.order_stable_table(source, {**labs, "untouched": labs["flipped"]}, ["a", "b", "flipped"],
                                   "logistic C=0.1 all stain cbr", 0).set_index("lab")
    assert every.loc["untouched", "n_features"] + every.loc["untouched", "n_dropped"] == len(feature_names())
    assert every.loc["untouched", "gain"] > 0.2


def test_a_given_labs_own_labels_never_choose_its_features():
    source, labs, _ = _labs({"a": [], "b": [3], "c": [7]}, seed=1)
    before = osf.order_stable_table(source, labs, ["a", "b", "c"], SETTING, 0).set_index("lab")
    X, y = labs["c"]
    shuffled = {**labs, "c": (X, np.random.default_rng(2).permutation(y))}
    after = osf.order_stable_table(source, shuffled, ["a", "b", "c"], SETTING, 0).set_index("lab")
    assert after.loc["c", "n_features"] == before.loc["c", "n_features"]
    assert after.loc["a", "n_features"] != before.loc["a", "n_features"] or after.loc["b", "n_features"] != before.loc["b", "n_features"]


def test_the_lever_needs_two_given_labs_and_known_labs():
    source, labs, used = _labs({"a": []})
    with pytest.raises(ValueError, match="needs two"):
        osf.order_stable_table(source, labs, ["a"], SETTING, 0)
    corr = osf.profile_correlations(source, labs)
    with pytest.raises(KeyError, match="nowhere"):
        osf.order_stable_columns(corr, used, ["nowhere"])
    with pytest.raises(ValueError, match="at least one lab"):
        osf.order_stable_columns(corr, used, [])
    glue = osf.order_stable_glue(pd.DataFrame(columns=osf.COLUMNS), ["a"])
    assert np.isnan(glue["crosslab_stable_given_mean_gain"])


def test_a_lab_whose_order_cannot_be_read_anywhere_gets_no_score_not_an_error():
    source, labs, _ = _labs({"a": [], "b": []}, seed=3)
    X, y = labs["b"]
    one_class = (X[y == "basophil"], y[y == "basophil"])  # no class profile to read on b
    table = osf.order_stable_table(source, {"a": labs["a"], "b": one_class}, ["a", "b"], SETTING, 0).set_index("lab")
    assert table.loc["a", "n_features"] == 0 and np.isnan(table.loc["a", "balanced_accuracy_all"])
    assert table.loc["b", "n_features"] > 0 and np.isfinite(table.loc["b", "balanced_accuracy_all"])


def test_a_feature_missing_on_some_cells_keeps_its_order_not_dropped_for_the_gaps():
    source, labs, used = _labs({"a": [], "b": []}, seed=4)
    col = used[0]
    X, y = labs["a"]
    X = X.copy()
    X[::7, col] = np.nan   # not measured on every seventh cell (a photograph without red cells, say)
    corr = osf.profile_correlations(source, {"a": (X, y), "b": labs["b"]})
    assert corr.loc["a", col] > 0.9
    assert col in osf.order_stable_columns(corr, used, ["a", "b"])


# ----------------------------------------------------------------------------- the lever as the rule's candidate
def test_a_setting_name_with_left_out_columns_rebuilds_a_classifier_that_never_reads_them():
    from bcfeat.study.crosslab_settings import (base_setting, classifier_for, parse_setting, plain_name,
                                                setting_name, texture_gate_columns)
    from bcfeat.crosslab.cell_features import feature_groups

    texture = feature_groups()["texture"]
    name = setting_name(0.1, "all", "stain", "cbr", drop=[texture[0], 7, 3])
    assert parse_setting(name)["drop"] == tuple(sorted([texture[0], 7, 3])) and base_setting(name) == setting_name(
        0.1, "all", "stain", "cbr")
    assert parse_setting(plain_name(name) + " plain")["drop"] == parse_setting(name)["drop"]
    gated = texture_gate_columns("all", parse_setting(name)["drop"])
    assert texture[0] not in gated and set(texture[1:]) <= set(gated)
    source, labs, _ = _labs({"a": []}, seed=5)
    X, y = source
    clf = classifier_for(name, 0).fit(X, y)
    moved = X.copy()
    moved[:, [3, 7, texture[0]]] = np.random.default_rng(0).normal(0, 50, (len(X), 3))
    assert (clf.predict(moved) == clf.predict(X)).all() and len(clf.columns) == len(feature_names()) - 3
    assert clf.gate_columns is None  # no gate asked for
    for bad, match in (("drop=a,b", "integers"), (f"drop={len(feature_names())}", "out of range")):
        with pytest.raises(ValueError, match=match):
            parse_setting(f"logistic C=0.1 all stain cbr {bad}")


def _scores(rows):
    base = {"macro_f1": 0.5, "macro_f1_all": 0.5}
    table = pd.DataFrame([{**base, "setting": s, "lab": lab, "excluded": ex, "balanced_accuracy": ba,
                           "balanced_accuracy_all": ba} for s, lab, ex, ba in rows])
    return table


def test_the_rule_reads_a_lever_candidate_only_where_its_features_were_kept_without_the_fold_s_site():
    from bcfeat.study import real_lab_selection as rs

    sites = ["x", "y", "z"]
    rows = [("a", g, "", 0.70) for g in sites]
    rows += [("a stable", g, "", 0.80) for g in sites]  # each site read with the features kept on the other two
    # kept on one site only (the fold also holds out the third): good without x, poor without z
    rows += [("a stable", g, h, {"x": 0.85, "y": 0.75, "z": 0.60}[h]) for g in sites for h in sites if h != g]
    selection = pd.DataFrame({"setting": ["a", "b"], "selection_score": [0.8, 0.9], "eligible": [True, False]})
    rows += [("b", g, "", 0.99) for g in sites] + [("b stable", g, "", 0.99) for g in sites]  # not eligible
    deployed, folds = rs.nested_choice(_scores(rows), selection)
    folds = folds.set_index("held_out")
    assert deployed == "a stable"
    assert folds.loc["x", "chosen"] == "a stable" and folds.loc["x", "development_score"] == pytest.approx(0.85)
    # without z, the lever's features are those kept on x (or y) alone, and they lose: the fold keeps "a",
    # although the rows that read z's labels (kept on the other two) would have chosen the lever
    assert folds.loc["z", "chosen"] == "a"
    # each held-out number is the site read with the features kept on the other sites, never on its own
    assert folds.loc["x", "held_out_balanced_accuracy_all"] == pytest.approx(0.80)
    assert folds.loc["z", "held_out_balanced_accuracy_all"] == pytest.approx(0.70)
    g = osf.lever_choice_glue(folds.reset_index(), deployed, "logistic C=0.1 all stain cbr drop=0", True)
    assert g["crosslab_lever_folds"] == 2 and g["crosslab_headline_dropped"] == feature_names()[0]


def test_a_lever_candidate_that_cannot_be_built_without_the_fold_s_site_sits_that_fold_out():
    from bcfeat.study import real_lab_selection as rs

    # two given sites: a fold that holds one out has no other site to read the order on
    rows = [("a", g, "", 0.70) for g in ("x", "y")] + [("a stable", g, "", 0.90) for g in ("x", "y")]
    selection = pd.DataFrame({"setting": ["a"], "selection_score": [0.8], "eligible": [True]})
    deployed, folds = rs.nested_choice(_scores(rows), selection)
    assert deployed == "a stable" and (folds["chosen"] == "a").all()
    # a tie on the real labs goes to the setting as it is (the virtual labs cannot tell them apart)
    tie = [("a", g, "", 0.70) for g in ("x", "y")] + [("a stable", g, "", 0.70) for g in ("x", "y")]
    assert rs.nested_choice(_scores(tie), selection)[0] == "a"


def _given_sites_study(reversed_on: dict[str, list[int]], seed: int = 0):
    """A source site and three given sites; on each given site the named columns' classes sit the
    other way round."""
    from bcfeat.data.splits import make_splits
    from bcfeat.study.design import StudySites

    rng = np.random.default_rng(seed)
    d = len(feature_names())
    y1 = np.repeat(CLASSES, 40)
    codes = pd.factorize(y1, sort=True)[0]
    sites = ["pbc_acevedo20", "jtsc_zheng18", "cellavision_zheng18", "bccd_crops"]
    blocks = []
    for site in sites:
        Xs = rng.normal(size=(len(y1), d))
        Xs[:, :10] += 4.0 * (codes[:, None] == np.arange(10)[None, :] % 5)
        Xs[:, reversed_on.get(site, [])] *= -1.0
        blocks.append(Xs)
    y = np.tile(y1, 4)
    samples = pd.DataFrame({"domain": np.repeat(sites, len(y1)), "label": y, "path": [f"c{i}.png" for i in range(len(y))]})
    plan = make_splits(y, samples["domain"].to_numpy(), n_repetitions=1, test_size=0.2, random_state=0)
    design = StudySites.from_parameters(",".join(sites), sites[0])

    class _Measured:
        def __init__(self, features):
            self.features = features

    return {"stain": _Measured(np.vstack(blocks))}, samples, plan, design


def test_stable_candidates_are_scored_with_features_no_site_chose_for_itself():
    from bcfeat.study import real_lab_selection as rs
    from bcfeat.study.crosslab_settings import parse_setting

    name = "logistic C=0.1 all stain plain"
    measured, samples, plan, design = _given_sites_study({"bccd_crops": [0, 1]})
    kw = dict(call_size=40, n_calls=2, mixes=("own", "typical"), design=design)
    scores = rs.score_stable_candidates(measured, samples, plan, [name], 0, **kw)
    assert (scores["setting"] == name + " stable").all() and len(scores) == 9  # 3 sites x (itself, 2 folds)
    drop = {(r.lab, r.excluded): set(parse_setting(r.variant)["drop"]) for r in scores.itertuples()}
    # bccd's reversal is seen wherever bccd's labels may be read, and never where bccd is scored
    assert {0, 1} <= drop[("jtsc_zheng18", "")] and {0, 1} <= drop[("jtsc_zheng18", "cellavision_zheng18")]
    assert not {0, 1} & drop[("jtsc_zheng18", "bccd_crops")] and not {0, 1} & drop[("bccd_crops", "")]
    deployed = rs.deployable_setting(name + " stable", measured, samples, plan, design=design)
    assert {0, 1} <= set(parse_setting(deployed)["drop"]) and rs.deployable_setting(name, measured, samples, plan,
                                                                                      design=design) == name
    # bccd, read with its reversed columns, is scored lower by the setting as it is than by its lever
    as_is = rs.score_on_given_sites(measured, samples, plan, [name], 0, **kw).set_index("lab")
    assert scores.set_index(["lab", "excluded"]).loc[("jtsc_zheng18", ""), "balanced_accuracy_all"] >= 0.9
    # shuffling bccd's labels changes what the others drop, never the features bccd itself is scored with
    shuffled = samples.copy()
    at = shuffled["domain"] == "bccd_crops"
    shuffled.loc[at, "label"] = np.random.default_rng(1).permutation(shuffled.loc[at, "label"].to_numpy())
    again = rs.score_stable_candidates(measured, shuffled, plan, [name], 0, **kw)
    again_drop = {(r.lab, r.excluded): set(parse_setting(r.variant)["drop"]) for r in again.itertuples()}
    assert again_drop[("bccd_crops", "")] == drop[("bccd_crops", "")]
    assert again_drop[("jtsc_zheng18", "")] != drop[("jtsc_zheng18", "")]
    assert as_is.loc["bccd_crops", "balanced_accuracy_all"] < 0.9
