#!/usr/bin/env python
"""How a wider frame changes the cross-lab model's stain masks: padded with the background, or with the smear.

Acevedo-20 images (``--per-class`` of each class, from the data root) are segmented as they are
and through the virtual labs ``loose_crop`` (the frame 1.3 times the side, padded with the
image's background colour) and ``loose_crop_smear`` (the same frame, the image mirrored at its
edges), with the segmentation of the study's deployed measurement. Per framing it prints the median
ratio of the mask's equivalent diameter to the unframed image's, and the share of cells whose
diameter moved by more than 10 % and more than 3 %. The named shifts' accuracies are in the
chapter "Beyond the paper" (``crosslab_shifts.csv``); this says what happens to the masks.

    python scripts/framing_masks.py
    python scripts/framing_masks.py --per-class 100 --measurement stain+nucdisk+normtex
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bcfeat.crosslab.virtual_labs import named_shifts, render  # noqa: E402
from bcfeat.data import resolve_data_root, scan_dataset  # noqa: E402
from bcfeat.data.images import read_image  # noqa: E402
from bcfeat.detection.pseudo_masks import segment_white_cell  # noqa: E402
from bcfeat.study.crosslab_measurement import measurement_config  # noqa: E402

FRAMINGS = ("loose_crop", "loose_crop_smear")


def mask_diameter(image: np.ndarray, segmentation) -> float:
    """The stain mask's equivalent diameter in the image's pixels (0 where nothing was found)."""
    return 2.0 * math.sqrt(segment_white_cell(image, segmentation, full_nucleus=False).mask.sum() / math.pi)


def framing_table(paths: list[str], segmentation) -> dict[str, dict[str, float]]:
    """Per framing: ``median_ratio`` of the framed mask's diameter to the unframed one's, and the
    shares of cells off by more than 10 % (``off_10``) and 3 % (``off_3``)."""
    shifts = named_shifts()
    native, framed = [], {name: [] for name in FRAMINGS}
    for path in paths:
        image = read_image(path)
        native.append(mask_diameter(image, segmentation))
        for name in FRAMINGS:
            framed[name].append(mask_diameter(render(image, shifts[name]), segmentation))
    base = np.asarray(native)
    keep = base > 0
    out = {}
    for name, values in framed.items():
        ratio = np.asarray(values)[keep] / base[keep]
        out[name] = {"median_ratio": float(np.median(ratio)), "off_10": float(np.mean(np.abs(ratio - 1) > 0.10)),
                     "off_3": float(np.mean(np.abs(ratio - 1) > 0.03)), "cells": int(keep.sum())}
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", default=None, help="folder holding pbc_acevedo20/ (default: the project's)")
    parser.add_argument("--per-class", type=int, default=40, help="images drawn from each class")
    parser.add_argument("--measurement", default="stain+nucdisk+normtex", help="whose stain segmentation")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    if args.per_class < 1:
        parser.error("--per-class must be at least 1")
    config = measurement_config(args.measurement)
    if config.mask_source != "stain":
        parser.error(f"--measurement {args.measurement!r} does not use the stain segmentation")
    samples = scan_dataset("pbc_acevedo20", root=resolve_data_root(args.data_root), label_space="coarse5").samples
    rng = np.random.default_rng(args.seed)
    paths = [p for _, group in samples.groupby("label")
             for p in group["path"].to_numpy()[rng.choice(len(group), min(args.per_class, len(group)), replace=False)]]
    table = framing_table(paths, config.segmentation)
    for name, row in table.items():
        print(f"{name:17s} mask diameter x{row['median_ratio']:.3f} (median over {row['cells']} cells); "
              f"{row['off_10']:.0%} of cells off by more than 10 %, {row['off_3']:.0%} by more than 3 %")
    return table


if __name__ == "__main__":
    main()
