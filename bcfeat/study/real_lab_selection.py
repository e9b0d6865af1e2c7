"""The real-lab selection rule of the cross-lab study, nested (chapter "Beyond the paper",
``notebooks/07_crosslab.py``).

The virtual labs (:mod:`bcfeat.study.crosslab_validation`) failed to foresee what breaks on real
labs, so the deployed setting is chosen on the given unseen sites: each of them reports the
setting chosen on the others (leave one site out), so no reported number was chosen with its own
labels, and the setting chosen on all of them is deployed; the untouched lab checks it. Among
settings the given sites cannot tell apart (one standard error), the virtual labs choose.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from bcfeat.crosslab import mixes as mx
from bcfeat.data.splits import SplitPlan
from bcfeat.study.crosslab_settings import STATISTICS, parse_setting, setting_name
from bcfeat.study.crosslab_validation import LABELS, fit_setting, real_labs, score_on_labs, source_training_cells
from bcfeat.study.design import StudySites

SELECTION_RULES = ("virtual_labs", "real_labs_nested")


MIXES = ("own", "balanced", "typical", "neutrophil_heavy", "lymphocyte_heavy")


def _score_rows(name: str, clf, labs: dict, calls: pd.DataFrame, **extra) -> list[dict]:
    """One row per lab of ``labs`` for a fitted classifier: the mean balanced accuracy of its calls
    (``calls``, :func:`score_on_labs`), their standard error and macro-F1, and all cells in one call."""
    rows = []
    for lab, (X, y) in labs.items():
        mine = calls[calls["lab"] == lab]
        whole = mx.call_scores(y, clf.predict(X), LABELS)
        ba = mine["balanced_accuracy"].to_numpy(float)
        rows.append({"setting": name, "lab": lab, **extra, "balanced_accuracy": float(ba.mean()),
                     "balanced_accuracy_se": float(ba.std(ddof=1) / np.sqrt(len(ba))) if len(ba) > 1 else 0.0,
                     "macro_f1": float(mine["macro_f1"].mean()),
                     "balanced_accuracy_all": float(whole["balanced_accuracy"]),
                     "macro_f1_all": float(whole["macro_f1"])})
    return rows


def score_on_given_sites(measured: dict, samples: pd.DataFrame, plan: SplitPlan, candidates: Sequence[str],
                         seed: int, call_size: int = 100, n_calls: int = 3, mixes: Sequence[str] = MIXES,
                         *, design: StudySites) -> pd.DataFrame:
    """Each candidate on each given unseen site, scored as the virtual labs are (calls of
    ``call_size`` under every mix) and with all of the site's cells in one call: one row per
    (setting, lab) with ``balanced_accuracy`` (mean over the calls), ``macro_f1``,
    ``balanced_accuracy_all`` and ``macro_f1_all``, and ``balanced_accuracy_se`` (the standard
    error of the calls' mean). This reads the given sites' labels: a number
    it gives is held out only for a choice that did not read that site (:func:`nested_choice`)."""
    rows = []
    for name in candidates:
        s = parse_setting(name)
        clf = fit_setting(measured, samples, plan, name, seed, source=design.source)
        labs = _given_labs(measured, samples, plan, s["source"], design)
        rows += _score_rows(name, clf, labs, score_on_labs(clf, labs, mixes, (call_size,), n_calls, seed))
    return pd.DataFrame(rows)


def _given_labs(measured: dict, samples: pd.DataFrame, plan: SplitPlan, measurement: str,
                design: StudySites) -> dict:
    return {k: v for k, v in real_labs(measured, samples, plan, measurement, design=design).items()
            if k != design.source}


def score_stable_candidates(measured: dict, samples: pd.DataFrame, plan: SplitPlan, candidates: Sequence[str],
                            seed: int, call_size: int = 100, n_calls: int = 3, mixes: Sequence[str] = MIXES,
                            *, design: StudySites) -> pd.DataFrame:
    """Each candidate's order-stable variant (``"<setting> stable"``,
    :mod:`bcfeat.study.order_stable_features`) scored as :func:`score_on_given_sites` scores the
    candidate, once per (given site g, site held out by a fold h): on g, with the columns whose
    class order holds on the given sites other than g and h (``excluded`` = h; ``""``: only g
    itself is not read, the row of the deployment choice and of the reported held-out number), so
    no site's labels ever choose the features it is scored with, nor those of the fold that holds
    it out. ``variant`` is the setting name of the classifier scored. A (g, h) with no other site
    left, or whose order can be read on no feature, has no row."""
    from bcfeat.study.order_stable_features import STABLE_SUFFIX, profile_correlations, stable_setting

    rows = []
    for name in candidates:
        s = parse_setting(name)
        labs = _given_labs(measured, samples, plan, s["source"], design)
        correlations = profile_correlations(source_training_cells(measured, samples, plan, name, source=design.source),
                                            labs)
        fitted: dict[str, object] = {}
        for g in labs:
            for h in [""] + [x for x in labs if x != g]:
                kept_on = [x for x in labs if x not in (g, h)]
                variant = stable_setting(name, correlations, kept_on) if kept_on else None
                if variant is None:
                    continue
                if variant not in fitted:
                    fitted[variant] = fit_setting(measured, samples, plan, variant, seed, source=design.source)
                clf = fitted[variant]
                calls = score_on_labs(clf, {g: labs[g]}, mixes, (call_size,), n_calls, seed)
                rows += _score_rows(name + STABLE_SUFFIX, clf, {g: labs[g]}, calls, excluded=h, variant=variant)
    return pd.DataFrame(rows)


def deployable_setting(candidate: str, measured: dict, samples: pd.DataFrame, plan: SplitPlan, *,
                       design: StudySites) -> str:
    """The setting name a rule's choice deploys: a lever candidate (``"<setting> stable"``) with the
    columns whose class order holds on every given site; any other name as it is."""
    from bcfeat.study.order_stable_features import (candidate_base, is_stable_candidate, profile_correlations,
                                                    stable_setting)

    if not is_stable_candidate(candidate):
        return candidate
    base = candidate_base(candidate)
    labs = _given_labs(measured, samples, plan, parse_setting(base)["source"], design)
    source = source_training_cells(measured, samples, plan, base, source=design.source)
    chosen = stable_setting(base, profile_correlations(source, labs), list(labs))
    if chosen is None:
        raise ValueError(f"{candidate!r}: no feature keeps its class order on every given site")
    return chosen


def _best(scores: pd.DataFrame, labs: Sequence[str], virtual: pd.Series, one_se: bool = True) -> tuple[str, float]:
    """The one-standard-error choice over ``labs``: of the settings whose mean balanced accuracy
    over ``labs`` is within one standard error of the best mean (the best setting's; per-lab
    errors ``balanced_accuracy_se`` combined, 0 where absent or with ``one_se=False``: the plain
    best mean), the one the virtual labs rate best
    (then the higher mean, then the name). Real labs say which features survive; among settings
    they cannot tell apart, the virtual labs, with their class mixes, say which adapts better."""
    part = scores[scores["lab"].isin(labs)]
    se = (part["balanced_accuracy_se"] if one_se and "balanced_accuracy_se" in part
          else pd.Series(0.0, index=part.index))
    grouped = part.assign(_var=se ** 2).groupby("setting")
    mean = grouped["balanced_accuracy"].mean()
    error = np.sqrt(grouped["_var"].sum()) / grouped.size()
    top = mean.idxmax()
    near = mean[mean >= mean[top] - error[top] - 1e-12]
    order = pd.DataFrame({"virtual": virtual.reindex(near.index).fillna(-np.inf), "dev": near.round(10)})
    order = order.assign(name=order.index).sort_values(["virtual", "dev", "name"], ascending=[False, False, True],
                                                        kind="stable")
    return str(order.index[0]), float(mean[order.index[0]])


def nested_choice(scores: pd.DataFrame, selection: pd.DataFrame, one_se: bool = True) -> tuple[str, pd.DataFrame]:
    """The real-lab rule: the eligible setting with the best mean balanced accuracy over the given
    sites (one standard error: among the settings within one standard error of the best, the
    virtual labs' best, :func:`_best`; ``one_se=False``: the plain best mean) is deployed, and each given site's number comes from
    the setting that rule chooses on the *other* sites (leave one site out), so that no reported
    number was chosen by its own labels.

    ``scores``: :func:`score_on_given_sites` (eligible settings only), with the lever candidates of
    :func:`score_stable_candidates` where they are offered (a fold that holds out site h reads
    their rows whose features were kept without h; deployment, and each held-out number, the rows
    kept without the scored site alone); ``selection``:
    :func:`select_on_virtual_labs` with an ``eligible`` column. Returns the deployed setting and
    one row per held-out site: ``chosen``, ``development_score`` (its mean on the other sites),
    the held-out scores, whether the fold chose the deployed setting, and the virtual-lab
    rule's setting with its scores on the same site.

    >>> sc = pd.DataFrame({"setting": ["a", "a", "b", "b"], "lab": ["x", "y", "x", "y"],
    ...                    "balanced_accuracy": [0.9, 0.5, 0.6, 0.7], "macro_f1": 0.5,
    ...                    "balanced_accuracy_all": 0.5, "macro_f1_all": 0.5})
    >>> sel = pd.DataFrame({"setting": ["b", "a"], "selection_score": [0.8, 0.7], "eligible": True})
    >>> deployed, folds = nested_choice(sc, sel)
    >>> deployed, list(folds["chosen"]), list(folds["virtual_rule_setting"])
    ('a', ['b', 'a'], ['b', 'b'])
    """
    from bcfeat.study.order_stable_features import candidate_base, is_stable_candidate

    eligible = selection.loc[selection["eligible"], "setting"]
    virtual = selection.set_index("setting")["selection_score"]
    scores = scores.assign(excluded=scores["excluded"].fillna("").astype(str)) if "excluded" in scores \
        else scores.assign(excluded="")
    stable = scores["setting"].map(is_stable_candidate).astype(bool)
    base = scores["setting"].map(candidate_base)
    scores = scores[base.isin(set(eligible))]
    stable = stable[scores.index]
    # a lever candidate: its setting's virtual-lab score (the virtual labs keep the training lab's class
    # order, so they cannot tell the two apart), less a hair so that a tie goes to the setting as it is
    lever = sorted(set(scores.loc[stable, "setting"]))
    virtual = pd.concat([virtual, pd.Series({n: virtual[candidate_base(n)] - 1e-9 for n in lever}, dtype=float)])
    sites = list(dict.fromkeys(scores["lab"]))
    if len(sites) < 2:
        raise ValueError(f"the real-lab rule needs at least two given unseen sites to hold one out; got {sites}")

    def view(held: str) -> pd.DataFrame:
        """The rows a choice that holds out ``held`` (``""``: none) may read: every setting's own,
        and the lever candidates' whose features were chosen without ``held``; only settings scored
        on every site the choice reads."""
        part = scores[(~stable | (scores["excluded"] == held)) & (scores["lab"] != held)]
        n_sites = part.groupby("setting")["lab"].nunique()
        return part[part["setting"].isin(n_sites[n_sites == len(set(sites) - {held})].index)]

    deployed, _ = _best(view(""), sites, virtual, one_se)
    virtual_rule = str(eligible.iloc[0])
    by = view("").set_index(["setting", "lab"])
    rows = []
    for held in sites:
        chosen, dev = _best(view(held), [s for s in sites if s != held], virtual, one_se)
        rows.append({"held_out": held, "chosen": chosen, "development_score": dev,
                     **{f"held_out_{k}": float(by.loc[(chosen, held), k])
                        for k in ("balanced_accuracy", "macro_f1", "balanced_accuracy_all", "macro_f1_all")},
                     "chose_deployed": chosen == deployed, "virtual_rule_setting": virtual_rule,
                     **{f"virtual_rule_{k}": float(by.loc[(virtual_rule, held), k])
                        for k in ("balanced_accuracy", "balanced_accuracy_all", "macro_f1_all")}})
    return deployed, pd.DataFrame(rows)


NESTED_DISPLAY = {"chosen": "chosen on the other sites", "development_score": "its mean there",
                  "held_out_balanced_accuracy": "held out, calls of 100", "held_out_balanced_accuracy_all": "held out, all cells",
                  "held_out_macro_f1_all": "macro-F1, all cells", "chose_deployed": "the deployed setting",
                  "virtual_rule_balanced_accuracy_all": "virtual-lab rule, all cells"}


def nested_display(folds: pd.DataFrame) -> pd.DataFrame:
    """The chapter's view of :func:`nested_choice`'s folds: one row per held-out site, the columns
    of :data:`NESTED_DISPLAY` under their readable names (balanced accuracy unless named)."""
    return folds.set_index("held_out")[list(NESTED_DISPLAY)].rename(columns=NESTED_DISPLAY)


def nested_glue(folds: pd.DataFrame, deployed: str) -> dict:
    """The real-lab rule's numbers for the chapter: each held-out site's chosen setting and
    scores (``crosslab_nested_<site>_...``), the worst held-out site under both rules, and
    whether every fold chose the deployed setting."""
    out = {"crosslab_nested_deployed": deployed,
           "crosslab_nested_all_folds_agree": "yes" if bool(folds["chose_deployed"].all()) else "no",
           "crosslab_nested_worst": float(folds["held_out_balanced_accuracy"].min()),
           "crosslab_nested_worst_all": float(folds["held_out_balanced_accuracy_all"].min()),
           "crosslab_virtual_rule_worst": float(folds["virtual_rule_balanced_accuracy"].min()),
           "crosslab_virtual_rule_worst_all": float(folds["virtual_rule_balanced_accuracy_all"].min())}
    for r in folds.itertuples():
        out[f"crosslab_nested_{r.held_out}_chosen"] = r.chosen
        for k in ("balanced_accuracy", "balanced_accuracy_all", "macro_f1_all"):
            out[f"crosslab_nested_{r.held_out}_{k}"] = float(getattr(r, f"held_out_{k}"))
            out[f"crosslab_virtual_rule_{r.held_out}_{k}"] = float(getattr(r, f"virtual_rule_{k}"))
    return out


READING_KEYS = {"virtual labs": "virtual", "real labs, best mean": "argmax",
                "real labs, one standard error (nested)": "nested"}
"""The readings :func:`rule_readings` compares, and the short name each has in the glue keys."""


def rule_readings(measured: dict, samples: pd.DataFrame, plan: SplitPlan, readings: dict[str, str],
                  untouched_for: Callable[[str], tuple | None], seed: int, n_calls: int = 5, *,
                  design: StudySites) -> pd.DataFrame:
    """The selection rule's readings side by side (``reading -> the setting it chose``), each
    setting's classifier without temperature or gate: the in-domain site's balanced accuracy on
    all its test cells and its worst mean over the mixes in calls of 100 (a smear's mix on the
    training lab), and the untouched lab's on all its cells (``untouched_for(mask source)`` ->
    ``(X, y)``, or None when the lab is absent: NaN)."""
    rows = []
    for reading, setting in readings.items():
        s = parse_setting(setting)
        clf = fit_setting(measured, samples, plan, setting, seed, source=design.source)
        Xs, ys = real_labs(measured, samples, plan, s["source"], design=design)[design.source]
        calls = score_on_labs(clf, {design.source: (Xs, ys)}, tuple(mx.MIXES), (100,), n_calls, seed)
        rows.append({"reading": reading, "setting": setting,
                     "in_domain_all": float(mx.call_scores(ys, clf.predict(Xs), LABELS)["balanced_accuracy"]),
                     "in_domain_worst_mix_100": float(calls.groupby("mix")["balanced_accuracy"].mean().min()),
                     "untouched_all": _untouched_balanced_accuracy(clf, untouched_for(s["source"]))})
    return pd.DataFrame(rows)


def _untouched_balanced_accuracy(clf, lab: tuple | None) -> float:
    """A classifier's balanced accuracy on all the untouched lab's cells ``(X, y)`` in one call;
    NaN when the lab is absent (``None``)."""
    if lab is None:
        return float("nan")
    return float(mx.call_scores(lab[1], clf.predict(lab[0]), LABELS)["balanced_accuracy"])


def rule_readings_glue(readings: pd.DataFrame) -> dict:
    """``crosslab_reading_<virtual|argmax|nested>_{in_domain_worst_mix,untouched}`` from
    :func:`rule_readings` (readings named as in :data:`READING_KEYS`)."""
    out = {}
    for r in readings.itertuples():
        key = READING_KEYS[r.reading]
        out[f"crosslab_reading_{key}_in_domain_worst_mix"] = float(r.in_domain_worst_mix_100)
        out[f"crosslab_reading_{key}_untouched"] = float(r.untouched_all)
    return out


def statistics_comparison(given_scores: pd.DataFrame, selection: pd.DataFrame, setting: str,
                          untouched: Callable[[str], float] | None = None) -> pd.DataFrame:
    """The deployed setting beside the same mask, features and strength with each other label-free
    statistics the grid scored: one row per statistics, the mean balanced accuracy on each given
    site (calls of 100 under the mixes, :func:`score_on_given_sites`) and on all its cells, their
    means, the virtual labs' selection score and, with ``untouched(setting) -> balanced
    accuracy`` (:func:`untouched_scorer`), the untouched lab's on all its cells (read by no
    choice; reported only)."""
    from bcfeat.study.order_stable_features import STABLE_SUFFIX, candidate_base, is_stable_candidate

    s = parse_setting(candidate_base(setting))
    suffix = STABLE_SUFFIX if is_stable_candidate(setting) else ""
    virtual = selection.set_index("setting")["selection_score"]
    if "excluded" in given_scores:  # a lever candidate's rows whose features were kept without the scored site alone
        given_scores = given_scores[given_scores["excluded"].fillna("").astype(str) == ""]
    rows = []
    for statistics in STATISTICS:
        plain = setting_name(s["C"], s["groups"], s["source"], statistics, drop=s["drop"])
        name = plain + suffix
        part = given_scores[given_scores["setting"] == name]
        if part.empty:
            continue
        row = {"statistics": statistics, "setting": name, "deployed": name == setting}
        for r in part.itertuples():
            row[f"{r.lab}_mixes"] = float(r.balanced_accuracy)
            row[f"{r.lab}_all"] = float(r.balanced_accuracy_all)
        row["mean_mixes"] = float(part["balanced_accuracy"].mean())
        row["mean_all"] = float(part["balanced_accuracy_all"].mean())
        row["virtual_labs"] = float(virtual.get(plain, np.nan))
        if untouched is not None:
            row["untouched_all"] = float(untouched(name))
        rows.append(row)
    return pd.DataFrame(rows)


def untouched_scorer(measured: dict, samples: pd.DataFrame, plan: SplitPlan,
                     untouched_for: Callable[[str], tuple | None], seed: int, *,
                     design: StudySites) -> Callable[[str], float]:
    """``setting -> balanced accuracy`` on all the untouched lab's cells (NaN when the lab is
    absent), the setting's classifier fitted as :func:`rule_readings` fits it (a lever candidate
    as deployment would build it, :func:`deployable_setting`)."""
    def score(setting: str) -> float:
        setting = deployable_setting(setting, measured, samples, plan, design=design)
        lab = untouched_for(parse_setting(setting)["source"])
        if lab is None:
            return float("nan")
        return _untouched_balanced_accuracy(fit_setting(measured, samples, plan, setting, seed, source=design.source),
                                            lab)
    return score


def statistics_glue(table: pd.DataFrame) -> dict:
    """``crosslab_stats_<statistics>_<column>`` for every number of :func:`statistics_comparison`."""
    return {f"crosslab_stats_{r['statistics']}_{k}": float(v) for r in table.to_dict("records")
            for k, v in r.items() if k not in ("statistics", "setting", "deployed")}


__all__ = ["SELECTION_RULES", "MIXES", "score_on_given_sites", "score_stable_candidates", "deployable_setting",
           "nested_choice", "nested_display", "nested_glue",
           "READING_KEYS", "rule_readings", "rule_readings_glue", "statistics_comparison", "untouched_scorer",
           "statistics_glue"]
