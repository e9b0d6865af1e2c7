"""The columns of an AE-CFE feature table (``bcfeat extract`` with an AE-CFE model file), shared by
the single-process extraction (:mod:`bcfeat.extraction.folder`) and the merge of its shards
(:mod:`bcfeat.extraction.shards`). No PyTorch: the shard machinery of ``bcfeat classify`` reads it too.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

# Per image, before the latent features: the file, its label folder (if any), whether the detector
# found no cell (centred fallback) and the detection's score.
ROW_COLUMNS = ["relpath", "label", "fallback", "score"]


def with_latent(table: pd.DataFrame, latent: np.ndarray) -> pd.DataFrame:
    """``table`` with the latent features as columns ``aecfe0 .. aecfe<k-1>``."""
    return pd.concat([table, pd.DataFrame(latent, columns=[f"aecfe{i}" for i in range(latent.shape[1])])], axis=1)


__all__ = ["ROW_COLUMNS", "with_latent"]
