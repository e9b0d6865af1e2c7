"""The study's design: set once by the first stage, written with its splits, read (never redrawn)
by every later stage; a design or splits file that no longer matches the data is refused."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from bcfeat.data.splits import make_splits
from bcfeat.study import common as study
from bcfeat.study.design import StudyDesign, StudySites


def _samples(counts: dict[str, dict[str, int]]) -> pd.DataFrame:
    rows = [{"dataset": site, "relpath": f"{label}/{i:03d}.png", "label": label, "domain": site}
            for site, per_class in counts.items() for label, n in per_class.items() for i in range(n)]
    return pd.DataFrame(rows)


COUNTS = {"pbc_acevedo20": {"neutrophil": 12, "lymphocyte": 9, "basophil": 1},
          "bccd_crops": {"neutrophil": 8, "lymphocyte": 6}}


@pytest.fixture
def written(tmp_path):
    design = StudyDesign(StudySites(("pbc_acevedo20", "bccd_crops"), "pbc_acevedo20"), n_repetitions=3, seed=4)
    samples = {"coarse5": _samples(COUNTS), "common13": _samples({"pbc_acevedo20": {"neutrophil": 5, "lymphocyte": 5}})}
    files = {space: tmp_path / f"splits_{space}.csv" for space in study.LABEL_SPACES}
    with pytest.warns(UserWarning, match="classes with < 2 samples"):
        plans = study.write_study_design(tmp_path / "design.json", design, samples, files)
    return design, samples, files, plans, tmp_path / "design.json"


def test_the_design_and_its_splits_are_read_back_as_written(written):
    design, samples, files, plans, path = written
    assert study.read_study_design(path) == design
    record = json.loads(path.read_text())
    assert record["splits_files"] == {"coarse5": "splits_coarse5.csv", "common13": "splits_common13.csv"}
    assert record["test_cells"]["coarse5"] == plans["coarse5"].is_test.sum(axis=1).tolist()
    for space in study.LABEL_SPACES:
        read = study.read_study_splits(files[space], samples[space], design)
        assert np.array_equal(read.is_test, plans[space].is_test)
        assert (read.test_size, read.random_state, read.n_repetitions) == (0.2, 4, 3)
    # the splits are those make_splits draws with the design's seed, and the class too small to
    # split is listed as make_splits lists it
    coarse = samples["coarse5"]
    with pytest.warns(UserWarning):
        fresh = make_splits(coarse["label"], coarse["domain"], n_repetitions=3, test_size=0.2, random_state=4)
    read = study.read_study_splits(files["coarse5"], coarse, design)
    assert np.array_equal(read.is_test, fresh.is_test)
    pd.testing.assert_frame_equal(read.train_only.reset_index(drop=True), fresh.train_only.astype({"n": "int64"}),
                                  check_dtype=False)
    assert read.train_only.to_dict("records") == [{"domain": "pbc_acevedo20", "label": "basophil", "n": 1}]


def test_splits_of_other_images_or_labels_are_refused(written):
    design, samples, files, _, _ = written
    coarse = samples["coarse5"]
    with pytest.raises(ValueError, match="other images or labels than the data root holds now"):
        study.read_study_splits(files["coarse5"], coarse.iloc[1:], design)
    relabelled = coarse.assign(label=coarse["label"].where(coarse.index != 3, "monocyte"))
    with pytest.raises(ValueError, match="re-run 00_data_overview on this data root"):
        study.read_study_splits(files["coarse5"], relabelled, design)
    more = StudyDesign(design.sites, n_repetitions=4, seed=4)
    with pytest.raises(ValueError, match=r"lacks the column\(s\) \['test_r3'\]"):
        study.read_study_splits(files["coarse5"], coarse, more)
    table = pd.read_csv(files["coarse5"])
    table.loc[0, "test_r0"] = 2
    table.to_csv(files["coarse5"], index=False)
    with pytest.raises(ValueError, match="must hold 0 or 1"):
        study.read_study_splits(files["coarse5"], coarse, design)
    with pytest.raises(FileNotFoundError, match="made by the stage 00_data_overview"):
        study.read_study_splits(files["coarse5"].with_name("none.csv"), coarse, design)


def test_a_missing_or_foreign_design_file_names_the_stage_that_makes_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"none\.json does not exist: it is made by the stage 00_data_overview"):
        study.read_study_design(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="is not a study design .not JSON"):
        study.read_study_design(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ValueError, match="format 'bcfeat-study-design/1' expected"):
        study.read_study_design(tmp_path / "other.json")
    record = {"format": "bcfeat-study-design/1", "design": {**StudyDesign().to_record(), "n_repetitions": 0}}
    (tmp_path / "zero.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match="zero.json: n_repetitions=0 is out of range"):
        study.read_study_design(tmp_path / "zero.json")
    del record["design"]["headline"]
    (tmp_path / "short.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match=r"needs the entries .*got .*"):
        study.read_study_design(tmp_path / "short.json")


@pytest.mark.parametrize("kwargs, message", [
    ({"max_per_site": -1}, "max_per_site=-1 is out of range"),
    ({"n_repetitions": 0}, "n_repetitions=0 is out of range"),
    ({"n_repetitions": 2.5}, "n_repetitions"),
    ({"headline": "aecfe_"}, "headline must name an autoencoder variant's feature set"),
    ({"headline": "colour_shape"}, "headline must name"),
    ({"test_size": 1.0}, r"test_size must be in \(0, 1\)"),
])
def test_a_bad_design_is_refused_with_the_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        StudyDesign(**kwargs)


def test_the_design_s_samples_follow_its_label_space(written):
    design = written[0]
    assert design.headline_variant == "moment" and design.sites.common13_sites == ("pbc_acevedo20",)
    with pytest.raises(ValueError, match="label_space must be one of"):
        study.design_samples(written[4].parent, design, "coarse13")
    with pytest.raises(ValueError, match="splits_files needs one entry per label space"):
        study.write_study_design(written[4], design, written[1], {"coarse5": "x.csv"})


def test_the_design_table_counts_cells_and_test_cells(written):
    _, samples, _, plans, _ = written
    table = study.design_table(samples, plans)
    acevedo = table[(table["label space"] == "coarse5") & (table["site"] == "pbc_acevedo20")].iloc[0]
    assert acevedo["cells"] == 22
    assert acevedo["test cells per split"] == str(int(plans["coarse5"].is_test[0, :22].sum()))
    assert list(table["label space"]) == ["coarse5", "coarse5", "common13"]
