"""What the data pack changes: the detector-free baselines on the original data vs the pack, 3 seeds each.

The full ``cpu`` study takes ~50 CPU-minutes; this is its cheap proxy. For each seed, the
study's stratified per-site splits (:func:`bcfeat.study.common.study_splits`) and the study's
random forest (seeded likewise) score two feature sets computed on both data roots:

- ``colour_shape``: :class:`bcfeat.evaluation.baselines.ColorShapeFeatures` (segmentation,
  colour histograms of nucleus and cytoplasm, shape);
- ``raw_pixels``: the 32 px image, PCA 50 inside each training split, then the forest.

It prints, per feature set and test site (training on the source site), the balanced
accuracy on the original data and on the pack, the pack-minus-original difference (paired:
same seed, same splits) and the spread between seeds (the std of the original's per-seed
means), and writes the per-seed table as CSV when ``--output`` is given. A script, not a test::

    python benchmarks/bench_pack.py --pack ../bcfeat_pack --output book/results/benchmarks/bench_pack.csv
    python benchmarks/bench_pack.py --pack ../bcfeat_pack --max-per-site 0 --repetitions 5
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd


def colour_shape(paths: list[str], n_jobs: int) -> np.ndarray:
    """ColorShapeFeatures of every image, in ``n_jobs`` processes (the features are per image)."""
    from joblib import Parallel, delayed

    from bcfeat.evaluation.baselines import ColorShapeFeatures

    transformer = ColorShapeFeatures().fit(paths[:8])
    chunks = [paths[i:i + 200] for i in range(0, len(paths), 200)]
    parts = Parallel(n_jobs=n_jobs)(delayed(transformer.transform)(chunk) for chunk in chunks)
    return np.concatenate(parts)


def feature_sets(samples: pd.DataFrame, n_jobs: int) -> dict[str, np.ndarray]:
    from bcfeat.study.common import decoded_images

    paths = samples["path"].tolist()
    pixels = decoded_images(paths, 32)
    return {"colour_shape": colour_shape(paths, n_jobs), "raw_pixels": pixels.reshape(len(pixels), -1)}


def main() -> None:
    from bcfeat.atomic_io import save_table
    from bcfeat.data.pack import pack_effect
    from bcfeat.data.root import resolve_data_root
    from bcfeat.study import common as study

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pack", required=True, help="a pack written by `bcfeat pack`")
    parser.add_argument("--root", default=None, help="the original data root (default: resolved as usual)")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (splits and forest)")
    parser.add_argument("--repetitions", type=int, default=2, help="stratified splits per seed")
    parser.add_argument("--max-per-site", type=int, default=1500,
                        help="seeded class-stratified cells per site (0: all; the small sites have fewer anyway)")
    parser.add_argument("--n-jobs", type=int, default=2, help="processes for the colour/shape features")
    parser.add_argument("--output", default=None, help="CSV of the per-seed scores")
    args = parser.parse_args()

    seeds = [int(s) for s in args.seeds.split(",")]
    roots = {"original": resolve_data_root(args.root), "pack": resolve_data_root(args.pack)}
    started = time.perf_counter()
    samples, features = {}, {}
    for name, root in roots.items():
        t0 = time.perf_counter()
        samples[name] = study.site_samples(root, "coarse5", max_per_site=args.max_per_site, seed=0)
        features[name] = feature_sets(samples[name], args.n_jobs)
        print(f"{name}: {len(samples[name])} cells from {root}, features in {time.perf_counter() - t0:.0f} s", flush=True)
    a, b = samples["original"], samples["pack"]
    stems = lambda s: (s["dataset"] + "/" + s["relpath"].str.rsplit(".", n=1).str[0]).tolist()  # noqa: E731
    if stems(a) != stems(b) or a["label"].tolist() != b["label"].tolist():
        raise SystemExit("the pack's cells differ from the original's (other images or labels): not comparable")

    rows = []
    for seed in seeds:
        plan = study.study_splits(a, args.repetitions, seed)
        for name in roots:
            scores, _ = study.run_feature_sets(features[name], a, plan, "coarse5", seed,
                                               classifier_per_set={"raw_pixels": study.pca_forest_factory(50)},
                                               train_domains=[study.SOURCE_SITE])
            per_site = scores.groupby(["feature_set", "test_domain"], sort=False)["balanced_accuracy"].mean()
            rows += [{"data": name, "seed": seed, "feature_set": fs, "test_site": site, "balanced_accuracy": v}
                     for (fs, site), v in per_site.items()]
    table = pd.DataFrame(rows)
    if args.output:  # the book's reproducibility chapter reads book/results/benchmarks/bench_pack.csv
        save_table(table, args.output)
    out = pack_effect(table)
    pd.set_option("display.width", 200)
    print(f"\nbalanced accuracy, trained on {study.SOURCE_SITE}; {len(seeds)} seeds x {args.repetitions} "
          f"splits; mean over seeds (spread: std over seeds)")
    print(out.round(4).to_string())
    print(f"\n{int(out['within_seed_spread'].sum())}/{len(out)} cells: |pack - original| <= seed spread; "
          f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
