"""The book builds offline without warnings and its pages render in headless Chromium."""

from __future__ import annotations

import functools
import http.server
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from bcfeat import paths

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-quic", "--no-first-run", "--disable-sync",
                  "--enable-logging=stderr", "--v=0", "--window-size=1280,2000",
                  "--virtual-time-budget=8000"]
# Chromium logs every console message at one level; these words mark the errors among them
# (the theme's own informational console.log lines are not failures).
CONSOLE_ERROR_WORDS = ("Uncaught", "Error", "Failed to load", "net::ERR", "404")
# Pages and what must be on them (text in the built HTML).
PAGES = {
    "intro.html": ["AE-CFE"],
    "method.html": ["Moment matching"],
    "data.html": ["Label spaces"],
    "results/00_data_overview.html": ["Cells per class", "pbc_acevedo20"],
    "results.html": ["Headline", "aecfe_moment", "colour_shape", "oracle (", "<img", "The gap, factor by factor",
                     "alignment weight 5 -&gt; 0", "NVIDIA H200"],
    "results/05_benchmark.html": ["The domain matrix", "balanced_accuracy"],
    "results/06_figures.html": ["The latent space", "<img"],
    "beyond.html": ["Beyond the paper", "virtual labs", "untouched lab", "crosslab", "oracle AdaBN", "<img",
                    "The real-lab rule, nested", "held out, all cells", "real labs, one standard error (nested)"],
    "results/07_crosslab.html": ["Choosing settings on the virtual labs only", "The real-lab rule, nested", "<img"],
    "results/08_factors.html": ["From the cpu headline", "alignment weight 0", "<img"],
    "reproducibility.html": ["Reproducing this book", "papermill"],
    "results/90_provenance.html": ["Package versions", "torch"],
}


@pytest.fixture(scope="module")
def built_book(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("book")
    jupyter_book = Path(sys.executable).parent / "jupyter-book"
    result = subprocess.run([str(jupyter_book), "build", str(paths.BOOK), "--path-output", str(out),
                             "-W", "-n", "--keep-going"], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"jupyter-book build failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return out / "_build" / "html"


@pytest.mark.slow
def test_book_pages_exist_and_show_their_content(built_book):
    for page, needles in PAGES.items():
        html = (built_book / page).read_text()
        for needle in needles:
            assert needle in html, f"{page} lacks {needle!r}"


def test_a_fresh_clone_builds_the_book_with_the_bare_command(tmp_path):
    """`jupyter-book build book/` before any make target: no warning, equations via the CDN MathJax."""
    clone = tmp_path / "clone"
    shutil.copytree(paths.BOOK, clone / "book", symlinks=True,
                    ignore=shutil.ignore_patterns("_assets", "_build", "results"))
    (clone / "book" / "results").mkdir()
    for name in ("_config.yml", "package.json"):
        shutil.copy(paths.ROOT / name, clone / name)
    # the chapters without executed notebooks: the method chapter's equations are what matters here
    (clone / "book" / "_toc.yml").write_text("format: jb-book\nroot: intro\nchapters:\n  - file: method\n")
    (clone / "book" / "intro.md").write_text("# bcfeat\n")
    jupyter_book = Path(sys.executable).parent / "jupyter-book"
    result = subprocess.run([str(jupyter_book), "build", "book/", "-W", "-n"], cwd=clone,
                            capture_output=True, text=True, timeout=300)
    log = result.stdout + result.stderr
    assert result.returncode == 0 and "WARNING" not in log, log[-4000:]
    method = (clone / "book" / "_build" / "html" / "method.html").read_text()
    assert re.search(r'<script[^>]+src="https://cdn\.jsdelivr\.net/npm/mathjax@3\.2\.2/es5/tex-chtml\.js"', method)
    assert "\\(" in method or "\\[" in method or "math notranslate" in method  # equations left for MathJax


def _book_command() -> list[str]:
    """The arguments of the Makefile's ``book`` recipe after ``jupyter-book`` (``$(VENV)`` and all)."""
    recipe = (paths.ROOT / "Makefile").read_text().split("\nbook:", 1)[1].split("\n")[1]
    return recipe.split("jupyter-book", 1)[1].split()


def _glue_notebook(path: Path, key: str, value: str) -> None:
    """An executed notebook (as papermill writes it) whose one output glues ``key`` as ``value``."""
    import nbformat

    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("glue(...)")
    cell.outputs = [nbformat.v4.new_output(
        "display_data", data={"application/papermill.record/text/plain": value},
        metadata={"scrapbook": {"name": key, "mime_prefix": "application/papermill.record/"}})]
    nb.cells = [nbformat.v4.new_markdown_cell("# Run"), cell]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    nbformat.write(nb, path)


def test_make_book_shows_the_values_of_new_results(tmp_path):
    """`make book` after a new run reads every chapter again: a chapter's glued values live in the
    notebooks it cites, which Sphinx does not count as the chapter changing."""
    clone = tmp_path / "clone"
    shutil.copytree(paths.BOOK, clone / "book", symlinks=True,
                    ignore=shutil.ignore_patterns("_assets", "_build", "results"))
    (clone / "book" / "results").mkdir()
    (clone / "book" / "_assets").symlink_to(paths.BOOK / "_assets")  # the local MathJax of `make env`
    for name in ("_config.yml", "package.json"):
        shutil.copy(paths.ROOT / name, clone / name)
    (clone / "book" / "_toc.yml").write_text("format: jb-book\nroot: intro\nchapters:\n  - file: chapter\n"
                                              "  - file: results/run\n")
    (clone / "book" / "intro.md").write_text("# bcfeat\n")
    (clone / "book" / "chapter.md").write_text(
        "# Chapter\n\nThe lab reads {glue:text}`results/run.ipynb::score:.3f` here.\n")
    jupyter_book = Path(sys.executable).parent / "jupyter-book"
    shown = []
    for value in ("0.455", "0.447"):
        _glue_notebook(clone / "book" / "results" / "run.ipynb", "score", value)
        result = subprocess.run([str(jupyter_book), *_book_command()], cwd=clone, capture_output=True, text=True,
                                timeout=300)
        assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
        html = (clone / "book" / "_build" / "html" / "chapter.html").read_text()
        shown.append(re.sub(r"<[^>]+>", "", html).split("The lab reads", 1)[1].split("here", 1)[0].strip())
    assert shown == ["0.455", "0.447"]


@pytest.mark.slow
def test_book_loads_nothing_from_the_web(built_book):
    """MathJax and every script are served from the book itself, so it renders offline."""
    assert (paths.BOOK / "_assets" / "mathjax" / "tex-chtml.js").exists(), \
        "book/_assets/mathjax is made by `make env` (the tests run after it); without it the book uses the CDN"
    for page in PAGES:
        html = (built_book / page).read_text()
        remote = re.findall(r'<script[^>]+src="(https?://[^"]+)"', html)
        assert not remote, f"{page} loads scripts from the web: {remote}"
    assert (built_book / "mathjax" / "tex-chtml.js").exists()
    assert 'mathjax/tex-chtml.js' in (built_book / "method.html").read_text()


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def _console_message(line: str) -> str:
    """The text a page logged, from a Chromium ``...:CONSOLE(n)] "text", source: url (n)`` line."""
    body = line.split(":CONSOLE", 1)[1]
    found = re.search(r'"(.*)", source:', body)
    return found.group(1) if found else body


def test_console_messages_are_read_without_the_line_prefix():
    line = ('[6404:6404:1130/131832.85:INFO:CONSOLE:1] "[PST]: light theme.", '
            'source: http://127.0.0.1:34045/x.js (1)')
    assert _console_message(line) == "[PST]: light theme."
    assert "404" in _console_message('[1:1:INFO:CONSOLE:0] "Failed to load resource: 404", source: http://h/a (0)')


def test_book_pages_render_in_chromium_without_console_errors(built_book, tmp_path):
    class QuietHandler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):  # keep the test output readable
            pass

    handler = functools.partial(QuietHandler, directory=str(built_book))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    shots = paths.ARTIFACTS / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    try:
        for page in PAGES:
            shot = shots / (page.replace("/", "_").replace(".html", ".png"))
            shot.unlink(missing_ok=True)
            result = subprocess.run(
                [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}",
                 f"http://127.0.0.1:{server.server_port}/{page}"],
                capture_output=True, text=True, timeout=120)
            console = [line for line in result.stderr.splitlines() if ":CONSOLE" in line]
            # match the message only: the line's process id, timestamp or port may contain "404"
            errors = [line for line in console if any(word in _console_message(line) for word in CONSOLE_ERROR_WORDS)]
            assert not errors, f"{page}: console errors:\n" + "\n".join(errors)
            assert shot.exists() and shot.stat().st_size > 10_000, f"{page}: no screenshot"
    finally:
        server.shutdown()
