"""What the ``gpu`` profile costs on a CUDA GPU: detector and autoencoder training, extraction.

Measured in one process on real images (pseudo-labelled here, as the study does), each
with mixed precision (float16 autocast + GradScaler, the default on CUDA) and in float32:

* detector training, ``DetectorConfig()`` (256-channel FPN, the paper's 256 x 14 x 14
  features) and the cpu preset: seconds per optimiser step at the gpu profile's batch;
* autoencoder training, ``AEConfig.paper`` (128 px image decoder), batch 500 as the
  released code: samples/s of :func:`bcfeat.autoencoder.training.fit_autoencoder`;
* extraction with the gpu-preset detector + the paper encoder: cells/s;

and from those, the projected time of the gpu profile's two trainings. Usage::

    python benchmarks/bench_gpu.py --images <folder of images, searched recursively>

Figures are printed and written to ``artifacts/benchmarks/bench_gpu.json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(ROOT))

from bcfeat.data import load_image  # noqa: E402
from bcfeat.detection.config import DetectorConfig, DetectorTrainingConfig  # noqa: E402
from bcfeat.detection.training_data import pseudo_label  # noqa: E402
from bcfeat.detection.training import train_detector  # noqa: E402
from bcfeat.detection.instance_features import extract_instances  # noqa: E402
from bcfeat.autoencoder.model import AEConfig, CrossDomainAutoencoder  # noqa: E402
from bcfeat.runner.profiles import get_profile, projected_gpu_minutes  # noqa: E402
from bcfeat.autoencoder.training import AutoencoderTrainingConfig as AETrainConfig  # noqa: E402
from bcfeat.autoencoder.training import fit_autoencoder  # noqa: E402

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"}
# Every image of the four shared sites: the gpu profile's autoencoders train on all of them.
N_STUDY_IMAGES = 8547 + 300 + 100 + 351


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def time_detector_training(data, cfg: DetectorConfig, batch_size: int, steps: int, amp: bool, device: str) -> dict:
    """Seconds per step over ``steps`` steps after a 5-step warm-up run (no checkpoint written)."""
    warm = DetectorTrainingConfig(steps=5, batch_size=batch_size, warmup_steps=1, device=device, amp=amp, log_every=1)
    train_detector(data, cfg, warm, None, progress=False)
    tc = DetectorTrainingConfig(steps=steps, batch_size=batch_size, warmup_steps=5, device=device, amp=amp, log_every=1)
    _sync()
    t0 = time.perf_counter()
    _, hist = train_detector(data, cfg, tc, None, progress=False)
    _sync()
    seconds = time.perf_counter() - t0
    return {"s_per_step": seconds / steps, "final_loss": hist[-1]["loss"],
            "finite": bool(all(np.isfinite(h["loss"]) for h in hist))}


def time_autoencoder_training(n: int, batch_size: int, epochs: int, amp: bool, device: str) -> dict:
    """Samples/s of fit_autoencoder (paper preset) on random tensors shaped like the real inputs."""
    cfg = AEConfig.paper()
    g = torch.Generator().manual_seed(0)
    x = torch.tanh(torch.randn(n, cfg.in_channels, cfg.roi_size, cfg.roi_size, generator=g))
    crops = torch.rand(n, 3, cfg.image_size, cfg.image_size, generator=g)
    dom = torch.arange(n) % 4
    tc = AETrainConfig(epochs=epochs, batch_size=batch_size, device=device, amp=amp, progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        _, hist = fit_autoencoder((x, crops, dom), cfg, tc, Path(tmp) / "ae.pt", resume=False)
    # The first epoch carries the CUDA start-up (kernel selection); report the later ones.
    later = hist.iloc[1:] if len(hist) > 1 else hist
    return {"samples_per_s": float(later["samples"].sum() / later["seconds"].sum()),
            "final_total_loss": float(hist["total"].iloc[-1]), "finite": bool(np.isfinite(hist["total"]).all())}


def time_extraction(detector, images, encoder, batch_size: int, crop_size: int) -> dict:
    extract_instances(detector, images[:batch_size], crop_size=crop_size, batch_size=batch_size)  # warm-up
    _sync()
    t0 = time.perf_counter()
    batch = extract_instances(detector, images, crop_size=crop_size, batch_size=batch_size)
    with torch.no_grad():
        encoder.encode(batch.features.to(next(encoder.parameters()).device))
    _sync()
    return {"cells_per_s": len(images) / (time.perf_counter() - t0), "n_images": len(images)}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", required=True, help="folder of real images (searched recursively)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--detector-steps", type=int, default=40)
    p.add_argument("--ae-samples", type=int, default=4000)
    p.add_argument("--ae-epochs", type=int, default=3)
    p.add_argument("--out", default=str(ROOT / "artifacts" / "benchmarks" / "bench_gpu.json"))
    args = p.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("no CUDA device visible to torch")

    paths = sorted(f for f in Path(args.images).rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        p.error(f"no images under {args.images}")
    images = [load_image(f) for f in paths]
    gpu = get_profile("gpu")
    det_stage, ae_stage = gpu.parameters_for("01_detector"), gpu.parameters_for("02_autoencoder")
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor()
    print(f"torch {torch.__version__} | {name} | {len(images)} images from {args.images}", flush=True)
    out: dict = {"torch": torch.__version__, "device": name, "n_images": len(images)}

    data = pseudo_label(images, DetectorConfig().image_size, progress=False)
    for preset, cfg in (("gpu", DetectorConfig()), ("cpu", DetectorConfig.cpu())):
        for amp in (True, False):
            r = time_detector_training(data, cfg, det_stage["batch_size"], args.detector_steps, amp, args.device)
            out[f"detector_{preset}_{'amp' if amp else 'fp32'}"] = r
            print(f"detector {preset:<3} {'amp ' if amp else 'fp32'}: {r['s_per_step']:.3f} s/step "
                  f"(batch {det_stage['batch_size']}), final loss {r['final_loss']:.3f}, finite {r['finite']}",
                  flush=True)
    for amp in (True, False):
        r = time_autoencoder_training(args.ae_samples, ae_stage["batch_size"], args.ae_epochs, amp, args.device)
        out[f"autoencoder_paper_{'amp' if amp else 'fp32'}"] = r
        print(f"autoencoder paper {'amp ' if amp else 'fp32'}: {r['samples_per_s']:.0f} samples/s "
              f"(batch {ae_stage['batch_size']}), finite {r['finite']}", flush=True)

    torch.manual_seed(0)
    detector, _ = train_detector(data, DetectorConfig(), DetectorTrainingConfig(steps=20, batch_size=8, warmup_steps=2,
                                                                      device=args.device), None, progress=False)
    encoder = CrossDomainAutoencoder(AEConfig.paper()).to(args.device).eval()
    reps = max(1, 256 // len(images))
    r = time_extraction(detector.eval(), images * reps, encoder, 32, AEConfig.paper().image_size)
    out["extraction_gpu_preset_paper_encoder"] = r
    print(f"extraction (gpu detector preset + paper encoder): {r['cells_per_s']:.0f} cells/s "
          f"over {r['n_images']} images", flush=True)

    # The gpu profile's trainings, projected from the figures above (mixed precision, the default).
    out["n_autoencoder_images"] = N_STUDY_IMAGES
    projected = projected_gpu_minutes(out)
    out["projected_gpu_profile_minutes"] = projected
    print(f"projected gpu profile: detector {projected['detector']:.1f} min, "
          f"autoencoder {projected['autoencoder']:.1f} min ({projected['autoencoder_variants']} variants)")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
