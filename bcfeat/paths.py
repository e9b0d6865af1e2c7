"""Repository-relative paths, defined once (STYLE rule 8).

Everything the pipeline writes lives below ``ROOT``; no absolute machine path
appears anywhere else in the code. Data is *read* from a data root resolved by
:func:`bcfeat.data.root.resolve_data_root`, never copied here. Figures have no folder:
every figure lives in the executed notebook that makes it (glued into the book).
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
BOOK = ROOT / "book"
# Executed papermill notebooks and the small tables/figures the book shows (committed).
RESULTS = BOOK / "results"
# Large, regenerable outputs: checkpoints, feature caches, downloaded data (git-ignored).
ARTIFACTS = ROOT / "artifacts"
SPLITS = RESULTS / "splits"
# Where `bcfeat download` puts public datasets when no other data root exists.
DOWNLOADED_DATA = ROOT / "data"
# The workplace's shared copy of the datasets, beside a checkout.
SHARED_DATA = ROOT.parent / "shared" / "datasets"
SHARED_MANIFESTS = ROOT.parent / "shared" / "manifests"
SHARED_MASKS = ROOT.parent / "shared" / "masks"
# Where `bcfeat pack` writes the compact data pack by default: beside the checkout, never inside it.
PACK = ROOT.parent / "bcfeat_pack"
