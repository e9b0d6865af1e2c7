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


def test_the_disagreement_figure_puts_each_call_at_the_lines_estimate_and_tells_where_it_came_from():
    """Every call sits at (the deployed line's estimate from its readings, its accuracy), drawn by
    where it came from; real labs at their estimated accuracy; the axis names the line's terms."""
    from bcfeat.crosslab.view_agreement import AccuracyFromDisagreement
    from bcfeat.study import crosslab_figures as cf

    rows = [{"lab": "virtual_00", "mix": mix, "disagreement": d, "novelty": v, "accuracy": 0.9 - 2 * d}
            for mix, d, v in (("all cells", 0.05, 1.2), ("own", 0.08, 1.3), ("typical", 0.1, 1.1))]
    rows += [{"lab": "source fold 0", "mix": mix, "disagreement": d, "novelty": 0.8, "accuracy": 0.98 - d}
             for mix, d in (("all cells", 0.0), ("own", 0.01))]
    calls = pd.DataFrame(rows)
    line = AccuracyFromDisagreement(1.2, -1.0, 0.2, 5, 0.02, -0.3)
    hard_calls = pd.concat([calls, pd.DataFrame([{"lab": "hard_00", "mix": "all cells", "disagreement": 0.2,
                                                  "novelty": 1.5, "accuracy": 0.4}])], ignore_index=True)
    hard_labels = [t.get_text() for t in cf.disagreement_figure(hard_calls, line).axes[0].get_legend().get_texts()]
    assert "hard virtual lab, all cells" in hard_labels and "hard virtual lab, call of 100" not in hard_labels
    real = pd.DataFrame([{"lab": "bccd_crops", "estimated_accuracy": 0.7, "accuracy": 0.6}])
    ax = cf.disagreement_figure(calls, line, real).axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["virtual lab, call of 100", "virtual lab, all cells", "training lab, out of fold, call of 100",
                      "training lab, out of fold, all cells", "estimate = accuracy", "real lab, all cells"]
    drawn = np.vstack([c.get_offsets() for c in ax.collections[:4]])
    expected = [(line.estimate(r.disagreement, r.novelty), r.accuracy) for r in calls.itertuples()]
    order = [1, 2, 0, 4, 3]  # calls of 100 before all cells, per source
    assert np.allclose(drawn, np.array(expected)[order])
    assert np.allclose(ax.collections[4].get_offsets(), [[0.7, 0.6]])
    assert "novelty" in ax.get_xlabel()
    one_term = cf.disagreement_figure(calls.iloc[:3], AccuracyFromDisagreement(0.9, -2.0, 0.2, 3, 0.0)).axes[0]
    assert not any("training lab" in t.get_text() for t in one_term.get_legend().get_texts())
    assert "novelty" not in one_term.get_xlabel()
