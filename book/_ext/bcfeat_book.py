"""Sphinx tweaks for the bcfeat book.

sphinx-thebe (bundled with Jupyter Book 1) registers its inline configuration script twice
in this setup, which makes every page throw "Identifier 'THEBE_JS_URL' has already been
declared" in the browser console. Pages here never use live code, so the duplicate script
entries are dropped before each page is written.
"""


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
    app.connect("html-page-context", drop_duplicate_scripts, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
