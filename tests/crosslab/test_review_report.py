"""The review report of `bcfeat classify --report`: the differential, the gallery, and the
corrections that go back into `bcfeat train-classifier`; opened in a real browser."""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bcfeat.crosslab.model import CrossLabModel, CrossLabConfig, load_model, save_model
from bcfeat.crosslab.review_report import (conventional_order, differential_table, read_corrections,
                                           render_report, wilson_interval)
from tests.crosslab.test_crosslab_method import two_class_lab

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


def test_differential_is_in_the_conventional_order_with_wilson_intervals():
    classes = ["basophil", "blast", "eosinophil", "lymphocyte", "monocyte", "neutrophil"]
    assert conventional_order(classes) == ["neutrophil", "lymphocyte", "monocyte", "eosinophil", "basophil", "blast"]
    predicted = np.array(["neutrophil"] * 55 + ["lymphocyte"] * 30 + ["monocyte"] * 8 + ["eosinophil"] * 5
                         + ["basophil"] * 2)
    table = differential_table(predicted, classes)
    assert table["class"].tolist()[:5] == ["neutrophil", "lymphocyte", "monocyte", "eosinophil", "basophil"]
    assert table["count"].tolist() == [55, 30, 8, 5, 2, 0]
    assert np.allclose(table["percent"].to_numpy(), [55, 30, 8, 5, 2, 0])
    assert (table["low"] <= table["percent"]).all() and (table["percent"] <= table["high"]).all()
    # the interval of a share of 0 starts at 0 and still has width; it narrows with more cells
    assert table["low"].iat[-1] == 0 and table["high"].iat[-1] > 2
    low100, high100 = wilson_interval(30, 100)
    low1000, high1000 = wilson_interval(300, 1000)
    assert high1000 - low1000 < (high100 - low100) / 2
    assert np.isnan(wilson_interval(0, 0)[0])


def test_corrections_files_are_checked_by_name(tmp_path):
    good = tmp_path / "c.csv"
    good.write_text("relpath,label\na/x.png,lymph\n\"b,1.png\",neut\n")
    assert read_corrections(good)["relpath"].tolist() == ["a/x.png", "b,1.png"]
    for text, message in [("path,label\nx,y\n", "columns relpath,label"), ("relpath,label\nx,\n", "row 2"),
                          ("relpath,label\nx,a\nx,b\n", "more than once")]:
        bad = tmp_path / "bad.csv"
        bad.write_text(text)
        with pytest.raises(ValueError, match=message):
            read_corrections(bad)


def test_report_escapes_names_and_puts_uncertain_cells_first():
    table = pd.DataFrame({"relpath": ["<b>x</b>.png", "sure.png", "unsure.png", "blank.png"],
                          "predicted": ["neut", "neut", "neut", "(no cell found)"],
                          "probability": [0.9, 0.95, 0.4, np.nan], "uncertain": [False, False, True, True],
                          "cell_found": [True, True, True, False]})
    page = render_report(table, [b"\xff\xd8"] * 4, ["lymph", "neut"], title="t </script>", warnings=["odd <lab>"])
    assert "<b>x</b>" not in page and "&lt;b&gt;x&lt;/b&gt;.png" in page and "odd &lt;lab&gt;" in page
    names = re.findall(r'data-relpath="([^"]+)"', page)
    assert names == ["unsure.png", "&lt;b&gt;x&lt;/b&gt;.png", "sure.png", "blank.png"]
    assert "no cell found (1)" in page and "neut (3)" in page and "lymph (0)" in page
    with pytest.raises(ValueError, match="thumbnails"):
        render_report(table, [b""], ["lymph", "neut"], title="t")


@pytest.fixture(scope="module")
def classified_lab(tmp_path_factory):
    """A two-class lab, a classifier trained on it, and a classified folder with its report."""
    from bcfeat.runner.cli import main

    tmp = tmp_path_factory.mktemp("review")
    two_class_lab(tmp)
    (tmp / "new" / "broken.png").write_bytes(b"not an image")
    base = save_model(tmp / "base.pt", CrossLabModel(CrossLabConfig(mask_source="stain", chunk_size=5)))
    clf = tmp / "clf.pt"
    assert main(["train-classifier", str(base), str(tmp / "lab"), "--output", str(clf)]) == 0
    report = tmp / "out" / "report.html"
    assert main(["classify", str(clf), str(tmp / "new"), "--output", str(tmp / "out" / "pred.csv"),
                 "--report", str(report)]) == 0
    return tmp, clf, report


def test_classify_writes_a_self_contained_report(classified_lab):
    tmp, clf, report = classified_lab
    page = report.read_text()
    table = pd.read_csv(tmp / "out" / "pred.csv")
    # every classified cell is in the gallery as an embedded image, and nothing is loaded from elsewhere
    assert len(re.findall(r'<img [^>]*src="data:image/jpeg;base64,', page)) == len(table) == 16
    assert not re.search(r'(src|href)="(https?:)?//', page)
    counts = table["predicted"].value_counts()
    for cls in ("lymph", "neut"):
        assert f"{cls} ({counts.get(cls, 0)})" in page
    assert "broken.png" in page and "1 files skipped" in page


def test_a_report_that_cannot_be_written_is_refused_before_any_work(classified_lab, capsys):
    from bcfeat.runner.cli import main

    tmp, clf, _ = classified_lab
    out = tmp / "refused.csv"
    assert main(["classify", str(clf), str(tmp / "new"), "--output", str(out), "--report", str(tmp / "r.pdf")]) == 2
    assert "--report" in capsys.readouterr().err and not out.exists()


def test_a_folder_too_small_for_the_lab_statistics_is_refused_before_reading(classified_lab, capsys):
    from bcfeat.runner.cli import main

    tmp, clf, _ = classified_lab
    small = tmp / "small"
    small.mkdir()
    for i in range(3):
        shutil.copy(tmp / "new" / f"l{i}.png", small / f"l{i}.png")
    assert main(["classify", str(clf), str(small), "--output", str(tmp / "s.csv")]) == 2
    assert "3 image file(s)" in capsys.readouterr().err and not (tmp / "s.csv").exists()


def test_corrections_are_added_to_the_lab_classifier(classified_lab, tmp_path, capsys):
    from bcfeat.runner.cli import main

    tmp, clf, _ = classified_lab
    corrections = tmp_path / "corrections.csv"
    corrections.write_text("relpath,label\nl0.png,lymph\nn1.png,neut\nn2.png,lymph\n")
    out = tmp_path / "clf2.pt"
    assert main(["train-classifier", str(clf), str(tmp / "lab"), "--output", str(out),
                 "--corrections", str(corrections), "--corrections-folder", str(tmp / "new")]) == 0
    record = load_model(out).record
    assert record["class_counts"] == {"lymph": 10, "neut": 9} and record["n_corrections"] == 3
    # a correction naming a file that is not below the folder, or without its folder, is refused
    corrections.write_text("relpath,label\n../lab/lymph/l0.png,lymph\n")
    assert main(["train-classifier", str(clf), str(tmp / "lab"), "--output", str(tmp_path / "x.pt"),
                 "--corrections", str(corrections), "--corrections-folder", str(tmp / "new")]) == 2
    assert main(["train-classifier", str(clf), str(tmp / "lab"), "--output", str(tmp_path / "x.pt"),
                 "--corrections", str(corrections)]) == 2
    # the corrections are read in their folder's own statistics: a folder too small for them is refused
    few = tmp_path / "few"
    few.mkdir()
    for i in range(3):
        shutil.copy(tmp / "new" / f"l{i}.png", few / f"l{i}.png")
    corrections.write_text("relpath,label\nl0.png,lymph\n")
    assert main(["train-classifier", str(clf), str(tmp / "lab"), "--output", str(tmp_path / "x.pt"),
                 "--corrections", str(corrections), "--corrections-folder", str(few)]) == 2
    assert "3 image file(s)" in capsys.readouterr().err
    assert not (tmp_path / "x.pt").exists()


@pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                    reason="Debian's chromium and chromium-driver are not installed (.ci/run installs them)")
def test_report_in_a_real_browser_renders_and_downloads_corrections(classified_lab, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import Select

    tmp, _, report = classified_lab
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        driver.execute_cdp_cmd("Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
        driver.get(report.resolve().as_uri())
        images = driver.execute_script(
            "return Array.from(document.images).map(i => i.complete && i.naturalWidth > 0)")
        assert len(images) == 16 and all(images)
        cell = driver.find_element("css selector", '.cell[data-relpath="l3.png"]')
        predicted = cell.get_attribute("data-predicted")
        other = "neut" if predicted == "lymph" else "lymph"
        button = driver.find_element("id", "download")
        assert not button.is_enabled()  # nothing to download before a change
        Select(cell.find_element("tag name", "select")).select_by_value(other)
        assert "changed" in cell.get_attribute("class") and button.is_enabled()
        assert driver.find_element("id", "n-changed").text == "1"
        button.click()
        target = downloads / "corrections.csv"
        for _ in range(50):
            if target.is_file() and target.stat().st_size:
                break
            time.sleep(0.1)
        assert target.read_text() == f"relpath,label\nl3.png,{other}\n"
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == []
    finally:
        driver.quit()
    # the download is what train-classifier reads
    assert read_corrections(target)["label"].tolist() == [other]
