"""The benchmark's tables: every feature set scored on the study's splits, the source row, the
target check, the readings compared and the domain-invariance table."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from bcfeat.data.splits import SplitPlan
from bcfeat.study.design import DEFAULT_SITES


def run_feature_sets(feature_sets: dict[str, np.ndarray], samples: pd.DataFrame, plan: SplitPlan,
                     label_space: str, seed: int, make_classifier: Callable[[int], object] | None = None,
                     train_domains: Sequence[str] | None = None, cross_domain_test: str = "test",
                     classifier_per_set: dict[str, Callable[[int], object]] | None = None):
    """The domain matrix of every feature set; returns ``(scores, predictions)`` concatenated.

    ``make_classifier`` (default: the released code's random forest) serves every set unless
    ``classifier_per_set`` names another factory for it.
    """
    from bcfeat.evaluation.benchmark import domain_matrix

    scores, predictions = [], []
    for name, X in feature_sets.items():
        factory = (classifier_per_set or {}).get(name, make_classifier)
        s, p = domain_matrix(X, samples["label"].to_numpy(), samples["domain"].to_numpy(), plan,
                             make_classifier=factory, label_space_name=label_space,
                             feature_set_name=name, random_state=seed, train_domains=train_domains,
                             cross_domain_test=cross_domain_test, return_predictions=True)
        scores.append(s)
        predictions.append(p)
    return pd.concat(scores, ignore_index=True), pd.concat(predictions, ignore_index=True)

def pca_forest_factory(n_components: int) -> Callable[[int], object]:
    """``random_state -> make_pipeline(PCA, random forest)``: PCA is fitted on each training split."""
    from sklearn.decomposition import PCA
    from sklearn.pipeline import make_pipeline

    from bcfeat.evaluation.benchmark import default_classifier

    def make(random_state: int):
        return make_pipeline(PCA(n_components=n_components, random_state=random_state),
                             default_classifier(random_state))

    return make

def source_row_table(summary: pd.DataFrame, source: str, metric: str = "balanced_accuracy") -> pd.DataFrame:
    """Feature sets (rows) x test sites (columns): ``mean ± std`` of ``metric`` for training on ``source``."""
    rows = summary[summary["train_domain"] == source]
    cell = rows.apply(lambda r: f"{r[f'{metric}_mean']:.3f} ± {0 if pd.isna(r[f'{metric}_std']) else r[f'{metric}_std']:.3f}",
                      axis=1)
    table = rows.assign(cell=cell).pivot(index="feature_set", columns="test_domain", values="cell")
    return table[DEFAULT_SITES.order(rows["test_domain"])].loc[list(dict.fromkeys(rows["feature_set"]))]

def target_check(summary: pd.DataFrame, feature_set: str, unseen_min: float, in_domain_min: float,
                 source: str) -> pd.DataFrame:
    """The headline feature set's balanced accuracy per test site against the quality target."""
    rows = summary[(summary["feature_set"] == feature_set) & (summary["train_domain"] == source)]
    rows = rows[["feature_set", "test_domain", "balanced_accuracy_mean", "balanced_accuracy_std", "macro_f1_mean"]].copy()
    rows["target"] = [in_domain_min if d == source else unseen_min for d in rows["test_domain"]]
    rows["meets_target"] = rows["balanced_accuracy_mean"] >= rows["target"]
    return rows.reset_index(drop=True)

def mean_unseen_score(summary: pd.DataFrame, source: str, metric: str = "balanced_accuracy") -> pd.Series:
    """Each feature set's ``metric`` averaged over the sites it was not trained on, best first."""
    rows = summary[(summary["train_domain"] == source) & (summary["test_domain"] != source)]
    return rows.groupby("feature_set")[f"{metric}_mean"].mean().sort_values(ascending=False)

def compare_readings(summary_test: pd.DataFrame, summary_all: pd.DataFrame, feature_set: str,
                     source: str) -> pd.DataFrame:
    """Balanced accuracy per test site when scoring on its test split vs on all of its cells."""
    def pick(summary, column):
        rows = summary[(summary["feature_set"] == feature_set) & (summary["train_domain"] == source)]
        return rows.set_index("test_domain")["balanced_accuracy_mean"].rename(column)

    return pd.concat([pick(summary_test, "test split (this book)"),
                      pick(summary_all, "all cells (released code)")], axis=1)

def domain_invariance_table(feature_sets: dict[str, np.ndarray], samples: pd.DataFrame, seed: int,
                            site_classification, pairwise_mmd, source: str) -> pd.DataFrame:
    """Per feature set: site-classification accuracy (mean over folds) and MMD² from the source site."""
    rows = []
    domain = samples["domain"].to_numpy()
    for name, X in feature_sets.items():
        sites = site_classification(X, domain, feature_set_name=name, random_state=seed)
        mmd = pairwise_mmd(X, domain, feature_set_name=name, random_state=seed)
        row = {"feature_set": name, "site_accuracy": sites["accuracy"].mean(),
               "site_balanced_accuracy": sites["balanced_accuracy"].mean(), "chance": sites["chance"].iloc[0]}
        for _, pair in mmd.iterrows():
            if source in (pair["site_a"], pair["site_b"]):
                other = pair["site_b"] if pair["site_a"] == source else pair["site_a"]
                row[f"mmd2 to {other}"] = pair["mmd2"]
        rows.append(row)
    return pd.DataFrame(rows).set_index("feature_set")


__all__ = ["run_feature_sets", "pca_forest_factory", "source_row_table", "target_check", "mean_unseen_score", "compare_readings", "domain_invariance_table"]
