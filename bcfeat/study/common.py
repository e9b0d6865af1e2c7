"""The notebooks' one import of the study's plumbing (``from bcfeat.study import common as study``).

Each concept has its module; this one only gathers their names for the notebooks:
:mod:`bcfeat.study.samples` (samples and splits), :mod:`bcfeat.study.design` (which sites), :mod:`bcfeat.study.feature_store`
(where each feature set is stored and what it is called), :mod:`bcfeat.study.handoff` (the files
one stage hands the next) and :mod:`bcfeat.study.benchmark_tables` (the benchmark's tables).
"""

from __future__ import annotations

from bcfeat.data.sites import SITES, SOURCE_SITE
from bcfeat.study.design import DEFAULT_SITES, StudyDesign, StudySites
from bcfeat.study.samples import *  # noqa: F401,F403
from bcfeat.study.feature_store import *  # noqa: F401,F403
from bcfeat.study.handoff import *  # noqa: F401,F403
from bcfeat.study.benchmark_tables import *  # noqa: F401,F403

__all__ = ["SITES", "SOURCE_SITE", "DEFAULT_SITES", "StudyDesign", "StudySites", "parse_list", "site_samples", "sample_keys", "study_splits", "first_repetitions", "decoded_images", "benchmark_samples", "union_samples", "LABEL_SPACES", "design_samples", "write_study_design", "design_table", "read_study_design", "read_study_splits", "transform_paths", "run_key", "save_feature_set", "load_feature_set", "feature_path", "RAW_PIXELS", "COLOUR_SHAPE", "BASELINE_FEATURE_SETS", "aecfe_feature_set", "oracle_feature_set", "oracle_short_name", "feature_set_names", "stored_feature_sets", "resolve_feature_sets", "load_feature_sets", "oracle_factory", "oracle_checkpoint_pattern", "require_input", "write_handoff", "read_handoff", "oracle_handoff", "oracle_checkpoint", "run_feature_sets", "pca_forest_factory", "source_row_table", "target_check", "mean_unseen_score", "compare_readings", "domain_invariance_table"]
