"""The review report of one classified folder: a differential and a gallery a technologist corrects.

``bcfeat classify ... --report report.html`` writes one self-contained HTML page (the crops are
embedded as JPEG data, the style and script are inline; it opens from disk with no network and
no server):

- the **differential**: count, percentage and 95 % interval (Wilson) per class, in the
  conventional order of a white-cell differential (:func:`differential_table`), with the number
  of cells, of uncertain cells, of images without a found cell and of skipped files;
- a **gallery per predicted class**: each cell's canonical crop with its file name and
  probability, the uncertain cells first (the model file's ``uncertain`` rule), then by rising
  probability;
- **corrections**: every cell has a class menu; a changed cell is marked, the differential is
  recounted in the page ("after review"), and *Download corrections* saves ``relpath,label``
  (a CSV of the changed cells, plain JavaScript, nothing sent anywhere). ``bcfeat
  train-classifier MODEL labelled/ --corrections corrections.csv --corrections-folder new/``
  adds them to the lab's classifier.

Examples
--------
>>> t = differential_table(np.array(["lymphocyte", "neutrophil", "neutrophil", "basophil"]),
...                        ["basophil", "lymphocyte", "neutrophil"])
>>> t["class"].tolist(), t["count"].tolist()
(['neutrophil', 'lymphocyte', 'basophil'], [2, 1, 1])
"""

from __future__ import annotations

import base64
import html
import os
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from bcfeat.atomic_io import atomic_path

CONVENTIONAL_ORDER: tuple[tuple[str, ...], ...] = (
    ("neutrophil", "neutrophil_segmented", "neutrophil_banded", "segmented", "band", "neu", "neut"),
    ("lymphocyte", "lymphocyte_typical", "lymphocyte_atypical", "lym", "lymph"),
    ("monocyte", "mon", "mono"),
    ("eosinophil", "eos", "eo"),
    ("basophil", "bas", "baso", "ba"),
)
"""A differential's conventional order; a class is placed by its (case-insensitive) name, and
classes of other names follow in the model file's order."""

Z_95 = 1.959963984540054


def conventional_order(classes: Sequence[str]) -> list[str]:
    """``classes`` sorted as a differential reads: neutrophils, lymphocytes, monocytes,
    eosinophils, basophils, then any other class in its given order."""
    def rank(item: tuple[int, str]) -> tuple[int, int]:
        i, name = item
        key = name.lower()
        for r, names in enumerate(CONVENTIONAL_ORDER):
            if key in names:
                return r, i
        return len(CONVENTIONAL_ORDER), i

    return [name for _, name in sorted(enumerate(classes), key=rank)]


def wilson_interval(k: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``k / n`` (``(nan, nan)`` when ``n == 0``)."""
    if n == 0:
        return float("nan"), float("nan")
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    # exact ends for none and all (the formula leaves rounding noise there)
    return (0.0 if k == 0 else max(0.0, centre - half)), (1.0 if k == n else min(1.0, centre + half))


def differential_table(predicted: np.ndarray, classes: Sequence[str]) -> pd.DataFrame:
    """``class, count, percent, low, high`` (percent and its 95 % Wilson interval) of the
    predicted classes, every class of ``classes`` listed, in :func:`conventional_order`."""
    predicted = np.asarray(predicted).astype(str)
    n = len(predicted)
    rows = []
    for c in conventional_order([str(c) for c in classes]):
        k = int((predicted == c).sum())
        low, high = wilson_interval(k, n)
        rows.append({"class": c, "count": k, "percent": 100.0 * k / n if n else float("nan"),
                     "low": 100.0 * low, "high": 100.0 * high})
    return pd.DataFrame(rows, columns=["class", "count", "percent", "low", "high"])


_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:1.2em 2em;color:#222}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.4em;border-bottom:1px solid #ccc}
table.diff{border-collapse:collapse}table.diff td,table.diff th{padding:.25em .8em;border-bottom:1px solid #e3e3e3;text-align:right}
table.diff td:first-child,table.diff th:first-child{text-align:left}
.meta{color:#555;font-size:.9em}.warn{background:#fff3cd;border:1px solid #e0c66b;padding:.5em .8em;margin:.6em 0}
.gallery{display:flex;flex-wrap:wrap;gap:8px}
.cell{width:128px;border:2px solid #ddd;border-radius:4px;padding:3px;font-size:11px;background:#fafafa}
.cell img{width:120px;height:120px;image-rendering:auto;display:block}
.cell.uncertain{border-color:#d9822b}.cell.changed{border-color:#2b7bd9;background:#eaf2fd}
.cell .name{overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.cell select{width:100%;font-size:11px}
.flag{color:#b05a00;font-weight:600}
button{font-size:1em;padding:.35em .9em;margin:.4em 0}
"""

_SCRIPT = """
(function(){
  const cells = Array.from(document.querySelectorAll('.cell'));
  const classes = JSON.parse(document.getElementById('classes').textContent);
  function recount(){
    const counts = {}; classes.forEach(c => counts[c] = 0);
    let n = 0, changed = 0;
    cells.forEach(el => {
      const v = el.querySelector('select').value;
      if (v in counts) { counts[v] += 1; n += 1; }
      const isChanged = v !== el.dataset.predicted;
      el.classList.toggle('changed', isChanged);
      if (isChanged) changed += 1;
    });
    classes.forEach(c => {
      const td = document.querySelector('td.reviewed[data-class="' + CSS.escape(c) + '"]');
      if (td) td.textContent = n ? (100 * counts[c] / n).toFixed(1) + ' % (' + counts[c] + ')' : '';
    });
    document.getElementById('n-changed').textContent = String(changed);
    document.getElementById('download').disabled = changed === 0;
  }
  function csvField(s){ return /[",\\r\\n]/.test(s) ? '"' + s.replace(/"/g, '""') + '"' : s; }
  function correctionsCsv(){
    const lines = ['relpath,label'];
    cells.forEach(el => {
      const v = el.querySelector('select').value;
      if (v !== el.dataset.predicted) lines.push(csvField(el.dataset.relpath) + ',' + csvField(v));
    });
    return lines.join('\\n') + '\\n';
  }
  window.bcfeatCorrectionsCsv = correctionsCsv;
  cells.forEach(el => el.querySelector('select').addEventListener('change', recount));
  document.getElementById('download').addEventListener('click', function(){
    const blob = new Blob([correctionsCsv()], {type: 'text/csv'});
    const a = document.createElement('a');
    a.href = URL.createObjectURL(blob);
    a.download = 'corrections.csv';
    document.body.appendChild(a); a.click(); a.remove();
    setTimeout(() => URL.revokeObjectURL(a.href), 1000);
  });
  recount();
})();
"""


def _esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def _percent(x: float) -> str:
    return "" if not np.isfinite(x) else f"{x:.1f}"


def render_report(table: pd.DataFrame, thumbnails: Sequence[bytes], classes: Sequence[str], *,
                  title: str, skipped: Sequence[tuple[str, str]] = (), warnings: Sequence[str] = (),
                  details: dict[str, str] | None = None) -> str:
    """The HTML of a review report.

    Parameters
    ----------
    table : pd.DataFrame
        ``bcfeat classify``'s table: ``relpath, predicted, probability, uncertain, cell_found``.
    thumbnails : sequence of bytes
        One JPEG per row of ``table`` (the canonical crop).
    classes : sequence of str
        The classifier's classes (the menu of every cell).
    skipped : list of (path, reason)
        Files that have no row.
    warnings : list of str
        Shown at the top (a lab unlike the training labs, ...).
    details : dict
        ``name -> value`` lines (model file, folder, date).
    """
    if len(thumbnails) != len(table):
        raise ValueError(f"{len(thumbnails)} thumbnails for {len(table)} cells")
    classes = [str(c) for c in classes]
    order = conventional_order(classes)
    found = table["cell_found"].to_numpy(bool)
    predicted = table["predicted"].astype(str).to_numpy()
    diff = differential_table(predicted[found], classes)
    n_uncertain = int(table.loc[found, "uncertain"].sum())
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           f"<title>{_esc(title)}</title><style>{_STYLE}</style></head><body>",
           f"<h1>{_esc(title)}</h1>"]
    meta = {**(details or {}), "generated": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    out.append('<p class="meta">' + "<br>".join(f"{_esc(k)}: {_esc(v)}" for k, v in meta.items()) + "</p>")
    for w in warnings:
        out.append(f'<div class="warn">Warning: {_esc(w)}</div>')
    out.append("<h2>Differential</h2>")
    out.append(f"<p>{int(found.sum())} cells classified; {n_uncertain} uncertain (review them first); "
               f"{int((~found).sum())} images without a found cell; {len(skipped)} files skipped.</p>")
    out.append('<table class="diff" id="differential"><thead><tr><th>class</th><th>count</th><th>%</th>'
               "<th>95 % interval</th><th>after review</th></tr></thead><tbody>")
    for row in diff.itertuples():
        out.append(f'<tr data-class="{_esc(row[1])}"><td>{_esc(row[1])}</td><td>{row.count}</td>'
                   f"<td>{_percent(row.percent)}</td><td>{_percent(row.low)}-{_percent(row.high)}</td>"
                   f'<td class="reviewed" data-class="{_esc(row[1])}"></td></tr>')
    out.append("</tbody></table>")
    out.append('<p><button id="download" type="button">Download corrections</button> '
               '<span id="n-changed">0</span> cell(s) changed. Change a cell\'s class with its menu; '
               "the download holds <code>relpath,label</code> of the changed cells, for "
               "<code>bcfeat train-classifier ... --corrections corrections.csv --corrections-folder FOLDER</code>. "
               "An orange frame marks a cell the model is unsure of (listed first in each class).</p>")
    options_cache: dict[str, str] = {}

    def options(selected: str) -> str:
        if selected not in options_cache:
            opts = [f'<option value="{_esc(c)}"{" selected" if c == selected else ""}>{_esc(c)}</option>'
                    for c in order]
            if selected not in classes:
                opts.insert(0, f'<option value="{_esc(selected)}" selected>{_esc(selected)}</option>')
            options_cache[selected] = "".join(opts)
        return options_cache[selected]

    probability = table["probability"].to_numpy(float)
    uncertain = table["uncertain"].to_numpy(bool)
    sections = [(c, np.flatnonzero(found & (predicted == c))) for c in order]
    sections.append(("no cell found", np.flatnonzero(~found)))
    for name, rows in sections:
        if name == "no cell found" and not len(rows):
            continue
        rows = rows[np.lexsort((np.nan_to_num(probability[rows], nan=0.0), ~uncertain[rows]))]
        out.append(f'<h2 id="class-{_esc(name)}">{_esc(name)} ({len(rows)})</h2><div class="gallery">')
        for i in rows:
            relpath = str(table["relpath"].iat[i])
            p = probability[i]
            flag = ' <span class="flag">uncertain</span>' if uncertain[i] and found[i] else ""
            data = base64.b64encode(thumbnails[i]).decode("ascii")
            out.append(f'<div class="cell{" uncertain" if uncertain[i] else ""}" data-relpath="{_esc(relpath)}" '
                       f'data-predicted="{_esc(predicted[i])}"><img alt="{_esc(relpath)}" '
                       f'src="data:image/jpeg;base64,{data}"><div class="name" title="{_esc(relpath)}">'
                       f'{_esc(Path(relpath).name)}</div><div>{"" if not np.isfinite(p) else f"p = {p:.2f}"}{flag}</div>'
                       f"<select>{options(predicted[i])}</select></div>")
        out.append("</div>")
    if skipped:
        out.append(f"<h2>Skipped files ({len(skipped)})</h2><ul>")
        out += [f"<li>{_esc(p)}: {_esc(r)}</li>" for p, r in skipped]
        out.append("</ul>")
    classes_json = _esc_json(classes)
    out.append(f'<script type="application/json" id="classes">{classes_json}</script>')
    out.append(f"<script>{_SCRIPT}</script></body></html>")
    return "\n".join(out)


def _esc_json(values: Sequence[str]) -> str:
    import json

    # inside <script>, "</" would end the element: escape it
    return json.dumps(list(values)).replace("</", "<\\/")


def write_report(path: str | os.PathLike, table: pd.DataFrame, thumbnails: Sequence[bytes], classes: Sequence[str],
                 **kwargs) -> Path:
    """Write :func:`render_report`'s page to ``path`` (atomic: never half a page)."""
    text = render_report(table, thumbnails, classes, **kwargs)
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")
    return Path(path)


def read_corrections(path: str | os.PathLike) -> pd.DataFrame:
    """A corrections file of the review page: ``relpath, label`` (one row per cell).

    Raises
    ------
    ValueError
        Other columns, an empty field, or a cell listed twice; the message names the file.
    """
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not a corrections CSV ({error})") from None
    if list(table.columns) != ["relpath", "label"]:
        raise ValueError(f"{path}: a corrections file has the columns relpath,label; found {','.join(map(str, table.columns))}")
    empty = table[(table["relpath"].str.strip() == "") | (table["label"].str.strip() == "")]
    if len(empty):
        raise ValueError(f"{path}: row {int(empty.index[0]) + 2} has an empty relpath or label")
    twice = table["relpath"][table["relpath"].duplicated()]
    if len(twice):
        raise ValueError(f"{path}: {twice.iat[0]!r} is listed more than once")
    return table


__all__ = ["conventional_order", "wilson_interval", "differential_table", "render_report", "write_report",
           "read_corrections", "CONVENTIONAL_ORDER"]
