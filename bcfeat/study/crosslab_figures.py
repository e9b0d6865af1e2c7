"""Figures of the "Beyond the paper" chapter (``notebooks/07_crosslab.py``): the domain matrix,
per-class F1, the few-shot curve, the UMAP and the gallery of canonical crops."""

from __future__ import annotations

import numpy as np
import pandas as pd

from bcfeat.evaluation.benchmark import summarize
from bcfeat.crosslab import evaluation as ev

OURS = "crosslab"


def matrix_figure(matrix: pd.DataFrame, setting: str):
    from bcfeat.study.figures import domain_matrix_heatmap

    return domain_matrix_heatmap(summarize(matrix[matrix["setting"] == setting]),
                                 title=f"{OURS} ({setting}): train site x test site")


def per_class_figure(per_class: pd.DataFrame):
    from bcfeat.study.figures import per_class_f1_figure

    return per_class_f1_figure(per_class, title="F1 per class on all cells of each unseen site")


def few_shot_figure(curve: pd.DataFrame):
    from bcfeat.study.figures import pyplot

    plt = pyplot()
    targets = list(dict.fromkeys(curve["target"]))
    fig, axes = plt.subplots(1, len(targets), figsize=(4 * len(targets), 3.4), squeeze=False, sharey=True)
    for ax, target in zip(axes[0], targets):
        for name, g in curve[curve["target"] == target].groupby("features", sort=False):
            ax.errorbar(g["k"], g["balanced_accuracy_mean"], yerr=g["balanced_accuracy_std"], marker="o",
                        capsize=3, label=name)
        ax.set_title(target, fontsize=9)
        ax.set_xlabel("labelled cells per class of the target lab")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("balanced accuracy (rest of the lab)")
    axes[0][-1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def umap_figure(X: np.ndarray, samples: pd.DataFrame, seed: int):
    from bcfeat.study.figures import umap_embedding
    from bcfeat.study.figures import umap_figure as draw

    Z = ev.standardize_per_site(X, samples["domain"].to_numpy())
    return draw(umap_embedding(Z, seed=seed), samples["domain"], samples["label"],
                title=f"{OURS} features, standardised per site")


def gallery_figure(crops: np.ndarray, predictions: pd.DataFrame, seed: int, per_row: int = 8, *, source: str):
    """Canonical crops of each unseen site: a row of correctly and a row of wrongly classified cells."""
    from bcfeat.study.figures import image_grid

    rng = np.random.default_rng(seed)
    rows, labels = {}, {}
    for site, g in predictions[predictions["test_domain"] != source].groupby("test_domain", sort=False):
        for ok, title in ((True, "right"), (False, "wrong")):
            part = g[(g["y_true"] == g["y_pred"]) == ok]
            pick = part.iloc[rng.permutation(len(part))[:per_row]]
            rows[f"{site}/{title}"] = [crops[r] for r in pick["row"]]
            labels[f"{site}/{title}"] = f"{site}\n{title}"
            if not ok and len(pick):
                labels[f"{site}/{title}"] += "\n" + "; ".join(f"{t[:4]}>{p[:4]}" for t, p in
                                                              zip(pick["y_true"][:3], pick["y_pred"][:3]))
    return image_grid(rows, labels)


def virtual_lab_figure(samples: pd.DataFrame, rows: np.ndarray, labs, seed: int, n_cells: int = 5):
    """A few development cells as Acevedo-20 shows them (first column) and through each virtual lab."""
    from bcfeat.crosslab.virtual_labs import render
    from bcfeat.data.images import read_image
    from bcfeat.study.figures import pyplot

    plt = pyplot()
    rng = np.random.default_rng(seed)
    pick = rng.choice(rows, min(n_cells, len(rows)), replace=False)
    images = [read_image(p) for p in samples["path"].to_numpy()[pick]]
    columns = [("Acevedo-20", None), *[(lab.name, lab) for lab in labs]]
    fig, axes = plt.subplots(len(images), len(columns), figsize=(1.3 * len(columns), 1.3 * len(images)), squeeze=False)
    for i, image in enumerate(images):
        for j, (name, lab) in enumerate(columns):
            ax = axes[i][j]
            ax.imshow(image if lab is None else render(image, lab, np.random.default_rng(seed + i)))
            ax.set_xticks([]), ax.set_yticks([])
            if i == 0:
                ax.set_title(name.replace("virtual_", "v"), fontsize=7)
        axes[i][0].set_ylabel(str(samples["label"].to_numpy()[pick[i]])[:5], fontsize=7)
    fig.tight_layout()
    return fig


def mix_figure(summary: pd.DataFrame, metric: str = "balanced_accuracy"):
    """``metric`` per lab under each class mix, one panel per call size (0: all cells in one call)."""
    from bcfeat.study.figures import pyplot

    plt = pyplot()
    sizes = list(dict.fromkeys(summary["call_size"]))
    labs = list(dict.fromkeys(summary["lab"]))
    mixes = list(dict.fromkeys(summary["mix"]))
    fig, axes = plt.subplots(1, len(sizes), figsize=(4.2 * len(sizes), 3.4), squeeze=False, sharey=True)
    width = 0.8 / len(mixes)
    for ax, size in zip(axes[0], sizes):
        part = summary[summary["call_size"] == size].set_index(["lab", "mix"])[metric]
        for k, mix in enumerate(mixes):
            values = [part.get((lab, mix), np.nan) for lab in labs]
            ax.bar(np.arange(len(labs)) + k * width, values, width, label=mix)
        ax.set_xticks(np.arange(len(labs)) + 0.4 - width / 2, [lab[:12] for lab in labs], rotation=30, fontsize=7)
        ax.set_title("all cells in one call" if size == 0 else f"calls of {size} cells", fontsize=9)
        ax.set_ylim(0, 1)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel(metric.replace("_", " "))
    axes[0][-1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def disagreement_figure(calls: pd.DataFrame, line, real: pd.DataFrame | None = None):
    """Each development call's accuracy against the accuracy that ``line`` (the deployed
    :class:`~bcfeat.crosslab.view_agreement.AccuracyFromDisagreement`) estimates from its readings
    (how often the classifier and its texture-free fallback disagree on it and, for a two-term line,
    its lab novelty): :func:`bcfeat.study.crosslab_validation.disagreement_calls` (hard virtual labs:
    ``"hard_..."``), and the training lab's out-of-fold calls where the line uses them (labs
    ``"source fold k"``). A call on the
    diagonal was estimated exactly; ``real`` (``lab, estimated_accuracy, accuracy``), when given,
    marks real labs."""
    from bcfeat.study.crosslab_calibration import call_estimates
    from bcfeat.study.figures import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    estimated = call_estimates(line, calls)
    lab = calls["lab"].astype(str)
    source = lab.str.startswith("source fold").to_numpy()  # source_out_of_fold_calls
    hard = lab.str.startswith("hard_").to_numpy()  # crosslab_validation.hard_virtual_labs
    whole = (calls["mix"] == "all cells").to_numpy()
    for part, name, markers in ((~source & ~hard, "virtual lab", ("o", "s")), (hard, "hard virtual lab", ("v", "P")),
                                (source, "training lab, out of fold", ("^", "D"))):
        for rows, size, marker, what in ((part & ~whole, 8, markers[0], "call of 100"), (part & whole, 18, markers[1], "all cells")):
            if rows.any():
                ax.scatter(estimated[rows], calls.loc[rows, "accuracy"], s=size, alpha=0.35 if size == 8 else 1.0,
                           marker=marker, label=f"{name}, {what}")
    ax.plot([0, 1], [0, 1], color="black", lw=1, label="estimate = accuracy")
    if real is not None:
        ax.scatter(real["estimated_accuracy"], real["accuracy"], s=40, marker="*", color="crimson",
                   label="real lab, all cells")
        for _, row in real.iterrows():
            ax.annotate(str(row["lab"])[:12], (row["estimated_accuracy"], row["accuracy"]), fontsize=7,
                        xytext=(3, 3), textcoords="offset points")
    terms = "disagreement and lab novelty" if line.uses_novelty else "disagreement of the two views"
    ax.set_xlabel(f"accuracy estimated from the {terms}")
    ax.set_ylabel("accuracy of the call")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return fig
