"""What the runner's instruction-set cap costs in speed: the same work natively and capped, side by side.

``python -m bcfeat.runner`` caps the numerical libraries at the x86-64-v3 level (AVX2;
:mod:`bcfeat.instruction_set`) so that a CPU with AVX-512 computes the same bits as one without.
This benchmark runs two pieces of the study's work in fresh child processes, in turn (native,
capped, native, capped, ...), each timing only the work, not the start-up:

* ``training``: training steps of the ``cpu`` profile's oracle CNN (PyTorch convolutions, oneDNN
  and MKL) on fixed random batches;
* ``measure``: the cross-lab model's per-image work on real shared images in one process (the stain
  segmentation, the canonical crop and the cell features: NumPy, SciPy, scikit-image).

It prints each side's median seconds and the median of the pairwise ratios (capped / native; above
1: the cap is slower). On a CPU without AVX-512 the two sides run the same kernels (ratio about 1).

Usage::

    python benchmarks/bench_instruction_set_cap.py
    python benchmarks/bench_instruction_set_cap.py --pairs 9 --steps 8 --images 120

Figures go to ``artifacts/benchmarks/bench_instruction_set_cap.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(ROOT))

from benchmarks.results_file import write_results  # noqa: E402
from bcfeat.instruction_set import PORTABLE_PINS, cpu_flags, pin_instruction_set  # noqa: E402

# One child's work: prints {"seconds": ..., "capability": ...} as its last line.
_TRAINING = """
import json, sys, time, torch
from bcfeat.evaluation.oracle_model import build_oracle, oracle_config
torch.manual_seed(0); torch.set_num_threads({threads})
net = build_oracle(oracle_config("cpu"), 5); opt = torch.optim.AdamW(net.parameters(), 1e-3)
x = torch.rand(64, 3, 64, 64); y = torch.randint(0, 5, (64,))
def step():
    opt.zero_grad(); torch.nn.functional.cross_entropy(net(x), y).backward(); opt.step()
step()  # the first step builds the kernels
start = time.perf_counter()
for _ in range({steps}):
    step()
print(json.dumps({{"seconds": time.perf_counter() - start, "capability": torch.backends.cpu.get_cpu_capability()}}))
"""

_MEASURE = """
import json, time
from benchmarks.bench_crosslab_extraction import sample_paths
from bcfeat.crosslab.model import CrossLabConfig, _measure
from bcfeat.data.images import read_image
cfg = CrossLabConfig()
images = [read_image(f) for f in sample_paths({images})]
def run():
    for image in images:
        _measure(image, None, cfg.crop, True, cfg.segmentation, cfg.texture_od, False, cfg.nucleus_od)
run()  # warm caches and imports
start = time.perf_counter()
run()
print(json.dumps({{"seconds": time.perf_counter() - start, "images": len(images)}}))
"""


def native_environment() -> dict[str, str]:
    """This process's environment without any of the cap's variables (the libraries choose for the CPU)."""
    return {name: value for name, value in os.environ.items() if name not in PORTABLE_PINS}


def capped_environment() -> dict[str, str]:
    """The environment the runner gives its stages: the native one with the cap's pins set."""
    env = native_environment()
    pin_instruction_set(env, dict(PORTABLE_PINS))
    return env


def run_child(code: str, env: dict[str, str], pin_core: int | None) -> dict:
    """Run ``code`` in a fresh interpreter (on one core if ``pin_core`` is given and ``taskset`` exists) and return the
    JSON object its last line prints."""
    command = [sys.executable, "-c", code]
    if pin_core is not None and shutil.which("taskset"):  # one core where the system can pin (Linux)
        command = ["taskset", "-c", str(pin_core)] + command
    done = subprocess.run(command, env={**env, "PYTHONPATH": str(ROOT)}, cwd=ROOT, capture_output=True,
                          text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"a benchmark child failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def side_by_side(name: str, code: str, pairs: int, pin_core: int | None) -> dict:
    """``pairs`` native/capped runs of ``code`` in turn; medians and the median pairwise ratio."""
    native, capped, info = [], [], {}
    for i in range(pairs):
        a = run_child(code, native_environment(), pin_core)
        b = run_child(code, capped_environment(), pin_core)
        native.append(a["seconds"])
        capped.append(b["seconds"])
        info = {"native_capability": a.get("capability"), "capped_capability": b.get("capability")}
        print(f"{name:9s} pair {i + 1}: native {a['seconds']:.3f} s, capped {b['seconds']:.3f} s", flush=True)
    ratios = [c / n for n, c in zip(native, capped)]
    result = {f"{name}_native_seconds": native, f"{name}_capped_seconds": capped,
              f"{name}_native_median_s": statistics.median(native),
              f"{name}_capped_median_s": statistics.median(capped),
              f"{name}_capped_over_native": statistics.median(ratios),
              f"{name}_ratio_min": min(ratios), f"{name}_ratio_max": max(ratios)}
    result.update({f"{name}_{k}": v for k, v in info.items() if v is not None})
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=7, help="native/capped runs of each piece, in turn")
    parser.add_argument("--steps", type=int, default=8, help="oracle training steps timed per run")
    parser.add_argument("--threads", type=int, default=2, help="PyTorch threads of the training piece")
    parser.add_argument("--images", type=int, default=120, help="shared images measured per run (evenly from the four sites)")
    args = parser.parse_args(argv)
    if args.pairs < 1 or args.steps < 1 or args.images < 4:
        parser.error("--pairs and --steps must be at least 1, --images at least 4")
    flags = cpu_flags() or frozenset()
    results = {"cpu_count": os.cpu_count(), "avx512f": "avx512f" in flags,
               "pins": dict(PORTABLE_PINS), "pairs": args.pairs, "steps": args.steps, "images": args.images}
    print(f"CPU with AVX-512: {results['avx512f']}; {args.pairs} pairs, native first")
    results.update(side_by_side("training", _TRAINING.format(threads=args.threads, steps=args.steps), args.pairs, None))
    results.update(side_by_side("measure", _MEASURE.format(images=args.images), args.pairs, 0))
    for name, what in (("training", f"{args.steps} oracle training steps, {args.threads} threads"),
                       ("measure", f"{args.images} images measured on one core")):
        print(f"{what}: native {results[f'{name}_native_median_s']:.3f} s, capped "
              f"{results[f'{name}_capped_median_s']:.3f} s; capped / native {results[f'{name}_capped_over_native']:.3f} "
              f"(pairs {results[f'{name}_ratio_min']:.3f} to {results[f'{name}_ratio_max']:.3f})")
    write_results("bench_instruction_set_cap", results)
    return results


if __name__ == "__main__":
    main()
