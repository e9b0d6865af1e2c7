"""Features of images from any bcfeat model file (AE-CFE or cross-lab): the scikit-learn transformer,
the extraction of a folder behind ``bcfeat extract``, and its shards."""
