"""The published numbers beside the reproduction's: read, checked, and lined up in-domain."""

from __future__ import annotations

import pandas as pd
import pytest

from bcfeat import paths
from bcfeat.evaluation.published import (default_published_file, in_domain_comparison, in_domain_texts,
                                         published_matrix, read_published)

HEADER = "source,method,train,test,accuracy_pct,std_pct,note\n"


def _ours():
    return pd.DataFrame({"feature_set": ["aecfe_moment", "aecfe_site_standardized", "colour_shape", "aecfe_moment"],
                         "train_domain": ["pbc_acevedo20"] * 3 + ["matek19"],
                         "test_domain": ["pbc_acevedo20"] * 4,
                         "accuracy_mean": [0.30, 0.50, 0.85, 0.99], "accuracy_std": [0.01, 0.02, 0.01, 0.0]})


def test_in_domain_comparison_lines_up_the_one_comparable_cell(tmp_path):
    path = tmp_path / "results.csv"
    path.write_text(HEADER + "A result table,AE-CFE-RF,pbc_acevedo20,pbc_acevedo20,65.20,0.5,x\n"
                    "B result table,AE-CFE-RF,pbc_acevedo20,pbc_acevedo20,65.20,1.0,x\n"
                    "A result table,AE-CFE-RF,matek19,matek19,83.70,0.5,x\n")
    published = read_published(path)
    table = in_domain_comparison(published, _ours())
    assert table["method"].tolist() == ["AE-CFE-RF", "aecfe_moment", "aecfe_site_standardized", "colour_shape"]
    assert table["points_below_published"].round(6).tolist() == [0.0, 35.2, 15.2, -19.8]
    texts = in_domain_texts(table, "aecfe_moment", "aecfe_site_standardized")
    assert texts["published_aecfe_in_domain"] == "65.2 ± 1.0" and texts["ours_headline_in_domain13"] == "30.0 ± 1.0"
    assert texts["best_in_domain13_name"] == "colour_shape" and texts["best_points_vs_published"] == "+19.8"
    # the two papers' different spreads are both shown, their sources named once each
    matrix = published_matrix(published)
    assert matrix.at["AE-CFE-RF", "pbc_acevedo20 → pbc_acevedo20"] == "65.2 ± 0.5 / 65.2 ± 1.0"
    assert matrix.at["AE-CFE-RF", "matek19 → matek19"] == "83.7 ± 0.5" and matrix.at["AE-CFE-RF", "reported by"] == "A; B"
    with pytest.raises(ValueError, match="not in the common13 summary"):
        in_domain_comparison(published, _ours(), ["aecfe_mmd"])


@pytest.mark.parametrize("text, message", [
    ("source,method\nx,y\n", "expected the columns"),
    (HEADER + "s,AE-CFE-RF,a,b,165,0.5,\n", "row 2: accuracy_pct"),
    (HEADER + "s,AE-CFE-RF,a,b,65,-1,\n", "row 2: std_pct"),
])
def test_a_damaged_published_table_is_refused_by_name(tmp_path, text, message):
    path = tmp_path / "results.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        read_published(path)


@pytest.mark.skipif(not default_published_file(paths.SHARED_DATA).is_file(), reason="no ../shared/published here")
def test_the_shared_published_table_holds_the_paper_in_domain_row():
    published = read_published(default_published_file(paths.SHARED_DATA))
    row = published[(published["method"] == "AE-CFE-RF") & (published["train"] == "pbc_acevedo20")
                    & (published["test"] == "pbc_acevedo20")]
    assert set(row["accuracy_pct"]) == {65.2}
