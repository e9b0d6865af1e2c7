"""``python -m bcfeat.runner.detector``: train (or resume, or restore) the detector exactly as the study's
detector chapter does, then score it and the pseudo-masks against the expert masks.

It calls the functions ``notebooks/01_detector.py`` calls (:class:`bcfeat.study.detector.DetectorPlan`,
:func:`bcfeat.study.detector.train_or_restore`, :func:`bcfeat.study.detector.evaluate_against_experts`)
with the notebook's defaults, so both write (and resume) the same run checkpoint
``<artifacts-dir>/checkpoints/detector_<key>.pt`` and the same hand-off ``checkpoints/detector.pt``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bcfeat.runner.detector``: train (or resume) the detector as the study does, then score it
    and the pseudo-masks against the expert masks. See ``--help``. Exit status as
    :mod:`bcfeat.runner.exit_codes` (0 ok, 1 unexpected error, 2 a bad value or input)."""
    from bcfeat.runner.exit_codes import run_command

    args = parser().parse_args(argv)
    return run_command("python -m bcfeat.runner.detector", lambda: _train_and_evaluate(args), verbose=args.verbose)


def parser():
    """The command line's ``argparse.ArgumentParser``; its defaults are notebooks/01_detector.py's."""
    import argparse

    from bcfeat import paths
    from bcfeat.runner.arguments import int_at_least

    ap = argparse.ArgumentParser(prog="python -m bcfeat.runner.detector", description=main.__doc__)
    # The defaults are notebooks/01_detector.py's parameters (the cpu profile).
    ap.add_argument("--preset", choices=("cpu", "gpu", "tiny"), default="cpu",
                    help="DetectorConfig preset: cpu (64-channel FPN), gpu (256, as the paper) or tiny")
    ap.add_argument("--steps", type=int_at_least(1), default=2500, help="optimizer steps")
    ap.add_argument("--batch-size", type=int_at_least(1), default=6, help="images per step")
    ap.add_argument("--seed", type=int_at_least(0), default=0, help="seed of the image sample and of training")
    ap.add_argument("--images-per-site", type=int_at_least(1), default=400,
                    help="unlabelled training images drawn from each site")
    ap.add_argument("--no-balance-sites", action="store_true",
                    help="draw every training image equally often instead of every site equally often")
    ap.add_argument("--mask-image-guidance", action="store_true",
                    help="give the mask predictor the box's pixels as well (DetectorConfig.mask_image_guidance)")
    ap.add_argument("--mask-paste", choices=("subpixel", "torchvision"), default=None,
                    help="how the kept mask is put back on the image (default: the preset's)")
    ap.add_argument("--data-root", type=Path, default=None,
                    help="data root (default: $BCFEAT_DATA_ROOT, then ../shared/datasets)")
    ap.add_argument("--artifacts-dir", type=Path, default=paths.ARTIFACTS / "cpu",
                    help="checkpoints and caches go here (the cpu profile's folder by default)")
    ap.add_argument("--eval-dir", type=Path, default=paths.ARTIFACTS / "detector_eval")
    ap.add_argument("--max-eval-images", type=int_at_least(0), default=0,
                    help="expert-masked images scored per dataset (0: all)")
    ap.add_argument("-v", "--verbose", action="store_true", help="show the traceback of an unexpected error")
    return ap


def handoff_file(artifacts_dir: str | Path) -> Path:
    """The detector file the study's stage ``01_detector`` hands on, for these artifacts."""
    from bcfeat.runner.stages import get_stage, resolve

    return Path(resolve(get_stage("01_detector").outputs["detector_file"], results_dir="",
                        artifacts_dir=str(artifacts_dir)))


def _train_and_evaluate(args: Any) -> int:
    """The work of :func:`main` on parsed arguments."""
    import pandas as pd

    from bcfeat.atomic_io import save_table
    from bcfeat.data import resolve_data_root
    from bcfeat.study.detector import DetectorPlan, detector_gain, evaluate_against_experts, train_or_restore

    root = resolve_data_root(args.data_root)
    plan = DetectorPlan.from_parameters(args.preset, args.steps, args.batch_size, args.seed, args.images_per_site,
                                        not args.no_balance_sites, mask_image_guidance=args.mask_image_guidance,
                                        mask_paste=args.mask_paste)
    detector_file = handoff_file(args.artifacts_dir)
    model, _, info = train_or_restore(plan, root, args.artifacts_dir, detector_file, train=True)
    print(f"trained {info['steps']} steps on {info['n_images']} unlabelled training images "
          f"({args.images_per_site} per site); detector {info['checkpoint']}")
    print(f"mask threshold calibrated on the pseudo-masks ({model.bcfeat_config.mask_paste} paste): "
          f"{info['mask_thresh']:.2f}")
    evaluation = evaluate_against_experts(model, root, args.max_eval_images or None)
    save_table(evaluation.per_image, args.eval_dir / "detector_vs_experts_per_image.csv")
    save_table(evaluation.table, args.eval_dir / "detector_vs_experts_summary.csv", index=True)
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(evaluation.table.round(3).to_string())
        print("detector minus pseudo-mask mean IoU:", detector_gain(evaluation.table).round(4).to_dict())
    print(f"tables in {args.eval_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
