"""The book's figure functions draw what they are given (synthetic inputs, no display)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd

from bcfeat.study import figures


def test_umap_is_repeatable_and_separates_clusters():
    rng = np.random.default_rng(0)
    X = np.vstack([rng.normal(0, 1, (60, 8)), rng.normal(8, 1, (60, 8))])
    a = figures.umap_embedding(X, seed=3)
    b = figures.umap_embedding(X, seed=3)
    np.testing.assert_allclose(a, b)
    assert a.shape == (120, 2)
    centre_gap = np.linalg.norm(a[:60].mean(0) - a[60:].mean(0))
    spread = max(a[:60].std(0).max(), a[60:].std(0).max())
    assert centre_gap > 3 * spread
    fig = figures.umap_figure(a, ["pbc_acevedo20"] * 60 + ["bccd_crops"] * 60, ["x", "y"] * 60)
    assert len(fig.axes) == 2
    legend_texts = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert legend_texts == ["pbc_acevedo20 (60)", "bccd_crops (60)"]


def summary_frame():
    rows = []
    for train in ("pbc_acevedo20", "bccd_crops"):
        for test in ("pbc_acevedo20", "bccd_crops"):
            rows.append({"train_domain": train, "test_domain": test,
                         "balanced_accuracy_mean": 0.9 if train == test else 0.4,
                         "balanced_accuracy_std": 0.01})
    return pd.DataFrame(rows)


def test_domain_matrix_heatmap_annotates_mean_and_std():
    fig = figures.domain_matrix_heatmap(summary_frame())
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert "0.90\n±0.01" in texts and "0.40\n±0.01" in texts


def test_confusion_figure_normalizes_rows():
    cm = pd.DataFrame({"train_domain": "a", "test_domain": "b", "true_label": ["x", "x", "y", "y"],
                       "predicted_label": ["x", "y", "x", "y"], "count": [3, 1, 0, 4]})
    fig = figures.confusion_figure(cm, [("a", "b")], ["x", "y"])
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert texts == ["0.75", "0.25", "0.00", "1.00"]


def test_reconstruction_and_mask_figures_have_one_panel_per_image():
    crops = {"s1": np.random.rand(3, 3, 16, 16), "s2": np.random.rand(3, 3, 16, 16)}
    fig = figures.reconstruction_figure(crops, crops, per_site=3)
    assert len(fig.axes) == 4 * 3
    images = [np.zeros((20, 20, 3), np.uint8)] * 2
    mask = np.zeros((20, 20), bool)
    mask[5:15, 5:15] = True
    fig = figures.mask_outline_figure(images, {"expert": [mask, mask], "detector": [mask, mask]},
                                      boxes=[(5, 5, 15, 15)] * 2)
    assert len(fig.axes) == 2


def test_per_class_f1_figure_has_a_panel_per_feature_set():
    per_class = pd.DataFrame({"feature_set": ["ae", "ae", "raw", "raw"], "test_domain": "bccd_crops",
                              "label": ["x", "y", "x", "y"], "f1": [0.5, 0.7, 0.2, 0.1]})
    fig = figures.per_class_f1_figure(per_class)
    assert len([ax for ax in fig.axes if ax.get_title()]) == 2


def test_the_disagreement_figure_tells_the_training_labs_calls_from_the_virtual_labs():
    """The line's development calls, drawn by where they came from; the fitted line is that of all of them."""
    from bcfeat.study import crosslab_figures as cf

    rows = [{"lab": "virtual_00", "mix": mix, "disagreement": d, "accuracy": 0.9 - 2 * d}
            for mix, d in (("all cells", 0.05), ("own", 0.08), ("typical", 0.1))]
    rows += [{"lab": "source fold 0", "mix": mix, "disagreement": d, "accuracy": 0.98 - d}
             for mix, d in (("all cells", 0.0), ("own", 0.01))]
    calls = pd.DataFrame(rows)
    real = pd.DataFrame([{"lab": "bccd_crops", "view_disagreement": 0.1, "accuracy": 0.6}])
    ax = cf.disagreement_figure(calls, real).axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    slope, intercept = np.polyfit(calls["disagreement"], calls["accuracy"], 1)
    assert f"fit: {intercept:.2f} {slope:+.2f} x" in labels
    assert [t for t in labels if not t.startswith("fit")] == [
        "virtual lab, call of 100", "virtual lab, all cells", "training lab, out of fold, call of 100",
        "training lab, out of fold, all cells", "real lab, all cells"]
    only_virtual = [t.get_text() for t in cf.disagreement_figure(calls.iloc[:3]).axes[0].get_legend().get_texts()]
    assert not any("training lab" in t for t in only_virtual)
