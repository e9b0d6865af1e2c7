"""The steps of the study's "Beyond the paper" chapter (``notebooks/07_crosslab.py``).

The notebook calls these functions in order; each returns tables or figures. Hand-offs from
earlier stages, passed in as the notebook's file parameters: the detector of ``01_detector``,
the feature sets of ``03_features`` and the BatchNorm oracle of ``04_oracle``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline

from bcfeat.study import common as study
from bcfeat.data.splits import SplitPlan
from bcfeat.study.design import StudySites
from bcfeat.evaluation.benchmark import default_classifier, domain_matrix, matrix_table, summarize
from bcfeat.crosslab import evaluation as ev
from bcfeat.crosslab.adaptation import CrossLabClassifier
from bcfeat.crosslab.cell_crop import CropConfig
from bcfeat.study.crosslab_figures import (few_shot_figure, gallery_figure, matrix_figure, mix_figure,  # noqa: F401
                                          per_class_figure, umap_figure, virtual_lab_figure)
from bcfeat.crosslab.cell_features import GROUPS, feature_groups, feature_set_columns
from bcfeat.study.crosslab_settings import drop_part, read_drop, setting_columns
from bcfeat.study.crosslab_measurement import (Measured, feature_group_table, mask_area_change,  # noqa: F401
                                               measure_all, measure_cells, measured_table, ruler_display, ruler_table,
                                               RULER_WORKS, ruler_check, ruler_drop,
                                               stain_masks_against_experts)

LABELS = ("basophil", "eosinophil", "lymphocyte", "monocyte", "neutrophil")
OURS = "crosslab"


# ----------------------------------------------------------------------------- settings
def columns_for(groups: str) -> tuple[int, ...] | None:
    """The columns of a named feature set (:func:`bcfeat.crosslab.cell_features.feature_set_columns`)."""
    return feature_set_columns(groups)


def candidate_grid(cs: Sequence[str], groups: Sequence[str], sources: Sequence[str] = ("detector",)) -> list[dict]:
    """The compared settings: per mask source and feature set, the linear model at each ``C``. (The
    paper's forest is reported beside the chosen setting, on the same features.)"""
    if not cs or not groups or not sources:
        raise ValueError("candidate_C, candidate_groups and mask_sources must each name at least one value")
    grid = []
    for source in sources:
        for g in groups:
            columns_for(g)  # an unknown name fails here, before any work
            grid += [{"name": f"logistic C={float(c):g} {g} {source}", "model": "logistic", "C": float(c),
                      "groups": g, "source": source} for c in cs]
    return grid


def make_factory(setting: dict):
    """``random_state -> estimator`` on per-site standardised features for one setting."""
    cols = setting_columns(setting)

    def make(random_state: int):
        if setting["model"] == "forest":
            clf = default_classifier(random_state, n_jobs=2)  # the paper's forest, max_depth 16
        else:
            clf = LogisticRegression(C=setting["C"], max_iter=3000, class_weight="balanced")
        if cols is None:
            return clf
        return make_pipeline(ColumnTransformer([("keep", "passthrough", list(cols))]), clf)

    return make


def setting_by_name(name: str) -> dict:
    """Parse a setting name of :func:`candidate_grid` back into its dict (a ``drop=`` part, the
    order-stable lever's left-out columns, is kept; a label-free statistics part is read by
    :mod:`bcfeat.study.crosslab_settings`).

    >>> setting_by_name("logistic C=0.03 no_texture stain")["C"]
    0.03
    >>> setting_by_name("logistic C=0.03 no_texture stain drop=1,5")["drop"]
    (1, 5)
    """
    parts, drop = read_drop(name.split(), name)
    if parts[0] == "forest":
        return {"name": name, "model": "forest", "C": None, "groups": parts[1], "source": parts[2], "drop": drop}
    return {"name": name, "model": "logistic", "C": float(parts[1].split("=")[1]), "groups": parts[2],
            "source": parts[3], "drop": drop}


def _rename(setting: dict, **changes) -> dict:
    """A setting with some fields changed, and its name rebuilt to match."""
    s = {**setting, **changes}
    drop = drop_part(s.get("drop", ()))
    if s["model"] == "forest":
        s["name"] = f"forest {s['groups']} {s['source']}{drop}"
    else:
        s["name"] = f"logistic C={s['C']:g} {s['groups']} {s['source']}{drop}"
    return s


# ----------------------------------------------------------------------------- oracle, AdaBN
@dataclass
class AdaBNOracle:
    scores: pd.DataFrame
    predictions: pd.DataFrame
    embeddings: np.ndarray  # (n, d), each site's images through its own adapted network


def adabn_oracle_scores(samples: pd.DataFrame, plan: SplitPlan, oracles_file: Path, norm: str,
                        seed: int, *, source: str) -> AdaBNOracle:
    """04's oracle of the first split, with BatchNorm statistics re-estimated on each site's
    images (all of them, unlabelled) before predicting that site's test split and all its cells."""
    import torch

    from bcfeat.data.splits import as_test_masks
    from bcfeat.evaluation.oracle import adapt_batch_norm, embed, load_checkpoint, predict_proba, prepare_images

    path = study.require_input(study.oracle_checkpoint(oracles_file, norm, repetition=0), "04_oracle")
    oracle = load_checkpoint(path)
    torch.set_num_threads(2)
    images = prepare_images(study.decoded_images(samples["path"].tolist(), oracle.config.image_size),
                            oracle.config.image_size)
    is_test = as_test_masks(plan, len(samples))[0]
    y, domain = samples["label"].to_numpy(), samples["domain"].to_numpy()
    classes = np.asarray(oracle.classes)
    name = f"oracle AdaBN ({oracle.config.arch}, {norm} norm)"
    rows, preds = [], []
    embeddings = np.zeros((len(samples), 0), np.float32)
    for site in pd.unique(domain):
        site_rows = np.flatnonzero(domain == site)
        model = adapt_batch_norm(oracle.model, images[site_rows])
        site_embed = embed(model, images[site_rows])
        if embeddings.shape[1] == 0:
            embeddings = np.zeros((len(samples), site_embed.shape[1]), np.float32)
        embeddings[site_rows] = site_embed
        pred = classes[predict_proba(model, images[site_rows]).argmax(axis=1)]
        test = is_test[site_rows]
        in_domain = site == source
        score = ev.score_row(y[site_rows][test], pred[test], LABELS)
        rows.append({"feature_set": name, "train_domain": source, "test_domain": site,
                     "in_domain": in_domain, "repetition": 0, **score})
        if not in_domain:
            preds.append(pd.DataFrame({"test_domain": site, "row": site_rows, "y_true": y[site_rows],
                                       "y_pred": pred}))
    return AdaBNOracle(pd.DataFrame(rows), pd.concat(preds, ignore_index=True), embeddings)


# ----------------------------------------------------------------------------- comparison
def domain_matrices(X: np.ndarray, samples: pd.DataFrame, plan: SplitPlan, grid: list[dict], headline: str,
                    seed: int) -> pd.DataFrame:
    """The full domain matrix (every site as the training site) of the headline linear setting and
    of the paper's forest on the same feature groups."""
    chosen = setting_by_name(headline)
    forest = _rename(chosen, model="forest", C=None)
    Z = ev.standardize_per_site(X, samples["domain"].to_numpy())
    frames = []
    for setting in (chosen, forest):
        s = domain_matrix(Z, samples["label"].to_numpy(), samples["domain"].to_numpy(), plan,
                          make_classifier=make_factory(setting), label_space_name="coarse5",
                          feature_set_name=f"{OURS} ({setting['name']})", random_state=seed)
        frames.append(s.assign(setting=setting["name"]))
    return pd.concat(frames, ignore_index=True)


def comparison_table(matrix: pd.DataFrame, selection: pd.DataFrame, benchmark_summary: Path,
                     adabn_scores: pd.DataFrame, headline: str, aecfe: str, *, design: StudySites) -> pd.DataFrame:
    """The source site (Acevedo-20) as the training site: balanced accuracy on every site, the
    reproduction's rows (chapter 5's summary), both oracles, AdaBN, and ours (paper forest, linear
    probe, and the linear probe with the setting chosen per site without that site's labels)."""
    sites, unseen, source = list(design.sites), list(design.unseen), design.source
    rows = []

    def add(name: str, kind: str, values: dict[str, float]):
        row = {"features": name, "kind": kind, **{s: values.get(s, np.nan) for s in sites}}
        row["mean_unseen"] = float(np.mean([row[s] for s in unseen]))
        row["min_unseen"] = float(np.min([row[s] for s in unseen]))
        rows.append(row)

    bench = pd.read_csv(benchmark_summary) if Path(benchmark_summary).exists() else pd.DataFrame()
    if len(bench):
        src = bench[bench["train_domain"] == source]
        for name, kind in ((aecfe, "reproduction (the paper's recipe)"),
                           ("aecfe_site_standardized", "reproduction + per-site standardisation"),
                           ("colour_shape", "baseline")):
            part = src[src["feature_set"] == name]
            if len(part):
                add(name, kind, dict(zip(part["test_domain"], part["balanced_accuracy_mean"])))
        for name in sorted(n for n in src["feature_set"].unique() if str(n).startswith("oracle")):
            part = src[src["feature_set"] == name]
            add(name, "oracle (labels of the source)", dict(zip(part["test_domain"], part["balanced_accuracy_mean"])))
    add(str(adabn_scores["feature_set"].iloc[0]), "oracle + AdaBN (first split)",
        dict(zip(adabn_scores["test_domain"], adabn_scores["balanced_accuracy"])))
    summary = summarize(matrix)
    src = summary[summary["train_domain"] == source]
    for setting in matrix["setting"].unique():
        part = src[src["feature_set"] == f"{OURS} ({setting})"]
        kind = "ours, the paper's forest" if setting.startswith("forest") else "ours, linear probe (deployed setting)"
        add(f"{OURS} ({setting})", kind, dict(zip(part["test_domain"], part["balanced_accuracy_mean"])))
    head = src[src["feature_set"] == f"{OURS} ({headline})"]
    protocol = dict(zip(selection["test_domain"], selection["balanced_accuracy"]))
    if source not in protocol:
        protocol[source] = float(head.loc[head["test_domain"] == source, "balanced_accuracy_mean"].iloc[0])
    add(f"{OURS} (deployed setting, with its temperature and gate)", "ours, headline", protocol)
    return pd.DataFrame(rows)


def comparison_display(comparison: pd.DataFrame) -> pd.DataFrame:
    return comparison.set_index("features").round(3)


def comparison_glue(comparison: pd.DataFrame, selection: pd.DataFrame, design: StudySites) -> dict:
    """Numbers of the chapter's text: the headline per site, its mean and minimum, the best oracle,
    and whether the milestone (>= 0.70 each, above every oracle) and target (>= 0.75, >= 0.95 in) hold."""
    head = comparison[comparison["kind"] == "ours, headline"].iloc[0]
    oracles = comparison[comparison["kind"].str.startswith("oracle")]
    best_oracle = oracles.loc[oracles["mean_unseen"].idxmax()]
    unseen = design.unseen
    out = {f"crosslab_head_{s}": float(head[s]) for s in [design.source, *unseen]}
    out.update(crosslab_head_mean=float(head["mean_unseen"]), crosslab_head_min=float(head["min_unseen"]),
               crosslab_best_oracle=str(best_oracle["features"]),
               crosslab_best_oracle_mean=float(best_oracle["mean_unseen"]),
               crosslab_best_oracle_min=float(best_oracle["min_unseen"]))
    milestone = head["min_unseen"] >= 0.70 and all(head[s] > oracles[s].max() for s in unseen)
    target = head["min_unseen"] >= 0.75 and head[design.source] >= 0.95
    out["crosslab_milestone"] = "met" if milestone else "not met"
    out["crosslab_target"] = "met" if target else "not met"
    out["crosslab_chosen_settings"] = "; ".join(f"{r.test_domain}: {r.chosen}" for r in selection.itertuples())
    for kind, key in (("reproduction (the paper's recipe)", "crosslab_aecfe_mean"),):
        part = comparison[comparison["kind"] == kind]
        if len(part):
            out[key] = float(part["mean_unseen"].iloc[0])
    return out


def matrix_display(matrix: pd.DataFrame, setting: str) -> pd.DataFrame:
    summary = summarize(matrix[matrix["setting"] == setting])
    return matrix_table(summary, "balanced_accuracy", digits=2)


# ----------------------------------------------------------------------------- all cells, ablations
def _source_train_rows(samples: pd.DataFrame, plan: SplitPlan, source: str) -> tuple[np.ndarray, np.ndarray]:
    from bcfeat.data.splits import as_test_masks

    is_test = as_test_masks(plan, len(samples))[0]
    return np.flatnonzero((samples["domain"].to_numpy() == source) & ~is_test), is_test


def per_class_table(ours: pd.DataFrame, adabn: pd.DataFrame, *, source: str) -> pd.DataFrame:
    """F1 per class on all cells of each unseen site: ours (headline) and the AdaBN oracle."""
    from sklearn.metrics import f1_score

    rows = []
    for name, preds in ((OURS, ours[ours["test_domain"] != source]), ("oracle AdaBN", adabn)):
        for site, g in preds.groupby("test_domain", sort=False):
            present = [c for c in LABELS if (g["y_true"] == c).any()]
            f1 = f1_score(g["y_true"], g["y_pred"], labels=present, average=None, zero_division=0)
            rows += [{"feature_set": name, "test_domain": site, "label": c, "f1": float(v),
                      "support": int((g["y_true"] == c).sum())} for c, v in zip(present, f1)]
    return pd.DataFrame(rows)


def _adaptation_variants(setting: dict, full_name: str, gate_threshold: float | None = None) -> dict[str, dict]:
    """The adaptation lever's variants; with ``gate_threshold``, the chosen setting (5-part
    ``full_name``) with texture trusted on every call and with the texture gate."""
    base = {"model": "logistic", "C": setting["C"], "columns": setting_columns(setting)}
    variants = {
        "no adaptation (source statistics for every site)": {**base, "site_standardize": False, "balance_rounds": 0},
        "per-site standardisation (plain)": {**base, "balance_rounds": 0},
        "+ class-balanced site statistics (2 rounds)": {**base, "balance_rounds": 2},
        "+ class-balanced re-standardisation, CBR (2 rounds)": {**base, "balance_rounds": 2, "statistics": "cbr"},
        "+ CBR, spread from every cell corrected for the predicted mix (2 rounds)": {**base, "balance_rounds": 2,
                                                                                   "statistics": "cbr_mix"},
        "+ EM class-prior correction": {**base, "balance_rounds": 0, "prior_correction": "em"},
        "+ self-training (2 rounds, p >= 0.9)": {**base, "balance_rounds": 0, "self_training": 2},
    }
    if gate_threshold is not None:
        from bcfeat.study.crosslab_settings import classifier_for

        chosen = classifier_for(full_name, gate_threshold=gate_threshold).get_params()
        if chosen["gate_columns"] is not None:
            chosen = {k: v for k, v in chosen.items() if k not in ("random_state", "temperature")}
            variants["chosen setting, texture trusted on every call"] = {**chosen, "gate_columns": None,
                                                                         "gate_threshold": None}
            variants["chosen setting + texture gate (threshold from the virtual labs)"] = chosen
    return variants


def _transfer_with(X, samples, train, in_test, make, source):
    return ev.transfer_scores(X, samples["label"].to_numpy(), samples["domain"].to_numpy(), train, in_test, make,
                              source)


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, (time.perf_counter() - start) / 60


def _subsample(samples: pd.DataFrame, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rows = []
    for _, g in samples.groupby("domain", sort=False):
        idx = g.index.to_numpy()
        rows.append(np.sort(rng.choice(idx, min(n, len(idx)), replace=False)))
    return np.concatenate(rows)


def ablations(measured: dict[str, Measured], samples, plan, setting: str, artifacts: Path, ablation_cells: int,
              ssl_epochs: int, ssl_image_size: int, seed: int, n_workers: int, cnn_epochs: int = 0,
              cnn_image_size: int = 64, gate_threshold: float | None = None, *, design: StudySites) -> pd.DataFrame:
    """One row per variant (lever on/off), scored by ``transfer_scores`` on the first split (no intervals).

    ``gate_threshold`` (the texture gate's, fitted on the virtual labs): adds the chosen setting with
    and without the gate (where its features read texture).
    The crop lever compares the mask sources on every cell, and the canonical rescaling against one
    zoom for every image on a subsample of ``ablation_cells`` per site (re-measured)."""
    chosen = setting_by_name(setting)
    X, crops = measured[chosen["source"]].features, measured[chosen["source"]].crops
    source, unseen = design.source, list(design.unseen)
    train, is_test = _source_train_rows(samples, plan, source)
    domain = samples["domain"].to_numpy()
    in_test = is_test & (domain == source)
    results, minutes, lever = {}, {}, {}
    for name, params in _adaptation_variants(chosen, setting, gate_threshold).items():
        results[name], minutes[name] = _timed(lambda p=params: _transfer_with(
            X, samples, train, in_test, lambda: CrossLabClassifier(**p, random_state=seed), source))
        lever[name] = "adaptation"
    Z = ev.standardize_per_site(X, domain)
    for group in GROUPS:
        keep = [i for i in range(X.shape[1]) if i not in set(feature_groups()[group])]
        make = lambda k=keep: make_pipeline(ColumnTransformer([("keep", "passthrough", k)]),  # noqa: E731
                                            LogisticRegression(C=chosen["C"], max_iter=3000, class_weight="balanced"))
        name = f"all features but {group}"
        results[name], minutes[name] = _timed(lambda m=make: _transfer_with(Z, samples, train, in_test, m, source))
        lever[name] = "features"
    forest = make_factory(_rename(chosen, model="forest", C=None))
    name = "paper's random forest in place of the linear model"
    results[name], minutes[name] = _timed(lambda: _transfer_with(Z, samples, train, in_test, lambda: forest(seed), source))
    lever[name] = "classifier"
    linear = make_factory(chosen)
    for mask_source, m in measured.items():
        name = f"crop: {mask_source} mask, canonical size" + (" (headline)" if mask_source == chosen["source"] else "")
        Zm = ev.standardize_per_site(m.features, domain)
        results[name] = _transfer_with(Zm, samples, train, in_test, lambda: linear(seed), source)
        minutes[name], lever[name] = m.minutes, "crop"
    if ablation_cells > 0:
        sub = _subsample(samples, ablation_cells, seed)
        sub_samples = samples.iloc[sub].reset_index(drop=True)
        sub_train = np.flatnonzero(np.isin(sub, train))
        sub_test = np.isin(sub, np.flatnonzero(in_test))
        source_sub = sub_samples["domain"].to_numpy() == source
        median_d = float(np.exp(np.median(X[sub][source_sub, 0])))  # the source's median cell diameter, px
        fixed = measure_cells(sub_samples, artifacts, chosen["source"], n_workers,
                              CropConfig(rescale=False, reference_diameter_px=median_d), cache_name="crosslab_ablation",
                              detector_file=measured[chosen["source"]].detector_file)
        for name, feats, mins in ((f"crop: {chosen['source']} mask, canonical size (subsample)", X[sub],
                                   measured[chosen["source"]].minutes * len(sub) / len(X)),
                                  (f"crop: {chosen['source']} mask, one zoom for all (no rescaling, subsample)",
                                   fixed.features, fixed.minutes)):
            Zs = ev.standardize_per_site(feats, sub_samples["domain"].to_numpy())
            results[name] = _transfer_with(Zs, sub_samples, sub_train, sub_test, lambda: linear(seed), source)
            minutes[name], lever[name] = mins, "crop"
    if ssl_epochs > 0:
        for name, table, mins in _self_supervised_variants(X, crops, samples, train, in_test, chosen, ssl_epochs,
                                                           ssl_image_size, seed, source):
            results[name], minutes[name], lever[name] = table, mins, "objective"
    if cnn_epochs > 0:
        for name, table, mins in _supervised_cnn_variants(X, crops, samples, train, in_test, chosen, cnn_epochs,
                                                          cnn_image_size, seed, source):
            results[name], minutes[name], lever[name] = table, mins, "objective"
    table = ev.ablation_table(results, unseen, source, minutes)
    table.insert(0, "lever", [lever[v] for v in table["variant"]])
    return table


def _embedding_alone_and_beside(X, E, samples, train, in_test, chosen, seed, source):
    """A learned embedding ``E`` scored alone and beside the hand features ``X``, each site
    standardised with its own statistics, with the chosen setting's linear model on every column."""
    domain = samples["domain"].to_numpy()
    linear = make_factory(_rename(chosen, groups="all", drop=()))
    Zh, Ze = ev.standardize_per_site(X, domain), ev.standardize_per_site(E, domain)
    alone = _transfer_with(Ze, samples, train, in_test, lambda: linear(seed), source)
    both = _transfer_with(np.hstack([Zh, Ze]), samples, train, in_test, lambda: linear(seed), source)
    return alone, both


def _self_supervised_variants(X, crops, samples, train, in_test, chosen, epochs, image_size, seed, source):
    """The objective lever: a SimCLR encoder trained on all sites' crops (transductive) and on the
    source's alone, each alone and beside the hand features."""
    import torch

    from bcfeat.crosslab.self_supervised import SelfSupervisedConfig, embed_crops, train_encoder

    torch.set_num_threads(2)
    domain = samples["domain"].to_numpy()
    for scope, rows in (("all sites", np.arange(len(crops))), ("source only", np.flatnonzero(domain == source))):
        cfg = SelfSupervisedConfig(image_size=image_size, epochs=epochs, seed=seed, batch_size=min(256, len(rows) // 2))
        start = time.perf_counter()
        encoder, _ = train_encoder(crops[rows], cfg)
        E = embed_crops(encoder, crops, image_size)
        mins = (time.perf_counter() - start) / 60
        alone, both = _embedding_alone_and_beside(X, E, samples, train, in_test, chosen, seed, source)
        yield f"objective: SimCLR encoder ({scope}, {epochs} epochs) alone", alone, mins
        yield f"objective: hand features + SimCLR encoder ({scope})", both, mins


def _supervised_cnn_variants(X, crops, samples, train, in_test, chosen, epochs, image_size, seed, source):
    """The objective lever's supervised arm: a GroupNorm CNN trained on the source's labelled
    training cells under strong lab-shift augmentation; its embedding alone and beside the hand features."""
    import torch

    from bcfeat.crosslab.supervised_encoder import SupervisedEncoderConfig, predict_crops, train_supervised_encoder

    torch.set_num_threads(2)
    cfg = SupervisedEncoderConfig(image_size=image_size, epochs=epochs, seed=seed,
                                  batch_size=min(64, max(4, len(train) // 2)))
    start = time.perf_counter()
    net, _, _ = train_supervised_encoder(crops[train], samples["label"].to_numpy()[train], cfg)
    _, E = predict_crops(net, crops, image_size)
    mins = (time.perf_counter() - start) / 60
    alone, both = _embedding_alone_and_beside(X, E, samples, train, in_test, chosen, seed, source)
    name = f"supervised GroupNorm CNN with lab-shift augmentation ({epochs} epochs)"
    yield f"objective: {name}, alone", alone, mins
    yield f"objective: hand features + {name}", both, mins


def ablation_glue(ablation: pd.DataFrame) -> dict:
    out = {}
    for lever, part in ablation.groupby("lever"):
        best = part.loc[part["mean_unseen"].idxmax()]
        out[f"crosslab_ablation_best_{lever}"] = str(best["variant"])
    adapt = ablation.set_index("variant")["mean_unseen"]
    out["crosslab_no_adaptation_mean"] = float(adapt["no adaptation (source statistics for every site)"])
    out["crosslab_site_std_mean"] = float(adapt["per-site standardisation (plain)"])
    for key, prefix, columns in (
            ("crosslab_cnn_alone", "objective: supervised GroupNorm CNN", ("mean_unseen", "min_unseen", "cpu_minutes")),
            ("crosslab_cnn_with_hand", "objective: hand features + supervised GroupNorm CNN", ("mean_unseen", "min_unseen"))):
        rows = ablation[ablation["variant"].str.startswith(prefix)]
        for col in columns:
            name = "crosslab_cnn_minutes" if col == "cpu_minutes" else f"{key}_{col}"
            out[name] = float(rows[col].iloc[0]) if len(rows) == 1 else float("nan")
    by_variant = ablation.set_index("variant")
    for key, variant in (("crosslab_gate_off", "chosen setting, texture trusted on every call"),
                         ("crosslab_gate_on", "chosen setting + texture gate (threshold from the virtual labs)")):
        for col in ("mean_unseen", "min_unseen"):
            out[f"{key}_{col}"] = float(by_variant.loc[variant, col]) if variant in by_variant.index else float("nan")
    return out


# ----------------------------------------------------------------------------- few-shot
def few_shot(X, samples, plan, setting: str, features_dir: Path, aecfe: str, adabn: AdaBNOracle, shots: Sequence[int],
             n_draws: int, source_cells: int, seed: int, *, design: StudySites) -> pd.DataFrame:
    """The few-shot curve of ours (``X`` raw: the chosen setting's classifier taught the way
    ``bcfeat train-classifier --corrections`` teaches it), AE-CFE (the paper's forest on its
    features) and the AdaBN oracle's embeddings (linear, per-site standardised), on each unseen site."""
    train, _ = _source_train_rows(samples, plan, design.source)
    domain, y = samples["domain"].to_numpy(), samples["label"].to_numpy()
    if source_cells and len(train) > source_cells:
        from sklearn.model_selection import train_test_split

        train, _ = train_test_split(train, train_size=source_cells, stratify=y[train], random_state=seed)
    from bcfeat.study.crosslab_settings import classifier_for

    chosen = setting_by_name(setting)
    # ours: the chosen setting's classifier taught as `bcfeat train-classifier --corrections` teaches it
    # (the added cells read in their own site's statistics, the site classified as one call)
    sets = {OURS: (X, lambda rs: classifier_for(setting, rs), True),
            "oracle AdaBN embeddings": (ev.standardize_per_site(adabn.embeddings, domain),
                                        make_factory(_rename(chosen, groups="all", drop=())), False)}
    aecfe_X = study.load_feature_sets(features_dir, [aecfe], samples)[aecfe]
    sets[f"{aecfe} (paper's forest)"] = (aecfe_X, lambda rs: default_classifier(rs, n_jobs=2), False)
    frames = []
    for name, (F, factory, as_corrections) in sets.items():
        for target in design.unseen:
            curve = ev.few_shot_curve(F, y, domain, train, target, shots, n_draws, lambda f=factory: f(seed), seed,
                                      as_corrections=as_corrections)
            frames.append(curve.assign(features=name))
    return ev.summarize_curve(pd.concat(frames, ignore_index=True))


def few_shot_glue(curve: pd.DataFrame) -> dict:
    out = {}
    for (name, k), g in curve.groupby(["features", "k"]):
        if name == OURS:
            out[f"crosslab_few_shot_k{k}"] = float(g["balanced_accuracy_mean"].mean())
    return out


# ----------------------------------------------------------------------------- figures, model file
__all__ = ["Measured", "measure_cells", "candidate_grid",
           "adabn_oracle_scores", "domain_matrices", "comparison_table", "ablations",
           "few_shot"]
