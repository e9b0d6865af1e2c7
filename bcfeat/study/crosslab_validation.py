"""Validation of the cross-lab classifier that never reads a reported lab's labels (chapter
"Beyond the paper", ``notebooks/07_crosslab.py``).

The rule, fixed before the final run:

1. **Development labs are virtual.** Acevedo-20's held-out test cells (the first split) are
   re-rendered through sampled lab shifts (:mod:`bcfeat.crosslab.virtual_labs`: stain in
   optical-density space, white balance, focus, resolution, JPEG, noise, framing) and measured
   again from the raw image, segmentation included. No public single-cell set of another lab
   with a licence that allows its use was found (see the chapter).
2. **Settings are chosen on the virtual labs only** (the rule as first written): every candidate (mask source, feature set,
   linear-model strength, label-free statistics) is trained on Acevedo-20's training split and
   scored on each virtual lab under every class mix in calls of 100 cells; the candidate with
   the best mean balanced accuracy wins. The temperature, the ``uncertain`` rule and the
   novelty threshold are fitted on the same virtual labs.
3. **The three real unseen sites are reported as held out**, under every class mix and call
   size; labs outside the project are the untouched check.

A second rule, the study's default since the virtual labs failed to foresee the real labs'
failures, is in :mod:`bcfeat.study.real_lab_selection`.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from bcfeat.crosslab import mixes as mx
from bcfeat.crosslab.adaptation import CrossLabClassifier
from bcfeat.crosslab.site_statistics import MIN_SITE_CELLS
from bcfeat.data.splits import SplitPlan
# the settings' names and classifiers (also read by the notebook as cv.<name>)
from bcfeat.study.crosslab_settings import (STATISTICS, base_setting, candidate_settings,  # noqa: F401
                                            classifier_for, parse_setting, plain_name, setting_name,
                                            texture_gate_columns)
from bcfeat.study.design import StudySites
from bcfeat.study.virtual_lab_features import VirtualLabs  # noqa: F401 (the notebook's cv.VirtualLabs)
from bcfeat.study.crosslab_calibration import (Calibration, _index, calibration_calls, calibration_table,  # noqa: F401
                                               disagreement_calls, disagreement_glue, fit_calibration,
                                               line_error_leave_one_lab_out, review_glue, source_out_of_fold_calls)

LABELS = mx.CLASSES


# ----------------------------------------------------------------------------- virtual labs
def development_rows(samples: pd.DataFrame, plan: SplitPlan, n_cells: int, seed: int, *, source: str) -> np.ndarray:
    """Rows of the source site's test split (first repetition), a class-stratified subsample of
    ``n_cells`` (0: all): the cells the virtual labs re-render. None of them trains anything."""
    from bcfeat.data.splits import as_test_masks

    is_test = as_test_masks(plan, len(samples))[0]
    rows = np.flatnonzero(is_test & (samples["domain"].to_numpy() == source))
    if n_cells and n_cells < len(rows):
        from sklearn.model_selection import train_test_split

        rows, _ = train_test_split(rows, train_size=n_cells, stratify=samples["label"].to_numpy()[rows],
                                   random_state=seed)
        rows = np.sort(rows)
    return rows


def _image_seed(path: str, seed: int) -> int:
    """A per-image noise seed from its name, so a chunk's result does not depend on its position."""
    return (zlib.crc32(Path(path).name.encode()) + 1_000_003 * seed) % (2**32)


def measure_virtual_lab(paths: Sequence[str], lab, artifacts: Path, mask_source: str, n_workers: int,
                        seed: int, detector_file: str | Path | None = None) -> tuple[np.ndarray, float]:
    """Cell features ``(n, d)`` of ``paths`` re-rendered through one virtual lab, and the minutes
    rendering and measuring them took when they were measured (kept with them, so a cached run
    reports the same cost); cached under ``<artifacts>/cache/virtual_labs`` (key: images, lab,
    mask source, detector, features)."""
    from bcfeat.crosslab.virtual_labs import render
    from bcfeat.data.images import SkippedImages, read_image
    from bcfeat.detection.feature_cache import cache_key, cached_arrays
    from bcfeat.study.crosslab_measurement import _model, measurement_settings

    model = _model(detector_file, mask_source, n_workers)
    detector = str(detector_file) if model.config.mask_source == "detector" else None
    key = cache_key(paths, detector, {"lab": lab.record(), "seed": seed, **measurement_settings(model.config)})

    def compute(chunk: list[str]) -> dict[str, np.ndarray]:
        start = time.perf_counter()
        images = [render(read_image(p), lab, np.random.default_rng(_image_seed(p, seed))) for p in chunk]
        skipped = SkippedImages()
        feats, kept = model.measure(images, skipped)
        if len(kept) != len(chunk):
            raise ValueError(f"virtual lab {lab.name}: {skipped.summary()}")
        return {"features": feats, "seconds": np.full(len(chunk), (time.perf_counter() - start) / len(chunk))}

    arrays = cached_arrays(list(paths), compute, Path(artifacts) / "cache" / "virtual_labs", key=key,
                           chunk_size=256, progress=False, description=f"virtual lab {lab.name}")
    return arrays["features"], float(arrays["seconds"].sum() / 60)


def build_virtual_labs(samples: pd.DataFrame, rows: np.ndarray, labs: Sequence, artifacts: Path,
                       mask_sources: Sequence[str], n_workers: int, seed: int,
                       detector_file: str | Path | None = None) -> VirtualLabs:
    """Render and measure the development cells through every lab, with every mask source."""
    paths = samples["path"].to_numpy()[rows].tolist()
    measured = {(lab.name, m): measure_virtual_lab(paths, lab, artifacts, m, n_workers, seed, detector_file)
                for lab in labs for m in mask_sources}
    return VirtualLabs(rows, samples["label"].to_numpy()[rows], {k: v[0] for k, v in measured.items()}, list(labs),
                       sum(v[1] for v in measured.values()))


#: The hard virtual labs are drawn with the study's seed plus this: another draw than the ordinary
#: virtual labs', so that they are not strengthened copies of the same labs.
HARD_LAB_SEED_OFFSET = 101


def hard_virtual_labs(samples: pd.DataFrame, rows: np.ndarray, n_labs: int, artifacts, source: str, n_workers: int,
                      seed: int, detector_file=None) -> VirtualLabs:
    """The development cells ``rows`` rendered through ``n_labs`` hard virtual labs
    (:func:`bcfeat.crosslab.virtual_labs.sample_hard_labs`, seed ``seed + HARD_LAB_SEED_OFFSET``)
    and measured with the mask source ``source`` only: development calls for the accuracy line
    (:func:`bcfeat.study.crosslab_calibration.disagreement_calls`) that reach accuracies the ordinary virtual labs do not. They
    choose no setting, temperature, threshold or gate."""
    from bcfeat.crosslab.virtual_labs import sample_hard_labs

    labs = sample_hard_labs(n_labs, seed + HARD_LAB_SEED_OFFSET)
    return build_virtual_labs(samples, rows, labs, artifacts, [source], n_workers, seed, detector_file=detector_file)



# ----------------------------------------------------------------------------- selection
def _train_rows(samples: pd.DataFrame, plan: SplitPlan, source: str) -> np.ndarray:
    from bcfeat.data.splits import as_test_masks

    is_test = as_test_masks(plan, len(samples))[0]
    return np.flatnonzero((samples["domain"].to_numpy() == source) & ~is_test)


def source_training_cells(measured: dict, samples: pd.DataFrame, plan: SplitPlan, setting: str, *,
                          source: str) -> tuple[np.ndarray, np.ndarray]:
    """``(features, labels)`` of the source site's training split (first repetition), measured as
    ``setting`` measures them: what :func:`fit_setting` trains on."""
    train = _train_rows(samples, plan, source)
    return measured[parse_setting(setting)["source"]].features[train], samples["label"].to_numpy()[train]


def fit_setting(measured: dict, samples: pd.DataFrame, plan: SplitPlan, setting: str, seed: int,
                temperature: float = 1.0, gate_threshold: float | None = None, *, source: str) -> CrossLabClassifier:
    """A setting's classifier trained on the source site's training split (first repetition)."""
    X, y = source_training_cells(measured, samples, plan, setting, source=source)
    return classifier_for(parse_setting(setting), seed, temperature, gate_threshold).fit(X, y)


def score_on_labs(clf: CrossLabClassifier, labs: dict[str, tuple[np.ndarray, np.ndarray]],
                  mixes: Sequence[str], call_sizes: Sequence[int], n_calls: int, seed: int) -> pd.DataFrame:
    """Every lab ``name -> (X raw (n, d), y (n,))`` under every mix and call size, one row per call."""
    frames = []
    for name, (X, y) in labs.items():
        calls = mx.score_under_mixes(y, lambda idx, X=X: clf.predict(X[idx]), {m: mx.MIXES[m] for m in mixes},
                                     tuple(call_sizes), n_calls, seed)
        frames.append(calls.assign(lab=name))
    return pd.concat(frames, ignore_index=True)


def select_on_virtual_labs(measured: dict, samples: pd.DataFrame, plan: SplitPlan, virtual: VirtualLabs,
                           candidates: Sequence[str], seed: int, call_size: int = 100, n_calls: int = 3,
                           mixes: Sequence[str] = ("own", "balanced", "typical", "neutrophil_heavy",
                                                   "lymphocyte_heavy"), *, source: str) -> pd.DataFrame:
    """Each candidate's mean (and worst-lab) balanced accuracy over the virtual labs and mixes, in
    calls of ``call_size``; sorted best first. Reads no real unseen site."""
    rows = []
    for name in candidates:
        start = time.perf_counter()
        s = parse_setting(name)
        clf = fit_setting(measured, samples, plan, name, seed, source=source)
        labs = {lab.name: (virtual.features[(lab.name, s["source"])], virtual.labels) for lab in virtual.labs}
        calls = score_on_labs(clf, labs, mixes, (call_size,), n_calls, seed)
        per_lab = calls.groupby("lab")["balanced_accuracy"].mean()
        per_mix = calls.groupby("mix")["balanced_accuracy"].mean()
        rows.append({"setting": name, **{k: s[k] for k in ("source", "groups", "C", "statistics")},
                     "selection_score": float(calls["balanced_accuracy"].mean()),
                     "worst_lab": float(per_lab.min()), "worst_mix": float(per_mix.min()),
                     "macro_f1": float(calls["macro_f1"].mean()),
                     "diff_mae_pp": float(calls["diff_mae_pp"].mean()),
                     "seconds": time.perf_counter() - start})
    table = pd.DataFrame(rows).sort_values("selection_score", ascending=False, kind="stable")
    return table.reset_index(drop=True)


def measurement_glue(selection: pd.DataFrame) -> dict:
    """The best selection score of each measurement (mask source and texture reading), keyed
    ``crosslab_best_score_<measurement>`` with ``+`` spelt ``_`` (``stain+normtex`` ->
    ``crosslab_best_score_stain_normtex``).

    >>> t = pd.DataFrame({"source": ["stain", "stain+normtex", "stain"], "selection_score": [0.7, 0.8, 0.75]})
    >>> measurement_glue(t)
    {'crosslab_best_score_stain': 0.75, 'crosslab_best_score_stain_normtex': 0.8}
    """
    best = selection.groupby("source", sort=True)["selection_score"].max()
    return {f"crosslab_best_score_{name.replace('+', '_')}": float(v) for name, v in best.items()}


# ----------------------------------------------------------------------------- the real sites
def real_labs(measured: dict, samples: pd.DataFrame, plan: SplitPlan, source_name: str, *, design: StudySites) -> dict:
    """``name -> (X raw, y)`` for the source site's test split (in-domain) and every cell of each
    unseen site; ``source_name`` is the mask source whose features are read."""
    from bcfeat.data.splits import as_test_masks

    X = measured[source_name].features
    domain, y = samples["domain"].to_numpy(), samples["label"].to_numpy()
    is_test = as_test_masks(plan, len(samples))[0]
    labs = {}
    for site in design.sites:
        rows = np.flatnonzero(is_test & (domain == site)) if site == design.source else np.flatnonzero(domain == site)
        labs[site] = (X[rows], y[rows])
    return labs


def mix_table(clf: CrossLabClassifier, labs: dict, n_calls: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every lab under every mix and call size: per-call rows, and their summary per (lab, mix, size)."""
    calls = score_on_labs(clf, labs, tuple(mx.MIXES), mx.CALL_SIZES, n_calls, seed)
    summary = mx.summarize_mixes(calls, group=("lab", "mix", "call_size"))
    return calls, summary


FLAG_COLUMNS = ["lab", "calls", "call_size", "flagged", *[f"predicted_{c}" for c in mx.CLASSES]]


def differential_flag_table(clf: CrossLabClassifier, labs: dict[str, tuple[np.ndarray, np.ndarray]],
                            n_calls: int, seed: int, call_size: int = 100, mix: str = "typical") -> pd.DataFrame:
    """How often :mod:`bcfeat.crosslab.differential_check` flags a lab's calls drawn with a blood
    count's typical differential (every class within its usual range, so a flag is the classifier's
    doing): per lab, the share of calls flagged and each class's mean predicted share (percent)."""
    from bcfeat.crosslab.differential_check import excess_classes

    rows = []
    for name, (X, y) in labs.items():
        y = np.asarray(y)
        if not set(mx.MIXES[mix]) <= set(y.tolist()):
            continue  # a lab without every class of the mix cannot be drawn with it
        predicted = [clf.predict(X[idx]) for idx in
                     mx.draw_calls(y, mx.MIXES[mix], call_size, n_calls, np.random.default_rng(seed))]
        shares = pd.concat([mx.differential(p, mx.CLASSES) for p in predicted], axis=1).mean(axis=1)
        rows.append({"lab": name, "calls": len(predicted), "call_size": call_size,
                     "flagged": float(np.mean([bool(excess_classes(p)) for p in predicted])),
                     **{f"predicted_{c}": 100 * float(shares[c]) for c in mx.CLASSES}})
    return pd.DataFrame(rows, columns=FLAG_COLUMNS)


def differential_flag_glue(table: pd.DataFrame, mix: str = "typical") -> dict[str, float]:
    """``crosslab_flag_<lab>_flagged`` and ``..._predicted_basophil`` per row of
    :func:`differential_flag_table`, and the percentages the chapter quotes: each class's usual upper
    end (``crosslab_usual_upper_<class>``) and its share in the drawn calls (``crosslab_typical_share_<class>``)."""
    from bcfeat.crosslab.differential_check import USUAL_UPPER_SHARE

    out = {}
    for row in table.itertuples(index=False):
        out[f"crosslab_flag_{row.lab}_flagged"] = float(row.flagged)
        out[f"crosslab_flag_{row.lab}_predicted_basophil"] = float(row.predicted_basophil)
    for name, share in USUAL_UPPER_SHARE.items():
        out[f"crosslab_usual_upper_{name}"] = 100 * share
        out[f"crosslab_typical_share_{name}"] = 100 * mx.MIXES[mix][name]
    return out


def differential_flag_display(table: pd.DataFrame) -> pd.DataFrame:
    """:func:`differential_flag_table` as the chapter shows it: one row per lab, readable headings."""
    names = {"calls": "calls", "call_size": "cells per call", "flagged": "share of calls flagged",
             **{f"predicted_{c}": f"% {c}" for c in mx.CLASSES}}
    shown = table.set_index("lab").rename(columns=names)
    shown.index.name = None
    return shown


def per_shift_table(clfs: dict[str, CrossLabClassifier], shifts: VirtualLabs, source: str) -> pd.DataFrame:
    """Balanced accuracy of each classifier on each single named shift (all cells in one call), and
    for a gated classifier whether its texture gate closed there (the named shifts are not among the
    virtual labs its threshold was fitted on)."""
    from sklearn.metrics import balanced_accuracy_score

    rows = []
    for lab in shifts.labs:
        X = shifts.features[(lab.name, source)]
        row = {"shift": lab.name}
        for label, clf in clfs.items():
            row[label] = float(balanced_accuracy_score(shifts.labels, clf.predict(X)))
        for label, clf in clfs.items():
            if clf.gate_columns is not None and clf.gate_threshold is not None:
                row[f"{label}: texture gate closed"] = bool(clf.gate_closed(X))
        rows.append(row)
    return pd.DataFrame(rows)


def shift_glue(table: pd.DataFrame, setting: str) -> dict:
    """The chosen setting's worst named shift among those that stain with another protocol (the
    two dyes apart) and among all the others (NaN where the table has none of a kind), and its
    score under each shift (``crosslab_shift_<name>``).

    >>> t = pd.DataFrame({"shift": ["defocus", "loose_crop", "cytoplasm_dye_weak"], "s": [0.98, 0.83, 0.80]})
    >>> g = shift_glue(t, "s")
    >>> g["crosslab_shift_worst_dye"], g["crosslab_shift_worst_other"], g["crosslab_shift_loose_crop"]
    (0.8, 0.83, 0.83)
    """
    from bcfeat.crosslab.virtual_labs import named_shifts

    dyes = {name for name, lab in named_shifts().items() if lab.changes_dyes}
    if setting not in table.columns or table.empty:
        return {"crosslab_shift_worst_dye": float("nan"), "crosslab_shift_worst_other": float("nan")}
    is_dye = table["shift"].isin(dyes)
    worst = lambda part: float(part[setting].min()) if len(part) else float("nan")  # noqa: E731
    return {"crosslab_shift_worst_dye": worst(table[is_dye]), "crosslab_shift_worst_other": worst(table[~is_dye]),
            **{f"crosslab_shift_{row['shift']}": float(row[setting]) for _, row in table.iterrows()}}


def _se(row: pd.Series) -> float:
    """A summary row's standard error of its mean balanced accuracy (NaN where not recorded)."""
    return float(row["balanced_accuracy_se"]) if "balanced_accuracy_se" in row.index else float("nan")


def goals_table(summary: pd.DataFrame, calibration: pd.DataFrame, unseen: Sequence[str]) -> pd.DataFrame:
    """The issue's goals, one row per lab: balanced accuracy and macro-F1 on all cells (own mix),
    the worst mix in calls of >= 100 cells, the differential error, ECE, and the mix cost: the own
    mix's mean balanced accuracy in calls of 100 minus the worst mix's (``worst_mix``), with its
    standard error ``worst_mix_cost_se`` (the two means' standard errors combined: their calls are
    drawn independently; NaN without ``balanced_accuracy_se`` in ``summary``)."""
    rows = []
    for lab, g in summary.groupby("lab", sort=False):
        allc = g[(g["mix"] == "own") & (g["call_size"] == 0)].iloc[0]
        big = g[(g["call_size"] == 0) | (g["call_size"] >= 100)]
        c100 = g[g["call_size"] == 100]
        own_row = c100[c100["mix"] == "own"].iloc[0]
        worst_row = c100.loc[c100["balanced_accuracy"].idxmin()]
        own100 = float(own_row["balanced_accuracy"])
        cal_row = calibration.set_index("lab").loc[lab]
        rows.append({"lab": lab, "unseen": lab in unseen,
                     "balanced_accuracy_all": float(allc["balanced_accuracy"]),
                     "macro_f1_all": float(allc["macro_f1"]),
                     "worst_mix_balanced_accuracy": float(big["balanced_accuracy"].min()),
                     "worst_mix_macro_f1": float(big["macro_f1"].min()),
                     "worst_mix_cost": float(own100 - worst_row["balanced_accuracy"]),
                     "worst_mix": str(worst_row["mix"]),
                     "worst_mix_cost_se": 0.0 if worst_row["mix"] == "own" else float(np.hypot(_se(own_row), _se(worst_row))),
                     "diff_mae_pp_100": float(c100["diff_mae_pp"].mean()),
                     "diff_worst_pp_100": float(c100["diff_worst_pp"].max()),
                     "ece": float(cal_row["ece"]), "confidence_gap": float(cal_row["confidence_gap"]),
                     # the probabilities bcfeat classify deploys (the call's own temperature), where there are two views
                     **({"ece_call": float(cal_row["ece_call"]), "confidence_gap_call": float(cal_row["confidence_gap_call"])}
                        if "ece_call" in cal_row.index else {})})
    return pd.DataFrame(rows)


__all__ = ["STATISTICS", "setting_name", "parse_setting", "base_setting", "texture_gate_columns", "classifier_for", "candidate_settings",
           "development_rows", "measure_virtual_lab", "VirtualLabs", "build_virtual_labs", "source_training_cells",
           "fit_setting", "score_on_labs", "select_on_virtual_labs", "Calibration", "disagreement_calls",
           "source_out_of_fold_calls", "HARD_LAB_SEED_OFFSET", "hard_virtual_labs", "line_error_leave_one_lab_out", "calibration_calls", "disagreement_glue", "review_glue", "fit_calibration", "calibration_table",
           "real_labs", "mix_table", "per_shift_table", "goals_table"]


# ----------------------------------------------------------------------------- headline, model file
def headline_scores(measured: dict, samples: pd.DataFrame, plan: SplitPlan, setting: str, seed: int,
                    temperature: float = 1.0, gate_threshold: float | None = None, *, source: str) -> pd.DataFrame:
    """The chosen setting trained on the source site (each of the benchmark's splits), tested on every
    site's test split, each site in one call: ``test_domain, chosen, balanced_accuracy`` (mean over
    the splits), ``balanced_accuracy_std`` and ``macro_f1``."""
    from bcfeat.evaluation.benchmark import domain_matrix

    s = parse_setting(setting)
    scores = domain_matrix(measured[s["source"]].features, samples["label"].to_numpy(),
                           samples["domain"].to_numpy(), plan,
                           make_classifier=lambda rs: classifier_for(s, rs, temperature, gate_threshold),
                           label_space_name="coarse5", feature_set_name=setting, random_state=seed,
                           train_domains=[source])
    table = scores.groupby("test_domain", sort=False).agg(
        balanced_accuracy=("balanced_accuracy", "mean"), balanced_accuracy_std=("balanced_accuracy", "std"),
        macro_f1=("macro_f1", "mean") if "macro_f1" in scores else ("balanced_accuracy", "size")).reset_index()
    table.insert(1, "chosen", setting)
    return table


def write_deployed_model(measured: dict, samples: pd.DataFrame, path: Path, setting: str,
                         calibration: Calibration, n_workers: int,
                         detector_file: str | Path | None = None, *, source: str) -> Path:
    """The deployed model file: the chosen setting's classifier trained on every labelled
    cell of the source site (Acevedo-20), with the temperature, ``uncertain`` threshold and novelty reference fitted on
    the virtual labs (``classifier.calibration_``)."""
    from bcfeat.crosslab.model import save_model
    from bcfeat.study.crosslab_measurement import _model

    s = parse_setting(setting)
    rows = samples["domain"].to_numpy() == source
    y = samples["label"].to_numpy()
    clf = classifier_for(s, 0, calibration.temperature, calibration.gate_threshold).fit(
        measured[s["source"]].features[rows], y[rows])
    clf.calibration_ = calibration.to_dict()
    model = _model(detector_file, s["source"], n_workers)
    model.classifier = clf
    model.record = {"trained_on": source, "n_cells": int(rows.sum()),
                    "class_counts": {str(k): int(v) for k, v in pd.Series(y[rows]).value_counts().items()},
                    "setting": setting, "label_space": "coarse5",
                    "selection": f"chosen on virtual labs rendered from {source} (notebooks/07_crosslab.py)"}
    return save_model(Path(path), model)


def untouched_files(folder: str | Path) -> pd.DataFrame | None:
    """The images of a labelled folder ``<folder>/<class>/<image>`` in the order
    :func:`untouched_lab` measures them, with their ``path`` and ``label`` (``None`` when
    ``folder`` is empty or absent); class folders outside coarse5 are an error."""
    from bcfeat.data.image_folders import folder_images

    if not str(folder) or not Path(folder).is_dir():
        return None
    folder = Path(folder)
    files, _ = folder_images(folder, "files")
    files = files[files["relpath"].map(lambda r: len(Path(r).parts) == 2)].reset_index(drop=True)
    files["label"] = files["relpath"].map(lambda r: Path(r).parts[0])
    unknown = sorted(set(files["label"]) - set(LABELS))
    if unknown:
        raise ValueError(f"{folder}: class folders {unknown} are not coarse5 classes {LABELS}")
    return files


def untouched_lab(folder: str | Path, artifacts: Path, mask_source: str, n_workers: int,
                  detector_file: str | Path | None = None):
    """Features and labels of a labelled folder ``<folder>/<class>/<image>`` kept out of every
    choice (``None`` when ``folder`` is empty or absent): ``(X raw (n, d), y (n,))``."""
    from bcfeat.study.crosslab_measurement import measure_cells

    files = untouched_files(folder)
    if files is None:
        return None
    folder = Path(folder)
    measured = measure_cells(files.assign(domain=folder.name), artifacts, mask_source, n_workers,
                             cache_name="untouched", detector_file=detector_file)
    return measured.features, files["label"].to_numpy()


def untouched_series(folder: str | Path) -> np.ndarray | None:
    """The photograph series of each cell of :func:`untouched_lab` (same order): the part of the
    file name before its first underscore (``B-57_0018_0.png`` -> ``B-57``; the Chulalongkorn set
    names its photographs ``<series>_<number>`` and ``bcfeat crop-boxes`` appends ``_<box>``)."""
    from bcfeat.data.image_folders import folder_images

    if not str(folder) or not Path(folder).is_dir():
        return None
    files, _ = folder_images(Path(folder), "files")
    files = files[files["relpath"].map(lambda r: len(Path(r).parts) == 2)].reset_index(drop=True)
    return files["relpath"].map(lambda r: Path(r).name.split("_")[0]).to_numpy()


def series_confound(series: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """How far a lab's photograph series follow its classes: the number of series, those holding
    one class only, and the share of cells in their series' majority class (1.0: every series is
    one class, so anything that differs between series, such as the stain, differs with the class).

    >>> series_confound(np.array(["a", "a", "b", "b"]), np.array(["x", "x", "y", "x"]))
    {'n_series': 2, 'single_class_series': 1, 'majority_share': 0.75}
    """
    table = pd.crosstab(pd.Series(series, name="series"), pd.Series(y, name="label"))
    return {"n_series": int(len(table)), "single_class_series": int((table.gt(0).sum(axis=1) == 1).sum()),
            "majority_share": float(table.max(axis=1).sum() / table.to_numpy().sum())}


def call_modes(clf: CrossLabClassifier, X: np.ndarray, y: np.ndarray, series: np.ndarray) -> pd.DataFrame:
    """Balanced accuracy of a fitted classifier on one lab's cells, three ways of grouping them into
    calls: the whole folder in one call (the lab's statistics), no adaptation at all (the training
    lab's statistics), and one call per photograph series (series of fewer than ``MIN_SITE_CELLS``
    cells fall back to the training lab's statistics)."""
    import copy

    from sklearn.metrics import balanced_accuracy_score


    unadapted = copy.deepcopy(clf)
    for part in (unadapted, getattr(unadapted, "fallback_", None)):  # a gated classifier: its fallback too
        if part is not None:
            part.site_standardize = False
    per_series = np.empty(len(y), dtype=object)
    for name in pd.unique(series):
        rows = np.flatnonzero(series == name)
        per_series[rows] = (clf if len(rows) >= MIN_SITE_CELLS else unadapted).predict(X[rows])
    rows = [("whole folder, one call", clf.predict(X)), ("training lab's statistics (no adaptation)",
                                                        unadapted.predict(X)),
            ("one call per photograph series", per_series)]
    return pd.DataFrame({"calls": [name for name, _ in rows],
                         "balanced_accuracy": [balanced_accuracy_score(y, pred.astype(str)) for _, pred in rows]})


def all_cells(measured: dict, samples: pd.DataFrame, plan: SplitPlan, setting: str, temperature: float,
              n_boot: int, seed: int, gate_threshold: float | None = None, *, source: str):
    """The chosen classifier of the first split on the source site's test split and on all cells of every
    unseen site (each in one call), with 95 % bootstrap intervals and the per-cell predictions."""
    from bcfeat.crosslab import evaluation as ev
    from bcfeat.data.splits import as_test_masks

    s = parse_setting(setting)
    domain = samples["domain"].to_numpy()
    is_test = as_test_masks(plan, len(samples))[0]
    return ev.transfer_scores(measured[s["source"]].features, samples["label"].to_numpy(), domain,
                              _train_rows(samples, plan, source), is_test & (domain == source),
                              lambda: classifier_for(s, seed, temperature, gate_threshold), source, n_boot, seed,
                              return_predictions=True)


def goals_glue(goals: pd.DataFrame, source: str, unseen: Sequence[str], untouched: str) -> dict:
    """The chapter's numbers from :func:`goals_table`: per lab, and whether the milestone
    (>= 0.70 on every unseen lab, no mix costing > 0.03, mean confidence within 0.10 of accuracy)
    and the target (>= 0.80 balanced accuracy and >= 0.75 macro-F1 under every mix in calls of
    >= 100 cells, differential error <= 3 / 5 points, ECE <= 0.05) hold on the unseen labs."""
    g = goals.set_index("lab")
    # calibration is judged on the probabilities bcfeat classify gives: the call's own temperature where
    # the classifier has two views (ece_call, confidence_gap_call), else the one temperature
    called = "confidence_gap_call" in g.columns
    ece, gap = ("ece_call", "confidence_gap_call") if called else ("ece", "confidence_gap")
    out = {}
    for lab in g.index:
        if "worst_mix" in g.columns:
            out[f"crosslab_goal_{lab}_worst_mix"] = str(g.loc[lab, "worst_mix"]).replace("_", "-")
        for col in ("balanced_accuracy_all", "macro_f1_all", "worst_mix_balanced_accuracy", "worst_mix_cost",
                    *(("worst_mix_cost_se",) if "worst_mix_cost_se" in g.columns else ()),
                    "diff_mae_pp_100", "diff_worst_pp_100", "ece", "confidence_gap",
                    *(("ece_call", "confidence_gap_call") if called else ())):
            out[f"crosslab_goal_{lab}_{col}"] = float(g.loc[lab, col])
    labs = [lab for lab in [*unseen, untouched] if lab in g.index]
    part = g.loc[labs]
    milestone = ((part["balanced_accuracy_all"] >= 0.70).all() and (part["worst_mix_cost"] <= 0.03).all()
                 and (part[gap].abs() <= 0.10).all())
    target = ((part["worst_mix_balanced_accuracy"] >= 0.80).all() and (part["worst_mix_macro_f1"] >= 0.75).all()
              and (part["diff_mae_pp_100"] <= 3).all() and (part["diff_worst_pp_100"] <= 5).all()
              and (part[ece] <= 0.05).all() and g.loc[source, "worst_mix_balanced_accuracy"] >= 0.97)
    out["crosslab_goal_milestone"] = "met" if milestone else "not met"
    out["crosslab_goal_target"] = "met" if target else "not met"
    out["crosslab_goal_labs"] = ", ".join(labs)
    out["crosslab_untouched_present"] = "yes" if untouched in g.index else "no (folder absent on this machine)"
    return out
