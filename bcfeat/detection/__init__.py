"""Finding the white cell: label-free pseudo-masks, the one-class Mask R-CNN (config, architecture,
files, training data, training, inference), the instance features it hands to the autoencoder
and the masks' agreement with the experts."""
