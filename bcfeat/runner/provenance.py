"""The provenance record of a study run: commit, hardware, package versions, and per stage its
parameters, status and seconds; read back as tables by the provenance notebook."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from statistics import median
from typing import Any

from bcfeat import paths
from bcfeat.instruction_set import cpuinfo_field
from bcfeat.runner.stages import STAGES

PROVENANCE_PACKAGES = (
    "bcfeat", "torch", "torchvision", "numpy", "pandas", "scikit-learn", "scikit-image",
    "umap-learn", "papermill", "jupytext", "jupyter-book", "myst-nb",
)



def git_commit() -> dict[str, object]:
    """Commit hash and whether the working tree had uncommitted changes (None outside git)."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=paths.ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--", "bcfeat", "notebooks"],
                                    cwd=paths.ROOT, capture_output=True, text=True).stdout.strip())
        return {"commit": head, "dirty": dirty}
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}


def cpu_model(cpuinfo: str | os.PathLike = "/proc/cpuinfo") -> str | None:
    r"""The CPU's model name from Linux's ``/proc/cpuinfo`` (``platform.processor()`` is empty
    there); ``None`` where the file is absent or names none. The reproduction's float sums, and so
    its numbers, differ between CPU models: the record says which one made them.

    >>> import tempfile
    >>> with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
    ...     _ = f.write("processor\t: 0\nmodel name\t: AMD EPYC 7B13\n")
    >>> cpu_model(f.name), cpu_model("/no/such/file")
    ('AMD EPYC 7B13', None)
    """
    return cpuinfo_field("model name", cpuinfo)


def hardware() -> dict[str, object]:
    info: dict[str, object] = {
        "machine": platform.machine(), "system": platform.system(), "python": platform.python_version(),
        "cpu_count": os.cpu_count(), "processor": platform.processor() or cpu_model(),
    }
    try:
        import torch

        info["cuda"] = torch.cuda.is_available()
        info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
        info["torch_threads"] = torch.get_num_threads()
        info["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()  # the kernels ATen dispatches to
    except ImportError:  # provenance must never be what breaks a run
        info["cuda"] = None
    return info


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in PROVENANCE_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def load_provenance(results_dir: Path) -> dict:
    """The provenance record a run wrote into ``results_dir``."""
    path = Path(results_dir) / "provenance.json"
    if not path.exists():
        raise FileNotFoundError(f"no provenance record at {path}: run `python -m bcfeat.runner` first")
    return json.loads(path.read_text())


def stage_parameter(record: dict, stem: str, name: str, default: Any = None) -> Any:
    """The value a recorded run passed to one notebook's parameter (``default`` if it did not run)."""
    for stage in record.get("stages", []):
        if stage.get("stem") == stem:
            return stage.get("parameters", {}).get(name, default)
    return default


# The stage that shows the record: its own time is left out of the table, so that showing the record
# again (alone) gives the same table.
PROVENANCE_STAGE = "90_provenance"


def instruction_set_label(recorded: str | None) -> str:
    """A stage's ``instruction_set`` entry (:func:`bcfeat.runner.pipeline.run`) for the stages table:
    the AVX2 cap, the machine's own (``native``), or blank where the record predates the entry.

    >>> instruction_set_label("ATEN_CPU_CAPABILITY=avx2, ONEDNN_MAX_CPU_ISA=AVX2"), instruction_set_label("native")
    ('capped: ATEN_CPU_CAPABILITY=avx2, ONEDNN_MAX_CPU_ISA=AVX2', 'native')
    >>> instruction_set_label(None)
    ''
    """
    if not recorded:
        return ""
    return recorded if recorded == "native" else f"capped: {recorded}"


def provenance_frames(record: dict):
    """The provenance record as three tables: run, stages (the commit of the run that made each and
    the instruction set its kernels were capped at, with parameters, the showing stage left out),
    package versions."""
    import pandas as pd

    run_info = {"profile": record["profile"], "commit": record.get("commit"),
                "uncommitted changes": record.get("dirty"), "started (UTC)": record.get("started"),
                **{f"hardware: {k}": v for k, v in record.get("hardware", {}).items()}}
    run_table = pd.DataFrame({"value": [str(v) for v in run_info.values()]}, index=list(run_info))
    files = {name for stage in STAGES for name in stage.files} | {"results_dir", "artifacts_dir"}
    stages = pd.DataFrame([{"notebook": s["stem"], "commit": str(s.get("commit") or "")[:7],
                            "instruction set": instruction_set_label(s.get("instruction_set")),
                            "status": s["status"], "seconds": s["seconds"],
                            "parameters": ", ".join(f"{k}={v}" for k, v in s["parameters"].items()
                                                    if k not in files),
                            "overrides (-p)": ", ".join(f"{k}={v}" for k, v in s.get("overrides", {}).items())}
                           for s in record.get("stages", []) if s["stem"] != PROVENANCE_STAGE])
    packages = pd.DataFrame({"version": record.get("packages", {})})
    return run_table, stages, packages


# The lab workflow's speed targets, cells/s end to end on this 2-core machine (issue "The lab's workflow").
CLASSIFY_MILESTONE = 60
CLASSIFY_GOAL = 100


def classify_benchmark_figures(results: dict) -> dict[str, Any]:
    """The headline figures of ``benchmarks/bench_classify_folder.py``'s JSON: cells/s of this
    revision and of the baseline run (its name: the revision, or ``model``), the speed-up, the
    share of cells given the same class by both (percent), and the process tree's peak PSS (MB)
    per folder size; with the step profile, the milliseconds of one core per image
    (``ms_per_image``, and per step in ``stage_ms_per_image``), the same total per lab's images
    (``site_ms_per_image``: the labs' images differ in size and cost) and a 20-image call's seconds; and the
    speed of the largest memory run (``largest_call_cells_per_s``, where start-up counts least; its
    run without the memory sampler, ``timed_<n>``, where the benchmark made one); and
    where the 1,000-image speed stands against the lab workflow's milestone and goal
    (``against_milestone``, ``against_goal``: "above" or "below" :data:`CLASSIFY_MILESTONE` /
    :data:`CLASSIFY_GOAL` cells/s), and the largest call against the goal (``largest_against_goal``);
    where the benchmark gives them, the two commands' peak memory at the speed comparison's size
    (``current_peak_mb``, ``baseline_peak_mb``) and what sampling the memory adds to a call's time
    (``sampling_cost_percent``: the sampled run against the median timed one)."""
    baseline = next(k for k in results if k.startswith("baseline_") and k.endswith("_cells_per_s"))
    memory = {int(k.split("_", 1)[1]): v["tree_peak_pss_mb"] for k, v in results.items() if k.startswith("memory_")}
    speed = results["current_cells_per_s"]
    largest = {}
    if memory:
        n = max(memory)
        # timed without the memory sampler where the benchmark ran it so (its reads cost CPU)
        cells_per_s = n / results.get(f"timed_{n}", results[f"memory_{n}"])["seconds"]
        largest = {"largest_call_images": n, "largest_call_cells_per_s": cells_per_s,
                   "largest_against_goal": "above" if cells_per_s >= CLASSIFY_GOAL else "below"}
    site_ms = {k[len("stage_ms_per_image_"):]: v["total"] for k, v in results.items()
               if k.startswith("stage_ms_per_image_") and v}
    extra: dict[str, Any] = {}
    base_name = baseline[:-len("_cells_per_s")]
    size = next((k.rsplit("_", 1)[1] for k in results if k.startswith("current_tree_peak_pss_mb_")), None)
    if size is not None and f"{base_name}_tree_peak_pss_mb_{size}" in results:  # the speed-size call of each command
        extra["current_peak_mb"] = results[f"current_tree_peak_pss_mb_{size}"]
        extra["baseline_peak_mb"] = results[f"{base_name}_tree_peak_pss_mb_{size}"]
    if "current_sampled_seconds" in results and results.get("current_seconds"):
        extra["sampling_cost_percent"] = 100 * (results["current_sampled_seconds"] / median(results["current_seconds"]) - 1)
    return {"cells_per_s": speed, "baseline_cells_per_s": results[baseline],
            "against_milestone": "above" if speed >= CLASSIFY_MILESTONE else "below",
            "against_goal": "above" if speed >= CLASSIFY_GOAL else "below",
            "baseline": baseline[len("baseline_"):-len("_cells_per_s")], "speedup": results["speedup"],
            "agreement_percent": 100 * results["prediction_agreement"],
            "peak_pss_mb": dict(sorted(memory.items())),
            **({"ms_per_image": results["stage_ms_per_image"]["total"],
                "stage_ms_per_image": results["stage_ms_per_image"]} if results.get("stage_ms_per_image") else {}),
            **({"site_ms_per_image": site_ms} if site_ms else {}),
            **({"small_call_seconds": results["small_call_seconds"]} if "small_call_seconds" in results else {}),
            **largest, **extra}


def instruction_set_cap_figures(results: dict) -> dict[str, Any]:
    """The headline figures of ``benchmarks/bench_instruction_set_cap.py``'s JSON: whether the CPU
    had AVX-512 (``cpu``: "with AVX-512" or "with AVX2 alone", where the cap changes nothing), and
    for each piece of work (``training``: the ``cpu`` oracle's training steps; ``measure``: the
    cross-lab model's per-image measurement on one core) what the cap adds to its time in percent
    (``<piece>_percent``: the median of the capped/native pairs, minus one; negative: faster capped)
    and the lowest and highest pair (``<piece>_percent_min``, ``<piece>_percent_max``), and the
    number of pairs.

    >>> f = instruction_set_cap_figures({"avx512f": True, "pairs": 7, "training_capped_over_native": 1.156,
    ...     "training_ratio_min": 1.05, "training_ratio_max": 1.35, "measure_capped_over_native": 0.994,
    ...     "measure_ratio_min": 0.71, "measure_ratio_max": 1.33})
    >>> f["cpu"], round(f["training_percent"], 1), round(f["measure_percent_min"]), f["pairs"]
    ('with AVX-512', 15.6, -29, 7)
    """
    out: dict[str, Any] = {"cpu": "with AVX-512" if results["avx512f"] else "with AVX2 alone",
                           "pairs": int(results["pairs"])}
    for piece in ("training", "measure"):
        out[f"{piece}_percent"] = 100 * (results[f"{piece}_capped_over_native"] - 1)
        out[f"{piece}_percent_min"] = 100 * (results[f"{piece}_ratio_min"] - 1)
        out[f"{piece}_percent_max"] = 100 * (results[f"{piece}_ratio_max"] - 1)
    return out
