"""The paper's protocol from parameters: sites, source site and label space as study
parameters, checked before any stage runs, and the whole chain run end to end on synthetic
Matek-19 and MLL23 (INT-20's public relative) trees in their public layouts.

The paper's other two datasets are not on these machines, so the stand-ins are made from the
shared Acevedo-20 images, written as the releases are (TIFF, the release's folder and file
names) so that the parsers read them exactly as they read the real ones."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from PIL import Image

from bcfeat.data import load_image, scan_dataset
from bcfeat.runner.pipeline import plan_run, run
from bcfeat.study.design import StudySites

# Acevedo-20's common13 classes -> the Matek-19 code and the MLL23 folder of the same cell type
MATEK19_CODE = {"basophil": "BAS", "eosinophil": "EOS", "erythroblast": "EBO", "promyelocyte": "PMO",
                "myelocyte": "MYB", "metamyelocyte": "MMZ", "neutrophil_banded": "NGB",
                "neutrophil_segmented": "NGS", "monocyte": "MON", "lymphocyte_typical": "LYT"}
MLL23_FOLDER = {"basophil": "09-BASO", "eosinophil": "10-EOS", "erythroblast": "01-NORMO", "promyelocyte": "18-PMYEL",
                "myelocyte": "19-MYEL", "metamyelocyte": "20-Meta", "neutrophil_banded": "11-STAB",
                "neutrophil_segmented": "15-SEG", "monocyte": "05-MONO", "lymphocyte_typical": "14-LYMPH-typ"}


def make_paper_trees(shared_root: Path, out_root: Path, per_class: int = 8) -> Path:
    """A data root holding ``AML-Cytomorphology_LMU/<CODE>/<CODE>_NNNN.tiff`` (400 x 400 RGBA, the
    TCIA release), ``mll23/<NN-NAME>/<name>.tif`` (288 x 288 RGB) and links to the shared sets.

    Each synthetic site takes its own ``per_class`` Acevedo-20 images per class (none shared), and
    tints them differently, so the two stand-ins are separate "labs"."""
    out_root.mkdir(parents=True, exist_ok=True)
    for site in ("pbc_acevedo20", "jtsc_zheng18", "cellavision_zheng18", "bccd_crops"):
        link = out_root / site
        if not link.exists():
            link.symlink_to((shared_root / site).resolve(), target_is_directory=True)
    samples = scan_dataset("pbc_acevedo20", shared_root, "common13").samples
    for cell_type in MATEK19_CODE:
        paths = samples.loc[samples["label"] == cell_type, "path"].tolist()[:2 * per_class]
        for i, path in enumerate(paths):
            image = load_image(path)
            if i % 2 == 0:   # Matek-19: 400 x 400 RGBA TIFF, a bluer lamp
                code = MATEK19_CODE[cell_type]
                tinted = np.clip(image * np.array([0.92, 0.97, 1.0]), 0, 255).astype(np.uint8)
                rgba = np.dstack([np.asarray(Image.fromarray(tinted).resize((400, 400))), np.full((400, 400), 255, np.uint8)])
                target = out_root / "AML-Cytomorphology_LMU" / code / f"{code}_{i // 2 + 1:04d}.tiff"
            else:            # MLL23: 288 x 288 RGB TIFF, a warmer lamp
                folder = MLL23_FOLDER[cell_type]
                tinted = np.clip(image * np.array([1.0, 0.96, 0.9]), 0, 255).astype(np.uint8)
                rgba = np.asarray(Image.fromarray(tinted).resize((288, 288)))
                target = out_root / "mll23" / folder / f"{Path(path).stem}.tif"
            target.parent.mkdir(parents=True, exist_ok=True)
            tifffile.imwrite(target, rgba, photometric="rgb")
    return out_root


PAPER = [("sites", "matek19,mll23,pbc_acevedo20"), ("source_site", "matek19"), ("label_space", "common13")]


@pytest.fixture(scope="module")
def paper_root(data_root, tmp_path_factory) -> Path:
    return make_paper_trees(data_root, tmp_path_factory.mktemp("paper_root"), per_class=10)


def test_the_stand_ins_parse_as_the_releases(paper_root):
    for name, layout in (("matek19", "matek19"), ("mll23", "mll23")):
        scan = scan_dataset(name, paper_root, "common13")
        assert scan.layout == layout and not scan.excluded
        assert scan.counts().to_dict() == {c: 10 for c in scan.counts().index} and len(scan.counts()) == 10
    matek = scan_dataset("matek19", paper_root, "coarse5").samples
    assert matek["relpath"].str.match(r"^[A-Z]{3}/[A-Z]{3}_\d{4}\.tiff$").all()
    assert load_image(matek["path"].iloc[0]).shape == (400, 400, 3)


@pytest.mark.parametrize("pairs, message", [
    ([("sites", "matek19,bccd_crops"), ("source_site", "pbc_acevedo20")], "source_site 'pbc_acevedo20' is not one of"),
    ([("sites", "matek19,bccd_crops"), ("source_site", "matek19"), ("label_space", "common13")],
     r"needs fine labels on every site; \['bccd_crops'\]"),
    ([("sites", "matek,pbc_acevedo20")], r"unknown dataset\(s\) \['matek'\]"),
    ([("sites", "pbc_acevedo20")], "at least two sites"),
    ([("label_space", "coarse13")], "label_space must be one of"),
    ([("n_repetitions", "0")], r"n_repetitions=0 is out of range: must be >= 1"),
    ([("max_per_site", "-1")], r"max_per_site=-1 is out of range"),
    ([("headline", "moment")], r"headline must name an autoencoder variant's feature set"),
    ([("05_benchmark.sites", "matek19,pbc_acevedo20")], "no parameter 'sites' in stage 05_benchmark"),
])
def test_a_bad_study_design_is_refused_before_any_stage_runs(tmp_path, pairs, message):
    with pytest.raises(ValueError, match=message):
        plan_run("smoke", tmp_path, only=["00_data_overview", "04_oracle", "05_benchmark"],
                 overrides=[("artifacts_dir", str(tmp_path)), *pairs])
    assert not list(tmp_path.iterdir())


def test_the_design_is_set_once_and_written_for_the_later_stages(tmp_path, paper_root):
    planned = plan_run("smoke", tmp_path, overrides=[("artifacts_dir", str(tmp_path / "a")), *PAPER])
    by_stem = {p.stage.stem: p.parameters for p in planned}
    assert by_stem["00_data_overview"]["sites"] == "matek19,mll23,pbc_acevedo20"
    assert by_stem["00_data_overview"]["source_site"] == "matek19"
    assert all("sites" not in by_stem[s] for s in by_stem if s != "00_data_overview")
    from bcfeat.study import common as study

    design = study.StudyDesign.from_parameters("matek19,mll23,pbc_acevedo20", "matek19", "common13", 0, 2, 0)
    labelled = {space: study.design_samples(paper_root, design, space) for space in study.LABEL_SPACES}
    files = {space: tmp_path / f"splits_{space}.csv" for space in study.LABEL_SPACES}
    plans = study.write_study_design(tmp_path / "design.json", design, labelled, files)
    assert study.read_study_design(tmp_path / "design.json") == design
    for space in study.LABEL_SPACES:
        read = study.read_study_splits(files[space], labelled[space], design)
        assert (read.is_test == plans[space].is_test).all() and read.n_repetitions == 2
    assert set(labelled["common13"]["domain"]) == {"matek19", "mll23", "pbc_acevedo20"}  # the paper's table


def test_the_autoencoder_aligns_every_site_to_the_chosen_source(paper_root):
    from bcfeat.study.autoencoder import VARIANTS, autoencoder_samples, domain_ids, training_rows

    samples = autoencoder_samples(paper_root, 0, 0, 0, sites="matek19,mll23,pbc_acevedo20", source_site="mll23")
    ids = pd.Series(domain_ids(samples), index=samples["domain"]).groupby(level=0).unique()
    assert ids.map(list).to_dict() == {"mll23": [0], "matek19": [1], "pbc_acevedo20": [2]}
    source_only = training_rows(samples, VARIANTS["source_only"])
    assert set(samples["domain"].iloc[source_only]) == {"mll23"}


@pytest.mark.slow
def test_the_papers_protocol_runs_end_to_end_on_matek19_and_mll23_stand_ins(paper_root, tmp_path):
    """Every site as source and target in common13 (the paper's table), every stage on the three
    sites, the cross-lab model trained on the chosen source."""
    out, artifacts = tmp_path / "run", tmp_path / "artifacts"
    record = run("smoke", out, overrides=[("data_root", str(paper_root)), ("artifacts_dir", str(artifacts)), *PAPER])
    assert all(s["status"] == "ok" for s in record["stages"])
    tables = out / "tables"
    sites = ["matek19", "mll23", "pbc_acevedo20"]
    common13 = pd.read_csv(tables / "benchmark_common13_summary.csv")
    pairs = set(zip(common13["train_domain"], common13["test_domain"]))
    assert pairs == {(a, b) for a in sites for b in sites}
    assert set(common13["label_space"]) == {"common13"}
    coarse5 = pd.read_csv(tables / "benchmark_summary.csv")
    assert set(coarse5["test_domain"]) == set(sites)
    oracle = pd.read_csv(tables / "oracle_scores.csv")
    assert set(oracle["train_domain"]) == {"matek19"}
    counts = pd.read_csv(tables / "class_counts.csv")
    assert set(counts["dataset"]) == set(sites)
    goals = pd.read_csv(tables / "crosslab_goals.csv").set_index("lab")
    assert not goals.loc["matek19", "unseen"] and goals.loc[["mll23", "pbc_acevedo20"], "unseen"].all()
    from bcfeat.crosslab.model import read_model_payload

    assert read_model_payload(artifacts / "crosslab_model.pt")["record"]["trained_on"] == "matek19"
    saved = json.loads((out / "provenance.json").read_text())
    assert ["source_site", "matek19"] in saved["overrides"]


def test_the_design_names_its_unseen_sites_and_where_common13_is_scored():
    paper = StudySites(("matek19", "mll23", "pbc_acevedo20"), "mll23", "common13")
    assert paper.unseen == ("matek19", "pbc_acevedo20") and paper.common13_sites == paper.sites
    default = StudySites()
    assert default.unseen == ("jtsc_zheng18", "cellavision_zheng18", "bccd_crops")
    assert default.common13_sites == ("pbc_acevedo20",)
    assert default.order(["mll23", "bccd_crops", "pbc_acevedo20", "bccd_crops"]) == ["pbc_acevedo20", "bccd_crops", "mll23"]
    with pytest.raises(ValueError, match=r"\['matek19'\] named twice"):
        StudySites(("matek19", "matek19", "mll23"), "mll23")
