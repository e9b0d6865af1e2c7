# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Provenance of this run
#
# Written by the runner while the notebooks ran: the commit, each notebook's parameters and
# wall time, the package versions and the hardware. The notebook that shows it is the last
# stage, so its own time is not in the table.

# %% tags=["parameters"]
profile: str = "cpu"  # run profile whose record is shown
smoke: bool = False  # tiny run for tests and CI (nothing to shrink here)
seed: int = 0  # unused; every notebook takes it
results_dir: str = "book/results"  # folder holding provenance.json

# %% tags=["remove-cell"]
import json
from pathlib import Path

import pandas as pd
from myst_nb import glue

from bcfeat.data.pack import pack_effect
from bcfeat.runner.pipeline import load_provenance, provenance_frames, stage_parameter
from bcfeat.runner.provenance import classify_benchmark_figures, instruction_set_cap_figures
from bcfeat.runner.profiles import projected_gpu_minutes

record = load_provenance(results_dir)
run_table, stages, packages = provenance_frames(record)
glue("provenance_total_minutes", float(stages["seconds"].sum()) / 60 if len(stages) else 0.0, display=False)
glue("provenance_commit", str(record.get("commit"))[:10], display=False)
glue("provenance_ae_epochs", stage_parameter(record, "02_autoencoder", "epochs", 0), display=False)

# %% [markdown]
# ## The gpu profile's cost
#
# Measured on a GPU by `benchmarks/bench_gpu.py` (its JSON is kept in
# `<results_dir>/benchmarks/bench_gpu.json`), and the trainings of the `gpu` profile projected
# from those rates.

# %% tags=["hide-input"]
bench_file = Path(results_dir) / "benchmarks" / "bench_gpu.json"
bench = json.loads(bench_file.read_text()) if bench_file.exists() else None
if bench is not None:
    projected = projected_gpu_minutes(bench)
    glue("gpu_device", bench["device"], display=False)
    glue("gpu_detector_s_per_step", bench["detector_gpu_amp"]["s_per_step"], display=False)
    glue("gpu_ae_samples_fp32", bench["autoencoder_paper_fp32"]["samples_per_s"], display=False)
    glue("gpu_ae_samples_amp", bench["autoencoder_paper_amp"]["samples_per_s"], display=False)
    glue("gpu_extraction_cells", bench["extraction_gpu_preset_paper_encoder"]["cells_per_s"], display=False)
    glue("gpu_projected_detector_minutes", projected["detector"], display=False)
    glue("gpu_projected_ae_minutes", projected["autoencoder"], display=False)
    display(pd.Series(projected, name="projected minutes").to_frame())

# %% [markdown]
# ## What the data pack changes
#
# `benchmarks/bench_pack.py` scores the detector-free baselines on the original images and on the
# pack (`bcfeat pack`), 3 seeds each; its per-seed table is kept in
# `<results_dir>/benchmarks/bench_pack.csv`.

# %% tags=["hide-input"]
pack_file = Path(results_dir) / "benchmarks" / "bench_pack.csv"
if pack_file.exists():
    effect = pack_effect(pd.read_csv(pack_file))
    glue("pack_effect", effect.round(4), display=False)
    glue("pack_within_spread", int(effect["within_seed_spread"].sum()), display=False)
    glue("pack_cells", len(effect), display=False)
    glue("pack_max_abs_diff", float(effect["diff_mean"].abs().max()), display=False)
    display(effect.round(4))

# %% [markdown]
# ## A lab's folder through `bcfeat classify`
#
# `benchmarks/bench_classify_folder.py` runs the command on folders of real images (a quarter from
# each of the four shared sites at every folder size) with a model file of the study's setting, beside an earlier revision,
# timed without and then once more with a sampler of the memory of the command's process tree; its
# JSON is kept in `<results_dir>/benchmarks/bench_classify_folder.json`.

# %% tags=["hide-input"]
classify_file = Path(results_dir) / "benchmarks" / "bench_classify_folder.json"
if classify_file.exists():
    classify = classify_benchmark_figures(json.loads(classify_file.read_text()))
    for name in ("cells_per_s", "baseline_cells_per_s", "baseline", "speedup", "agreement_percent",
                 "against_milestone", "against_goal"):
        glue(f"classify_{name}", classify[name], display=False)
    for name in ("ms_per_image", "small_call_seconds", "largest_call_images", "largest_call_cells_per_s",
                 "largest_against_goal", "current_peak_mb", "baseline_peak_mb", "sampling_cost_percent"):
        if name in classify:
            glue(f"classify_{name}", classify[name], display=False)
    for site, ms in classify.get("site_ms_per_image", {}).items():
        glue(f"classify_ms_per_image_{site}", ms, display=False)
    glue("classify_memory", " and ".join(f"{mb:,.0f} MB for {n:,}" for n, mb in classify["peak_pss_mb"].items()),
         display=False)
    display(pd.Series(classify).to_frame("bcfeat classify"))

# %% [markdown]
# ## What the instruction-set cap costs
#
# `benchmarks/bench_instruction_set_cap.py` runs the `cpu` oracle's training steps and the cross-lab
# model's per-image measurement in fresh processes, natively and under the runner's cap in turn; its
# JSON is kept in `<results_dir>/benchmarks/bench_instruction_set_cap.json`.

# %% tags=["hide-input"]
cap_file = Path(results_dir) / "benchmarks" / "bench_instruction_set_cap.json"
if cap_file.exists():
    cap = instruction_set_cap_figures(json.loads(cap_file.read_text()))
    for name, value in cap.items():
        glue(f"isa_cap_{name}", value, display=False)
    display(pd.Series(cap).to_frame("capped against native"))

# %% [markdown]
# ## Run

# %% tags=["hide-input"]
run_table

# %% [markdown]
# ## Notebooks, parameters and wall time

# %% tags=["hide-input"]
glue("provenance_stages", stages, display=False)
stages

# %% [markdown]
# ## Package versions

# %% tags=["hide-input"]
packages
