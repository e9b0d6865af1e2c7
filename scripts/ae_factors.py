#!/usr/bin/env python
"""The autoencoder's factors of the reproduction's gap, within a time budget (issue 20, step 2).

Trains the runs of :data:`bcfeat.study.factors.FACTOR_RUNS` from one detector's instance features
and scores each checkpoint with the benchmark's forest and splits; writes ``factor_scores.csv``,
``factor_history.csv``, ``factor_runs.json`` (with where it ran) and ``latents_<run>.npz`` into ``--out`` after every
checkpoint (a run stopped at its limit keeps what it finished).

    python scripts/ae_factors.py --detector artifacts/cpu/checkpoints/detector.pt --out factors/   # here
    python scripts/ae_factors.py --data-root gpu_carry/data/datasets --detector gpu_carry/detector.pt \\
        --device cuda --budget-s 420 --out $OUT/factors                                            # a GPU machine
    python scripts/ae_factors.py --quick --out /tmp/factors                                        # a dry run
    python scripts/ae_factors.py --runs cpu-paper --budget-s 5400 --work /tmp/cpu_paper \
        --out book/results/factors/cpu_paper                        # the factors that help, combined, on the CPU

The book's table is made from the ``factor_scores.csv`` of a run (``notebooks/08_factors.py``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", default=None, help="data root (default: $BCFEAT_DATA_ROOT, then ../shared/datasets)")
    p.add_argument("--detector", default="artifacts/cpu/checkpoints/detector.pt", help="01_detector's checkpoint")
    p.add_argument("--out", required=True, help="folder for the tables (and the cache, checkpoints under it); "
                                                 "with --score-only, the folder of a finished run")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--budget-s", type=float, default=float("inf"), help="seconds for the whole study, extraction included")
    p.add_argument("--runs", default="", help="comma-separated run names to keep (default: the factor runs, in order; "
                                               "`cpu-paper`: the factors that help, combined, within 90 minutes on a 2-core CPU)")
    p.add_argument("--n-jobs", type=int, default=os.cpu_count() or 2, help="forest worker processes")
    p.add_argument("--num-threads", type=int, default=os.cpu_count() or 2, help="torch CPU threads")
    p.add_argument("--max-source-images", type=int, default=4000, help="as the cpu profile")
    p.add_argument("--n-repetitions", type=int, default=5, help="splits per site, as the cpu profile")
    p.add_argument("--work", default="", help="folder for the cache and checkpoints (default: --out)")
    p.add_argument("--no-score", action="store_true", help="only train and save the latents (score them elsewhere "
                                                             "with notebooks/08_factors.py)")
    p.add_argument("--extraction", default="auto", choices=["auto", "cpu-reference", "batched"],
                   help="instance extraction: auto (batched on CUDA, the reference path on the CPU), the CPU's "
                        "reference path, or the batched path on --device")
    p.add_argument("--no-amp", action="store_true", help="train in float32 on CUDA too")
    p.add_argument("--max-epochs", type=int, default=0, help="drop the checkpoints beyond this epoch (0: keep all)")
    p.add_argument("--score-only", action="store_true",
                   help="score the latents a run saved in --out (factor_scores.csv beside them); trains nothing")
    p.add_argument("--quick", action="store_true", help="a dry run: 60 images per site, 2 splits, epochs 1 and 2")
    args = p.parse_args(argv)
    started = time.monotonic()
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(message)s", datefmt="%H:%M:%S")
    log = logging.getLogger("ae_factors")

    from dataclasses import replace

    from bcfeat.atomic_io import save_table
    from bcfeat.data import resolve_data_root
    from bcfeat.evaluation.benchmark import default_classifier
    from bcfeat.study import factors
    from bcfeat.study.design import DEFAULT_SITES
    from bcfeat.training.device import resolve_device

    device = str(resolve_device(args.device))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = list(factors.FACTOR_RUNS)
    if args.runs:
        known = [*runs, factors.CPU_PAPER]
        wanted = [r.strip() for r in args.runs.split(",")]
        unknown = sorted(set(wanted) - {r.name for r in known})
        if unknown:
            p.error(f"unknown run(s) {unknown}; choose from {[r.name for r in known]}")
        runs = [r for r in known if r.name in wanted]
    max_per_site, repetitions = 0, args.n_repetitions
    if args.max_epochs:
        runs = [replace(r, checkpoints=tuple(e for e in r.checkpoints if e <= args.max_epochs)) for r in runs
                if r.checkpoints[0] <= args.max_epochs]
    if args.quick:
        runs = [replace(r, checkpoints=(1, 2)) for r in runs[:2]]
        max_per_site, repetitions = 60, 2
    forest = lambda rs: default_classifier(rs, n_jobs=args.n_jobs)  # noqa: E731
    if args.score_only:
        data = factors.FactorData.build(resolve_data_root(args.data_root), DEFAULT_SITES, max_per_site=max_per_site,
                                        max_source_images=args.max_source_images, n_repetitions=repetitions, seed=0)
        scores = factors.score_saved_latents(out, data, make_classifier=forest)
        save_table(scores, out / "factor_scores.csv")
        print(factors.factor_table(scores, DEFAULT_SITES.source).round(3).to_string(index=False))
        return 0
    info = {**factors.provenance(device), "arguments": vars(args), "runs": [r.name for r in runs]}
    log.info("device %s, %s", device, {k: info[k] for k in ("torch", "gpu", "cpu_count") if k in info})
    work = Path(args.work) if args.work else out

    from bcfeat.detection.batched_inference import ExtractionRuntime

    runtime = {"auto": ExtractionRuntime(device=device, decode_threads=min(8, os.cpu_count() or 1)),
               "cpu-reference": ExtractionRuntime(device="cpu", fast=False),
               "batched": ExtractionRuntime(device=device, fast=True, decode_threads=min(8, os.cpu_count() or 1))
               }[args.extraction]
    info["extraction"] = repr(runtime)
    budget = factors.FactorBudget(args.budget_s, started=started)
    root = resolve_data_root(args.data_root)
    t0 = time.perf_counter()
    data = factors.FactorData.build(root, DEFAULT_SITES, max_per_site=max_per_site,
                                    max_source_images=args.max_source_images, n_repetitions=repetitions, seed=0,
                                    detector_file=Path(args.detector), cache_dir=work / "cache",
                                    runtime=runtime, runs=runs)
    info["instances_s"] = round(time.perf_counter() - t0, 1)
    info["n_samples"] = len(data.samples)
    log.info("instance arrays of %d images in %.0f s", len(data.samples), info["instances_s"])

    scores = factors.run_factors(runs, data, work / "checkpoints", out, device=device, num_threads=args.num_threads,
                                 budget=budget, make_classifier=forest, score=not args.no_score, info=info,
                                 amp=not args.no_amp)
    log.info("done in %.0f s", time.monotonic() - started)
    if len(scores):
        print(factors.factor_table(scores, DEFAULT_SITES.source).round(3).to_string(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
