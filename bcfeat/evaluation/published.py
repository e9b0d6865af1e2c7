"""Published numbers set beside the reproduction's own.

The AE-CFE paper's result table is re-reported by two later papers of the same group (BC-SAM,
ISBI 2024; DoRL, arXiv 2408.07467): accuracy (%) of AE-CFE-RF, a ResNeXt oracle and later methods
on Matek-19 and Acevedo-20 in their 13 common classes, mean ± std over 5 folds. A copy of those
rows sits beside the data (``<data root>/../published/results.csv``); this module reads it
(:func:`read_published`), and lines the one directly comparable cell, Acevedo-20 in-domain,
up with the reproduction's own common13 accuracy (:func:`in_domain_comparison`). The published
rows are other data, splits and folds than the book's: they are shown beside its tables, never
mixed into them.

Examples
--------
>>> pub = pd.DataFrame({"source": ["s"], "method": ["AE-CFE-RF"], "train": ["pbc_acevedo20"],
...                     "test": ["pbc_acevedo20"], "accuracy_pct": [65.2], "std_pct": [0.5], "note": [""]})
>>> ours = pd.DataFrame({"feature_set": ["aecfe_moment"], "train_domain": ["pbc_acevedo20"],
...                      "test_domain": ["pbc_acevedo20"], "accuracy_mean": [0.30], "accuracy_std": [0.01],
...                      "label_space": ["common13"]})
>>> in_domain_comparison(pub, ours)[["method", "accuracy_pct", "points_below_published"]].round(1).values.tolist()
[['AE-CFE-RF', 65.2, 0.0], ['aecfe_moment', 30.0, 35.2]]
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

COLUMNS = ("source", "method", "train", "test", "accuracy_pct", "std_pct", "note")
PAPER_METHOD = "AE-CFE-RF"
IN_DOMAIN_SITE = "pbc_acevedo20"


def default_published_file(data_root: str | os.PathLike) -> Path:
    """Where the published numbers sit beside a data root: ``<root>/../published/results.csv``."""
    return Path(data_root).resolve().parent / "published" / "results.csv"


def read_published(path: str | os.PathLike) -> pd.DataFrame:
    """The published result rows, checked: the columns of :data:`COLUMNS`, accuracies in [0, 100].

    Raises
    ------
    FileNotFoundError
        No file at ``path``.
    ValueError
        Other columns or an accuracy that is not a percentage; the message names the file.
    """
    table = pd.read_csv(path, dtype={"source": str, "method": str, "train": str, "test": str, "note": str})
    if tuple(table.columns) != COLUMNS:
        raise ValueError(f"{path}: expected the columns {','.join(COLUMNS)}, found {','.join(map(str, table.columns))}")
    for column in ("accuracy_pct", "std_pct"):
        values = pd.to_numeric(table[column], errors="coerce")
        bad = table[column].notna() & (values.isna() | (values < 0) | (values > 100))
        if bad.any():
            raise ValueError(f"{path}: row {int(np.flatnonzero(bad)[0]) + 2}: {column} {table[column][bad].iat[0]!r} "
                             "is not a percentage")
        table[column] = values
    table["note"] = table["note"].fillna("")
    return table


def published_matrix(published: pd.DataFrame) -> pd.DataFrame:
    """The published accuracies as a matrix: one row per method (in the file's order), one column
    per ``train -> test`` pair, cells "65.2 ± 0.5" (where the two papers differ in the spread,
    both: "21.9 ± 0.4 / 21.9 ± 1.0"), and the papers that report the row."""
    def text(values: pd.DataFrame) -> str:
        return " / ".join(dict.fromkeys(f"{r.accuracy_pct:.1f}" + ("" if pd.isna(r.std_pct) else f" ± {r.std_pct:.1f}")
                                        for r in values.itertuples()))

    pairs = list(dict.fromkeys(f"{t} → {e}" for t, e in zip(published["train"], published["test"])))
    rows = {}
    for method, group in published.groupby("method", sort=False):
        row = {pair: "" for pair in pairs}
        for (train, test), cell in group.groupby(["train", "test"], sort=False):
            row[f"{train} → {test}"] = text(cell)
        row["reported by"] = "; ".join(dict.fromkeys(s.split(" result table")[0].split(" (")[0] for s in group["source"]))
        rows[method] = row
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "method"
    return table


def in_domain_comparison(published: pd.DataFrame, ours_common13: pd.DataFrame,
                         feature_sets: list[str] | None = None) -> pd.DataFrame:
    """Acevedo-20 in-domain accuracy (common13): the published AE-CFE-RF beside ours.

    Parameters
    ----------
    published : pd.DataFrame
        :func:`read_published`.
    ours_common13 : pd.DataFrame
        The benchmark's common13 summary (``feature_set``, ``train_domain``, ``test_domain``,
        ``accuracy_mean``, ``accuracy_std``).
    feature_sets : list of str, optional
        Which of ours, in this order (default: all in the summary's order).

    Returns
    -------
    pd.DataFrame
        ``what, method, accuracy_pct, std_pct, points_below_published``; the first row is the
        published AE-CFE-RF (the mean over the papers that re-report it).
    """
    pub = _paper_in_domain_rows(published)
    reference = float(pub["accuracy_pct"].mean())
    rows = [{"what": "published (other folds and splits)", "method": PAPER_METHOD, "accuracy_pct": reference,
             "std_pct": float(pub["std_pct"].max())}]
    ours = ours_common13[(ours_common13["train_domain"] == IN_DOMAIN_SITE)
                         & (ours_common13["test_domain"] == IN_DOMAIN_SITE)].set_index("feature_set")
    for name in feature_sets or list(ours.index):
        if name not in ours.index:
            raise ValueError(f"feature set {name!r} is not in the common13 summary ({', '.join(ours.index)})")
        rows.append({"what": "this reproduction", "method": name, "accuracy_pct": 100 * float(ours.at[name, "accuracy_mean"]),
                     "std_pct": 100 * float(ours.at[name, "accuracy_std"])})
    table = pd.DataFrame(rows)
    table["points_below_published"] = reference - table["accuracy_pct"]
    return table


def _paper_in_domain_rows(published: pd.DataFrame) -> pd.DataFrame:
    pub = published[(published["method"] == PAPER_METHOD) & (published["train"] == IN_DOMAIN_SITE)
                     & (published["test"] == IN_DOMAIN_SITE)]
    if pub.empty:
        raise ValueError(f"the published table has no {PAPER_METHOD} row for {IN_DOMAIN_SITE} in-domain")
    return pub


def published_in_domain(path: str | os.PathLike) -> float:
    """The published AE-CFE-RF accuracy on Acevedo-20 in-domain (percent; the mean over the papers
    that re-report it), read from the published table at ``path``."""
    return float(_paper_in_domain_rows(read_published(path))["accuracy_pct"].mean())


def in_domain_texts(comparison: pd.DataFrame, headline: str, addition: str) -> dict[str, str]:
    """The book's sentences' numbers from :func:`in_domain_comparison`, as text: the published
    accuracy, the headline's and our addition's (mean ± std, %), the headline's and the best
    reproduction row's distance below the published one (points), and that row's name."""
    rows = comparison.set_index("method")
    ours = comparison[comparison["what"] == "this reproduction"]
    best = ours.loc[ours["accuracy_pct"].idxmax()]

    def acc(name: str) -> str:
        return f"{rows.at[name, 'accuracy_pct']:.1f} ± {rows.at[name, 'std_pct']:.1f}"

    return {"published_aecfe_in_domain": acc(PAPER_METHOD), "ours_headline_in_domain13": acc(headline),
            "ours_addition_in_domain13": acc(addition),
            "headline_points_below_published": f"{rows.at[headline, 'points_below_published']:.1f}",
            "best_in_domain13_name": str(best["method"]), "best_in_domain13": f"{best['accuracy_pct']:.1f}",
            "best_points_vs_published": f"{-best['points_below_published']:+.1f}"}


__all__ = ["COLUMNS", "PAPER_METHOD", "default_published_file", "read_published", "published_matrix",
           "in_domain_comparison", "in_domain_texts", "published_in_domain"]
