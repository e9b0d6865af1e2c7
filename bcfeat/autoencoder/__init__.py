"""The AE-CFE autoencoder: model, losses, site standardisation, its training, and the
scikit-learn feature extractor built on the detector and the autoencoder."""
