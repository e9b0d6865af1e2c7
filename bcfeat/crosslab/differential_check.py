"""Could blood have this differential? A label-free check of a call's predicted class shares.

A classifier that misreads a new lab's cells does not spread its errors evenly: on every unseen lab
of the study it calls a fifth to two fifths of the cells basophils, a class that is rarely above
2 % of the white cells in blood. A lab reads the differential, so a share far above what blood
usually holds is what it should be told about before it reports one, as an analyser's flags do.

:data:`USUAL_UPPER_SHARE` holds commonly quoted upper ends of the adult white-cell differential
(percent of the white cells: neutrophils 40-75, lymphocytes 20-45, monocytes 2-10, eosinophils
1-6, basophils 0-2). Ranges differ between laboratories, ages and populations, and a patient's
smear may truly lie outside them (an infection, an allergy, a leukaemia): the check says "review",
not "wrong", and a lab can pass its own ranges. Only an excess is flagged, and only where the
share's 95 % Wilson interval lies wholly above the range's upper end, so a small call does not
flag by chance.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from bcfeat.crosslab.review_report import wilson_interval

USUAL_UPPER_SHARE: dict[str, float] = {"neutrophil": 0.75, "lymphocyte": 0.45, "monocyte": 0.10,
                                       "eosinophil": 0.06, "basophil": 0.02}


def excess_classes(predicted: Sequence[str], upper: Mapping[str, float] | None = None
                   ) -> list[tuple[str, float, float, float]]:
    """``(class, share, interval low, usual upper)`` of every class whose share of ``predicted``
    lies above its usual upper share with 95 % confidence (the Wilson interval's lower end above
    it), largest excess first; classes without a range are not checked.

    >>> excess_classes(["basophil"] * 20 + ["neutrophil"] * 80)[0][:2]
    ('basophil', 0.2)
    >>> excess_classes(["basophil"] * 2 + ["neutrophil"] * 60 + ["lymphocyte"] * 38)
    []
    """
    upper = USUAL_UPPER_SHARE if upper is None else dict(upper)
    for name, value in upper.items():
        if not (isinstance(value, (int, float)) and 0 <= value <= 1):
            raise ValueError(f"usual upper share of {name!r} must lie in [0, 1], got {value!r}")
    predicted = np.asarray(predicted)
    n = len(predicted)
    out = []
    for name, limit in upper.items():
        k = int(np.sum(predicted == name))
        low, _ = wilson_interval(k, n)
        if n and low > limit:
            out.append((name, k / n, low, float(limit)))
    return sorted(out, key=lambda row: row[2] - row[3], reverse=True)


def differential_warning(predicted: Sequence[str], upper: Mapping[str, float] | None = None) -> str | None:
    """One line for a lab when a call's predicted differential holds more of a class than blood
    usually does (:func:`excess_classes`), else ``None``."""
    excess = excess_classes(predicted, upper)
    if not excess:
        return None
    parts = [f"{share:.0%} {name} (95 % interval from {low:.0%}; usually at most {limit:.0%})"
             for name, share, low, limit in excess]
    return (f"the predicted differential of {len(predicted)} cells holds more than blood usually does: "
            f"{'; '.join(parts)}. Unless this smear is known to be abnormal, the classifier may be misreading "
            "this lab's cells: review before reporting")


def parse_usual_upper(text: str) -> dict[str, float]:
    """A lab's own upper ends, ``"basophil=0.03,eosinophil=8%"`` (a share, or a percentage with
    ``%``), over :data:`USUAL_UPPER_SHARE` (the classes not named keep theirs).

    >>> parse_usual_upper("basophil=3%, eosinophil=0.08")["basophil"]
    0.03
    """
    out = dict(USUAL_UPPER_SHARE)
    for part in (p.strip() for p in text.split(",")):
        name, sep, value = part.partition("=")
        name, value = name.strip(), value.strip()
        try:
            share = float(value[:-1]) / 100 if value.endswith("%") else float(value)
        except ValueError:
            share = float("nan")
        if not sep or not name or not 0 <= share <= 1:
            raise ValueError(f"{part!r} is not <class>=<share> with a share in [0, 1] (or a percentage: 3%)")
        out[name] = share
    return out
