"""The cross-lab study's settings: their names (``"logistic C=0.03 all stain+normtex cbr"``), and
the :class:`~bcfeat.crosslab.adaptation.CrossLabClassifier` each name stands for, with the texture
gate where the setting reads texture. Shared by the selection on virtual labs
(:mod:`bcfeat.study.crosslab_validation`) and the chapter's other steps (:mod:`bcfeat.study.crosslab`).
"""

from __future__ import annotations

from collections.abc import Sequence

from bcfeat.crosslab.adaptation import CLASS_STATISTICS, CrossLabClassifier
from bcfeat.crosslab.cell_features import feature_set_columns

STATISTICS = ("plain", "balanced", "cbr", "cbr_mix")

DROP_PREFIX = "drop="
"""A setting's optional last part: the feature columns it leaves out (``drop=3,17,40``), written by
the order-stable lever (:mod:`bcfeat.study.order_stable_features`) so that the name alone rebuilds
the classifier, in the study, in the model file and in ``bcfeat train-classifier``."""


def drop_part(drop: Sequence[int]) -> str:
    """A setting name's ``" drop=3,17"`` part (sorted, each column once; ``""`` without any).

    >>> drop_part([17, 3, 3]), drop_part(())
    (' drop=3,17', '')
    """
    return f" {DROP_PREFIX}{','.join(str(c) for c in sorted({int(c) for c in drop}))}" if len(drop) else ""


def read_drop(parts: Sequence[str], name: str) -> tuple[list[str], tuple[int, ...]]:
    """A setting name's ``parts`` without their ``drop=`` part, and the columns it lists (sorted)."""
    drops = [p for p in parts if p.startswith(DROP_PREFIX)]
    if len(drops) > 1:
        raise ValueError(f"not a cross-lab setting name: {name!r} (one {DROP_PREFIX} at most)")
    try:
        drop = tuple(sorted({int(c) for c in drops[0][len(DROP_PREFIX):].split(",")})) if drops else ()
    except ValueError:
        raise ValueError(f"{drops[0]!r} in {name!r}: the dropped columns are integers separated by commas") from None
    return [p for p in parts if not p.startswith(DROP_PREFIX)], drop


def setting_name(C: float, groups: str, source: str, statistics: str, drop: Sequence[int] = ()) -> str:
    """``"logistic C=0.03 no_fine_texture stain cbr"``, with ``" drop=3,17"`` when columns are left out.

    >>> setting_name(0.03, "all", "stain", "cbr", drop=[17, 3])
    'logistic C=0.03 all stain cbr drop=3,17'
    """
    return f"logistic C={float(C):g} {groups} {source} {statistics}" + drop_part(drop)


def parse_setting(name: str) -> dict:
    """A setting name back into its parts; names without the statistics (before CBR) are plain;
    ``drop`` is the tuple of left-out columns (empty when the name has none).

    >>> parse_setting("logistic C=0.03 no_texture stain cbr")["statistics"]
    'cbr'
    >>> parse_setting("logistic C=0.03 no_texture stain")["statistics"]
    'plain'
    >>> parse_setting("logistic C=0.03 no_texture stain drop=4,9 plain")["drop"]
    (4, 9)
    """
    parts = name.split()
    if len(parts) not in (4, 5, 6) or parts[0] != "logistic" or not parts[1].startswith("C="):
        raise ValueError(f"not a cross-lab setting name: {name!r}")
    rest, drop = read_drop(parts[4:], name)
    if len(rest) > 1:
        raise ValueError(f"not a cross-lab setting name: {name!r} (one statistics and one {DROP_PREFIX} at most)")
    statistics = rest[0] if rest else "plain"
    if statistics not in STATISTICS:
        raise ValueError(f"unknown statistics {statistics!r} in {name!r}; valid: {STATISTICS}")
    feature_set_columns(parts[2], drop)  # an unknown feature set or a column out of range fails here
    return {"name": name, "model": "logistic", "C": float(parts[1][2:]), "groups": parts[2], "source": parts[3],
            "statistics": statistics, "drop": drop}


def base_setting(name: str, keep: Sequence[int] = ()) -> str:
    """The setting without its left-out columns, but for those of ``keep`` (the columns every
    candidate of the selection left out, :func:`candidate_settings`'s ``drop``): the candidate a
    lever variant was made from.

    >>> base_setting("logistic C=0.03 all stain cbr drop=3,17")
    'logistic C=0.03 all stain cbr'
    >>> base_setting("logistic C=0.03 all stain cbr drop=1,3,17", keep=[1])
    'logistic C=0.03 all stain cbr drop=1'
    """
    s = parse_setting(name)
    kept = {int(c) for c in keep}
    return setting_name(s["C"], s["groups"], s["source"], s["statistics"], drop=[c for c in s["drop"] if c in kept])


def setting_columns(setting: dict | str) -> tuple[int, ...] | None:
    """The feature columns a setting reads (``None``: every column)."""
    s = parse_setting(setting) if isinstance(setting, str) else setting
    return feature_set_columns(s["groups"], s.get("drop", ()))


def texture_gate_columns(groups: str, drop: Sequence[int] = ()) -> tuple[int, ...] | None:
    """The texture columns a feature set reads (``None`` when it reads none, or only texture):
    the group the texture gate trusts only on calls like the virtual labs.

    >>> texture_gate_columns("no_texture") is None
    True
    """
    from bcfeat.crosslab.cell_features import feature_groups, feature_names

    used = feature_set_columns(groups, drop)
    used = set(range(len(feature_names()))) if used is None else set(used)
    gated = tuple(sorted(used & set(feature_groups()["texture"])))
    return gated if gated and len(gated) < len(used) else None


def classifier_for(setting: dict | str, random_state: int = 0, temperature: float = 1.0,
                   gate_threshold: float | Sequence | None = None) -> CrossLabClassifier:
    """The :class:`CrossLabClassifier` of a setting: plain per-call statistics, or two rounds of
    class-balanced (weighted, or CBR) statistics from its own hard predictions.

    ``gate_threshold``: ``None``, no texture gate; a number (``math.inf``: fitted, never closed) or
    (call size, threshold) pairs, the setting's texture columns are gated (:func:`texture_gate_columns`; no gate where it reads none)."""
    s = parse_setting(setting) if isinstance(setting, str) else setting
    rounds = 0 if s["statistics"] == "plain" else 2
    stats = s["statistics"] if s["statistics"] in CLASS_STATISTICS else "balanced"
    gate = None if gate_threshold is None else texture_gate_columns(s["groups"], s.get("drop", ()))
    return CrossLabClassifier(model="logistic", C=s["C"], balance_rounds=rounds, statistics=stats,
                              columns=setting_columns(s), random_state=random_state,
                              temperature=temperature, gate_columns=gate,
                              gate_threshold=None if gate is None else gate_threshold)


def candidate_settings(Cs: Sequence[str | float], groups: Sequence[str], sources: Sequence[str],
                       statistics: Sequence[str] = STATISTICS, drop: Sequence[int] = ()) -> list[str]:
    """Every combination, named by :func:`setting_name`; unknown names fail before any work.

    ``drop``: columns every candidate leaves out (the study's ruler check). A feature set that
    ``drop`` makes the same as an earlier one of ``groups`` is offered once, under the earlier name.

    >>> candidate_settings([0.1], ["all", "no_ruler"], ["stain"], ["cbr"])
    ['logistic C=0.1 all stain cbr', 'logistic C=0.1 no_ruler stain cbr']
    >>> candidate_settings([0.1], ["all", "no_ruler"], ["stain"], ["cbr"], drop=[1])
    ['logistic C=0.1 all stain cbr drop=1']
    """
    columns = {g: feature_set_columns(g, drop) for g in groups}
    bad = [s for s in statistics if s not in STATISTICS]
    if bad or not Cs or not groups or not sources or not statistics:
        raise ValueError(f"candidates need at least one C, feature set, mask source and statistics "
                         f"(valid statistics: {STATISTICS}); got {list(Cs)}, {list(groups)}, {list(sources)}, "
                         f"{list(statistics)}")
    distinct = [g for i, g in enumerate(groups) if columns[g] not in [columns[e] for e in groups[:i]]]
    dropped = {g: _dropped(g, drop) for g in distinct}
    return [setting_name(float(c), g, src, st, drop=dropped[g])
            for src in sources for g in distinct for st in statistics for c in Cs]


def _dropped(group: str, drop: Sequence[int]) -> list[int]:
    """The columns of ``drop`` that the feature set ``group`` would read (a name lists only those)."""
    read = feature_set_columns(group)
    return [int(c) for c in drop if read is None or int(c) in read]


def plain_name(setting: str) -> str:
    """The setting's features and strength with plain per-site statistics, in the 4-part naming of
    :func:`bcfeat.study.crosslab.setting_by_name` (the domain matrix, ablations and few-shot curve),
    its left-out columns kept.

    >>> plain_name("logistic C=0.03 no_texture stain cbr")
    'logistic C=0.03 no_texture stain'
    >>> plain_name("logistic C=0.03 no_texture stain cbr drop=2")
    'logistic C=0.03 no_texture stain drop=2'
    """
    s = parse_setting(setting)
    return f"logistic C={s['C']:g} {s['groups']} {s['source']}" + drop_part(s["drop"])


__all__ = ["STATISTICS", "DROP_PREFIX", "drop_part", "read_drop", "setting_name", "parse_setting", "base_setting", "setting_columns",
           "texture_gate_columns", "classifier_for", "candidate_settings", "plain_name"]
