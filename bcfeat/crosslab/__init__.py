"""The project's own cross-lab method (not the paper's): canonical cell crops, stain-normalised
named cell features, per-lab standardisation and a linear classifier; see the book's chapter
"Beyond the paper" and ``notebooks/07_crosslab.py``.

Modules: :mod:`~bcfeat.crosslab.cell_crop`, :mod:`~bcfeat.crosslab.stain`,
:mod:`~bcfeat.crosslab.cell_features`, :mod:`~bcfeat.crosslab.adaptation`,
:mod:`~bcfeat.crosslab.self_supervised`, :mod:`~bcfeat.crosslab.model`,
:mod:`~bcfeat.crosslab.folders`, :mod:`~bcfeat.crosslab.evaluation`,
:mod:`~bcfeat.study.crosslab`.
"""
