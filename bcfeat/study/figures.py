"""Every figure of the book, made from arrays and tidy tables (the notebooks only call these).

Each function returns a matplotlib Figure; the notebooks glue it into the book.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from bcfeat.study.design import DEFAULT_SITES


def pyplot():
    # No backend is forced here: in a notebook the inline backend must stay, or glued figures
    # lose their PNG; scripts and tests choose Agg themselves.
    import matplotlib.pyplot as plt

    return plt


def umap_embedding(X: np.ndarray, seed: int = 0, n_neighbors: int = 15, min_dist: float = 0.1) -> np.ndarray:
    """2-d UMAP of standardized features, ``(n, d) -> (n, 2)``, with a fixed seed (repeatable)."""
    import warnings

    from sklearn.preprocessing import StandardScaler

    with warnings.catch_warnings():
        # umap imports tqdm.auto, which warns in a kernel without ipywidgets (we show no bars).
        warnings.filterwarnings("ignore", message="IProgress not found")
        import umap

    scaled = StandardScaler().fit_transform(np.asarray(X, dtype=np.float64))
    reducer = umap.UMAP(n_neighbors=n_neighbors, min_dist=min_dist, random_state=seed, n_jobs=1)
    return reducer.fit_transform(scaled)


def umap_figure(embedding: np.ndarray, site: Sequence[str], label: Sequence[str], title: str = ""):
    """Two panels of one embedding: coloured by site, and by class."""
    plt = pyplot()
    site, label = np.asarray(site), np.asarray(label)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.8))
    for ax, values, name in ((axes[0], site, "site"), (axes[1], label, "class")):
        categories = DEFAULT_SITES.order(values) if name == "site" else sorted(set(values))
        colours = plt.get_cmap("tab10")
        for i, category in enumerate(categories):
            chosen = values == category
            ax.scatter(embedding[chosen, 0], embedding[chosen, 1], s=3 if chosen.sum() > 500 else 8,
                       alpha=0.6, color=colours(i % 10), label=f"{category} ({chosen.sum()})", linewidths=0)
        ax.set_title(f"coloured by {name}")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.legend(fontsize=7, markerscale=3, loc="best", frameon=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def image_grid(rows: dict[str, Sequence[np.ndarray]], row_labels: dict[str, str] | None = None,
               column_titles: Sequence[str] | None = None, tile: float = 1.2):
    """A grid of images: one row per key, images as (H, W, 3) uint8 or float in [0, 1]."""
    plt = pyplot()
    n_cols = max(len(v) for v in rows.values())
    fig, axes = plt.subplots(len(rows), n_cols, figsize=(n_cols * tile, len(rows) * tile * 1.05), squeeze=False)
    for r, (key, images) in enumerate(rows.items()):
        for c in range(n_cols):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(images):
                ax.imshow(np.clip(images[c], 0, 1) if np.asarray(images[c]).dtype.kind == "f" else images[c])
            else:
                ax.axis("off")
            if c == 0:
                ax.set_ylabel((row_labels or {}).get(key, key), fontsize=7)
            if r == 0 and column_titles is not None and c < len(column_titles):
                ax.set_title(column_titles[c], fontsize=7)
    fig.tight_layout()
    return fig


def reconstruction_figure(crops: dict[str, np.ndarray], reconstructions: dict[str, np.ndarray], per_site: int = 6):
    """Masked cell crops (input) above their reconstructions, per site; arrays ``(n, 3, S, S)`` in [0, 1]."""
    rows, labels = {}, {}
    for site in crops:
        rows[f"{site}/input"] = [np.transpose(x, (1, 2, 0)) for x in crops[site][:per_site]]
        rows[f"{site}/output"] = [np.transpose(x, (1, 2, 0)) for x in reconstructions[site][:per_site]]
        labels[f"{site}/input"] = f"{site}\ninput"
        labels[f"{site}/output"] = "reconstruction"
    return image_grid(rows, labels)


def mask_outline_figure(images: Sequence[np.ndarray], masks: dict[str, Sequence[np.ndarray]],
                        boxes: Sequence[Sequence[float]] | None = None, titles: Sequence[str] | None = None):
    """Images with mask outlines overlaid: one colour per mask source (e.g. expert, pseudo, detector)."""
    from skimage.segmentation import find_boundaries

    plt = pyplot()
    colours = {name: c for name, c in zip(masks, ("lime", "orange", "magenta", "cyan"))}
    fig, axes = plt.subplots(1, len(images), figsize=(len(images) * 1.9, 2.2), squeeze=False)
    for i, image in enumerate(images):
        ax = axes[0, i]
        ax.imshow(image)
        for name, mask_list in masks.items():
            edge = find_boundaries(np.asarray(mask_list[i], bool), mode="outer")
            ys, xs = np.nonzero(edge)
            ax.scatter(xs, ys, s=0.3, color=colours[name], label=name if i == 0 else None)
        if boxes is not None:
            x0, y0, x1, y1 = boxes[i]
            ax.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, color="cyan", lw=1,
                                       label="detector box" if i == 0 else None))
        ax.set_xticks([])
        ax.set_yticks([])
        if titles is not None:
            ax.set_title(titles[i], fontsize=7)
    fig.legend(loc="lower center", ncol=len(masks) + 1, fontsize=7, markerscale=10, frameon=False)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return fig


def domain_matrix_heatmap(summary: pd.DataFrame, metric: str = "balanced_accuracy", title: str = ""):
    """Train site (rows) x test site (columns) heatmap of ``<metric>_mean`` with ``± std`` annotations."""
    import seaborn as sns

    plt = pyplot()
    mean = summary.pivot(index="train_domain", columns="test_domain", values=f"{metric}_mean")
    std = summary.pivot(index="train_domain", columns="test_domain", values=f"{metric}_std")
    order_r, order_c = DEFAULT_SITES.order(mean.index), DEFAULT_SITES.order(mean.columns)
    mean, std = mean.loc[order_r, order_c], std.loc[order_r, order_c]
    annotations = mean.map(lambda v: f"{v:.2f}") + std.map(lambda v: "" if pd.isna(v) else f"\n±{v:.2f}")
    fig, ax = plt.subplots(figsize=(1.5 + 1.4 * len(order_c), 1.2 + 0.9 * len(order_r)))
    sns.heatmap(mean, annot=annotations, fmt="", vmin=0, vmax=1, cmap="viridis", ax=ax,
                cbar_kws={"label": metric.replace("_", " ")}, annot_kws={"fontsize": 8})
    ax.set_xlabel("test site")
    ax.set_ylabel("train site")
    ax.set_title(title or metric.replace("_", " "))
    fig.tight_layout()
    return fig


def confusion_figure(confusions: pd.DataFrame, cells: Sequence[tuple[str, str]], labels: Sequence[str],
                     title: str = ""):
    """Row-normalized confusion matrices for several (train site, test site) cells, side by side."""
    import seaborn as sns

    plt = pyplot()
    fig, axes = plt.subplots(1, len(cells), figsize=(3.4 * len(cells), 3.3), squeeze=False)
    for ax, (train, test) in zip(axes[0], cells):
        part = confusions[(confusions["train_domain"] == train) & (confusions["test_domain"] == test)]
        matrix = part.pivot_table(index="true_label", columns="predicted_label", values="count", aggfunc="sum")
        matrix = matrix.reindex(index=labels, columns=labels, fill_value=0)
        fractions = matrix.div(matrix.sum(axis=1).replace(0, np.nan), axis=0)
        sns.heatmap(fractions, vmin=0, vmax=1, cmap="Blues", annot=True, fmt=".2f", cbar=False, ax=ax,
                    annot_kws={"fontsize": 7})
        ax.set_title(f"{train} → {test}", fontsize=8)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.tick_params(labelsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def per_class_f1_figure(per_class: pd.DataFrame, feature_sets: Sequence[str] | None = None, title: str = ""):
    """Mean F1 of every class on each test site (training on the source site), one bar group per class."""
    import seaborn as sns

    data = per_class if feature_sets is None else per_class[per_class["feature_set"].isin(feature_sets)]
    mean = data.groupby(["feature_set", "test_domain", "label"], as_index=False)["f1"].mean()
    grid = sns.catplot(data=mean, x="label", y="f1", hue="test_domain", col="feature_set", kind="bar",
                       height=3.2, aspect=1.3, hue_order=DEFAULT_SITES.order(mean["test_domain"]))
    grid.set_axis_labels("class", "F1")
    grid.set(ylim=(0, 1))
    for ax in grid.axes.flat:
        ax.tick_params(axis="x", labelsize=7, rotation=30)
    if title:
        grid.figure.suptitle(title, y=1.02)
    return grid.figure
