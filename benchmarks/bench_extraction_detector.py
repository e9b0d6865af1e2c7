"""Throughput of the instance-feature extraction: detection + RoIAlign (+ the AE encoder).

Measures, in one process and on the same real images:

* the CPU detector (``DetectorConfig.cpu()`` or a trained checkpoint): cells/s of
  :func:`bcfeat.detection.instance_features.extract_instances` (transform, backbone+FPN, RPN, box and
  mask heads, mask pasting, RoIAlign 14x14, masked crop), then the same followed by the
  autoencoder's encoder (``bcfeat.autoencoder.model``, ``AEConfig.cpu`` sized to the FPN width, random
  weights: the encoder's cost does not depend on its weights);
* the paper's reference configuration on a few images: Mask R-CNN ResNet-101-FPN at
  1024 px, random weights, torchvision defaults (256 x 14 x 14 features);
* peak resident memory after each phase (``resource.getrusage``; it only grows).

Usage::

    python benchmarks/bench_extraction_detector.py                       # random-weight cpu detector
    python benchmarks/bench_extraction_detector.py --checkpoint artifacts/checkpoints/detector_cpu.pt
    python benchmarks/bench_extraction_detector.py --threads 1 2 --n-images 96 --reference-images 2

The figures are printed and written to ``artifacts/benchmarks/bench_extraction_detector.json``.
The machines here are shared: other processes inflate the times, and with two threads
an OpenMP barrier stalls whenever another process takes a core, so both 1 and 2 threads
are measured.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(ROOT))

from bcfeat import paths  # noqa: E402
from bcfeat.data import load_image, scan_dataset  # noqa: E402
from bcfeat.detection.config import DetectorConfig  # noqa: E402
from bcfeat.detection.architecture import build_detector, build_reference_maskrcnn  # noqa: E402
from bcfeat.detection.checkpoint import load_detector  # noqa: E402
from bcfeat.detection.instance_features import extract_instances  # noqa: E402
from bcfeat.detection.batched_inference import ExtractionRuntime, extract_instances_fast  # noqa: E402

DATASETS = ("pbc_acevedo20", "jtsc_zheng18", "cellavision_zheng18", "bccd_crops")


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def sample_images(n: int, seed: int = 0) -> list[np.ndarray]:
    """``n`` real images, drawn evenly from the four datasets (platelets excluded)."""
    rng = np.random.default_rng(seed)
    out: list[np.ndarray] = []
    for i, ds in enumerate(DATASETS):
        samples = scan_dataset(ds, label_space=None).samples
        samples = samples[samples.class_folder != "platelet"]
        k = n // len(DATASETS) + (1 if i < n % len(DATASETS) else 0)
        for p in samples.path.iloc[rng.permutation(len(samples))[:k]]:
            out.append(load_image(p))
    return out


def time_extraction(model, images, batch_size: int, crop_size: int, encoder=None, repeats: int = 2,
                    fast: bool = False) -> dict:
    """Best-of-``repeats`` wall time for the whole list (after one warm-up batch); ``fast``: the
    batched path of :mod:`bcfeat.detection.batched_inference` (float32, same batches) instead of the reference."""
    def run(ims):
        if fast:
            return extract_instances_fast(model, ims, crop_size=crop_size, batch_size=batch_size,
                                          runtime=ExtractionRuntime(device="cpu", fast=True, bucket=False))
        return extract_instances(model, ims, crop_size=crop_size, batch_size=batch_size)

    run(images[:batch_size])
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        batch = run(images)
        if encoder is not None:
            with torch.no_grad():
                z = encoder(_scale_features(batch.features))
            assert z.shape[0] == len(images)
        best = min(best, time.perf_counter() - t0)
    return {"n_cells": len(images), "seconds": best, "cells_per_s": len(images) / best,
            "fallbacks": int(batch.fallback.sum()), "feature_shape": list(batch.features.shape[1:])}


def _scale_features(f: torch.Tensor) -> torch.Tensor:
    # The released AE-CFE loader min-max scales each sample's features to [-1, 1].
    flat = f.flatten(1)
    lo, hi = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    return ((flat - lo) / (hi - lo).clamp_min(1e-8) * 2 - 1).view_as(f)


def build_encoder(channels: int):
    try:
        from bcfeat.autoencoder.model import AEConfig, CrossDomainAutoencoder
    except ImportError:  # the autoencoder lives in another module; report without it
        return None
    torch.manual_seed(0)
    return CrossDomainAutoencoder(AEConfig.cpu(in_channels=channels)).eval().encode


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", type=Path, default=None, help="trained detector (default: random-weight cpu preset)")
    ap.add_argument("--n-images", type=int, default=96)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--crop-size", type=int, default=64)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--reference-images", type=int, default=3, help="0 skips the ResNet-101 1024 px reference")
    ap.add_argument("--reference-threads", type=int, default=2)
    ap.add_argument("--output", type=Path, default=paths.ARTIFACTS / "benchmarks" / "bench_extraction_detector.json")
    args = ap.parse_args(argv)

    images = sample_images(args.n_images)
    rss_start = peak_rss_mib()
    if args.checkpoint is not None:
        model, source = load_detector(args.checkpoint), str(args.checkpoint)
    else:
        torch.manual_seed(0)
        model, source = build_detector(DetectorConfig.cpu()).eval(), "random weights, DetectorConfig.cpu()"
    cfg = model.bcfeat_config
    encoder = build_encoder(cfg.fpn_channels)
    report: dict = {
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "torch": torch.__version__, "cpu_count": torch.get_num_threads()},
        "images": {"n": len(images), "sizes": sorted({im.shape[:2] for im in images})[:8]},
        "detector": {"source": source, "image_size": cfg.image_size, "fpn_channels": cfg.fpn_channels,
                     "params_M": sum(p.numel() for p in model.parameters()) / 1e6, "runs": []},
    }
    print(f"detector: {source}; {report['detector']['params_M']:.2f} M parameters, {cfg.image_size} px, "
          f"features {cfg.fpn_channels}x14x14; {len(images)} real images from {len(DATASETS)} datasets")
    for threads in args.threads:
        torch.set_num_threads(threads)
        det = time_extraction(model, images, args.batch_size, args.crop_size)
        fast = time_extraction(model, images, args.batch_size, args.crop_size, fast=True)
        row = {"threads": threads, "detect_roialign": det, "detect_roialign_batched": fast}
        line = (f"  {threads} thread(s): detection + RoIAlign + crops {det['cells_per_s']:6.1f} cells/s"
                f" (batched path {fast['cells_per_s']:6.1f})")
        if encoder is not None:
            full = time_extraction(model, images, args.batch_size, args.crop_size, encoder)
            row["detect_roialign_encoder"] = full
            line += f"   + AE encoder (AEConfig.cpu) {full['cells_per_s']:6.1f} cells/s"
        report["detector"]["runs"].append(row)
        print(line + f"   [fallbacks {det['fallbacks']}/{det['n_cells']}]")
    report["detector"]["peak_rss_mib"] = peak_rss_mib()
    print(f"  peak RSS {report['detector']['peak_rss_mib']:.0f} MiB (images loaded: {rss_start:.0f} MiB)")

    if args.reference_images > 0:
        torch.set_num_threads(args.reference_threads)
        torch.manual_seed(0)
        ref = build_reference_maskrcnn(1024).eval()
        ref_images = images[: args.reference_images]
        extract_instances(ref, ref_images[:1], crop_size=args.crop_size, batch_size=1)  # warm-up
        t0 = time.perf_counter()
        batch = extract_instances(ref, ref_images, crop_size=args.crop_size, batch_size=1)
        sec = time.perf_counter() - t0
        report["reference"] = {
            "model": "Mask R-CNN ResNet-101-FPN, 1024 px, random weights (torchvision defaults)",
            "threads": args.reference_threads, "n_cells": len(ref_images), "seconds": sec,
            "cells_per_s": len(ref_images) / sec, "feature_shape": list(batch.features.shape[1:]),
            "params_M": sum(p.numel() for p in ref.parameters()) / 1e6, "peak_rss_mib": peak_rss_mib(),
        }
        r = report["reference"]
        print(f"reference: {r['model']}; {r['params_M']:.1f} M parameters, features "
              f"{'x'.join(map(str, r['feature_shape']))}\n  {args.reference_threads} thread(s): detection + RoIAlign "
              f"+ crops {r['cells_per_s']:.3f} cells/s ({sec / len(ref_images):.1f} s/cell); peak RSS {r['peak_rss_mib']:.0f} MiB")
        best = max(run["detect_roialign"]["cells_per_s"] for run in report["detector"]["runs"])
        print(f"speed-up of the cpu detector over the reference: {best / r['cells_per_s']:.0f}x")

    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2, default=str))
    print(f"written {args.output}")
    return report


if __name__ == "__main__":
    main()
