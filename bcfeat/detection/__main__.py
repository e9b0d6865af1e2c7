"""``python -m bcfeat.detection``: train (or resume) the detector, then score it and the
pseudo-masks against the expert masks."""

from __future__ import annotations

import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import torch

from bcfeat.detection.config import DetectorConfig, DetectorTrainingConfig
from bcfeat.detection.inference import calibrate_mask_threshold
from bcfeat.detection.training import train_detector
from bcfeat.detection.training_data import pseudo_label, training_images



def _per_dataset(item: str) -> tuple[str, int]:
    """``"name=count"`` of ``--per-dataset`` (count >= 1)."""
    import argparse

    name, sep, count = item.partition("=")
    if not sep or not name or not count.isdigit() or int(count) < 1:
        raise argparse.ArgumentTypeError(f"{item!r} is not name=count with a count >= 1")
    return name, int(count)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bcfeat.detection``: train (or resume) the detector, then score it and the
    pseudo-masks against the expert masks. See ``--help``. Exit status as
    :mod:`bcfeat.runner.exit_codes` (0 ok, 1 unexpected error, 2 a bad value or input)."""
    import argparse

    from bcfeat import paths
    from bcfeat.runner.exit_codes import int_at_least, run_command

    ap = argparse.ArgumentParser(prog="python -m bcfeat.detection", description=main.__doc__)
    ap.add_argument("--preset", choices=("cpu", "default", "tiny"), default="cpu")
    ap.add_argument("--steps", type=int_at_least(1), default=DetectorTrainingConfig.steps)
    ap.add_argument("--batch-size", type=int_at_least(1), default=DetectorTrainingConfig.batch_size)
    ap.add_argument("--seed", type=int_at_least(0), default=0)
    ap.add_argument("--per-dataset", nargs="+", type=_per_dataset,
                    default=[("pbc_acevedo20", 900), ("jtsc_zheng18", 300), ("cellavision_zheng18", 100),
                             ("bccd_crops", 351)],
                    help="training images drawn per dataset, as name=count")
    ap.add_argument("--holdout-every", type=int_at_least(0), default=4,
                    help="every n-th image of each dataset is never trained on (0: use all)")
    ap.add_argument("--checkpoint", type=Path, default=paths.CHECKPOINTS / "detector_cpu.pt")
    ap.add_argument("--cache", type=Path, default=paths.CACHE / "detector_pseudo_masks.pt")
    ap.add_argument("--eval-dir", type=Path, default=paths.ARTIFACTS / "detector_eval")
    ap.add_argument("--no-resume", action="store_true")
    ap.add_argument("--no-balance-sites", action="store_true",
                    help="draw every training image equally often instead of every site equally often")
    ap.add_argument("--mask-image-guidance", action="store_true",
                    help="give the mask predictor the box's pixels as well (DetectorConfig.mask_image_guidance)")
    ap.add_argument("--mask-paste", choices=("subpixel", "torchvision"), default=None,
                    help="how the kept mask is put back on the image (default: the preset's)")
    ap.add_argument("-v", "--verbose", action="store_true", help="show the traceback of an unexpected error")
    args = ap.parse_args(argv)
    return run_command("python -m bcfeat.detection", lambda: _train_and_evaluate(args), verbose=args.verbose)


def _train_and_evaluate(args: Any) -> int:
    """The work of :func:`main` on parsed arguments."""
    import pandas as pd

    per = dict(args.per_dataset)
    cfg = {"cpu": DetectorConfig.cpu, "default": DetectorConfig, "tiny": DetectorConfig.tiny}[args.preset]()
    if args.mask_image_guidance:
        cfg = replace(cfg, mask_image_guidance=True)
    train_cfg = DetectorTrainingConfig(steps=args.steps, batch_size=args.batch_size, seed=args.seed,
                            balance_groups=not args.no_balance_sites)
    sample = training_images(tuple(per), per, holdout_every=args.holdout_every, seed=args.seed)
    files = sample.path.tolist()
    print(f"{len(files)} unlabelled training images: {per} (holdout_every={args.holdout_every})")
    t0 = time.perf_counter()
    data = pseudo_label(files, cfg.image_size, cache_path=args.cache)
    model, history = train_detector(data, cfg, train_cfg, args.checkpoint, resume=not args.no_resume,
                                    groups=sample.dataset.tolist())
    print(f"trained {train_cfg.steps} steps: {model.bcfeat_extra['seconds'] / 60:.1f} min in the training loop, "
          f"{(time.perf_counter() - t0) / 60:.1f} min in this call; checkpoint {args.checkpoint}")
    torch.set_num_threads(train_cfg.num_threads)
    if args.mask_paste is not None:
        model.bcfeat_config = replace(model.bcfeat_config, mask_paste=args.mask_paste)
    # As the study does: the mask threshold that best reproduces the training pseudo-masks.
    threshold, _ = calibrate_mask_threshold(model, data, seed=args.seed)
    model.bcfeat_config = replace(model.bcfeat_config, mask_thresh=threshold)
    print(f"mask threshold calibrated on the pseudo-masks ({model.bcfeat_config.mask_paste} paste): {threshold:.2f}")
    from bcfeat.study.detector import detector_gain, evaluate_against_experts

    evaluation = evaluate_against_experts(model, holdout_every=args.holdout_every)
    args.eval_dir.mkdir(parents=True, exist_ok=True)
    evaluation.per_image.to_csv(args.eval_dir / "detector_vs_experts_per_image.csv", index=False)
    evaluation.table.to_csv(args.eval_dir / "detector_vs_experts_summary.csv")
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(evaluation.table.round(3).to_string())
        print("detector minus pseudo-mask mean IoU:", detector_gain(evaluation.table).round(4).to_dict())
    print(f"tables in {args.eval_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
