"""Sphinx tweaks for the bcfeat book.

MathJax: ``make env`` copies MathJax to ``book/_assets/mathjax`` and ``_config.yml`` serves
it from there, so equations render offline. On a fresh clone, before any ``make`` target,
that folder does not exist; :func:`use_local_mathjax_or_cdn` then drops ``_assets`` from
``html_extra_path`` and points ``mathjax_path`` at the same MathJax release on a CDN, so the
bare ``jupyter-book build book/`` builds without warnings and still renders the equations
(online).

sphinx-thebe (bundled with Jupyter Book 1) registers its inline configuration script twice
in this setup, which makes every page throw "Identifier 'THEBE_JS_URL' has already been
declared" in the browser console. Pages here never use live code, so the duplicate script
entries are dropped before each page is written.
"""

import json
from pathlib import Path

from sphinx.util import logging

logger = logging.getLogger(__name__)

ASSETS = "_assets"
LOCAL_MATHJAX = Path(ASSETS) / "mathjax" / "tex-chtml.js"


def mathjax_cdn_url(repo_root: Path) -> str:
    """The CDN URL of the MathJax release that package.json pins (tex-chtml, as served locally)."""
    try:
        version = json.loads((repo_root / "package.json").read_text())["dependencies"]["mathjax"]
    except (OSError, KeyError, ValueError):
        version = "3"
    return f"https://cdn.jsdelivr.net/npm/mathjax@{version}/es5/tex-chtml.js"


def use_local_mathjax_or_cdn(app, config):
    """Serve the local MathJax copy when ``make env`` made it, else fall back to the CDN."""
    book = Path(app.confdir)
    if (book / LOCAL_MATHJAX).is_file():
        return
    config.html_extra_path = [p for p in config.html_extra_path if p != ASSETS]
    config.mathjax_path = mathjax_cdn_url(book.resolve().parent)
    logger.info("bcfeat book: %s not found (made by `make env`); MathJax is loaded from %s",
                book / LOCAL_MATHJAX, config.mathjax_path)


def _script_key(script):
    attributes = getattr(script, "attributes", {}) or {}
    # Body-only scripts carry filename None or "" depending on who added them.
    return (getattr(script, "filename", None) or "", tuple(sorted((k, str(v)) for k, v in attributes.items())))


def drop_duplicate_scripts(app, pagename, templatename, context, doctree):
    scripts = context.get("script_files")
    if not scripts:
        return
    seen, unique = set(), []
    for script in scripts:
        key = _script_key(script)
        if key not in seen:
            seen.add(key)
            unique.append(script)
    scripts[:] = unique


def setup(app):
    # before Sphinx's own check of html_extra_path (priority 800), which would warn
    app.connect("config-inited", use_local_mathjax_or_cdn, priority=100)
    app.connect("html-page-context", drop_duplicate_scripts, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
