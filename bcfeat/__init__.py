"""bcfeat: a reproducible implementation of AE-CFE.

Salehi, Sadafi et al., "Unsupervised Cross-Domain Feature Extraction for Single
Blood Cell Image Classification", MICCAI 2022. An R-CNN finds the white cell, an
autoencoder trained without labels turns it into a 50-d feature vector, and a
random forest on those features classifies cells from labs it never saw.

Subpackages, one concept each: :mod:`bcfeat.data` (the images, sites, labels and splits),
:mod:`bcfeat.detection` (finding the white cell), :mod:`bcfeat.autoencoder` (AE-CFE),
:mod:`bcfeat.evaluation` (scoring features across labs), :mod:`bcfeat.study` (the notebooks'
steps), :mod:`bcfeat.crosslab` (the project's own method) and :mod:`bcfeat.runner` (the runner and
the commands). The modules at the top are the foundations they share: ``paths``, ``atomic_io``,
``model_files``, ``extractors`` and ``validation``.

The few names a user needs are importable from here (loaded on first use, so ``import bcfeat``
stays light):

- :func:`open_extractor` (:mod:`bcfeat.extractors`): any model file that extracts features,
  one interface (``kind``, ``feature_names``, ``transform(images)``, ``extract_folder(folder)``);
- :class:`ImageFeatures` (:mod:`bcfeat.extraction.transformer`): the same as a scikit-learn transformer;
- :func:`classify_folder` and :func:`train_classifier` (:mod:`bcfeat.crosslab.folders`): what
  ``bcfeat classify`` and ``bcfeat train-classifier`` do, as functions.
"""

from importlib import import_module

__version__ = "0.1.0"

_API = {
    "open_extractor": "bcfeat.extractors",
    "ImageFeatures": "bcfeat.extraction.transformer",
    "classify_folder": "bcfeat.crosslab.folders",
    "train_classifier": "bcfeat.crosslab.folders",
}
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        return getattr(import_module(_API[name]), name)
    raise AttributeError(f"module 'bcfeat' has no attribute {name!r}")
