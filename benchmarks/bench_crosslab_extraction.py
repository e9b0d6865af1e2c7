"""Throughput of the cross-lab model: cells/s from image files to cell features (and classes).

Measures, in one run and on the same real images (drawn evenly from the four shared sites):

* ``measure`` with the detector's masks: decode, detector, canonical crop, cell features, with
  1 and with 2 worker processes for the crops (the detector runs in the main process);
* the same with the label-free stain segmentation in place of the detector (no weights), with
  each of its resamplers (scikit-image's, the reproduction's pseudo-masks; Pillow's, the cross-lab
  model's default);
* milliseconds per image of each step of a stain-mask model in one process (segmentation with
  each resampler, canonical crop, cell features);
* the split of the time between the mask source and the crops + features.

Usage::

    python benchmarks/bench_crosslab_extraction.py --model artifacts/cpu/crosslab_model.pt
    python benchmarks/bench_crosslab_extraction.py --model artifacts/cpu/crosslab_model.pt --n-images 400

Without ``--model``, or with a stain-mask model (which holds no detector), the detector has random
weights (its cost does not depend on them). The
figures are printed and written to ``artifacts/benchmarks/bench_crosslab_extraction.json``.
Target (issue "Features that carry across labs"): >= 50 cells/s on the 2-core CPU machine.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(ROOT))

from bcfeat import paths  # noqa: E402
from benchmarks.results_file import write_results  # noqa: E402
from bcfeat.crosslab.model import CrossLabModel, CrossLabConfig, load_model  # noqa: E402
from bcfeat.data import scan_dataset  # noqa: E402
from bcfeat.detection.pseudo_masks import RESAMPLERS, SegmentationConfig  # noqa: E402

DATASETS = ("pbc_acevedo20", "jtsc_zheng18", "cellavision_zheng18", "bccd_crops")


def sample_paths(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    out: list[str] = []
    for i, ds in enumerate(DATASETS):
        paths_ = scan_dataset(ds, root=paths.SHARED_DATA, label_space="coarse5").samples["path"].tolist()
        k = n // len(DATASETS) + (1 if i < n % len(DATASETS) else 0)
        out += [paths_[j] for j in rng.choice(len(paths_), min(k, len(paths_)), replace=False)]
    return out


def timed(model: CrossLabModel, files: list[str]) -> float:
    start = time.perf_counter()
    feats, kept = model.measure(files)
    assert len(kept) == len(files), "every benchmark image must be measured"
    return time.perf_counter() - start


def step_times(images: list[np.ndarray]) -> dict[str, float]:
    """Milliseconds per image of each step of a stain-mask model, in this process, side by side:
    the stain segmentation with each resampler, then the canonical crop (without the red-cell
    ruler, as the deployed model measures) and the cell features."""
    from bcfeat.crosslab.cell_crop import canonical_crop
    from bcfeat.crosslab.cell_features import cell_features
    from bcfeat.detection.pseudo_masks import segment_white_cell

    out: dict[str, float] = {}
    masks = None
    for resampler in RESAMPLERS:
        cfg = SegmentationConfig(resampler=resampler)
        start = time.perf_counter()
        masks = [segment_white_cell(image, cfg).mask for image in images]
        out[f"ms_segmentation_{resampler}"] = 1000 * (time.perf_counter() - start) / len(images)
    start = time.perf_counter()
    crops = [canonical_crop(image, mask, ruler=False) for image, mask in zip(images, masks)]
    out["ms_canonical_crop_no_ruler"] = 1000 * (time.perf_counter() - start) / len(images)
    start = time.perf_counter()
    for crop in crops:
        cell_features(crop)
    out["ms_cell_features"] = 1000 * (time.perf_counter() - start) / len(images)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="cross-lab model file (default: random-weight cpu detector)")
    parser.add_argument("--n-images", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the detector")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    files = sample_paths(args.n_images)
    detector = load_model(args.model).detector if args.model else None
    from bcfeat.runner.detector import handoff_file

    study_detector = handoff_file(paths.ROOT / "artifacts" / "cpu")  # the cpu profile's stage 01_detector
    if detector is None and study_detector.is_file():  # a stain-mask model holds no detector: the study's
        from bcfeat.detection.checkpoint import load_detector

        detector = load_detector(study_detector)
    if detector is None:  # its cost does not depend on the weights
        from bcfeat.detection.config import DetectorConfig
        from bcfeat.detection.architecture import build_detector

        torch.manual_seed(0)
        detector = build_detector(DetectorConfig.cpu()).eval()
    results = {"n_images": len(files), "torch_threads": args.threads, "model": args.model}
    timed(CrossLabModel(CrossLabConfig("detector", n_workers=1), detector), files[:8])  # warm-up
    for workers in (1, 2):
        model = CrossLabModel(CrossLabConfig("detector", n_workers=workers), detector)
        seconds = timed(model, files)
        results[f"detector_workers{workers}_cells_per_s"] = len(files) / seconds
    # where the time goes: the masks alone
    from bcfeat.data import load_image

    images = [load_image(p) for p in files]
    model = CrossLabModel(CrossLabConfig("detector", n_workers=1), detector)
    start = time.perf_counter()
    masks = model._masks(images)
    results["detector_masks_only_cells_per_s"] = len(files) / (time.perf_counter() - start)
    from bcfeat.crosslab.model import _measure

    start = time.perf_counter()
    for im, m in zip(images, masks):
        _measure(im, m, model.config.crop)
    results["crop_and_features_only_cells_per_s"] = len(files) / (time.perf_counter() - start)
    for resampler in RESAMPLERS:  # the stain segmentation: the reproduction's resampling, the model's default
        stain = CrossLabModel(CrossLabConfig("stain", n_workers=2, segmentation=SegmentationConfig(resampler=resampler)))
        results[f"stain_{resampler}_workers2_cells_per_s"] = len(files) / timed(stain, files)
    results.update(step_times(images))
    for key, value in results.items():
        print(f"{key:40s} {value:.1f}" if isinstance(value, float) else f"{key:40s} {value}")
    write_results("bench_crosslab_extraction", results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
