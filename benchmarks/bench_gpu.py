"""What the ``gpu`` profile costs: each trained model and the extraction, measured on one device.

For every model it prints samples/s, seconds per step and the share of the wall time the
device is busy:

* detector training (:func:`bcfeat.detection.training.train_detector`), the gpu preset
  (``DetectorConfig()``), mixed precision and float32;
* autoencoder training (:func:`bcfeat.autoencoder.training.fit_autoencoder`), ``AEConfig.paper``
  at batch 500, mixed precision and float32, on random tensors shaped like the real inputs;
* oracle training (:func:`bcfeat.evaluation.oracle.train_oracle`), the gpu profile's ResNeXt-50;
* extraction: the reference path (:func:`bcfeat.detection.instance_features.extract_instances`)
  and the batched path (:mod:`bcfeat.detection.batched_inference`, float32 and bfloat16 backbone) side by
  side on the same images, then the encoder;

and from those, the projected minutes of the gpu profile's trainings and extractions.

Busy share: on CUDA the sum of the device's kernel times recorded by ``torch.profiler`` over the
timed run divided by its wall time (the profiler adds a little overhead); on the CPU the process's
CPU time divided by wall time x threads. The training functions are called as the study calls
them; nothing in them is changed here.

Usage::

    python benchmarks/bench_gpu.py --images <folder> --out <json>     # on a CUDA machine
    python benchmarks/bench_gpu.py --device cpu --quick                # smoke check: tiny sizes, same fields
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(ROOT))

from bcfeat.autoencoder.model import AEConfig, CrossDomainAutoencoder  # noqa: E402
from bcfeat.autoencoder.training import AutoencoderTrainingConfig, fit_autoencoder  # noqa: E402
from bcfeat.data import load_image  # noqa: E402
from bcfeat.detection.config import DetectorConfig, DetectorTrainingConfig  # noqa: E402
from bcfeat.detection.instance_features import extract_instances  # noqa: E402
from bcfeat.detection.training import train_detector  # noqa: E402
from bcfeat.detection.training_data import pseudo_label  # noqa: E402
from bcfeat.detection.batched_inference import ExtractionRuntime, extract_instances_fast  # noqa: E402
from bcfeat.runner.profiles import get_profile, projected_gpu_minutes  # noqa: E402

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"}
# Every image of the four shared sites: the gpu profile's autoencoders train on all of them and
# extraction runs over all of them (twice: the detected cell and the whole-image ablation).
N_STUDY_IMAGES = 8547 + 300 + 100 + 351
N_SOURCE_IMAGES = 8547  # the oracle trains on the source site (an upper bound: its training split is smaller)


@contextmanager
def measured(device: torch.device):
    """Wall seconds and the device's busy share of a block: ``with measured(dev) as m: ...; m["seconds"]``."""
    out: dict[str, float] = {}
    cuda = device.type == "cuda"
    if cuda:
        from torch.profiler import ProfilerActivity, profile

        torch.cuda.synchronize(device)
        prof = profile(activities=[ProfilerActivity.CUDA])
        prof.__enter__()
    cpu0, t0 = time.process_time(), time.perf_counter()
    try:
        yield out
    finally:
        if cuda:
            torch.cuda.synchronize(device)
        wall = time.perf_counter() - t0
        out["seconds"] = wall
        if cuda:
            prof.__exit__(None, None, None)
            busy_us = sum(getattr(e, "self_device_time_total", 0) for e in prof.key_averages())
            out["busy_share"] = min(1.0, busy_us / 1e6 / max(wall, 1e-9))
        else:
            out["busy_share"] = min(1.0, (time.process_time() - cpu0) / max(wall * torch.get_num_threads(), 1e-9))


def _row(name: str, samples: int, steps: int, m: dict, **extra: Any) -> dict:
    r = {"samples_per_s": samples / m["seconds"], "s_per_step": m["seconds"] / max(steps, 1),
         "busy_share": m["busy_share"], "seconds": m["seconds"], "samples": samples, "steps": steps, **extra}
    print(f"{name:<34} {r['samples_per_s']:9.1f} samples/s {r['s_per_step']:8.4f} s/step "
          f"busy {100 * r['busy_share']:5.1f}%", flush=True)
    return r


def bench_detector(data, cfg: DetectorConfig, batch_size: int, steps: int, amp: bool, device: torch.device,
                   name: str) -> dict:
    warm = DetectorTrainingConfig(steps=2, batch_size=batch_size, warmup_steps=1, device=str(device), amp=amp,
                                  log_every=1)
    train_detector(data, cfg, warm, None, progress=False)
    tc = DetectorTrainingConfig(steps=steps, batch_size=batch_size, warmup_steps=1, device=str(device), amp=amp,
                                log_every=1)
    with measured(device) as m:
        _, hist = train_detector(data, cfg, tc, None, progress=False)
    return _row(name, steps * batch_size, steps, m, final_loss=float(hist[-1]["loss"]),
                finite=bool(all(np.isfinite(h["loss"]) for h in hist)))


def bench_autoencoder(cfg: AEConfig, n: int, batch_size: int, epochs: int, amp: bool, device: torch.device,
                      name: str) -> dict:
    g = torch.Generator().manual_seed(0)
    x = torch.tanh(torch.randn(n, cfg.in_channels, cfg.roi_size, cfg.roi_size, generator=g))
    crops = torch.rand(n, 3, cfg.image_size, cfg.image_size, generator=g)
    dom = torch.arange(n) % 4
    tc = AutoencoderTrainingConfig(epochs=epochs, batch_size=batch_size, device=str(device), amp=amp, progress=False)
    with tempfile.TemporaryDirectory() as tmp, measured(device) as m:
        _, hist = fit_autoencoder((x, crops, dom), cfg, tc, Path(tmp) / "ae.pt", resume=False)
    # The first epoch carries the start-up (kernel selection); the rate is that of the later ones.
    later = hist.iloc[1:] if len(hist) > 1 else hist
    m = {**m, "seconds": float(later["seconds"].sum()) * len(hist) / len(later)}
    steps = epochs * math.ceil(n / batch_size)
    # "learned": the loss fell. A finite loss alone passed while mixed precision skipped every update.
    return _row(name, n * epochs, steps, m, final_total_loss=float(hist["total"].iloc[-1]),
                finite=bool(np.isfinite(hist["total"]).all()),
                learned=bool(hist["total"].iloc[-1] < hist["total"].iloc[0]))


def bench_oracle(images: list[np.ndarray], profile: str, epochs: int, device: torch.device, name: str) -> dict:
    from bcfeat.evaluation.oracle import train_oracle
    from bcfeat.evaluation.oracle_model import oracle_config

    cfg = oracle_config(profile, epochs=epochs, device=str(device))
    labels = np.arange(len(images)) % 5
    with measured(device) as m:
        train_oracle(images, labels, cfg, None, resume=False)
    steps = epochs * math.ceil(len(images) / cfg.batch_size)
    return _row(name, len(images) * epochs, steps, m, arch=cfg.arch, image_size=cfg.image_size,
                batch_size=cfg.batch_size)


def bench_extraction(run: Callable[[list], Any], images: list, batch_size: int, device: torch.device, name: str,
                     encoder=None) -> dict:
    run(images[:batch_size])  # warm-up (kernel selection, compilation)
    with measured(device) as m:
        batch = run(images)
        if encoder is not None:
            with torch.no_grad():
                encoder.encode(batch.features.to(device))
    return _row(name, len(images), math.ceil(len(images) / batch_size), m, batch_size=batch_size,
                fallbacks=int(batch.fallback.sum()))


def real_images(folder: str | None, n: int) -> list[np.ndarray]:
    if folder is None:
        from bcfeat.data.root import resolve_data_root

        folder = str(resolve_data_root())
    paths = sorted(f for f in Path(folder).rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise SystemExit(f"no images under {folder}")
    step = max(1, len(paths) // n)
    return [load_image(f) for f in paths[::step][:n]]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", default=None, help="folder of real images, searched recursively (default: the data root)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke check of every measurement (CPU)")
    p.add_argument("--n-images", type=int, default=None, help="images read (default 512; quick 16)")
    p.add_argument("--detector-steps", type=int, default=None)
    p.add_argument("--ae-samples", type=int, default=None)
    p.add_argument("--ae-epochs", type=int, default=None)
    p.add_argument("--extraction-batch", type=int, default=None, help="batched path's batch (default 256; quick 8)")
    p.add_argument("--out", default=None, help="JSON output (default: artifacts/benchmarks/bench_gpu[_quick].json)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("no CUDA device visible to torch")
    q = args.quick
    n_images = args.n_images or (16 if q else 512)
    steps = args.detector_steps or (3 if q else 40)
    ae_n, ae_epochs = args.ae_samples or (64 if q else 4000), args.ae_epochs or (2 if q else 3)
    ext_batch = args.extraction_batch or (8 if q else 256)
    gpu = get_profile("gpu")
    det_stage, ae_stage, or_stage = (gpu.parameters_for(s) for s in ("01_detector", "02_autoencoder", "04_oracle"))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    images = real_images(args.images, n_images)
    print(f"torch {torch.__version__} | {name} | {len(images)} images | {'quick' if q else 'full'} sizes", flush=True)
    out: dict = {"torch": torch.__version__, "device": name, "quick": q, "n_images": len(images), "models": {}}
    rows = out["models"]

    det_cfg = DetectorConfig.tiny() if q else DetectorConfig()
    det_batch = 2 if q else det_stage["batch_size"]
    data = pseudo_label(images, det_cfg.image_size, progress=False)
    for amp in ([False] if q else [True, False]):
        key = f"detector_gpu_{'amp' if amp else 'fp32'}"
        rows[key] = bench_detector(data, det_cfg, det_batch, steps, amp, device, f"detector training ({key[13:]})")

    ae_cfg = AEConfig.tiny() if q else AEConfig.paper()
    ae_batch = 32 if q else ae_stage["batch_size"]
    for amp in ([False] if q else [True, False]):
        key = f"autoencoder_paper_{'amp' if amp else 'fp32'}"
        rows[key] = bench_autoencoder(ae_cfg, ae_n, ae_batch, ae_epochs, amp, device,
                                      f"autoencoder training ({key[18:]})")

    oracle_images = images * max(1, (64 if q else 1024) // len(images))
    rows["oracle"] = bench_oracle(oracle_images, "smoke" if q else "gpu", 1, device, "oracle training")

    torch.manual_seed(0)
    detector, _ = train_detector(data, det_cfg, DetectorTrainingConfig(steps=2 if q else 20, batch_size=det_batch,
                                                                       warmup_steps=1, device=str(device)),
                                 None, progress=False)
    detector = detector.to(device).eval()
    encoder = CrossDomainAutoencoder(AEConfig.tiny(in_channels=det_cfg.fpn_channels) if q
                                     else AEConfig.paper(in_channels=det_cfg.fpn_channels)).to(device).eval()
    crop = encoder.cfg.image_size
    ext_images = images * max(1, (32 if q else 2048) // len(images))
    ref_batch = 32 if not q else 4
    rows["extraction_reference"] = bench_extraction(
        lambda ims: extract_instances(detector, ims, crop_size=crop, batch_size=ref_batch), ext_images, ref_batch,
        device, "extraction, reference path", encoder)
    for amp in (False, True):
        rt = ExtractionRuntime(device=str(device), fast=True, amp=amp)
        key = f"extraction_fast_{'bf16' if amp else 'fp32'}"
        rows[key] = bench_extraction(
            lambda ims, rt=rt: extract_instances_fast(detector, ims, crop_size=crop, batch_size=ext_batch, runtime=rt),
            ext_images, ext_batch, device, f"extraction, batched path ({'bf16' if amp else 'fp32'})", encoder)
    # detector.backbone may now be channels-last (CUDA): that changes nothing of its results but the rounding

    # Projections of the gpu profile at these rates (the training functions as the study calls them).
    bench = {"detector_gpu_amp": rows.get("detector_gpu_amp", rows["detector_gpu_fp32"]),
             "autoencoder_paper_amp": rows.get("autoencoder_paper_amp", rows["autoencoder_paper_fp32"]),
             "n_autoencoder_images": N_STUDY_IMAGES}
    projected = dict(projected_gpu_minutes(bench))
    oracle_runs = or_stage["n_repetitions"] * or_stage["oracle_repetitions"] * 2  # batch and group norm
    from bcfeat.evaluation.oracle_model import oracle_config

    projected["oracle"] = (oracle_runs * oracle_config("gpu").epochs * N_SOURCE_IMAGES
                           / rows["oracle"]["samples_per_s"] / 60)
    best_fast = max(rows["extraction_fast_fp32"]["samples_per_s"], rows["extraction_fast_bf16"]["samples_per_s"])
    projected["extraction"] = 2 * N_STUDY_IMAGES / best_fast / 60  # detected cell + whole-image ablation
    projected["extraction_reference"] = 2 * N_STUDY_IMAGES / rows["extraction_reference"]["samples_per_s"] / 60
    projected["total"] = sum(projected[k] for k in ("detector", "autoencoder", "oracle", "extraction"))
    out["projected_gpu_profile_minutes"] = projected
    print(f"projected gpu profile at these rates: detector {projected['detector']:.1f} min, autoencoder "
          f"{projected['autoencoder']:.1f} min ({projected['autoencoder_variants']} variants), oracle "
          f"{projected['oracle']:.1f} min ({oracle_runs} trainings), extraction {projected['extraction']:.2f} min "
          f"(reference path {projected['extraction_reference']:.2f} min); total {projected['total']:.1f} min",
          flush=True)
    speedup = best_fast / rows["extraction_reference"]["samples_per_s"]
    out["extraction_speedup"] = speedup
    print(f"batched extraction: {speedup:.1f}x the reference path", flush=True)
    target = Path(args.out) if args.out else ROOT / "artifacts" / "benchmarks" / f"bench_gpu{'_quick' if q else ''}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(out, indent=2))
    print(f"written {target}")
    return out


if __name__ == "__main__":
    main()
