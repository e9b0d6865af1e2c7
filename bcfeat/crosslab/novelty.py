"""Is a new lab like any lab the classifier was developed on? A lab-level novelty score from
unlabelled cells, a threshold fitted on reference labs, and the warning ``bcfeat classify`` shows.

The score is read in the classifier's own whitened score space
(:meth:`bcfeat.crosslab.adaptation.CrossLabClassifier.discriminant_view`): cells far from every
training class there are cells the classifier extrapolates on. No label of the lab is used.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

# --------------------------------------------------------------------------------------------
# lab-level novelty (out-of-distribution) warning
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LabNovelty:
    """Does a lab look like any training lab? Reference scores and the warning threshold.

    Attributes
    ----------
    reference_distances : (m,) array
        :func:`lab_novelty_score` of each development/training lab (read-only copy).
    threshold : float
        A lab whose score is above this gets a warning (:func:`novelty_warning`).

    Equality and hashing use ``threshold`` only (arrays do not compare to a single bool).
    """

    reference_distances: np.ndarray = field(compare=False)
    threshold: float

    def __post_init__(self):
        ref = np.array(self.reference_distances, dtype=np.float64).reshape(-1)
        ref.setflags(write=False)
        t = float(self.threshold)
        if not (math.isfinite(t) and t >= 0):
            raise ValueError(f"threshold must be finite and >= 0; got {t!r}")
        object.__setattr__(self, "reference_distances", ref)
        object.__setattr__(self, "threshold", t)


def lab_novelty_score(Z: np.ndarray, class_means: np.ndarray,
                      within_scale: float | np.ndarray = 1.0) -> float:
    """How far one lab's cells sit from every training class: the median RMS distance to the nearest centroid.

    ``score = median_i min_c ||(Z_i - class_means_c) / within_scale|| / sqrt(d)``. Uses no
    labels of the lab. Per-lab standardisation removes a lab's overall shift and scale, so what
    remains is whether its cells fall near the training classes at all: cells of a familiar
    lab sit near some class centroid (score around the within-class spread), cells of a lab
    unlike any training lab sit far from all of them (high score). The median keeps a few odd
    cells (debris, doublets) from deciding.

    Parameters
    ----------
    Z : (n, d) array
        One lab's cells *after* the per-lab standardisation (finite, n >= 1).
    class_means : (k, d) array
        Training class centroids in the same space.
    within_scale : float or (d,) array
        Positive within-class spread (overall, or per feature) to measure distances in.

    Returns
    -------
    float
        The score (>= 0); compare with :func:`fit_novelty`'s threshold.

    Examples
    --------
    >>> means = np.array([[0.0, 0.0], [4.0, 0.0]])
    >>> round(lab_novelty_score(np.array([[0.0, 1.0], [4.0, -1.0], [3.0, 0.0]]), means), 4)  # 1 / sqrt(2)
    0.7071
    >>> round(lab_novelty_score(np.array([[2.0, 6.0]] * 3), means), 3)
    4.472
    """
    Z = np.asarray(Z, dtype=np.float64)
    M = np.asarray(class_means, dtype=np.float64)
    if Z.ndim != 2 or Z.shape[0] < 1 or Z.shape[1] < 1:
        raise ValueError(f"Z must be 2-d (n, d) with n, d >= 1; got shape {Z.shape}")
    d = Z.shape[1]
    if M.ndim != 2 or M.shape[0] < 1 or M.shape[1] != d:
        raise ValueError(f"class_means must have shape (k, {d}) to match Z; got shape {M.shape}")
    if not (np.all(np.isfinite(Z)) and np.all(np.isfinite(M))):
        raise ValueError("Z and class_means must be finite (standardise and fill NaN first)")
    s = np.asarray(within_scale, dtype=np.float64)
    if s.ndim > 1 or (s.ndim == 1 and s.shape[0] != d):
        raise ValueError(f"within_scale must be a number or have shape ({d},); got shape {s.shape}")
    if not (np.all(np.isfinite(s)) and np.all(s > 0)):
        raise ValueError(f"within_scale must be finite and > 0; got {within_scale!r}")
    Zs, Ms = Z / s, M / s
    # squared distances (n, k) without an (n, k, d) array
    sq = (Zs ** 2).sum(axis=1)[:, None] + (Ms ** 2).sum(axis=1)[None, :] - 2.0 * Zs @ Ms.T
    nearest = np.sqrt(np.clip(sq.min(axis=1), 0.0, None))
    return float(np.median(nearest) / math.sqrt(d))


def fit_novelty(reference_scores: Sequence[float], margin: float = 1.5) -> LabNovelty:
    """The novelty threshold from the development/training labs' own scores.

    ``threshold = max(reference_scores) * margin``. With only a handful of reference labs a
    quantile or a median + k * MAD rule is itself too noisy to trust (and with fewer than ~5
    labs a MAD is close to meaningless); the maximum times a margin is simple, never warns on
    a reference lab, and says plainly "further from the training classes than any lab we
    checked, by more than ``margin`` times". Tighten ``margin`` towards 1 for more warnings.

    Parameters
    ----------
    reference_scores : sequence of float, length m >= 1
        :func:`lab_novelty_score` of each development/training lab (finite, >= 0).
    margin : float
        Multiplier >= 1 on the largest reference score.

    Returns
    -------
    LabNovelty

    Examples
    --------
    >>> fit_novelty([0.8, 1.0, 0.9], margin=1.5).threshold
    1.5
    """
    ref = np.asarray(reference_scores, dtype=np.float64).reshape(-1)
    if ref.size < 1:
        raise ValueError("reference_scores must hold at least one lab's score; got none")
    if not (np.all(np.isfinite(ref)) and np.all(ref >= 0)):
        raise ValueError(f"reference_scores must be finite and >= 0; got {ref.tolist()!r}")
    m = float(margin)
    if not (math.isfinite(m) and m >= 1):
        raise ValueError(f"margin must be finite and >= 1; got {m!r}")
    return LabNovelty(reference_distances=ref, threshold=float(ref.max() * m))


def novelty_warning(score: float, novelty: LabNovelty) -> str | None:
    """One sentence warning that a lab looks unlike every training lab, or ``None``.

    Parameters
    ----------
    score : float
        The lab's :func:`lab_novelty_score`.
    novelty : LabNovelty
        From :func:`fit_novelty`.

    Returns
    -------
    str or None
        A warning naming the score and the threshold when ``score > novelty.threshold``.

    Examples
    --------
    >>> nov = fit_novelty([1.0], margin=1.5)
    >>> novelty_warning(1.2, nov) is None
    True
    >>> novelty_warning(2.0, nov)[:40]
    'Lab novelty score 2 is above the warning'
    """
    if not isinstance(novelty, LabNovelty):
        raise ValueError(f"novelty must be a LabNovelty; got {novelty!r}")
    s = float(score)
    if not math.isfinite(s):
        raise ValueError(f"score must be finite; got {s!r}")
    if s <= novelty.threshold:
        return None
    return (f"Lab novelty score {s:.3g} is above the warning threshold {novelty.threshold:.3g}: "
            "this lab's cells sit far from every training class, unlike any reference lab, so "
            "its predictions and their confidences should not be trusted without review.")


__all__ = ["LabNovelty", "lab_novelty_score", "fit_novelty", "novelty_warning"]
