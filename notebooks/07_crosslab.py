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
# # Beyond the paper: cells that carry across labs
#
# The reproduction's features do not carry across labs here (previous chapters). This notebook
# builds and measures the project's own method: a cell mask (the label-free stain segmentation,
# or the detector's) cuts every cell out at one canonical size; colours are read as optical
# density against the slide's own white point; ~160 features a haematologist would name (size
# against the red cells, nucleus lobes and outline, nucleus and cytoplasm colour, chromatin and
# granule texture) are measured; each lab's features are standardised with that lab's own
# unlabelled statistics; a linear model (or the paper's random forest) is trained on Acevedo-20
# labels only. Settings are chosen by two rules, on virtual labs and on the given unseen sites
# nested; the second is deployed, and an untouched lab checks it.

# %% tags=["parameters"]
profile: str = "cpu"  # run profile (smoke, cpu, gpu)
smoke: bool = False  # tiny run for tests and CI
seed: int = 0  # seed of the draws and models (the splits are the design's)
data_root: str = ""  # data root; empty: $BCFEAT_DATA_ROOT, then ../shared/datasets
results_dir: str = "book/results"  # tables go to <results_dir>/tables
artifacts_dir: str = "artifacts/cpu"  # measured cells are cached in <artifacts_dir>/cache
mask_sources: str = "detector,stain,stain+normtex,stain+nucdisk+normtex"  # measurements compared: a cell mask, detector (01's) or stain (label-free segmentation; "+nucdisk": its centre colour sample sized from the nucleus, not the crop), and "+normtex" for texture read on the nucleus-normalised optical density
n_workers: int = 2  # processes measuring the crops
candidate_C: str = "0.03,0.1"  # inverse L2 strengths of the linear model compared by the selection
candidate_groups: str = "all,no_texture,no_fine_texture,no_ruler"  # feature sets compared by the selection
ruler_check: bool = True  # leave the red-cell ruler out of every candidate when, on any development lab, it reads red cells outside 0.35-0.9 of the white cell (no label read); such a setting does not measure it
ablation_cells: int = 400  # cells per site re-measured for the crop lever (0: skip it)
red_cell_lever: bool = True  # read every cell's optical densities against the red cells of its own photograph (a colour reference within the photograph) and compare with the deployed reading (reported, not chosen)
order_stable_candidates: bool = True  # offer the real-lab rule each eligible setting's order-stable variant: the features whose class order reverses on a given site it may read are left out
order_stable_lever: bool = True  # the deployed setting's features with and without the order-stable lever, each given site read with the features kept on the others (the lever's table)
red_nucleus_lever: bool = True  # measure every cell again with the nucleus found in the red channel's optical density (the nuclear dye's) and compare with the deployed reading (reported, not chosen)
ssl_epochs: int = 4  # epochs of the self-supervised encoder (0: skip the lever)
ssl_image_size: int = 40  # crop side the encoder reads
cnn_epochs: int = 30  # epochs of the supervised GroupNorm CNN with lab-shift augmentation (0: skip it)
cnn_image_size: int = 64  # crop side that CNN reads
n_boot: int = 1000  # bootstrap resamples of the 95 % intervals
shots: str = "0,1,5,10,20"  # labelled target cells per class for the few-shot curve
n_draws: int = 5  # draws per few-shot point
few_shot_source_cells: int = 2000  # source training cells of the few-shot curve (stratified subsample; 0: all)
source_calibration_folds: int = 5  # folds of the training lab's own out-of-fold calls offered to the accuracy-from-disagreement line (0: virtual labs only)
n_virtual_labs: int = 8  # virtual labs sampled for the selection (development labs rendered from Acevedo-20)
n_hard_virtual_labs: int = 6  # hard virtual labs (every shift drawn stronger), only for the line that estimates a call's accuracy (0: none)
virtual_lab_cells: int = 400  # Acevedo-20 test cells re-rendered per virtual lab (0: all of the first split's)
shift_cells: int = 250  # cells re-rendered per single named shift (the diagnosis table; 0: skip it)
selection_mask_sources: str = "stain,stain+normtex,stain+nucdisk+normtex"  # measurements the choice may take: the detector was trained on Acevedo-20 images that include the development cells, so the virtual labs flatter it (it is scored and reported, not chosen)
selection_rule: str = "real_labs_nested"  # how the deployed setting is chosen: "virtual_labs" (the virtual labs only) or "real_labs_nested" (the given unseen sites, each site's reported number from the setting chosen on the other sites; among settings within one standard error there, the virtual labs choose)
candidate_statistics: str = "plain,cbr,cbr_mix"  # label-free per-call statistics compared by the selection (the class-weighted reading is in the ablation)
mix_calls: int = 60  # resampled calls per (class mix, call size): a call of 100 holds a rare class as one or two cells, so the mean over 5 calls moved by several points between draws
flag_calls: int = 20  # calls of 100 cells per lab, drawn with a typical differential, for the differential check
target_catch: float = 0.5  # share of the virtual labs' errors the uncertain flag should catch ...
max_review: float = 0.3  # ... flagging at most this share of cells
untouched_folder: str = "../bcfeat_labs/chula_wbc"  # input (optional): a real lab kept out of every choice, <folder>/<class>/<image>; absent: the section says so
oracle_norm: str = "batch"  # 04's oracle whose BatchNorm statistics are re-estimated per site (AdaBN)
design_file: str = "book/results/tables/study_design.json"  # input: the study's design: sites, source site, cells per site, repetitions, headline (made by 00_data_overview)
detector_file: str = "artifacts/cpu/checkpoints/detector.pt"  # input: the detector (made by 01_detector)
features_dir: str = "artifacts/cpu/features"  # input: the feature sets (made by 03_features)
oracles_file: str = "artifacts/cpu/checkpoints/oracles.json"  # input: the oracles' checkpoints (made by 04_oracle)
splits_file: str = "book/results/tables/splits_coarse5.csv"  # input: the coarse5 splits (made by 00_data_overview)
benchmark_summary_file: str = "book/results/tables/benchmark_summary.csv"  # input: the benchmark's summary (made by 05_benchmark)
crosslab_model_file: str = "artifacts/cpu/crosslab_model.pt"  # output: detector + features + headline classifier, for bcfeat classify

# %% tags=["remove-cell"]
import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from myst_nb import glue

from bcfeat.study import common as study
from bcfeat.atomic_io import save_table
from bcfeat.study import crosslab as cs
from bcfeat.study import crosslab_figures as cf
from bcfeat.study import crosslab_validation as cv
from bcfeat.study import class_profiles as cp
from bcfeat.study import false_calls as fc
from bcfeat.study import deployed_model_check as dmc
from bcfeat.study import framing as fr
from bcfeat.study import order_stable_features as osf
from bcfeat.study import own_label_ceiling as olc
from bcfeat.study import colour_reference as crr
from bcfeat.study import nucleus_reading as nr
from bcfeat.study import real_lab_selection as rs
from bcfeat.study import texture_gate as tg
from bcfeat.crosslab import mixes as mx
from bcfeat.crosslab.cell_features import feature_groups, feature_names
from bcfeat.crosslab.view_agreement import AccuracyFromDisagreement
from bcfeat.crosslab.model import load_model
from bcfeat.crosslab.virtual_labs import named_shifts, sample_labs
from bcfeat.data import resolve_data_root
from bcfeat.validation import require_int

require_int("n_draws", n_draws, 1)
require_int("n_workers", n_workers, 1)
require_int("flag_calls", flag_calls, 1)
require_int("n_virtual_labs", n_virtual_labs, 1)
require_int("n_hard_virtual_labs", n_hard_virtual_labs, 0)
require_int("virtual_lab_cells", virtual_lab_cells, 0)
require_int("shift_cells", shift_cells, 0)
require_int("mix_calls", mix_calls, 1)
require_int("cnn_epochs", cnn_epochs, 0)
require_int("cnn_image_size", cnn_image_size, 16)
study_design = study.read_study_design(design_file)
design = study_design.sites
aecfe_features = study_design.headline  # 03's feature set shown as AE-CFE in the comparisons
root = resolve_data_root(data_root or None)
warnings.filterwarnings("ignore", message="classes with < 2 samples")
tables = Path(results_dir) / "tables"
tables.mkdir(parents=True, exist_ok=True)
artifacts = Path(artifacts_dir)
samples = study.design_samples(root, study_design)
plan = study.read_study_splits(splits_file, samples, study_design)
unseen = list(design.unseen)

# %% [markdown]
# ## Measuring every cell
#
# Each image's white cell is found twice: by the detector of chapter 1 and by the label-free stain
# segmentation it learned from. Each mask is cut out and rescaled so that the cell is always 56
# pixels across, and the cell features are measured on that canonical crop. Which mask serves
# better is left to the selection below.

# %% tags=["hide-input"]
measured = cs.measure_all(samples, artifacts, study.parse_list(mask_sources), n_workers, detector_file=detector_file)
costs = cs.measured_table(measured)
save_table(costs, tables / "crosslab_measurement.csv")
any_x = next(iter(measured.values())).features
glue("crosslab_n_cells", len(any_x), display=False)
glue("crosslab_n_features", any_x.shape[1], display=False)
glue("crosslab_measure_minutes", float(costs["cpu_minutes"].sum()), display=False)
display(costs)
cs.feature_group_table(any_x)

# %% [markdown]
# The red-cell ruler, read without labels on each site with each measurement: the white cell's and
# the red cells' median diameters in the image's pixels, their ratio, and the share of images that
# gave no ruler. A working ruler reads about 0.35-0.9 (red cells are about 7.5 µm, white cells
# about 8-20 µm). Where it reads outside that range on any development lab (`ruler_check`, no
# label read), the ruler is left out of every candidate below, and the deployed model does not
# measure it.

# %% tags=["hide-input"]
ruler = pd.concat([cs.ruler_table(m.features, samples).assign(measurement=name) for name, m in measured.items()],
                  ignore_index=True)
save_table(ruler, tables / "crosslab_ruler.csv")
ruler_drop = cs.ruler_drop(ruler) if ruler_check else ()
glue("crosslab_ruler_failed_sites", ", ".join(sorted(set(cs.ruler_check(ruler)["site"]))) or "none", display=False)
glue("crosslab_ruler_left_out", "left out of every candidate" if ruler_drop else "kept", display=False)
ruler.set_index(["measurement", "site"]).round(2)

# %% [markdown]
# The stain segmentation samples the cell's colours in a centre disk: sized from the crop (a cell
# that fills a small part of its crop lets red cells and background into that sample, and the
# mask leaks into them), or from the nucleus (`+nucdisk`). Both against the expert masks of the
# two sites that have them:

# %% tags=["hide-input"]
stain_vs_expert = cs.stain_masks_against_experts(study.parse_list(mask_sources), root)
save_table(stain_vs_expert, tables / "crosslab_stain_masks_vs_expert.csv")
for row in stain_vs_expert.itertuples():
    glue(f"crosslab_expert_iou_{row.segmentation.replace('+', '_')}_{row.dataset}", row.mean_iou, display=False)
display(stain_vs_expert.round(3))
if {"stain+normtex", "stain+nucdisk+normtex"} <= set(measured):
    # how many masks the nucleus-sized sample changes, per site (from the cells' diameters)
    area_change = cs.mask_area_change(measured, samples, "stain+normtex", "stain+nucdisk+normtex")
    save_table(area_change, tables / "crosslab_nucdisk_area_change.csv")
    for row in area_change.itertuples():
        glue(f"crosslab_nucdisk_changed_{row.site}", row.changed_share, display=False)
    display(area_change.round(3))

# %% [markdown]
# ## Virtual labs: development data that no reported lab is part of
#
# Acevedo-20's held-out test cells (first split) are re-rendered from the raw image through
# sampled lab shifts (another staining protocol, the nuclear and cytoplasmic dyes apart; stain
# strength and hue in optical density, white balance, camera response, focus, resolution, JPEG,
# noise, framing) and measured again, segmentation and red-cell ruler
# included. The selection, the temperature, the `uncertain` rule and the novelty threshold are
# all fitted on these labs; the real unseen sites are only scored.

# %% tags=["hide-input"]
dev_rows = cv.development_rows(samples, plan, virtual_lab_cells, seed, source=design.source)
virtual = cv.build_virtual_labs(samples, dev_rows, sample_labs(n_virtual_labs, seed), artifacts,
                                study.parse_list(mask_sources), n_workers, seed, detector_file=detector_file)
save_table(virtual.table(), tables / "crosslab_virtual_labs.csv")
glue("crosslab_n_virtual_labs", len(virtual.labs), display=False)
glue("crosslab_virtual_cells", len(dev_rows), display=False)
glue("crosslab_virtual_minutes", virtual.minutes, display=False)
glue("crosslab_virtual_gallery", cs.virtual_lab_figure(samples, dev_rows, virtual.labs, seed), display=False)
virtual.table().round(2)

# %% [markdown]
# ## Choosing settings on the virtual labs only
#
# Every candidate (mask source, feature set, linear-model strength, label-free statistics) is
# trained on Acevedo-20's training split and scored on every virtual lab under five class mixes
# in calls of 100 cells; under this rule the best mean balanced accuracy among the eligible
# candidates wins (the deployed setting follows the real-lab rule, next section; these scores
# break its near-ties). No real unseen site is read. The detector's candidates are scored but not eligible: the detector
# was trained on Acevedo-20 images that include the development cells, so the virtual labs
# flatter it.

# %% tags=["hide-input"]
candidates = cv.candidate_settings(study.parse_list(candidate_C), study.parse_list(candidate_groups),
                                   study.parse_list(mask_sources), study.parse_list(candidate_statistics),
                                   drop=ruler_drop)
selection_table = cv.select_on_virtual_labs(measured, samples, plan, virtual, candidates, seed, source=design.source)
selection_table["eligible"] = selection_table["source"].isin(study.parse_list(selection_mask_sources))
save_table(selection_table, tables / "crosslab_selection.csv")
virtual_rule_setting = str(selection_table.loc[selection_table["eligible"], "setting"].iloc[0])
glue("crosslab_virtual_rule_setting", virtual_rule_setting, display=False)
glue("crosslab_virtual_rule_score", float(selection_table.loc[selection_table["eligible"], "selection_score"].iloc[0]),
     display=False)
excluded_best = str(selection_table["setting"].iloc[0])
glue("crosslab_excluded_best", excluded_best, display=False)
glue("crosslab_excluded_best_score", float(selection_table["selection_score"].iloc[0]), display=False)
selection_table.head(10).round(3)

# %% [markdown]
# ## The real-lab rule, nested
#
# The virtual labs do not reproduce what breaks on real labs (texture that misleads, the section
# on shifts below), so the deployed setting is chosen on the given unseen sites with each of
# them held out in turn: every eligible candidate is scored on each given site as on the virtual
# labs (calls of 100 cells under five mixes); for each site, the setting chosen on the *other*
# sites is the one whose number that site reports; the setting chosen on all of them is deployed,
# and only the untouched lab (and labs outside the project) can check it without bias. "Chosen"
# is the one-standard-error rule: of the settings within one standard error of the best mean,
# the one the virtual labs rate best. Each eligible setting is offered twice: as it is, and with
# the order-stable lever (`"<setting> stable"`: the features whose class order reverses on a given
# site are left out, `bcfeat.study.order_stable_features`). A given site is always scored with the
# features kept on the other given sites, and a fold that holds a site out reads only variants
# whose features were kept without it; the deployed variant keeps the features whose order holds
# on every given site. The virtual labs keep the training lab's class order, so they rate a variant
# as its setting, and a tie goes to the setting as it is.

# %% tags=["hide-input"]
if selection_rule not in rs.SELECTION_RULES:
    raise ValueError(f"selection_rule must be one of {rs.SELECTION_RULES}; got {selection_rule!r}")
eligible_settings = list(selection_table.loc[selection_table["eligible"], "setting"])
given_scores = rs.score_on_given_sites(measured, samples, plan, eligible_settings, seed, design=design)
if order_stable_candidates:  # each setting's lever variant, its features chosen without the sites a choice holds out
    given_scores = pd.concat([given_scores.assign(excluded="", variant=given_scores["setting"]),
                              rs.score_stable_candidates(measured, samples, plan, eligible_settings, seed,
                                                         design=design)], ignore_index=True)
save_table(given_scores, tables / "crosslab_given_site_scores.csv")
nested_candidate, nested_folds = rs.nested_choice(given_scores, selection_table)
nested_setting = rs.deployable_setting(nested_candidate, measured, samples, plan, design=design)
save_table(nested_folds, tables / "crosslab_nested_selection.csv")
for key, value in rs.nested_glue(nested_folds, nested_candidate).items():
    glue(key, value, display=False)
glue("crosslab_nested_table", rs.nested_display(nested_folds).round(3), display=False)
argmax_candidate, _ = rs.nested_choice(given_scores, selection_table, one_se=False)
argmax_setting = rs.deployable_setting(argmax_candidate, measured, samples, plan, design=design)
glue("crosslab_argmax_setting", argmax_candidate, display=False)
headline_setting = nested_setting if selection_rule == "real_labs_nested" else virtual_rule_setting
for key, value in osf.lever_choice_glue(nested_folds, nested_candidate, headline_setting, order_stable_candidates,
                                          left_out=ruler_drop).items():
    glue(key, value, display=False)
glue("crosslab_selection_rule", selection_rule, display=False)
headline_candidate = cv.base_setting(headline_setting, keep=ruler_drop)  # the candidate the deployed setting came from
glue("crosslab_headline_score", float(selection_table.set_index("setting").loc[headline_candidate, "selection_score"]),
     display=False)
headline_source = cv.parse_setting(headline_setting)["source"]
plain_headline = cv.plain_name(headline_setting)
glue("crosslab_headline_setting", headline_setting, display=False)
glue("crosslab_selection_minutes", float(selection_table["seconds"].sum() / 60), display=False)
for key, value in cv.measurement_glue(selection_table).items():
    glue(key, value, display=False)
glue("crosslab_selection_top", selection_table.head(10).drop(columns=["source"]).round(3), display=False)
X, crops = measured[headline_source].features, measured[headline_source].crops
headline_ruler = ruler[ruler["measurement"] == headline_source]
for row in headline_ruler.itertuples():
    for column in ("red_over_white", "red_cell_diameter_px", "cell_diameter_px", "no_ruler_share"):
        glue(f"crosslab_ruler_{column}_{row.site}", getattr(row, column), display=False)
glue("crosslab_ruler_table", cs.ruler_display(headline_ruler).round(2), display=False)
grid = cs.candidate_grid(study.parse_list(candidate_C), study.parse_list(candidate_groups), list(measured))
rs.nested_display(nested_folds).round(3)

# %% [markdown]
# ## Trusting texture only where it was checked
#
# Texture (co-occurrence, local binary patterns, granules) is read at the pixel scale, where labs
# differ in ways no virtual lab renders (another camera's sharpening, noise, optics). The chosen
# classifier therefore carries a second one without the texture group, and a **texture gate**: for
# each call, the cells are labelled by the classifier without texture, standardised with those
# labels, and the median whitened distance of their texture measures to their class's training
# mean is compared with the largest such distance over the virtual labs' calls of the same size
# (calls of 32, 100, 200 and 400 cells under the five mixes, and each lab's cells at once; a
# median over fewer cells scatters more, so small calls get a higher threshold). A call further
# out than any virtual lab's is classified without texture. No reported lab is read. Below, per
# virtual lab: the median and largest novelty of its calls, and, with that lab left out of the
# envelope as if it were new, the share of its calls the gate would close and what texture is
# worth there.

# %% tags=["hide-input"]
dev_clf = cv.fit_setting(measured, samples, plan, headline_setting, seed, gate_threshold=math.inf,
                         source=design.source)
gate_envelope, gate_calls = tg.fit_gate_threshold(dev_clf, virtual, headline_source, seed)
dev_clf.set_params(gate_threshold=gate_envelope)
gate_per_lab = gate_calls.groupby("lab", sort=False)["gate_novelty"].agg(["median", "max"]).reset_index()
if gate_envelope is not None:  # each virtual lab as a new lab: left out of the envelope
    gate_per_lab = gate_per_lab.merge(tg.gate_leave_one_lab_out(dev_clf, virtual, headline_source, gate_calls))
save_table(gate_per_lab, tables / "crosslab_gate_virtual_labs.csv")
for key, value in tg.gate_envelope_glue(gate_envelope, gate_per_lab).items():
    glue(key, value, display=False)
glue("crosslab_gate_table", gate_per_lab.set_index("lab").round(3), display=False)
display(pd.DataFrame(gate_envelope or [], columns=["call_size", "threshold"]).round(3))
gate_per_lab.round(3)

# %% [markdown]
# A call's accuracy, estimated from its two views: the chosen classifier and its texture-free
# fallback classify every virtual lab's cells (all at once, and calls of 100 under each mix), and a
# straight line from how often the two disagree (and, where it helps, the call's lab novelty) to
# the call's accuracy is fitted on those calls. The ordinary virtual labs are misread less than a
# real lab can be, so hard virtual labs (the same kinds of shift, each drawn stronger) add calls
# at lower accuracies; they serve this line only. `bcfeat classify` uses it to bring each call's mean
# probability to the accuracy it predicts.

# %% tags=["hide-input"]
virtual_calls = cv.disagreement_calls(dev_clf, virtual, headline_source, seed=seed)
if n_hard_virtual_labs:  # the same calls of labs misread harder: accuracies the ordinary virtual labs do not reach
    hard_virtual = cv.hard_virtual_labs(samples, dev_rows, n_hard_virtual_labs, artifacts, headline_source, n_workers,
                                        seed, detector_file=detector_file)
    save_table(hard_virtual.table(), tables / "crosslab_hard_virtual_labs.csv")
    glue("crosslab_n_hard_virtual_labs", len(hard_virtual.labs), display=False)
    virtual_calls = pd.concat([virtual_calls, cv.disagreement_calls(dev_clf, hard_virtual, headline_source, seed=seed)],
                              ignore_index=True)
virtual_calls.groupby("lab", sort=False)[["disagreement", "novelty", "accuracy"]].mean().round(3)

# %% [markdown]
# Every virtual lab shifts the training lab, so on its own the line never sees a call of a lab that
# is not shifted at all, which is how a lab that trains on its own cells uses the classifier. The
# training lab's own calls are added where they help: its training split is cut into folds, and a
# copy of the chosen classifier trained on the other folds reads each fold (in one call and in calls
# of 100 under each mix). No test cell of any site is read. The line may also read each call's lab
# novelty (how far its cells sit from every training class), which does not come from the two views.
# The four readings (with or without the training lab's calls, with or without novelty) are scored
# by how far the line misses each virtual lab's calls when fitted without that lab; the smallest
# error is used.

# %% tags=["hide-input"]
source_X, source_y = cv.source_training_cells(measured, samples, plan, headline_setting, source=design.source)
source_calls = cv.source_out_of_fold_calls(dev_clf, source_X, source_y, source_calibration_folds, seed=seed)
disagreement, line_readings = cv.calibration_calls(virtual_calls, source_calls, len(dev_clf.classes_))
save_table(disagreement, tables / "crosslab_disagreement_calls.csv")
save_table(line_readings, tables / "crosslab_disagreement_readings.csv")
glue("crosslab_line_readings", line_readings.set_index("reading").round(3), display=False)
glue("crosslab_line_reading_used", str(line_readings.loc[line_readings["used"], "reading"].iloc[0]), display=False)
glue("crosslab_source_calibration_folds", source_calibration_folds, display=False)
for key, novelty_term in (("", False), ("_novelty", True)):  # NaN where that reading was not possible
    errors = line_readings.loc[line_readings["novelty"] == novelty_term, "error"].tolist() + [math.nan, math.nan]
    glue(f"crosslab_line_error_virtual{key}", float(errors[0]), display=False)
    glue(f"crosslab_line_error_with_source{key}", float(errors[1]), display=False)
line_uses_novelty = bool(line_readings.loc[line_readings["used"], "novelty"].iloc[0])
glue("crosslab_line_uses_novelty", "reads" if line_uses_novelty else "does not read", display=False)
for key in ("accuracy", "disagreement"):
    glue(f"crosslab_source_calls_{key}", float(source_calls[key].mean()) if len(source_calls) else math.nan,
         display=False)
line_readings.round(3)

# %% [markdown]
# The temperature, the `uncertain` threshold, the lab-novelty threshold and the line from the
# views' disagreement to a call's accuracy, all fitted on the same virtual labs:

# %% tags=["hide-input"]
calibration = cv.fit_calibration(dev_clf, virtual, headline_source, target_catch, max_review, gate_envelope,
                                 calls=disagreement, with_novelty=line_uses_novelty)
glue("crosslab_temperature", calibration.temperature, display=False)
glue("crosslab_uncertain_below", calibration.uncertain_min_probability, display=False)
glue("crosslab_novelty_threshold", calibration.novelty_threshold, display=False)
for key, value in cv.disagreement_glue(calibration).items():
    glue(key, value, display=False)
calibration

# %% [markdown]
# ## The comparison, re-measured
#
# Random forest as in the paper and the linear probe, on our features; the reproduction's rows come
# from the benchmark of chapter 5 (same splits); the AdaBN oracle is chapter 4's BatchNorm oracle
# with its statistics re-estimated on each target site's images (no labels).

# %% tags=["hide-input"]
adabn = cs.adabn_oracle_scores(samples, plan, oracles_file, oracle_norm, seed, source=design.source)
save_table(adabn.scores, tables / "crosslab_adabn_oracle_scores.csv")
selection = cv.headline_scores(measured, samples, plan, headline_setting, seed, calibration.temperature,
                               calibration.gate_threshold, source=design.source)
save_table(selection, tables / "crosslab_headline_scores.csv")
matrix = cs.domain_matrices(X, samples, plan, grid, plain_headline, seed)
save_table(matrix, tables / "crosslab_domain_matrix.csv")
comparison = cs.comparison_table(matrix, selection, benchmark_summary_file, adabn.scores,
                                 plain_headline, aecfe_features, design=design)
save_table(comparison, tables / "crosslab_comparison.csv")
for key, value in cs.comparison_glue(comparison, selection, design).items():
    glue(key, value, display=False)
glue("crosslab_comparison", cs.comparison_display(comparison), display=False)
cs.comparison_display(comparison)

# %% [markdown]
# Every site as the training site in turn (the linear probe, headline setting):

# %% tags=["hide-input"]
glue("crosslab_matrix_figure", cs.matrix_figure(matrix, plain_headline), display=False)
cs.matrix_display(matrix, plain_headline)

# %% [markdown]
# ## All cells of each unseen site, with bootstrap intervals
#
# The classifier of the first split, scored on every cell of each unseen site (their labels were
# never used); 95 % intervals resample the cells within each class.

# %% tags=["hide-input"]
transfer, predictions = cv.all_cells(measured, samples, plan, headline_setting, calibration.temperature, n_boot, seed,
                                      calibration.gate_threshold, source=design.source)
save_table(transfer, tables / "crosslab_all_cells.csv")
for _, row in transfer.iterrows():
    glue(f"crosslab_all_{row['test_domain']}", float(row["balanced_accuracy"]), display=False)
    glue(f"crosslab_all_lo_{row['test_domain']}", float(row["ci_low"]), display=False)
    glue(f"crosslab_all_hi_{row['test_domain']}", float(row["ci_high"]), display=False)
per_class = cs.per_class_table(predictions, adabn.predictions, source=design.source)
save_table(per_class, tables / "crosslab_per_class_f1.csv")
glue("crosslab_per_class_figure", cs.per_class_figure(per_class), display=False)
transfer

# %% [markdown]
# ## Under a smear's class mix
#
# A lab classifies one smear at a time, and the per-call statistics follow that call's cells. Each
# lab is resampled to five class mixes (its own, balanced, a typical differential, neutrophil-heavy,
# lymphocyte-heavy) in calls of 20 and 100 cells and all cells at once; the classifier of the first
# split adapts to each call separately. The differential error is each class's predicted share of
# a call minus its true share, in percentage points. Each (mix, call size) is the mean over
# `mix_calls` calls, with its standard error (`balanced_accuracy_se`): a rare class is one or two
# cells of a call of 100, so one call's balanced accuracy moves by several points with the draw.

# %% tags=["hide-input"]
labs = cv.real_labs(measured, samples, plan, headline_source, design=design)
untouched = cv.untouched_lab(untouched_folder, artifacts, headline_source, n_workers, detector_file=detector_file)
head_clf = cv.fit_setting(measured, samples, plan, headline_setting, seed, calibration.temperature,
                          calibration.gate_threshold, source=design.source)
plain_clf = cv.fit_setting(measured, samples, plan, plain_headline + " plain", seed, source=design.source)
mix_calls_table, mix_summary = cv.mix_table(head_clf, labs, mix_calls, seed)
save_table(mix_summary, tables / "crosslab_mixes.csv")
_, plain_mix_summary = cv.mix_table(plain_clf, labs, mix_calls, seed)
save_table(plain_mix_summary, tables / "crosslab_mixes_plain.csv")
glue("crosslab_mix_figure", cs.mix_figure(mix_summary), display=False)
glue("crosslab_mix_calls", mix_calls, display=False)
glue("crosslab_mix_differential", mix_summary[mix_summary["call_size"] == 100].pivot_table(
    index="lab", columns="mix", values="diff_mae_pp").round(1), display=False)
glue("crosslab_mix_cost", mx.mix_cost(mix_summary, group=("lab", "mix", "call_size")).pivot_table(
    index=["lab", "call_size"], columns="mix", values="balanced_accuracy_vs_own").round(3), display=False)
mix_summary.pivot_table(index="lab", columns=["call_size", "mix"], values="balanced_accuracy").round(3)

# %% [markdown]
# ## Knowing when it is unsure
#
# Expected calibration error (ECE) and the reliability of the probabilities on every lab (all its
# cells in one call), before and after the temperature fitted on the virtual labs; the `uncertain`
# flag's review share and the share of errors it catches; each lab's novelty score (median distance
# of its cells to the nearest training class, after its own standardisation) against the threshold.

# %% tags=["hide-input"]
untouched_name = Path(untouched_folder).name or "untouched"
report_labs = {**labs, **({untouched_name: untouched} if untouched is not None else {})}
calib, reliability = cv.calibration_table(dev_clf, calibration, report_labs)  # untempered: T applied once there
save_table(calib, tables / "crosslab_calibration.csv")
from bcfeat.crosslab.calibration import reliability_figure  # noqa: E402
glue("crosslab_reliability_figure", reliability_figure(reliability), display=False)
glue("crosslab_calibration", calib.set_index("lab").round(3), display=False)
if "view_disagreement" in calib.columns:
    glue("crosslab_disagreement_figure", cf.disagreement_figure(
        disagreement, AccuracyFromDisagreement.from_dict(calibration.accuracy_from_disagreement), calib), display=False)
for key, value in {**tg.gate_glue(calib), **cv.review_glue(calib, disagreement)}.items():
    glue(key, value, display=False)
calib.set_index("lab").round(3)

# %% [markdown]
# ## The rule's readings side by side
#
# The real-lab rule can be read as the plain best mean over the given sites, or (the deployed
# reading) with the one-standard-error step that lets the virtual labs choose among settings the
# given sites cannot tell apart. Each reading's choice, and the virtual-lab rule's, on the two
# labs no rule reads: the in-domain site under a smear's mix, and the untouched lab.

# %% tags=["hide-input"]
rule_settings = dict(zip(rs.READING_KEYS, (virtual_rule_setting, argmax_setting, nested_setting)))
readings = rs.rule_readings(measured, samples, plan, rule_settings,
                            lambda src: cv.untouched_lab(untouched_folder, artifacts, src, n_workers,
                                                         detector_file=detector_file),
                            seed, mix_calls, design=design)
save_table(readings, tables / "crosslab_rule_readings.csv")
glue("crosslab_rule_readings", readings.set_index("reading").round(3), display=False)
for key, value in rs.rule_readings_glue(readings).items():
    glue(key, value, display=False)
readings.set_index("reading").round(3)

# %% [markdown]
# The deployed setting beside the same mask, features and strength with the grid's other
# label-free statistics: each given site in calls of 100 under the mixes and on all its cells,
# the virtual labs' score, and the untouched lab (read by no choice).

# %% tags=["hide-input"]
statistics_table = rs.statistics_comparison(
    given_scores, selection_table, nested_candidate,
    rs.untouched_scorer(measured, samples, plan,
                        lambda src: cv.untouched_lab(untouched_folder, artifacts, src, n_workers,
                                                     detector_file=detector_file),
                        seed, design=design))
save_table(statistics_table, tables / "crosslab_statistics.csv")
glue("crosslab_statistics_table", statistics_table.drop(columns=["setting"]).set_index("statistics").round(3),
     display=False)
for key, value in rs.statistics_glue(statistics_table).items():
    glue(key, value, display=False)
statistics_table.set_index("statistics").round(3)

# %% [markdown]
# ## The untouched lab
#
# A real lab kept out of every choice until this point: the Chulalongkorn University set
# (`singgihbekti/WBC_Dataset`, MIT licence; whole smear photographs from a Raspberry Pi camera,
# one box per white cell, cut into crops by `bcfeat crop-boxes`). Scored like the others; when the
# folder is absent on this machine the tables below say so.

# %% tags=["hide-input"]
if untouched is not None:
    _, untouched_head = cv.mix_table(head_clf, {untouched_name: untouched}, mix_calls, seed)
    _, untouched_plain = cv.mix_table(plain_clf, {untouched_name: untouched}, mix_calls, seed)
    untouched_summary = pd.concat([untouched_head.assign(classifier=headline_setting),
                                   untouched_plain.assign(classifier=plain_headline + " plain")], ignore_index=True)
    goal_summary = pd.concat([mix_summary, untouched_head], ignore_index=True)
else:
    untouched_summary = pd.DataFrame({"lab": [untouched_name], "note": ["folder absent on this machine"]})
    goal_summary = mix_summary
save_table(untouched_summary, tables / "crosslab_untouched.csv")
goals = cv.goals_table(goal_summary, calib, unseen + [untouched_name])
save_table(goals, tables / "crosslab_goals.csv")
for key, value in cv.goals_glue(goals, design.source, unseen, untouched_name).items():
    glue(key, value, display=False)
glue("crosslab_goals", goals.set_index("lab").round(3), display=False)
if untouched is not None:  # what its red-cell ruler reads (no labels), as for the other sites above
    untouched_ruler = cs.ruler_table(untouched[0], pd.DataFrame({"domain": [untouched_name] * len(untouched[1])}))
    save_table(untouched_ruler, tables / "crosslab_untouched_ruler.csv")
    for column in ("red_over_white", "red_cell_diameter_px", "cell_diameter_px", "no_ruler_share"):
        glue(f"crosslab_untouched_ruler_{column}", float(untouched_ruler[column].iloc[0]), display=False)

# %% [markdown]
# The differential check (`bcfeat.crosslab.differential_check`): calls of 100 cells drawn with a
# blood count's typical differential, so every class lies within its usual range and a flag is the
# classifier's doing. Per lab, the share of calls `bcfeat classify` would warn about and each class's
# mean predicted share (percent; the calls' own shares are `mx.MIXES["typical"]`).

# %% tags=["hide-input"]
flags = cv.differential_flag_table(head_clf, report_labs, flag_calls, seed)
save_table(flags, tables / "crosslab_differential_check.csv")
for key, value in cv.differential_flag_glue(flags).items():
    glue(key, value, display=False)
glue("crosslab_differential_check", cv.differential_flag_display(flags).round(2), display=False)
cv.differential_flag_display(flags).round(2)

# %% [markdown]
# How the untouched lab's photographs were taken matters for any adaptation that uses a call's own
# statistics: its photograph series (file-name prefixes) largely follow the classes, so the stain
# of a series travels with its class. The chosen classifier, with the lab's cells grouped into
# calls three ways:

# %% tags=["hide-input"]
series = cv.untouched_series(untouched_folder) if untouched is not None else None
if series is not None:
    confound = cv.series_confound(series, untouched[1])
    modes = cv.call_modes(head_clf, *untouched, series)
    save_table(modes, tables / "crosslab_untouched_calls.csv")
    for key, value in confound.items():
        glue(f"crosslab_untouched_{key}", value, display=False)
    for key, row in zip(("folder", "unadapted", "per_series"), modes.itertuples()):
        glue(f"crosslab_untouched_calls_{key}", row.balanced_accuracy, display=False)
    display(pd.DataFrame([confound]))
    display(modes.round(3))

# %% [markdown]
# How much of each lab the features can learn from that lab's own labels (`bcfeat.study.own_label_ceiling`):
# the chosen setting trained on the training lab's cells, on those plus the lab's labelled cells of
# the other folds, and on the lab's own labelled cells alone, every cell predicted out of fold with
# the lab's folder read as one call. The untouched lab is folded twice: at random, and one photograph
# series held out at a time. It reads labels, so it explains the scores and chooses nothing.

# %% tags=["hide-input"]
ceiling = olc.own_label_table((source_X, source_y), report_labs, headline_setting,
                              {untouched_name: series} if series is not None else None, seed=seed)
save_table(ceiling, tables / "crosslab_own_label_ceiling.csv")
for key, value in olc.own_label_glue(ceiling).items():
    glue(key, value, display=False)
glue("crosslab_own_label_ceiling", olc.own_label_display(ceiling).round(3), display=False)
olc.own_label_display(ceiling).round(3)

# %% [markdown]
# Which feature groups carry from one of the untouched lab's photograph series to the next: the chosen
# setting's classifier on each group alone, trained on the lab's own labels, random folds beside one
# series held out at a time.

# %% tags=["hide-input"]
if series is not None:
    by_group = olc.own_label_by_group(*untouched, series, headline_setting, seed=seed)
else:
    by_group = pd.DataFrame(columns=olc.GROUP_COLUMNS)
save_table(by_group, tables / "crosslab_own_label_by_group.csv")
for key, value in olc.own_label_by_group_glue(by_group).items():
    glue(key, value, display=False)
glue("crosslab_own_label_by_group", olc.own_label_by_group_display(by_group).round(3), display=False)
olc.own_label_by_group_display(by_group).round(3)

# %% [markdown]
# Where the features stop carrying: per feature group that the chosen setting reads, how far each
# lab's class profiles (each class's mean against the others', in the lab's own within-class
# spread) agree with the training cells' (`bcfeat.study.class_profiles`). It reads every lab's
# labels, so it explains the scores above and chooses nothing.

# %% tags=["hide-input"]
profiles = cp.setting_profile_agreement((source_X, source_y), report_labs, headline_candidate)
save_table(profiles, tables / "crosslab_class_profiles.csv")
for key, value in cp.profile_agreement_glue(profiles).items():
    glue(key, value, display=False)
glue("crosslab_class_profiles", cp.profile_agreement_display(profiles).round(2), display=False)
cp.profile_agreement_display(profiles).round(2)

# %% [markdown]
# The lever those profiles suggest, which the real-lab rule was offered above: keep only the
# features whose class order holds (class-profile correlation with the training cells' at least 0)
# on the given sites (`bcfeat.study.order_stable_features`). Each given site is read with the
# features kept on the other two, so its labels never choose its own features; the training lab's
# test cells and the untouched lab with those kept on all three. Beside it, the deployed setting's
# features and strength without the lever (no texture gate on either side), each lab's cells in
# one call.

# %% tags=["hide-input"]
if order_stable_lever:
    order_stable = osf.order_stable_table((source_X, source_y), report_labs, unseen, headline_candidate,
                                          seed)
else:
    order_stable = pd.DataFrame(columns=osf.COLUMNS)
save_table(order_stable, tables / "crosslab_order_stable.csv")
for key, value in osf.order_stable_glue(order_stable, unseen).items():
    glue(key, value, display=False)
glue("crosslab_order_stable", order_stable.set_index("lab").round(3), display=False)
order_stable.set_index("lab").round(3)

# %% [markdown]
# A colour reference within each photograph: every optical-density level of the cell read against
# the red cells around it (`bcfeat.study.colour_reference`; they take the same eosin and light),
# the chosen setting trained and read that way beside the deployed reading. Reported, not chosen.

# %% tags=["hide-input"]
red_reference = None
if red_cell_lever:
    red_reference = crr.red_cell_reference(samples["path"].tolist(), artifacts, headline_source, n_workers)
if red_reference is not None:
    untouched_reference = None
    if untouched is not None:
        untouched_reference = (untouched_name, *untouched, crr.red_cell_reference(
            cv.untouched_files(untouched_folder)["path"].tolist(), artifacts, headline_source, n_workers,
            cache_name="untouched_red_cells"))
    colour_reference = crr.colour_reference_table(measured, samples, plan, headline_setting, seed, red_reference,
                                                  design=design, untouched=untouched_reference)
    for key, value in crr.colour_reference_glue(colour_reference).items():
        glue(key, value, display=False)
else:  # not asked for, or a detector's measurement (no stain segmentation to find the red cells around)
    colour_reference = pd.DataFrame(columns=crr.COLUMNS)
save_table(colour_reference, tables / "crosslab_colour_reference.csv")
glue("crosslab_colour_reference", crr.colour_reference_display(colour_reference).round(3), display=False)
crr.colour_reference_display(colour_reference).round(3)

# %% tags=["hide-input"]
# the best candidate the rule excluded (a mask whose training overlaps the development cells), scored the same way
if excluded_best != headline_setting:
    excluded = cv.fit_setting(measured, samples, plan, excluded_best, seed, source=design.source)
    excluded_source = cv.parse_setting(excluded_best)["source"]
    excluded_labs = cv.real_labs(measured, samples, plan, excluded_source, design=design)
    excluded_untouched = cv.untouched_lab(untouched_folder, artifacts, excluded_source, n_workers,
                                          detector_file=detector_file)
    if excluded_untouched is not None:
        excluded_labs[untouched_name] = excluded_untouched
    excluded_calib = cv.calibration_table(excluded, cv.fit_calibration(excluded, virtual, excluded_source),
                                          excluded_labs)[0]
    excluded_goals = cv.goals_table(cv.mix_table(excluded, excluded_labs, mix_calls, seed)[1], excluded_calib,
                                    unseen + [untouched_name]).assign(setting=excluded_best)
else:
    excluded_goals = goals.assign(setting=headline_setting)
save_table(excluded_goals, tables / "crosslab_goals_excluded_best.csv")
glue("crosslab_goals_excluded", excluded_goals.set_index("lab").drop(columns=["setting"]).round(3), display=False)
goals.set_index("lab").round(3)

# %% [markdown]
# ## What a new lab breaks: one shift at a time
#
# The development cells through one named shift each (all cells in one call), the chosen
# classifier beside the plain per-site standardisation with the same features.

# %% tags=["hide-input"]
if shift_cells > 0:
    shift_rows = cv.development_rows(samples, plan, shift_cells, seed, source=design.source)
    shifts = cv.build_virtual_labs(samples, shift_rows,
                                   list(named_shifts().values()), artifacts, [headline_source], n_workers, seed,
                                   detector_file=detector_file)
    shift_table = cv.per_shift_table({headline_setting: head_clf, plain_headline + " plain": plain_clf}, shifts,
                                     headline_source)
else:
    shift_table = pd.DataFrame(columns=["shift"])
save_table(shift_table, tables / "crosslab_shifts.csv")
glue("crosslab_shifts", shift_table.set_index("shift").round(3), display=False)
for key, value in cv.shift_glue(shift_table, headline_setting).items():
    glue(key, value, display=False)
shift_table.set_index("shift").round(3)

# %% [markdown]
# How tightly each lab frames its cells: the white cell's measured diameter over the image's
# shorter side, quartiles per lab (the untouched lab's too; no label is read). Beside it, the
# chosen classifier on the development cells framed ever tighter, from the cells as photographed
# to the named `tight_crop` (all cells in one call; `cell_fill` is their median fill, measured the
# same way on the frame each renders):

# %% tags=["hide-input"]
if shift_cells > 0:
    X_head, domains = measured[headline_source].features, samples["domain"].to_numpy()
    shapes = fr.image_shapes(samples["path"].tolist())
    fills = {site: fr.cell_fill(shapes[domains == site], X_head[domains == site]) for site in [design.source, *unseen]}
    if untouched is not None:
        fills[untouched_name] = fr.cell_fill(fr.image_shapes(cv.untouched_files(untouched_folder)["path"].tolist()),
                                             untouched[0])
    fill_table = fr.fill_table(fills)
    framing_labs = fr.framing_labs()
    framed = cv.build_virtual_labs(samples, shift_rows, framing_labs, artifacts, [headline_source], n_workers, seed,
                                   detector_file=detector_file)
    framing = fr.framing_table(head_clf, {lab.name: framed.features[(lab.name, headline_source)] for lab in framing_labs},
                               framed.labels, framing_labs, shapes[shift_rows], native=X_head[shift_rows])
    save_table(fill_table, tables / "crosslab_cell_fill.csv")
    save_table(framing, tables / "crosslab_framing.csv")
    glue("crosslab_cell_fill", fill_table.set_index("lab").round(2), display=False)
    glue("crosslab_framing", framing.set_index("crop_fraction").round(3), display=False)
    for key, value in fr.framing_glue(framing, fill_table).items():
        glue(key, value, display=False)
    display(fill_table.set_index("lab").round(2))
    display(framing.set_index("crop_fraction").round(3))

# %% [markdown]
# ## Ablations: each lever on and off
#
# The adaptation levers and the feature groups are measured on the classifier of the first split
# and all cells of the unseen sites; the crop lever re-measures a subsample of each site with
# another mask or without the rescaling; the objective lever trains the self-supervised encoder
# and a supervised GroupNorm CNN on the source's labels under strong lab-shift augmentation.

# %% tags=["hide-input"]
ablation = cs.ablations(measured, samples, plan, headline_setting, artifacts, ablation_cells,
                        ssl_epochs, ssl_image_size, seed, n_workers, cnn_epochs, cnn_image_size,
                        gate_threshold=calibration.gate_threshold, design=design)
save_table(ablation, tables / "crosslab_ablation.csv")
glue("crosslab_ablation", ablation.round(3), display=False)
for key, value in cs.ablation_glue(ablation).items():
    glue(key, value, display=False)
ablation.round(3)

# %% [markdown]
# ## Where the false basophils come from: the nucleus reading
#
# The nucleus is the darker class of every dye's optical density inside the cell. Where a stain
# darkens granules towards the nucleus, the nucleus takes them in, and a cell that is mostly
# nucleus is what a basophil looks like. The nuclear dye absorbs red light and eosin hardly does:
# the same setting with the nucleus found in the red channel's optical density, on the same cells.
# This lever is reported, not chosen (the deployed setting keeps the reading the selection saw).

# %% tags=["hide-input"]
if red_nucleus_lever:
    red_measurement = nr.red_nucleus_measurement(headline_source)
    measured[red_measurement] = cs.measure_cells(samples, artifacts, red_measurement, n_workers,
                                                 detector_file=detector_file)
    nucleus_table = nr.nucleus_reading_table(measured, samples, plan, headline_setting, seed, design=design)
    for key, value in nr.nucleus_reading_glue(nucleus_table, unseen).items():
        glue(key, value, display=False)
    glue("crosslab_nucleus_table", nr.nucleus_reading_display(nucleus_table).round(3), display=False)
    del measured[red_measurement]
else:
    nucleus_table = pd.DataFrame(columns=["reading", "site"])
    glue("crosslab_nucleus_table", nucleus_table, display=False)
save_table(nucleus_table, tables / "crosslab_nucleus_reading.csv")
nucleus_table.round(3)

# %% [markdown]
# Which part of the reading makes the nucleus large: on the two sites whose experts drew the
# nucleus as well as the cell, the deployed measurement's cell mask against the experts' cell, and
# the nucleus found in it (and in the experts' cell) against the experts' nucleus, per class.

# %% tags=["hide-input"]
nucleus_per_image = nr.nucleus_against_experts(headline_source, root)  # no rows for a detector's measurement
nucleus_vs_expert = nr.nucleus_against_experts_summary(nucleus_per_image)
save_table(nucleus_vs_expert, tables / "crosslab_nucleus_vs_expert.csv")
for key, value in nr.nucleus_against_experts_glue(nucleus_vs_expert).items():
    glue(key, value, display=False)
glue("crosslab_nucleus_vs_expert", nr.nucleus_against_experts_display(nucleus_vs_expert).round(2), display=False)
nr.nucleus_against_experts_display(nucleus_vs_expert).round(2)

# %% [markdown]
# The same per cell, split by whether the classifier of the "all cells" table above called it a
# basophil: are the false basophils the cells whose nucleus goes wrong?

# %% tags=["hide-input"]
nucleus_calls = nr.nucleus_by_call(nucleus_per_image, predictions, samples, "basophil")
save_table(nucleus_calls, tables / "crosslab_nucleus_by_call.csv")
for key, value in nr.nucleus_by_call_glue(nucleus_calls, "basophil").items():
    glue(key, value, display=False)
glue("crosslab_nucleus_by_call", nr.nucleus_by_call_display(nucleus_calls, "basophil").round(2), display=False)
nr.nucleus_by_call_display(nucleus_calls, "basophil").round(2)

# %% [markdown]
# What else pushes them: for every false basophil of each lab (all its cells in one call), the
# linear classifier's margin of "basophil" over the cell's own class, split over the features it
# reads (`bcfeat.study.false_calls`), averaged and summed per feature group and per part of the cell.

# %% tags=["hide-input"]
basophil_push, basophil_top = fc.false_call_push(head_clf, report_labs, "basophil", feature_groups(), feature_names())
save_table(basophil_push, tables / "crosslab_false_basophil_push.csv")
save_table(basophil_top, tables / "crosslab_false_basophil_features.csv")
for key, value in fc.false_call_glue(basophil_push, basophil_top).items():
    glue(key, value, display=False)
glue("crosslab_false_basophil_push", fc.false_call_display(basophil_push, basophil_top), display=False)
fc.false_call_display(basophil_push, basophil_top)

# %% [markdown]
# ## A few labelled cells of the new lab
#
# With k labelled cells per class of the target lab added to the Acevedo-20 training cells,
# balanced accuracy on the rest of that lab (mean of the draws): our features with the linear
# model, AE-CFE with the paper's forest, and the AdaBN oracle's embeddings with a linear model.

# %% tags=["hide-input"]
curve = cs.few_shot(X, samples, plan, headline_setting, features_dir, aecfe_features, adabn,
                    [int(k) for k in study.parse_list(shots)], n_draws, few_shot_source_cells, seed, design=design)
save_table(curve, tables / "crosslab_few_shot.csv")
glue("crosslab_few_shot_figure", cs.few_shot_figure(curve), display=False)
for key, value in cs.few_shot_glue(curve).items():
    glue(key, value, display=False)
curve.pivot_table(index=["features", "target"], columns="k", values="balanced_accuracy_mean").round(3)

# %% [markdown]
# ## What the features see

# %% tags=["hide-input"]
glue("crosslab_umap", cs.umap_figure(X, samples, seed), display=False)
glue("crosslab_gallery", cs.gallery_figure(crops, predictions, seed, source=design.source), display=False)

# %% [markdown]
# ## The model file
#
# The detector, the crop and feature settings and the headline classifier (trained on all of
# Acevedo-20's labelled cells) in one file that `bcfeat extract`, `bcfeat classify` and the
# scikit-learn transformer load.

# %% tags=["hide-input"]
model_path = cv.write_deployed_model(measured, samples, crosslab_model_file, headline_setting, calibration, n_workers,
                                     detector_file=detector_file, source=design.source)
glue("crosslab_model_file", str(model_path), display=False)
print(model_path)

# %% [markdown]
# The model file as a lab runs it: each unseen lab's cells, and the untouched lab's, in one call
# through the code of `bcfeat classify` (`bcfeat.study.deployed_model_check`: the file's classifier,
# trained on every Acevedo-20 cell, with the call's own temperature and the `uncertain` threshold),
# read from the cells measured above with the file's own measurement. The training lab is left out:
# the file was trained on all its cells.

# %% tags=["hide-input"]
deployed_labs = {name: lab for name, lab in report_labs.items() if name != design.source}
deployed = dmc.deployed_file_table(load_model(model_path), deployed_labs)
save_table(deployed, tables / "crosslab_deployed_file.csv")
for key, value in dmc.deployed_file_glue(deployed).items():
    glue(key, value, display=False)
glue("crosslab_deployed_file", deployed.set_index("lab").round(3), display=False)
deployed.set_index("lab").round(3)
