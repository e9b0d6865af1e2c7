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
from myst_nb import glue

from bcfeat.pipeline import load_provenance, provenance_frames

record = load_provenance(results_dir)
run_table, stages, packages = provenance_frames(record)
glue("provenance_total_minutes", float(stages["seconds"].sum()) / 60 if len(stages) else 0.0, display=False)
glue("provenance_commit", str(record.get("commit"))[:10], display=False)

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
