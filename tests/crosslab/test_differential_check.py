"""The label-free check of a call's predicted differential against what blood usually holds."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bcfeat.crosslab.adaptation import CrossLabClassifier
from bcfeat.crosslab.differential_check import USUAL_UPPER_SHARE, differential_warning, excess_classes
from bcfeat.crosslab.folders import classify_cells
from bcfeat.crosslab.model import CrossLabConfig, CrossLabModel

CLASSES = ["basophil", "eosinophil", "lymphocyte", "monocyte", "neutrophil"]
TYPICAL = {"neutrophil": 0.55, "lymphocyte": 0.30, "monocyte": 0.08, "eosinophil": 0.05, "basophil": 0.02}


def _call(shares: dict[str, float], n: int) -> list[str]:
    return [c for c, s in shares.items() for _ in range(round(s * n))]


def test_a_typical_differential_passes_and_an_excess_is_flagged_only_when_sure():
    assert excess_classes(_call(TYPICAL, 100)) == []
    assert differential_warning(_call(TYPICAL, 1000)) is None
    over = {**TYPICAL, "basophil": 0.20, "neutrophil": 0.37}
    rows = excess_classes(_call(over, 100))
    assert [r[0] for r in rows] == ["basophil"] and rows[0][1] == pytest.approx(0.20)
    assert rows[0][2] > USUAL_UPPER_SHARE["basophil"]          # the interval's lower end is above the range
    # 4 % basophils: above the usual 2 %, but not surely so in 50 cells; surely so in 5,000
    slight = {**TYPICAL, "basophil": 0.04, "neutrophil": 0.53}
    assert excess_classes(_call(slight, 50)) == []
    assert [r[0] for r in excess_classes(_call(slight, 5000))] == ["basophil"]
    # several classes: the largest excess first, each named in the warning
    both = {"basophil": 0.30, "eosinophil": 0.20, "neutrophil": 0.30, "lymphocyte": 0.20}
    assert [r[0] for r in excess_classes(_call(both, 200))] == ["basophil", "eosinophil"]
    warning = differential_warning(_call(both, 200))
    assert "30% basophil" in warning and "20% eosinophil" in warning and "review" in warning


def test_a_lab_sets_its_own_ranges_and_unknown_classes_are_not_checked():
    call = _call({**TYPICAL, "basophil": 0.20, "neutrophil": 0.37}, 100)
    assert excess_classes(call, {"basophil": 0.30}) == []       # a lab whose range allows it
    assert excess_classes(["a"] * 90 + ["b"] * 10) == []        # classes without a range
    with pytest.raises(ValueError, match="basophil"):
        excess_classes(call, {"basophil": 2.0})                 # a percentage where a share is meant


def test_classify_warns_a_lab_whose_call_over_calls_a_class():
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 4, (5, 6))

    def cells(shares, n):
        y = np.array(_call(shares, n))
        return centres[[CLASSES.index(c) for c in y]] + rng.normal(size=(len(y), 6)), y

    X, y = cells(dict.fromkeys(CLASSES, 0.2), 300)
    model = CrossLabModel(CrossLabConfig(mask_source="stain"), None, CrossLabClassifier().fit(X, y))
    over = {**TYPICAL, "basophil": 0.25, "neutrophil": 0.32}
    for shares, flagged, ranges in ((TYPICAL, False, None), (over, True, None), (over, False, {"basophil": 0.4})):
        Xc, yc = cells(shares, 200)
        warnings: list[str] = []
        table = classify_cells(model, pd.Series([f"c{i}.png" for i in range(len(yc))]), Xc,
                               np.ones(len(yc), bool), "lab/", warnings, ranges)
        assert (table["predicted"] == yc).mean() > 0.9
        assert any("basophil" in w and "usually" in w for w in warnings) == flagged


def test_a_labs_own_ranges_from_the_command_line():
    from bcfeat.crosslab.differential_check import parse_usual_upper
    from bcfeat.runner.cli import build_parser

    ranges = parse_usual_upper("basophil=3%, eosinophil=0.08")
    assert ranges["basophil"] == pytest.approx(0.03) and ranges["eosinophil"] == 0.08
    assert ranges["neutrophil"] == USUAL_UPPER_SHARE["neutrophil"]      # the classes not named keep theirs
    for bad in ("basophil", "basophil=two", "basophil=3", "=0.1", "basophil=150%"):
        with pytest.raises(ValueError, match="not <class>=<share>"):
            parse_usual_upper(bad)
    args = build_parser().parse_args(["classify", "m.pt", "lab/", "--output", "o.csv", "--usual-upper", "basophil=0.3"])
    assert args.usual_upper["basophil"] == 0.3
    assert build_parser().parse_args(["classify", "m.pt", "lab/", "--output", "o.csv"]).usual_upper is None
    with pytest.raises(SystemExit) as exit_info:                        # argparse: one line, exit 2
        build_parser().parse_args(["classify", "m.pt", "lab/", "--output", "o.csv", "--usual-upper", "basophil=3"])
    assert exit_info.value.code == 2
