"""The development cells' features through every virtual lab and measurement: what the selection, the
calibration and the texture gate read (built by :func:`bcfeat.study.crosslab_validation.build_virtual_labs`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass
class VirtualLabs:
    """Features of the development cells through each virtual lab and mask source."""

    rows: np.ndarray                                 # (n,) rows of the samples re-rendered
    labels: np.ndarray                               # (n,) their (Acevedo-20) labels
    features: dict[tuple[str, str], np.ndarray]      # (lab name, mask source) -> (n, d)
    labs: list                                       # the VirtualLab objects
    minutes: float                                   # rendering and measuring all of them (as first measured)

    def table(self) -> pd.DataFrame:
        """One row per virtual lab: its shift parameters."""
        rows = []
        for lab in self.labs:
            d = lab.record()
            d["stain_scale"] = ", ".join(f"{v:.2f}" for v in d["stain_scale"])
            d["white_balance"] = ", ".join(f"{v:.2f}" for v in d["white_balance"])
            d["crop_offset"] = ", ".join(f"{v:.2f}" for v in d["crop_offset"])
            rows.append(d)
        return pd.DataFrame(rows)


__all__ = ["VirtualLabs"]
