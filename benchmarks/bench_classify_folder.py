"""`bcfeat classify` end to end (file to probabilities): speed, and peak memory against folder size.

A lab's call is the command itself, so this benchmark runs the command in a subprocess on folders
of links to real images (a quarter from each of the four shared sites at every folder size, each
site's images repeated as needed: :func:`even_mix`) and samples
the memory of its whole process tree (the command and its worker processes) every 0.2 s:

* **speed**, side by side in one run: the same folder classified by this checkout and by an
  earlier revision of bcfeat (``--baseline-rev``, run from a ``git archive`` of it with the same
  virtual environment), cells/s from the start of the command to the written table;
* **memory**: the peak over time of the process tree's summed proportional set size (PSS: pages shared between the processes counted once), for each
  folder size in ``--sizes``, and for each command of the speed comparison in one more run of it.
  Reading the PSS (``/proc/<pid>/smaps_rollup`` of every process, five times a second) takes CPU
  from the two cores the command keeps busy, so the timed runs are not sampled; the figures also
  give the sampled run's time, which says what the sampling costs. Streaming holds the feature table, never the folder, so the peaks
  should differ by about the table (one row of float64 features per cell, under 1 kB).

Usage::

    python benchmarks/bench_classify_folder.py --model artifacts/cpu/crosslab_model.pt \\
        --sizes 1000 20000 --baseline-rev 2382cae --speed-size 1000 --repeats 3

A model file records how it measures cells (e.g. its stain segmentation's resampling), so a
baseline may need its own: ``--baseline-model old_model.pt`` (with ``--baseline-rev``: that revision
with that file; without: this checkout with both files, which isolates what the file's settings buy).

It also times each step of measuring a cell on one core (``--profile-images``) and a 20-image
call, which is start-up and little else. Figures are printed and written to
``artifacts/benchmarks/bench_classify_folder.json``.
Targets (issue "The lab's workflow"): >= 100 cells/s end to end (milestone 60); peaks of 20,000 and
1,000 images < 200 MB apart.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(ROOT))

from bcfeat import paths  # noqa: E402
from benchmarks.results_file import write_results  # noqa: E402

DATASETS = ("pbc_acevedo20", "jtsc_zheng18", "cellavision_zheng18", "bccd_crops")


def _per_site() -> list[list[Path]]:
    """Every image of each of the four shared sites, in a fixed shuffled order per site."""
    per_site = []
    for ds in DATASETS:
        files = sorted(p for p in (paths.SHARED_DATA / ds).rglob("*") if p.is_file() and not p.name.startswith("."))
        rng = np.random.default_rng(0)
        per_site.append([files[i] for i in rng.permutation(len(files))])
    return per_site


def site_images() -> list[Path]:
    """Every image of the four shared sites, sites interleaved (so any prefix mixes the labs)."""
    per_site = _per_site()
    out, k = [], 0
    while any(per_site):
        site = per_site[k % len(per_site)]
        if site:
            out.append(site.pop())
        k += 1
    return out


def even_mix(n: int, sites: tuple[int, ...] | None = None) -> list[Path]:
    """``n`` images, the sites taking turns (a quarter each), each site's images repeated once it
    runs out: every folder size holds the same mix of the labs (their images differ in size and
    cost), so a speed measured on 1,000 images and one on 20,000 compare. ``sites``: only these
    (indices into :data:`DATASETS`), e.g. one lab's images alone."""
    per_site = _per_site()
    chosen = [per_site[i] for i in (range(len(per_site)) if sites is None else sites)]
    return [chosen[i % len(chosen)][(i // len(chosen)) % len(chosen[i % len(chosen)])] for i in range(n)]


def link_folder(folder: Path, n: int, images: list[Path]) -> Path:
    """``folder`` with ``n`` links to ``images`` (repeated when ``n`` exceeds them): with
    :func:`even_mix` the folder holds each lab's images in equal shares at every size."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        source = images[i % len(images)]
        (folder / f"{i:06d}{source.suffix.lower()}").symlink_to(source)
    return folder


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants (Linux /proc)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as handle:
                    todo += [int(c) for c in handle.read().split()]
        except OSError:
            continue
    return out


def _kb(pid: int, file: str, field: str) -> int:
    try:
        with open(f"/proc/{pid}/{file}") as handle:
            for line in handle:
                if line.startswith(field):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def run_classify(command: list[str], env: dict | None = None, sample_memory: bool = True) -> dict:
    """Run ``command``; its wall time and, with ``sample_memory``, the peak of its process tree's
    summed PSS (MB; sampled every 0.2 s, which costs CPU: time a command without it).

    It runs in the system's temporary folder: ``python -m`` puts the working folder first on the
    path, so started from a checkout it would import that checkout's bcfeat whatever PYTHONPATH
    names (a baseline revision would run this one's code)."""
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                            cwd=tempfile.gettempdir())
    peak_pss = 0
    if sample_memory:
        while proc.poll() is None:
            peak_pss = max(peak_pss, sum(_kb(p, "smaps_rollup", "Pss:") for p in _tree(proc.pid)))
            time.sleep(0.2)
        output = proc.stdout.read()
    else:
        output = proc.communicate()[0]
    seconds = time.perf_counter() - start
    output = output.decode(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {proc.returncode}:\n{output[-2000:]}")
    return {"seconds": seconds, **({"tree_peak_pss_mb": peak_pss / 1024} if sample_memory else {})}


def baseline_checkout(rev: str, into: Path) -> Path:
    """The package of revision ``rev`` of this repository, unpacked below ``into``."""
    archive = into / "baseline.tar"
    subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", "-o", str(archive), rev, "bcfeat"], check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into / "baseline", filter="data")
    return into / "baseline"


def stage_profile(model_path: str, images: list[Path], n: int) -> dict[str, float]:
    """Milliseconds per image, on one core in this process, of each step of measuring a cell with
    this checkout (stain segmentation models only; empty for a detector's)."""
    from bcfeat.crosslab.cell_crop import canonical_crop
    from bcfeat.crosslab.cell_features import cell_features
    from bcfeat.crosslab.model import load_model, measured_parts
    from bcfeat.data.images import read_image
    from bcfeat.detection.pseudo_masks import centred_ellipse, segment_white_cell

    model = load_model(model_path)
    cfg = model.config
    ruler, fine = measured_parts(model.classifier_columns)  # what bcfeat classify measures for this classifier
    if cfg.mask_source != "stain" or n < 1:
        return {}
    spent = dict.fromkeys(("read", "segment", "crop", "features"), 0.0)
    for path in images[:n]:
        t0 = time.perf_counter()
        image = read_image(path)
        t1 = time.perf_counter()
        mask = segment_white_cell(image, cfg.segmentation).mask
        mask = mask if mask.any() else centred_ellipse(*image.shape[:2])
        t2 = time.perf_counter()
        crop = canonical_crop(image, mask, cfg.crop, ruler=ruler)
        t3 = time.perf_counter()
        cell_features(crop, cfg.texture_od, fine, cfg.nucleus_od)
        t4 = time.perf_counter()
        for step, seconds in zip(spent, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            spent[step] += seconds
    out = {step: 1000 * seconds / min(n, len(images)) for step, seconds in spent.items()}
    out["total"] = sum(out.values())
    return out


def paired_speedup(baseline_seconds: list[float], current_seconds: list[float]) -> float:
    """The median over the alternating pairs of runs of baseline time / current time.

    The machine's speed drifts during a run (a tenth or more over a few minutes); each pair ran
    back to back, so its ratio cancels the drift that a ratio of the two medians keeps.

    >>> paired_speedup([10.0, 12.0, 14.0], [9.0, 12.0, 13.0])
    1.0769230769230769
    """
    return float(np.median(np.divide(baseline_seconds, current_seconds)))


def classify_command(model: str, folder: Path, out: Path) -> list[str]:
    model, folder, out = (str(Path(p).resolve()) for p in (model, folder, out))
    return [sys.executable, "-m", "bcfeat.runner.cli", "classify", model, folder, "--output", out]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(paths.ROOT / "artifacts" / "cpu" / "crosslab_model.pt"))
    parser.add_argument("--sizes", type=int, nargs="*", default=[1000, 20000], help="folder sizes for memory (none: speed only)")
    parser.add_argument("--speed-size", type=int, default=1000, help="folder size of the side-by-side speed run")
    parser.add_argument("--baseline-rev", default=None, help="earlier revision to compare speed with (git rev)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="speed runs of each command, alternating (cells/s from the median)")
    parser.add_argument("--profile-images", type=int, default=200,
                        help="images timed step by step on one core (0: none), and a 20-image call timed for start-up")
    parser.add_argument("--baseline-model", default=None,
                        help="model file of the baseline run (default: --model), e.g. one written by --baseline-rev's "
                             "study; with it and no --baseline-rev, this checkout classifies with both files")
    args = parser.parse_args(argv)
    results: dict = {"model": args.model, "cpu_count": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="bcfeat-bench-") as tmp:
        tmp = Path(tmp)
        speed_folder = link_folder(tmp / f"speed{args.speed_size}", args.speed_size, even_mix(args.speed_size))
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        runs = [("current", env, args.model)]
        if args.baseline_rev or args.baseline_model:
            name = f"baseline_{args.baseline_rev}" if args.baseline_rev else "baseline_model"
            base_env = ({**os.environ, "PYTHONPATH": str(baseline_checkout(args.baseline_rev, tmp))}
                        if args.baseline_rev else env)
            runs.insert(0, (name, base_env, args.baseline_model or args.model))
            results["baseline_model"] = args.baseline_model or args.model
        seconds: dict[str, list[float]] = {name: [] for name, _, _ in runs}
        for repeat in range(args.repeats):  # the runs alternate, so a slower spell of the machine hits both
            for name, run_env, model in runs:
                r = run_classify(classify_command(model, speed_folder, tmp / f"{name}.csv"), run_env,
                                 sample_memory=False)
                seconds[name].append(r["seconds"])
                print(f"{name:32s} {args.speed_size} images in {r['seconds']:.1f} s = "
                      f"{args.speed_size / r['seconds']:.1f} cells/s", flush=True)
        for name, times in seconds.items():
            results[f"{name}_seconds"] = times
            results[f"{name}_cells_per_s"] = args.speed_size / float(np.median(times))
        for name, run_env, model in runs:  # memory: one more run of each, sampled (not timed for the speed)
            r = run_classify(classify_command(model, speed_folder, tmp / f"{name}_sampled.csv"), run_env)
            results[f"{name}_tree_peak_pss_mb_{args.speed_size}"] = r["tree_peak_pss_mb"]
            results[f"{name}_sampled_seconds"] = r["seconds"]
            print(f"{name:32s} process tree peak PSS {r['tree_peak_pss_mb']:.0f} MB (that run, sampled: "
                  f"{r['seconds']:.1f} s)", flush=True)
        if len(runs) == 2:
            import pandas as pd

            a, b = (pd.read_csv(tmp / f"{name}.csv") for name, _, _ in runs)
            results["same_predictions"] = bool((a["predicted"] == b["predicted"]).all())
            results["prediction_agreement"] = float((a["predicted"] == b["predicted"]).mean())
            results["max_probability_difference"] = float((a["probability"] - b["probability"]).abs().max())
            results["speedup_of_medians"] = results["current_cells_per_s"] / results[f"{runs[0][0]}_cells_per_s"]
            results["speedup"] = paired_speedup(seconds[runs[0][0]], seconds["current"])
            print(f"speed-up {results['speedup']:.2f}x (median of {args.repeats} back-to-back pairs; "
                  f"{results['speedup_of_medians']:.2f}x from the medians); same class for {100 * results['prediction_agreement']:.1f} % "
                  f"of the cells (largest probability difference {results['max_probability_difference']:.2g})")
        if args.profile_images > 0:
            results["stage_ms_per_image"] = stage_profile(args.model, even_mix(args.profile_images), args.profile_images)
            print("ms per image on one core: " + ", ".join(f"{k} {v:.1f}" for k, v in results["stage_ms_per_image"].items()))
            for i, site in enumerate(DATASETS):  # the labs' images differ in size, and so in cost
                per_site = stage_profile(args.model, even_mix(args.profile_images // 2, (i,)), args.profile_images // 2)
                results[f"stage_ms_per_image_{site}"] = per_site
                print(f"  {site:22s} " + ", ".join(f"{k} {v:.1f}" for k, v in per_site.items()))
            small = link_folder(tmp / "small20", 20, even_mix(20))
            calls = [run_classify(classify_command(args.model, small, tmp / "small20.csv"), env, sample_memory=False)["seconds"]
                     for _ in range(max(1, args.repeats))]
            results["small_call_seconds"] = float(np.median(calls))
            print(f"a 20-image call (start-up and little else): {results['small_call_seconds']:.1f} s")
        for n in args.sizes:
            folder = link_folder(tmp / f"mem{n}", n, even_mix(n))
            r = run_classify(classify_command(args.model, folder, tmp / f"mem{n}.csv"), env)
            results[f"memory_{n}"] = r
            print(f"{n:6d} images: {r['seconds']:.0f} s ({n / r['seconds']:.1f} cells/s, sampled); process tree peak PSS "
                  f"{r['tree_peak_pss_mb']:.0f} MB", flush=True)
            if n == max(args.sizes) and n > args.speed_size:  # the largest call's speed, timed without the sampler
                timed = run_classify(classify_command(args.model, folder, tmp / f"mem{n}.csv"), env, sample_memory=False)
                results[f"timed_{n}"] = timed
                print(f"{n:6d} images, not sampled: {timed['seconds']:.0f} s ({n / timed['seconds']:.1f} cells/s)", flush=True)
        if len(args.sizes) >= 2:
            lo, hi = min(args.sizes), max(args.sizes)
            gap = results[f"memory_{hi}"]["tree_peak_pss_mb"] - results[f"memory_{lo}"]["tree_peak_pss_mb"]
            results["pss_gap_mb"] = gap
            from bcfeat.crosslab.cell_features import feature_names

            table_mb = (hi - lo) * len(feature_names()) * 8 / 1e6
            print(f"peak PSS {hi} - {lo} images: {gap:.0f} MB (target < 200; the extra feature rows alone are "
                  f"{table_mb:.0f} MB)")
    write_results("bench_classify_folder", results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
