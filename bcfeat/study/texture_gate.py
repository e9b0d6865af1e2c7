"""The texture gate's threshold, fitted on the virtual labs only (chapter "Beyond the paper").

Per call size, the largest texture novelty
(:meth:`~bcfeat.crosslab.adaptation.CrossLabClassifier.gate_novelty`) of any virtual lab's call:
texture is trusted on a call that looks no more foreign than calls of its size from the labs it was
checked on. Also each virtual lab scored as if new, and the chapter's numbers on the gate.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from bcfeat.crosslab import mixes as mx
from bcfeat.crosslab.adaptation import CrossLabClassifier, gate_threshold_at

if TYPE_CHECKING:
    from bcfeat.study.virtual_lab_features import VirtualLabs

# Call sizes at which the texture gate's envelope is measured on the virtual labs (besides each lab's
# all-cells call): a call's novelty is a median over its cells, which scatters more in small calls.
GATE_CALL_SIZES = (32, 100, 200, 400)
GATE_MIXES = ("own", "balanced", "typical", "neutrophil_heavy", "lymphocyte_heavy")


def gate_envelope(calls: pd.DataFrame) -> tuple[tuple[int, float], ...]:
    """``(call size, threshold)`` pairs from a table of calls (``call_size``, ``gate_novelty``):
    per size, the largest novelty of any call of that size or larger (so the threshold never rises
    with the call's size, as the scatter of a median does not).

    >>> calls = pd.DataFrame({"call_size": [100, 100, 400, 400], "gate_novelty": [1.5, 1.2, 0.9, 1.0]})
    >>> gate_envelope(calls)
    ((100, 1.5), (400, 1.0))
    """
    per_size = calls.groupby("call_size")["gate_novelty"].max().sort_index(ascending=False)
    envelope = per_size.cummax().sort_index()
    return tuple((int(n), float(t)) for n, t in envelope.items())


def fit_gate_threshold(clf: CrossLabClassifier, virtual: VirtualLabs, source: str, seed: int,
                       call_sizes: Sequence[int] = GATE_CALL_SIZES, n_calls: int = 3,
                       mixes: Sequence[str] = GATE_MIXES) -> tuple[tuple[tuple[int, float], ...] | None, pd.DataFrame]:
    """The texture gate's threshold per call size (:func:`gate_envelope`): the largest
    :meth:`~CrossLabClassifier.gate_novelty` of any virtual lab's call, over each lab's all-cells call
    and ``n_calls`` calls of each of ``call_sizes`` under each mix. Texture is then trusted on any
    call that looks no more foreign than calls of its size from the labs it was checked on, and
    only there. Returns ``(envelope, per-call table)``; ``(None, empty)`` when ``clf`` has no gate
    (its features read no texture).

    ``clf`` must be fitted with ``gate_columns`` (``crosslab_settings.classifier_for(..., gate_threshold=math.inf)``)."""
    columns = ["lab", "mix", "call_size", "call", "gate_novelty"]
    if clf.gate_columns is None:
        return None, pd.DataFrame(columns=columns)
    rng = np.random.default_rng(seed)
    rows = []
    for lab in virtual.labs:
        X = virtual.features[(lab.name, source)]
        rows.append({"lab": lab.name, "mix": "own", "call_size": len(X), "call": 0,
                     "gate_novelty": clf.gate_novelty(X)})
        for mix in mixes:
            for size in call_sizes:
                for i, idx in enumerate(mx.draw_calls(virtual.labels, mx.MIXES[mix], size, n_calls, rng)):
                    rows.append({"lab": lab.name, "mix": mix, "call_size": len(idx), "call": i,
                                 "gate_novelty": clf.gate_novelty(X[idx])})
    table = pd.DataFrame(rows, columns=columns)
    return gate_envelope(table), table


def gate_leave_one_lab_out(clf: CrossLabClassifier, virtual: VirtualLabs, source: str,
                           calls: pd.DataFrame) -> pd.DataFrame:
    """How the gate would treat a new lab like the virtual labs: each virtual lab in turn is left
    out of the envelope (:func:`gate_envelope` of the *other* labs' calls, from
    :func:`fit_gate_threshold`'s table), and the share of its calls beyond the envelope at their
    size is counted; beside it, what closing costs there (balanced accuracy of all its cells with
    and without texture). One row per lab."""
    from sklearn.metrics import balanced_accuracy_score

    rows = []
    threshold_was = clf.gate_threshold
    try:
        clf.set_params(gate_threshold=None)  # the full classifier's own predictions
        for lab in virtual.labs:
            mine = calls["lab"] == lab.name
            envelope = gate_envelope(calls[~mine])
            limits = calls.loc[mine, "call_size"].map(lambda n, e=envelope: gate_threshold_at(e, n))
            X = virtual.features[(lab.name, source)]
            rows.append({"lab": lab.name,
                         "share_of_calls_closed": float((calls.loc[mine, "gate_novelty"] > limits).mean()),
                         "balanced_accuracy_with_texture": float(balanced_accuracy_score(virtual.labels,
                                                                                          clf.predict(X))),
                         "balanced_accuracy_without_texture": float(
                             balanced_accuracy_score(virtual.labels, clf.fallback_.predict(X)))})
    finally:
        clf.set_params(gate_threshold=threshold_was)
    return pd.DataFrame(rows)



def gate_envelope_glue(envelope: Sequence | None, per_lab: pd.DataFrame) -> dict:
    """The chapter's numbers on the gate's envelope: its threshold for calls of 100 cells and for
    the largest fitted call, that size, and the mean share of a left-out virtual lab's calls the
    gate closes (NaN where the chosen setting has no gate)."""
    if envelope is None:
        return {"crosslab_gate_threshold_100": float("nan"), "crosslab_gate_threshold_largest": float("nan"),
                "crosslab_gate_largest_call": 0, "crosslab_gate_loo_closed": float("nan")}
    largest = int(max(n for n, _ in envelope))
    return {"crosslab_gate_threshold_100": gate_threshold_at(envelope, 100),
            "crosslab_gate_threshold_largest": gate_threshold_at(envelope, largest),
            "crosslab_gate_largest_call": largest,
            "crosslab_gate_loo_closed": float(per_lab["share_of_calls_closed"].mean())}


def gate_glue(calibration_table: pd.DataFrame) -> dict:
    """Where the texture gate closed (all of a lab's cells in one call), from
    :func:`calibration_table`: the labs, comma-separated, or "none"; "no gate" when the chosen
    setting reads no texture."""
    if "gate_closed" not in calibration_table:
        return {"crosslab_gate_closed_labs": "no gate", "crosslab_gate_open_labs": "no gate"}
    closed = calibration_table["gate_closed"].astype(bool)
    names = lambda part: ", ".join(part["lab"]) or "none"  # noqa: E731
    return {"crosslab_gate_closed_labs": names(calibration_table[closed]),
            "crosslab_gate_open_labs": names(calibration_table[~closed])}


__all__ = ["GATE_CALL_SIZES", "GATE_MIXES", "gate_envelope", "fit_gate_threshold", "gate_leave_one_lab_out",
           "gate_envelope_glue", "gate_glue"]
