"""A lab's path through the cross-lab model: features of a folder, a classifier trained on labelled
folders, and a folder of new cells classified to a table.

Labelled folders are ``<folder>/<class>/<image>``: the first folder below ``<folder>`` is the class,
as written (a lab's own class names are kept). Unreadable files are never fatal: each one is named
with its reason in the ``skipped`` list and left out of the table.
"""

from __future__ import annotations

import logging
import os
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from bcfeat.crosslab.differential_check import differential_warning
from bcfeat.crosslab.framing_check import framing_warning, median_cell_fill
from bcfeat.crosslab.site_statistics import MIN_SITE_CELLS
from bcfeat.crosslab.model import CrossLabModel, load_measuring_part, load_model, read_model_payload, save_model

if TYPE_CHECKING:  # the classifier is built while classify's workers measure (fitting one imports scikit-learn)
    from bcfeat.crosslab.adaptation import CrossLabClassifier, LabelledCall

logger = logging.getLogger(__name__)

# Fewer labelled cells of a class cannot train a classifier that means anything.
MIN_CELLS_PER_CLASS = 2
# A model file written before the calibration (no fitted rule): a cell is uncertain below this top probability.
DEFAULT_UNCERTAIN_BELOW = 0.5


def _folder_files(folder: str | os.PathLike, labelled: bool) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    from bcfeat.data.image_folders import folder_images

    files, dropped = folder_images(folder, "files")
    if labelled:
        parts = files["relpath"].map(lambda r: Path(r).parts)
        top = parts.map(len) >= 2
        dropped += [(r, "not inside a class folder (<folder>/<class>/<image>)") for r in files.loc[~top, "relpath"]]
        files = files[top].copy()
        files["label"] = parts[top].map(lambda p: p[0])
    return files.reset_index(drop=True), dropped


def _measure_folder(model: CrossLabModel, folder: str | os.PathLike, labelled: bool, found: list | None = None,
                    thumbnails: list | None = None, min_images: int = 1, reads: tuple[int, ...] | None = None,
                    meanwhile=None):
    from bcfeat.data.images import SkippedImages

    files, dropped = _folder_files(folder, labelled)
    if files.empty:
        raise FileNotFoundError(f"no images found below {folder}" + (" in class folders" if labelled else ""))
    if len(files) < min_images:  # refused before any image is read
        raise ValueError(f"{len(files)} image file(s) below {folder}; the model standardises a lab's cells with "
                         f"their own statistics and needs at least {min_images}")
    skipped = SkippedImages()
    feats, kept = model.measure(files["path"].tolist(), skipped, found=found, thumbnails=thumbnails, reads=reads,
                                meanwhile=meanwhile)
    dropped = dropped + [(str(Path(p).relative_to(folder)) if Path(p).is_absolute() else str(p), reason)
                         for p, reason in skipped]
    return files.iloc[kept].reset_index(drop=True), feats, sorted(dropped)


def measure_folder_table(model: CrossLabModel, folder: str | os.PathLike):
    """Cell features of every image below ``folder`` with a loaded model (what
    ``open_extractor(path).extract_folder(folder)`` gives for a cross-lab file): ``(table, skipped)``;
    the table has ``relpath`` and one column per feature (raw, before any per-site standardisation)."""
    files, feats, skipped = _measure_folder(model, folder, labelled=False)
    table = pd.concat([files[["relpath"]], pd.DataFrame(feats, columns=model.feature_names)], axis=1)
    return table, skipped


def _corrections_files(corrections: str | os.PathLike, folder: str | os.PathLike) -> pd.DataFrame:
    """The corrected cells as ``relpath, path, label`` (``path`` resolved); every file must exist
    below ``folder``."""
    from bcfeat.crosslab.review_report import read_corrections

    table = read_corrections(corrections)
    root = Path(folder).resolve()
    paths = []
    for i, relpath in enumerate(table["relpath"], start=2):
        path = (root / relpath).resolve()
        if root not in path.parents or not path.is_file():
            raise ValueError(f"{corrections}: row {i}: {relpath!r} is not a file below {folder}")
        paths.append(str(path))
    return pd.DataFrame({"relpath": table["relpath"].to_numpy(), "path": paths, "label": table["label"].to_numpy()})


def _corrections_call(model: CrossLabModel, corrections: str | os.PathLike, extra: pd.DataFrame,
                      folder: str | os.PathLike) -> tuple[LabelledCall, pd.Series, list[tuple[str, str]]]:
    """A reviewer's corrections of a classified folder as one :class:`LabelledCall`: every image
    below ``folder`` is measured again (the call's statistics are those of its cells with a cell
    found, as when it was classified) and the corrected ones carry their labels. Returns the call,
    the corrections per class and the skipped files (a corrected image that cannot be read, or
    where no cell was found, is skipped with its reason). ``extra``: :func:`_corrections_files`'s table."""
    from bcfeat.crosslab.adaptation import LabelledCall

    found: list[bool] = []
    files, feats, skipped = _measure_folder(model, folder, labelled=False, found=found, min_images=MIN_SITE_CELLS)
    found = np.asarray(found, bool)
    if found.sum() < MIN_SITE_CELLS:
        raise ValueError(f"--corrections-folder {folder}: {int(found.sum())} images hold a cell that could be found; "
                         f"the corrections are read in that lab's own statistics, which need at least {MIN_SITE_CELLS}")
    call_rows = np.cumsum(found) - 1  # a measured image's row among the cells of the call
    where = {str(Path(path).resolve()): i for i, path in enumerate(files["path"])}
    rows, labels = [], []
    for relpath, path, label in extra.itertuples(index=False):
        i = where.get(path)
        if i is None:
            continue  # unreadable: already in skipped, with its reason
        if not found[i]:
            skipped.append((str(relpath), "corrected, but no cell was found in it (the correction is not used)"))
            continue
        rows.append(int(call_rows[i]))
        labels.append(label)
    if not rows:
        raise ValueError(f"{corrections}: none of the corrected images below {folder} holds a cell that could be read")
    call = LabelledCall(features=feats[found], rows=np.asarray(rows), labels=np.asarray(labels))
    return call, pd.Series(labels).value_counts(), sorted(skipped)


def train_classifier(model_path: str | os.PathLike, folder: str | os.PathLike, output: str | os.PathLike,
                     C: float | None = None, groups: str | None = None,
                     corrections: str | os.PathLike | None = None, corrections_folder: str | os.PathLike | None = None
                     ) -> tuple[Path, pd.Series, list[tuple[str, str]]]:
    """Train the cross-lab classifier on labelled folders and write model + classifier to ``output``.

    ``C`` and ``groups`` (the feature set) default to the setting the study chose for the model
    file (its record), else 0.03 and ``"all"``; the columns the study's setting leaves out (its
    order-stable lever) are left out too, unless ``groups`` names another feature set. ``corrections`` (``relpath,label``, the download
    of a review report) adds reviewed cells of ``corrections_folder`` (the classified folder, which
    is measured again): they are read in that folder's own statistics, as the classifier reads the
    folder when it classifies it, not in the labelled folder's (:class:`LabelledCall`). Returns the
    written path, the number of cells per class (corrections included), and the skipped files.
    """
    from bcfeat.crosslab.adaptation import CLASS_STATISTICS, CrossLabClassifier
    from bcfeat.crosslab.cell_features import feature_set_columns

    if groups is not None:
        feature_set_columns(groups)  # an unknown name fails before any work
    if C is not None and not C > 0:
        raise ValueError(f"C must be > 0, got {C}")
    if (corrections is None) != (corrections_folder is None):
        raise ValueError("--corrections and --corrections-folder go together: the corrections' relpaths are "
                         "relative to the folder that was classified")
    extra = None
    if corrections is not None:  # a bad table, or a folder too small for its statistics, fails before any measuring
        extra = _corrections_files(corrections, corrections_folder)
        n_files = len(_folder_files(corrections_folder, labelled=False)[0])
        if n_files < MIN_SITE_CELLS:
            raise ValueError(f"--corrections-folder {corrections_folder}: {n_files} image file(s); the corrections "
                             f"are read in that lab's own statistics, which need at least {MIN_SITE_CELLS}")
    model = load_model(model_path)
    setting = _study_setting(model.record)
    C = setting.get("C", 0.03) if C is None else C
    # the study's left-out columns (its order-stable lever) go with its feature set, not with one named here
    drop = tuple(setting.get("drop", ())) if groups is None else ()
    groups = setting.get("groups", "all") if groups is None else groups
    statistics = setting.get("statistics", "plain")
    columns = feature_set_columns(groups, drop)
    files, feats, skipped = _measure_folder(model, folder, labelled=True, min_images=MIN_SITE_CELLS)
    calls, counts = [], files["label"].value_counts()
    if corrections is not None:
        call, corrected, more = _corrections_call(model, corrections, extra, corrections_folder)
        calls, counts = [call], counts.add(corrected, fill_value=0).astype(int)
        skipped = sorted(skipped + more)
    counts = counts.sort_index()
    small = counts[counts < MIN_CELLS_PER_CLASS]
    if len(small):
        raise ValueError(f"class folder(s) {', '.join(f'{k!r} ({v})' for k, v in small.items())} hold fewer than "
                         f"{MIN_CELLS_PER_CLASS} readable images")
    if len(counts) < 2:
        raise ValueError(f"{folder} holds one class folder ({', '.join(counts.index)}); a classifier needs two or more")
    if len(files) < MIN_SITE_CELLS:
        raise ValueError(f"{len(files)} readable images; at least {MIN_SITE_CELLS} are needed for the lab's statistics")
    unknown = sorted(set(counts.index) - set(files["label"]))
    if unknown:
        raise ValueError(f"{corrections}: label(s) {unknown} are not class folders of {folder} "
                         f"({', '.join(sorted(set(files['label'])))})")
    study_calibration = {} if model.classifier is None else getattr(model.classifier, "calibration_", {})
    calibration = {k: v for k, v in study_calibration.items() if k in ("temperature", "uncertain_min_probability")}
    clf = CrossLabClassifier(model="logistic", C=C, balance_rounds=0 if statistics == "plain" else 2,
                             statistics=statistics if statistics in CLASS_STATISTICS else "balanced", columns=columns,
                             temperature=float(calibration.get("temperature", 1.0)))
    model.classifier = clf.fit(feats, files["label"].to_numpy(), calls)
    # The study's temperature and uncertain threshold were fitted on its virtual labs for the same
    # features and model, and are kept; its novelty reference and texture gate belong to its own
    # classifier and classes, and are not.
    model.classifier.calibration_ = calibration
    model.record = {**model.record, "classifier_trained_on": str(Path(folder).resolve()),
                    "class_counts": {str(k): int(v) for k, v in counts.items()}, "n_cells": int(counts.sum()),
                    "n_skipped": len(skipped), "C": C, "groups": groups, "statistics": statistics,
                    "dropped_columns": list(drop),
                    "n_corrections": int(len(calls[0].rows)) if calls else 0,
                    **({"corrections_folder": str(Path(corrections_folder).resolve())} if calls else {}),
                    "trained_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    return save_model(output, model), counts, skipped


NO_CELL = "(no cell found)"


def _call_warnings(feats: np.ndarray, predicted: np.ndarray) -> list[str]:
    """Warnings about a call as a whole: features without spread (the same image many times, or
    blank images), or every cell called the same class."""
    out = []
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a feature left out of the call (NaN) has no spread
        spread = np.nanstd(feats, axis=0)
    if len(feats) > 1 and not np.any(spread > 1e-9):
        out.append(f"the {len(feats)} cells' features do not vary at all (copies of one image, or blank "
                   "images?): the lab's statistics, and so every class, are meaningless")
    if len(predicted) >= MIN_SITE_CELLS and len(set(predicted)) == 1:
        out.append(f"all {len(predicted)} cells were called {predicted[0]!r}: a real smear holds several "
                   "classes, so check that this folder is one lab's ordinary cells")
    return out


def _study_setting(record: dict) -> dict:
    """The study's chosen setting from a model file's record (``{}`` when it has none)."""
    from bcfeat.study.crosslab_validation import parse_setting

    name = record.get("setting", "")
    if not isinstance(name, str) or len(name) > 200:  # a file from elsewhere: only a short name is a setting
        return {}
    try:
        return parse_setting(name) if name else {}
    except ValueError:
        return {}


def uncertain_cells(classifier: CrossLabClassifier, proba: np.ndarray) -> np.ndarray:
    """``(n,)`` True where the top probability is below the study's fitted threshold (the model
    file's calibration; :data:`DEFAULT_UNCERTAIN_BELOW` for files written before it)."""
    threshold = float(getattr(classifier, "calibration_", {}).get("uncertain_min_probability", DEFAULT_UNCERTAIN_BELOW))
    return proba.max(axis=1) < threshold


def lab_warning(classifier: CrossLabClassifier, feats: np.ndarray) -> str | None:
    """A warning when this call's cells sit farther from every training class than any of the
    study's development labs did (``None`` if not, or if the file holds no reference)."""
    from bcfeat.crosslab.novelty import LabNovelty, novelty_warning

    calibration = getattr(classifier, "calibration_", {})
    if "novelty_threshold" not in calibration:
        return None
    score = classifier.lab_novelty(feats)
    novelty = LabNovelty(np.asarray(calibration.get("reference_novelty", []), float),
                         float(calibration["novelty_threshold"]))
    return novelty_warning(score, novelty)


#: A call whose estimated accuracy (from its views' disagreement) is below this gets a warning: the
#: issue's target balanced accuracy for a lab.
ESTIMATE_WARNING_BELOW = 0.80


def call_calibrated(classifier: CrossLabClassifier, feats: np.ndarray,
                    proba: np.ndarray, estimate: dict | None = None) -> tuple[np.ndarray, str | None]:
    """One call's probabilities brought to the accuracy its two views' disagreement (and, for a
    two-term line, its lab novelty) predicts (the model file's ``accuracy_from_disagreement``, fitted
    on the study's development labs;
    :mod:`bcfeat.crosslab.view_agreement`), and a warning when that estimate is below
    :data:`ESTIMATE_WARNING_BELOW`. Unchanged, without a warning, when the file holds no such line
    or the classifier has one view (a lab's own ``train-classifier`` model), or for a call of fewer
    than :data:`bcfeat.crosslab.view_agreement.MIN_CALL_CELLS` cells. A dict passed as ``estimate``
    receives, where the line was applied, the call's ``estimated_accuracy``, ``disagreement``,
    ``novelty`` (None for a one-term line) and ``n_cells`` (:func:`estimate_summary` words them)."""
    from bcfeat.crosslab.view_agreement import MIN_CALL_CELLS, AccuracyFromDisagreement, calibrate_with_views

    record = getattr(classifier, "calibration_", {}).get("accuracy_from_disagreement")
    if record is None or classifier.gate_columns is None or len(proba) < MIN_CALL_CELLS:
        return proba, None
    line = AccuracyFromDisagreement.from_dict(record)
    novelty = classifier.lab_novelty(feats) if line.uses_novelty else None  # read once: the estimate and its words
    out, d, accuracy = calibrate_with_views(classifier, feats, proba, line, novelty)
    if estimate is not None:
        estimate.update(estimated_accuracy=float(accuracy), disagreement=float(d),
                        novelty=None if novelty is None else float(novelty), n_cells=int(len(feats)))
    if accuracy >= ESTIMATE_WARNING_BELOW:
        return out, None
    far = f" and the cells sit {novelty:.2f} from the training classes (lab novelty)" if novelty is not None else ""
    return out, (f"the classifier read with and without texture disagrees on {d:.0%} of these {len(feats)} cells{far}; "
                 f"on the development labs that went with about {accuracy:.0%} accuracy, and the probabilities "
                 "are lowered to match: review the cells marked uncertain, or label a few cells per class "
                 "(bcfeat train-classifier --corrections)")


def estimate_summary(estimate: dict) -> str:
    """The call's estimated accuracy and the readings it comes from, in words for a lab, from
    :func:`call_calibrated`'s ``estimate``.

    >>> print(estimate_summary({"estimated_accuracy": 0.62, "disagreement": 0.17, "novelty": 1.51, "n_cells": 511}))
    about 62 % (the two readings disagree on 17 % of its 511 cells; lab novelty 1.51), from the line fitted on the study's development labs; the probabilities are brought to it
    """
    novelty = "" if estimate.get("novelty") is None else f"; lab novelty {estimate['novelty']:.2f}"
    return (f"about {100 * estimate['estimated_accuracy']:.0f} % (the two readings "
            f"disagree on {100 * estimate['disagreement']:.0f} % of its {estimate['n_cells']} cells{novelty}), from the "
            "line fitted on the study's development labs; the probabilities are brought to it")


def gate_warning(classifier: CrossLabClassifier, feats: np.ndarray) -> str | None:
    """A note when this call's texture measures sit farther from the training classes than any of
    the study's development labs' did, so that it was classified without them (``None`` if not,
    or if the classifier has no texture gate)."""
    if not classifier.gate_closed(feats):
        return None
    return (f"these cells' texture sits farther from the training classes than on any development lab "
            f"(texture novelty {classifier.gate_novelty(feats):.2f} > "
            f"{classifier.gate_threshold_for(len(feats)):.2f} for {len(feats)} cells): "
            "they were classified without the texture features")


def classify_folder(model_path: str | os.PathLike, folder: str | os.PathLike, thumbnails: list | None = None,
                    warning_list: list | None = None, usual_upper: dict[str, float] | None = None,
                    estimate: dict | None = None):
    """Classify every image below ``folder`` as one lab's cells: ``(table, skipped)`` with
    ``relpath, predicted, probability, uncertain, cell_found`` and one ``p_<class>`` column per class.

    An image where no cell was found (the mask is the centred fallback: a blank or black image)
    is kept as a row with ``cell_found`` False, ``predicted`` "(no cell found)" and no
    probabilities, and is left out of the lab's statistics.

    ``uncertain`` marks the cells a technologist should review (top probability below the
    threshold the study fitted on its development labs). When the folder's cells look unlike
    every training class (farther than any development lab), a warning is logged: the lab's
    stain, optics or framing may be outside what the model has seen; and when the predicted
    differential holds more of a class than blood usually does (:mod:`bcfeat.crosslab.differential_check`,
    e.g. a fifth of the cells called basophils; ``usual_upper``: the lab's own upper shares, default
    its ``USUAL_UPPER_SHARE``). A list passed as ``warning_list``
    receives them too; one passed as ``thumbnails`` receives each row's canonical crop (JPEG bytes);
    a dict passed as ``estimate`` receives the call's estimated accuracy (:func:`call_calibrated`).

    Images are read and measured in bounded chunks: memory holds the feature table, not the folder.
    A folder with fewer image files than the lab statistics need is refused before any is read."""
    payload = read_model_payload(model_path, arrays=True)
    if payload["classifier"] is None:
        raise _no_classifier(model_path)
    loaded: list[CrossLabModel] = []
    if payload["detector"] is not None:  # the detector runs in this process: the whole model first
        loaded.append(load_model(model_path, payload))
        measuring, reads, meanwhile = loaded[0], loaded[0].classifier_columns, None
    else:  # the classifier is built from the file's arrays while the worker processes measure
        measuring, reads = load_measuring_part(model_path, payload)
        meanwhile = lambda: loaded.append(load_model(model_path, payload))  # noqa: E731
    found: list[bool] = []
    files, feats, skipped = _measure_folder(measuring, folder, labelled=False, found=found, thumbnails=thumbnails,
                                            min_images=MIN_SITE_CELLS, reads=reads, meanwhile=meanwhile)
    table = classify_cells(loaded[0], files["relpath"], feats, np.asarray(found, bool), folder, warning_list,
                           usual_upper, estimate)
    return table, skipped


def _no_classifier(model_path: str | os.PathLike) -> ValueError:
    return ValueError(f"{model_path} holds no classifier: train one with `bcfeat train-classifier`")


def _classifier_model(model_path: str | os.PathLike) -> CrossLabModel:
    model = load_model(model_path)
    if model.classifier is None:
        raise _no_classifier(model_path)
    return model


def classify_features(model_path: str | os.PathLike, features: pd.DataFrame, folder: str | os.PathLike,
                      warning_list: list | None = None, usual_upper: dict[str, float] | None = None,
                      estimate: dict | None = None) -> pd.DataFrame:
    """:func:`classify_folder`'s table from a feature table of the same model (``relpath``,
    ``cell_found`` and the feature columns: the merge of ``bcfeat classify --shard`` runs)."""
    model = _classifier_model(model_path)
    missing = [c for c in ["relpath", "cell_found", *model.feature_names] if c not in features.columns]
    if missing:
        raise ValueError(f"the feature table lacks {len(missing)} column(s) of this model, e.g. {missing[0]!r}")
    feats = features[model.feature_names].to_numpy(np.float64)
    return classify_cells(model, features["relpath"], feats, features["cell_found"].to_numpy(bool), folder,
                          warning_list, usual_upper, estimate)


def _framing_warning(model: CrossLabModel, relpaths: pd.Series, feats: np.ndarray, found: np.ndarray,
                     folder: str | os.PathLike) -> str | None:
    """:func:`~bcfeat.crosslab.framing_check.framing_warning` of the call's found cells (their files
    below ``folder``; None where the model's features hold no cell diameter)."""
    names = model.feature_names
    if "log_cell_diameter_px" not in names or feats.shape[1] != len(names):
        return None
    paths = [Path(folder) / r for r in np.asarray(relpaths)[found]]
    diameters = np.exp(feats[found, names.index("log_cell_diameter_px")])
    return framing_warning(median_cell_fill(paths, diameters))


def classify_cells(model: CrossLabModel, relpaths: pd.Series, feats: np.ndarray, found: np.ndarray,
                   folder: str | os.PathLike, warning_list: list | None = None,
                   usual_upper: dict[str, float] | None = None, estimate: dict | None = None) -> pd.DataFrame:
    """One lab's measured cells -> the table of :func:`classify_folder` (the lab's statistics are
    those of the cells with ``found``; ``estimate``: see :func:`call_calibrated`)."""
    if found.sum() < MIN_SITE_CELLS:
        raise ValueError(f"{int(found.sum())} images below {folder} hold a cell that could be found "
                         f"({len(relpaths)} readable); the model standardises a lab's cells with their own "
                         f"statistics and needs at least {MIN_SITE_CELLS}")
    classes = model.classifier.classes_
    # cells where no cell was found are left out of the lab's statistics and get no class
    proba = np.full((len(relpaths), len(classes)), np.nan)
    proba[found], accuracy_warning = call_calibrated(model.classifier, feats[found],
                                                     model.classifier.predict_proba(feats[found]), estimate)
    predicted = np.where(found, classes[np.nan_to_num(proba, nan=0.0).argmax(axis=1)], NO_CELL)
    table = pd.DataFrame({"relpath": np.asarray(relpaths), "predicted": predicted, "probability": proba.max(axis=1),
                          "uncertain": ~found | uncertain_cells(model.classifier, np.nan_to_num(proba, nan=0.0)),
                          "cell_found": found})
    for warning in [lab_warning(model.classifier, feats[found]), gate_warning(model.classifier, feats[found]),
                    accuracy_warning, *_call_warnings(feats[found], predicted[found]),
                    differential_warning(predicted[found], usual_upper), _framing_warning(model, relpaths, feats, found,
                                                                                          folder)]:
        if warning:
            logger.warning("%s: %s", folder, warning)
            if warning_list is not None:
                warning_list.append(warning)
    return pd.concat([table, pd.DataFrame(proba, columns=[f"p_{c}" for c in classes])], axis=1)


__all__ = ["measure_folder_table", "train_classifier", "classify_folder", "classify_features", "classify_cells", "uncertain_cells", "lab_warning", "gate_warning", "call_calibrated",
           "estimate_summary",
           "ESTIMATE_WARNING_BELOW",
           "MIN_CELLS_PER_CLASS", "DEFAULT_UNCERTAIN_BELOW"]
