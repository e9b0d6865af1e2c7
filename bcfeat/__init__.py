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
``model_files`` and ``validation``.
"""

__version__ = "0.1.0"
