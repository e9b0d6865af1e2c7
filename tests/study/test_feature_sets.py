"""Feature-set names come from one place, and asking for one that does not exist is an error."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bcfeat.study import common as study


def _samples(n: int = 4) -> pd.DataFrame:
    return pd.DataFrame({"dataset": ["site"] * n, "relpath": [f"{i}.png" for i in range(n)], "label": ["a"] * n})


def test_the_oracle_s_name_is_made_from_its_architecture():
    from bcfeat.evaluation.oracle_model import oracle_config

    for profile in ("smoke", "cpu", "gpu"):
        cfg = oracle_config(profile, norm="group")
        assert study.oracle_feature_set(cfg.arch, "group") == f"oracle ({cfg.arch}, group norm)"
    assert study.aecfe_feature_set("moment") == "aecfe_moment"


def test_an_unknown_feature_set_is_an_error_listing_the_valid_names():
    available = ["aecfe_moment", "colour_shape", "oracle (narrow_resnet, batch norm)"]
    aliases = {"oracle_batch": "oracle (narrow_resnet, batch norm)", "oracle_group": "oracle (narrow_resnet, group norm)"}
    assert study.resolve_feature_sets(["oracle_batch", "colour_shape"], available, aliases) == \
        ["oracle (narrow_resnet, batch norm)", "colour_shape"]
    # the old way of naming the oracle in a comma-separated list splits it in two: an error now, not a silent drop
    with pytest.raises(ValueError, match=r"unknown feature set\(s\) \['oracle \(narrow_resnet', 'batch norm\)'\]; "
                                         r"valid names are \['aecfe_moment', 'colour_shape', "
                                         r"'oracle \(narrow_resnet, batch norm\)', 'oracle_batch'\]"):
        study.resolve_feature_sets(study.parse_list("aecfe_moment,oracle (narrow_resnet, batch norm)"), available, aliases)
    # an alias whose oracle was not run is not valid either
    with pytest.raises(ValueError, match="unknown feature set.*'oracle_group'"):
        study.resolve_feature_sets(["oracle_group"], available, aliases)


def test_loading_feature_sets_by_name(tmp_path):
    samples = _samples()
    keys = study.sample_keys(samples)
    X = np.arange(8, dtype=np.float32).reshape(4, 2)
    study.save_feature_set(study.feature_path(tmp_path, "aecfe_moment"), keys, X)
    study.save_feature_set(study.feature_path(tmp_path, study.COLOUR_SHAPE), keys[::-1], X[::-1])
    assert study.feature_set_names(tmp_path) == ["aecfe_moment", "colour_shape"]
    loaded = study.load_feature_sets(tmp_path, ["colour_shape", "aecfe_moment"], samples)
    assert list(loaded) == ["colour_shape", "aecfe_moment"]
    np.testing.assert_array_equal(loaded["colour_shape"], X)  # rows follow the samples, not the file
    with pytest.raises(ValueError, match=r"unknown feature set\(s\) \['aecfe_mmd'\]; valid names are "
                                         r"\['aecfe_moment', 'colour_shape'\]"):
        study.load_feature_sets(tmp_path, ["aecfe_mmd"], samples)


def test_oracle_hand_off_names_each_repetition_s_checkpoint(tmp_path):
    from bcfeat.evaluation.oracle_model import oracle_config

    samples = _samples()
    configs = {"batch": oracle_config("smoke", norm="batch")}
    record = study.oracle_handoff(configs, samples, tmp_path / "checkpoints", seed=3, n_repetitions=2)
    path = study.write_handoff(tmp_path / "oracles.json", record)
    assert study.read_handoff(path, "04_oracle")["feature_sets"] == {"oracle_batch": "oracle (narrow_resnet, batch norm)"}
    first = study.oracle_checkpoint(path, "batch", 0)
    assert first == study.oracle_checkpoint_pattern(tmp_path / "checkpoints", configs["batch"], samples, "batch", 3)
    assert study.oracle_checkpoint(path, "batch", 1).name.endswith("_seed4.pt")
    with pytest.raises(ValueError, match=r"no oracle with 'group' norm; 04_oracle trained \['batch'\]"):
        study.oracle_checkpoint(path, "group")
    with pytest.raises(FileNotFoundError, match="run the stage 04_oracle first"):
        study.read_handoff(tmp_path / "none.json", "04_oracle")


def test_the_benchmark_compares_every_stored_feature_set_in_the_variants_order(tmp_path):
    from bcfeat.study.autoencoder import FEATURE_SET_ORDER, VARIANTS

    assert FEATURE_SET_ORDER == (*(f"aecfe_{v}" for v in VARIANTS), "raw_pixels", "colour_shape")
    with pytest.raises(FileNotFoundError, match="filled by the stage 03_features"):
        study.stored_feature_sets(tmp_path, FEATURE_SET_ORDER)
    keys = study.sample_keys(_samples())
    for name in ("colour_shape", "aecfe_mmd", "my_features", "aecfe_moment"):
        study.save_feature_set(study.feature_path(tmp_path, name), keys, np.zeros((len(keys), 3)))
    assert study.stored_feature_sets(tmp_path, FEATURE_SET_ORDER) == ["aecfe_moment", "aecfe_mmd", "colour_shape",
                                                                      "my_features"]
