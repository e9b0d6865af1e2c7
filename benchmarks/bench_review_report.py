"""How fast the review report of `bcfeat classify --report` opens in a browser.

Classifies a folder of real cells (links to ``--n-cells`` images drawn evenly from the four shared
sites) with ``--report``, then opens the page in headless Chromium (selenium with Debian's
``chromium-driver``) ``--repeats`` times and prints, per load, the time from navigation to the
load event, whether every image rendered, the page's size, and the time to change one cell's class
(the differential is recounted in the page).

Usage::

    python benchmarks/bench_review_report.py --model artifacts/cpu/crosslab_model.pt --n-cells 500

Target (issue "The lab's workflow"): a 500-cell report renders in under 5 s. Figures are written
to ``artifacts/benchmarks/bench_review_report.json``.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(ROOT))

from bcfeat import paths  # noqa: E402
from benchmarks.results_file import write_results  # noqa: E402
from benchmarks.bench_classify_folder import link_folder, site_images  # noqa: E402


def open_browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or shutil.which("chromium-browser")
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-dev-shm-usage", "--window-size=1280,1000"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(paths.ROOT / "artifacts" / "cpu" / "crosslab_model.pt"))
    parser.add_argument("--n-cells", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    results: dict = {"n_cells": args.n_cells, "loads": []}
    with tempfile.TemporaryDirectory(prefix="bcfeat-report-") as tmp:
        tmp = Path(tmp)
        folder = link_folder(tmp / "cells", args.n_cells, site_images())
        report = tmp / "report.html"
        subprocess.run([sys.executable, "-m", "bcfeat.runner.cli", "classify", args.model, str(folder),
                        "--output", str(tmp / "p.csv"), "--report", str(report)], check=True,
                       env={**__import__("os").environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.DEVNULL)
        results["page_mb"] = report.stat().st_size / 1e6
        driver = open_browser()
        try:
            for _ in range(args.repeats):
                driver.get("about:blank")
                driver.get(report.resolve().as_uri())  # returns after the load event
                timing = driver.execute_script(
                    "const t = performance.getEntriesByType('navigation')[0];"
                    "return [t.loadEventEnd, t.domContentLoadedEventEnd];")
                rendered = driver.execute_script(
                    "return Array.from(document.images).filter(i => i.complete && i.naturalWidth > 0).length")
                start = time.perf_counter()
                driver.execute_script(
                    "const s = document.querySelector('.cell select');"
                    "s.value = Array.from(s.options).find(o => o.value !== s.value).value;"
                    "s.dispatchEvent(new Event('change'));")
                change_ms = 1000 * (time.perf_counter() - start)
                load = {"load_s": timing[0] / 1000, "dom_ready_s": timing[1] / 1000, "images_rendered": rendered,
                        "change_one_cell_ms": change_ms}
                results["loads"].append(load)
                print(f"{args.n_cells} cells, {results['page_mb']:.1f} MB page: load event after {load['load_s']:.2f} s "
                      f"(DOM ready {load['dom_ready_s']:.2f} s), {rendered} images rendered; "
                      f"one correction recounted in {change_ms:.0f} ms", flush=True)
        finally:
            driver.quit()
    worst = max(load["load_s"] for load in results["loads"])
    print(f"slowest load {worst:.2f} s (target < 5 s)")
    write_results("bench_review_report", results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
