"""bcfeat: a reproducible implementation of AE-CFE.

Salehi, Sadafi et al., "Unsupervised Cross-Domain Feature Extraction for Single
Blood Cell Image Classification", MICCAI 2022. An R-CNN finds the white cell, an
autoencoder trained without labels turns it into a 50-d feature vector, and a
random forest on those features classifies cells from labs it never saw.
"""

__version__ = "0.1.0"
