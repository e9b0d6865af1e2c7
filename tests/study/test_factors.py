"""The autoencoder's factor study (bcfeat.study.factors): runs, their learning curves, the budget and
scoring the latents elsewhere than where they were trained."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest

from bcfeat.study import factors
from bcfeat.study.design import DEFAULT_SITES


@pytest.fixture(scope="module")
def tiny_data(data_root, tiny_aecfe_folder, tmp_path_factory):
    warnings.filterwarnings("ignore", message="classes with < 2 samples")
    return factors.FactorData.build(data_root, DEFAULT_SITES, max_per_site=70, max_source_images=16, n_repetitions=2,
                                    seed=0, detector_file=tiny_aecfe_folder / "detector.pt",
                                    cache_dir=tmp_path_factory.mktemp("factor_cache"), ae_preset="tiny")


def _run(tiny_data, runs, folder, **kw):
    return factors.run_factors(runs, tiny_data, folder / "checkpoints", folder / "out", ae_preset="tiny",
                               num_threads=1, **kw)


def test_a_run_is_refused_with_an_unknown_variant_or_unordered_checkpoints():
    with pytest.raises(ValueError, match="unknown variant 'nope'"):
        factors.FactorRun("x", variant="nope")
    with pytest.raises(ValueError, match="increasing"):
        factors.FactorRun("x", checkpoints=(5, 2))
    with pytest.raises(ValueError, match="increasing"):
        factors.FactorRun("x", checkpoints=())
    assert factors.FactorRun("x", checkpoints=(12, 50, 150)).epochs == 150


def test_every_checkpoint_is_scored_in_domain_and_unseen_and_kept_with_its_latent(tiny_data, tmp_path):
    runs = [factors.FactorRun("curve", batch_size=8, checkpoints=(1, 2)),
            factors.FactorRun("no term", variant="no_alignment", batch_size=8, checkpoints=(1,))]
    scores = _run(tiny_data, runs, tmp_path)
    out = tmp_path / "out"
    assert sorted(set(zip(scores["run"], scores["epochs"]))) == [("curve", 1), ("curve", 2), ("no term", 1)]
    coarse5 = scores[scores["label_space"] == "coarse5"]
    assert set(coarse5["test_domain"]) == set(DEFAULT_SITES.sites)  # in-domain and every unseen site
    assert set(scores.loc[scores["label_space"] == "common13", "test_domain"]) == {DEFAULT_SITES.source}
    assert (scores["train_domain"] == DEFAULT_SITES.source).all()
    assert set(scores.loc[scores["run"] == "no term", "alignment_weight"]) == {0.0}
    with np.load(out / "latents_curve.npz") as stored:
        assert sorted(stored.files) == ["epoch_1", "epoch_2", "keys"]
        assert stored["epoch_2"].shape == (len(tiny_data.samples), 50)
        assert not np.array_equal(stored["epoch_1"], stored["epoch_2"])  # training went on between them
    history = pd.read_csv(out / "factor_history.csv")
    assert history.loc[history["run"] == "curve", "epoch"].tolist() == [1, 2]
    report = json.loads((out / "factor_runs.json").read_text())
    assert [d["epochs"] for d in report["runs"][0]["done"]] == [1, 2]
    table = factors.factor_table(scores, DEFAULT_SITES.source)
    assert list(table["run"]) == ["curve", "curve", "no term"]
    assert table["coarse5_unseen_balanced_accuracy"].between(0, 1).all()

    # A run's checkpoints are its learning curve: epoch 2 after a stop at epoch 1 is a straight 2-epoch run.
    straight = _run(tiny_data, [factors.FactorRun("curve", batch_size=8, checkpoints=(2,))], tmp_path / "straight",
                    score=False)
    assert straight.empty
    with np.load(out / "latents_curve.npz") as a, np.load(tmp_path / "straight" / "out" / "latents_curve.npz") as b:
        np.testing.assert_array_equal(a["epoch_2"], b["epoch_2"])

    # Scoring the saved latents elsewhere gives the scores made in place.
    again = factors.score_saved_latents(out, tiny_data)
    columns = ["run", "epochs", "label_space", "test_domain", "accuracy_mean", "balanced_accuracy_mean"]
    pd.testing.assert_frame_equal(again[columns].reset_index(drop=True), scores[columns].reset_index(drop=True))


def test_the_budget_cuts_what_would_not_end_in_time_and_says_so(tiny_data, tmp_path):
    scores = _run(tiny_data, [factors.FactorRun("late", batch_size=8, checkpoints=(1, 2))], tmp_path,
                  budget=factors.FactorBudget(0.0))
    assert scores.empty
    report = json.loads((tmp_path / "out" / "factor_runs.json").read_text())
    assert report["runs"][0]["done"] == []
    assert [c["epochs"] for c in report["runs"][0]["cut"]] == [1, 2]
    assert not (tmp_path / "out" / "latents_late.npz").exists()


def test_latents_from_another_data_root_are_refused_by_name(tiny_data, tmp_path):
    _run(tiny_data, [factors.FactorRun("one", batch_size=8, checkpoints=(1,))], tmp_path, score=False)
    path = tmp_path / "out" / "latents_one.npz"
    with np.load(path) as stored:
        arrays = {k: stored[k] for k in stored.files}
    arrays["keys"] = np.char.add("elsewhere/", arrays["keys"])
    np.savez(path, **arrays)
    with pytest.raises(KeyError, match="another data root"):
        factors.score_saved_latents(tmp_path / "out", tiny_data)


def test_the_cpu_paper_run_reads_back_as_its_learning_curve_with_minutes_and_cuts(tiny_data, tmp_path):
    assert factors.CPU_PAPER.name not in {r.name for r in factors.FACTOR_RUNS}  # run on its own, on the CPU
    assert factors.CPU_PAPER.effective_alignment_weight == 0.0 and factors.CPU_PAPER.epochs == 150
    run = factors.FactorRun(factors.CPU_PAPER.name, variant="no_alignment", batch_size=8, checkpoints=(1, 2, 3))
    _run(tiny_data, [run], tmp_path)
    summary = factors.cpu_paper_summary(tmp_path / "out", DEFAULT_SITES.source, run)
    assert summary.curve["epochs"].tolist() == [1, 2, 3]
    history = pd.read_csv(tmp_path / "out" / "factor_history.csv")
    assert summary.curve["train_minutes"].iloc[-1] == pytest.approx(history["seconds"].sum() / 60)
    assert summary.curve["train_minutes"].is_monotonic_increasing
    assert summary.cut == [] and np.isnan(summary.minutes)  # no finite budget: no elapsed time is recorded
    shown = summary.display()
    assert list(shown.index) == [1, 2, 3]
    assert shown["in-domain accuracy, common13 (%)"].tolist() == pytest.approx(
        (100 * summary.curve["common13_in_domain_accuracy"]).round(1).tolist())

    cut = _run(tiny_data, [factors.FactorRun(run.name, variant="no_alignment", batch_size=8, checkpoints=(1, 50_000))],
               tmp_path / "cut", budget=factors.FactorBudget(3600.0))
    assert sorted(set(cut["epochs"])) == [1]
    summary = factors.cpu_paper_summary(tmp_path / "cut" / "out", DEFAULT_SITES.source, run)
    assert summary.cut == [50_000] and 0 < summary.minutes < 60
    with pytest.raises(ValueError, match="no scored checkpoint of the run 'other'"):
        factors.cpu_paper_summary(tmp_path / "cut" / "out", DEFAULT_SITES.source, factors.FactorRun("other"))
