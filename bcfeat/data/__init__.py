"""The real-data layer: where the images are, what they are, how to read and split them.

Modules (one concept each):

- :mod:`~bcfeat.data.sites` - the study's four sites and its source site;
- :mod:`~bcfeat.data.labels` - the one label map (COMMON13, COARSE5, dataset vocabularies);
- :mod:`~bcfeat.data.root` - resolving the data root;
- :mod:`~bcfeat.data.registry` - dataset specs, layouts and :func:`scan_dataset`;
- :mod:`~bcfeat.data.images` - :func:`load_image` to ``(H, W, 3) uint8`` RGB;
- :mod:`~bcfeat.data.splits` - the study's repeated per-site splits and stored per-dataset splits;
- :mod:`~bcfeat.data.manifest` - verification against the manifests;
- :mod:`~bcfeat.data.download` - downloading the public archives.
"""

from bcfeat.data import labels
from bcfeat.data.download import (
    ChecksumMismatch,
    DownloadError,
    DownloadUnavailable,
    download_dataset,
    download_file,
)
from bcfeat.data.images import ImageDecodeError, SkippedImages, iter_images, load_image
from bcfeat.data.labels import COARSE5, COMMON13
from bcfeat.data.manifest import VerificationReport, load_manifest, verify_dataset
from bcfeat.data.registry import (
    DATASETS,
    LAYOUTS,
    DatasetNotFound,
    DatasetSpec,
    ScanResult,
    locate_dataset,
    scan_dataset,
    scan_folder,
)
from bcfeat.data.root import DataRootNotFound, resolve_data_root
from bcfeat.data.sites import SITES, SOURCE_SITE
from bcfeat.data.splits import SplitConfig, SplitMismatch, SplitPlan, make_or_load_splits, make_splits, split_samples

__all__ = [
    "COARSE5",
    "COMMON13",
    "DATASETS",
    "LAYOUTS",
    "SITES",
    "SOURCE_SITE",
    "ChecksumMismatch",
    "DataRootNotFound",
    "DatasetNotFound",
    "DatasetSpec",
    "DownloadError",
    "DownloadUnavailable",
    "ImageDecodeError",
    "ScanResult",
    "SkippedImages",
    "SplitConfig",
    "SplitMismatch",
    "SplitPlan",
    "VerificationReport",
    "download_dataset",
    "download_file",
    "iter_images",
    "labels",
    "load_image",
    "load_manifest",
    "locate_dataset",
    "make_or_load_splits",
    "make_splits",
    "resolve_data_root",
    "scan_dataset",
    "scan_folder",
    "split_samples",
    "verify_dataset",
]
