"""The reproduction's gap to the paper, factor by factor (issue 20, step 2): the autoencoder's factors.

The ``cpu`` headline trains the autoencoder 12 epochs in batches of 128; the released code
trains 150 epochs in batches of 500 with the alignment term at weight 5. Each
:class:`FactorRun` restores some of that, starting from the same instance features (one
detector), and every ``checkpoints`` epoch of it is scored as the benchmark scores a feature
set: the released code's random forest on the study's stratified splits, in-domain and on the
unseen sites (coarse5) and in-domain on common13. Training continues from one checkpoint to
the next (the optimiser has no schedule: Adam at a fixed rate, as released), so a run's
checkpoints are its learning curve.

:func:`run_factors` works within a time budget: a run's next segment starts only when the
seconds per epoch measured so far say it ends in time, and every scored point is written
before the next starts, so a run stopped at its limit keeps what it finished.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from bcfeat.atomic_io import save_table
from bcfeat.study import autoencoder as aes
from bcfeat.study.design import StudySites
from bcfeat.study.samples import benchmark_samples, sample_keys, study_splits

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FactorRun:
    """One training of the autoencoder with some of the paper's settings restored.

    Attributes
    ----------
    name : str
        Row label in the factor table.
    variant : str
        The :data:`bcfeat.study.autoencoder.VARIANTS` entry (alignment form, sites seen).
    batch_size : int
        Samples per batch (the moment term's moments are per batch).
    alignment_weight : float or None
        None: the variant's own weight (5 unless it switches the term off).
    checkpoints : tuple of int
        Epochs at which the latent is scored, increasing; the last is the run's length.
    """

    name: str
    variant: str = "moment"
    batch_size: int = 128
    alignment_weight: float | None = None
    checkpoints: tuple[int, ...] = (12,)

    def __post_init__(self) -> None:
        if self.variant not in aes.VARIANTS:
            raise ValueError(f"FactorRun {self.name!r}: unknown variant {self.variant!r}; choose from {list(aes.VARIANTS)}")
        if not self.checkpoints or list(self.checkpoints) != sorted(set(self.checkpoints)) or self.checkpoints[0] < 1:
            raise ValueError(f"FactorRun {self.name!r}: checkpoints must be increasing epochs >= 1, got {self.checkpoints}")
        if self.batch_size < 2:
            raise ValueError(f"FactorRun {self.name!r}: batch_size must be >= 2, got {self.batch_size}")

    @property
    def epochs(self) -> int:
        return self.checkpoints[-1]

    @property
    def effective_alignment_weight(self) -> float:
        """The weight the run trains with: its own, else its variant's, else the default (5)."""
        from bcfeat.autoencoder.losses import LossWeights

        for weight in (self.alignment_weight, aes.VARIANTS[self.variant].alignment_weight):
            if weight is not None:
                return float(weight)
        return LossWeights().alignment

    @property
    def rate_key(self) -> str:
        """Runs that train alike per epoch (same samples and batch): they share a measured rate."""
        return f"{self.variant}/{self.batch_size}"


# In the order they are run (a budget cuts the last ones first): the released settings (150 epochs,
# batch 500) first. The epoch-12 point of "length (batch 128)" is the cpu headline's setting on the
# same hardware and data: the reference every other row is read against.
FACTOR_RUNS: tuple[FactorRun, ...] = (
    FactorRun("length (batch 500)", batch_size=500, checkpoints=(12, 50, 150)),
    FactorRun("alignment weight 0 (batch 500)", variant="no_alignment", batch_size=500, checkpoints=(50, 150)),
    FactorRun("length (batch 128)", checkpoints=(12, 25, 50, 100, 150)),
    FactorRun("alignment weight 1 (batch 500)", batch_size=500, alignment_weight=1.0, checkpoints=(50, 150)),
    FactorRun("source only (batch 500)", variant="source_only", batch_size=500, checkpoints=(50, 150)),
    FactorRun("site standardised (batch 500)", variant="site_standardized", batch_size=500, checkpoints=(50, 150)),
)

# The factors that raise the in-domain accuracy, combined into one configuration that trains within
# 90 minutes on the project's 2-core CPU: the released code's length and batch with the alignment
# term off (the two steps of the attribution that help; batch 500 is the released value and costs
# nothing). Trained on the CPU by ``scripts/ae_factors.py --runs cpu-paper``, with its learning curve.
CPU_PAPER = FactorRun("cpu-paper", variant="no_alignment", batch_size=500, checkpoints=(12, 50, 100, 150))


@dataclass
class FactorData:
    """What every run reads: the samples, their instance arrays (None when only scoring) and the
    scoring plans."""

    samples: pd.DataFrame
    instances: dict | None
    labelled: dict[str, pd.DataFrame]
    splits: dict[str, object]
    design: StudySites

    @classmethod
    def build(cls, root: Path, design: StudySites, *, max_per_site: int, max_source_images: int, n_repetitions: int,
              seed: int, detector_file: Path | None = None, cache_dir: Path | None = None,
              ae_preset: str = "cpu", runtime=None, runs: Sequence[FactorRun] = FACTOR_RUNS) -> "FactorData":
        """The autoencoder's samples (as ``02_autoencoder``), their instance arrays through
        ``detector_file`` when given (on ``runtime``: an ``ExtractionRuntime``; only the regions the
        ``runs`` read), and the benchmark's labelled samples and splits (as ``05_benchmark``)."""
        samples = aes.autoencoder_samples(root, max_per_site, max_source_images, seed, sites=",".join(design.sites),
                                          source_site=design.source, label_space=design.label_space)
        instances = None
        if detector_file is not None:
            variants = ",".join(sorted({run.variant for run in runs}))
            plan = aes.VariantPlan.from_parameters(variants, ae_preset, 1, 2, seed, 0)
            instances = aes.instances_for(samples, detector_file, cache_dir, plan, progress=False, runtime=runtime)
        labelled = benchmark_samples(root, design, max_per_site, seed)
        splits = {space: study_splits(table, n_repetitions, seed) for space, table in labelled.items()}
        return cls(samples, instances, labelled, splits, design)


def factor_plan(run: FactorRun, ae_preset: str, seed: int, num_threads: int, epochs: int,
                device: str = "auto", amp: bool = True) -> aes.VariantPlan:
    """The one-variant plan of ``run`` trained to ``epochs`` (``amp``: mixed precision on CUDA)."""
    plan = aes.VariantPlan.from_parameters(run.variant, ae_preset, epochs, run.batch_size, seed, num_threads)
    cfg = plan.train_configs[run.variant]
    plan.train_configs[run.variant] = replace(cfg, device=device, checkpoint_every=10_000, amp=amp,
                                              weights=replace(cfg.weights, alignment=run.effective_alignment_weight))
    return plan


def score_latent(latent: np.ndarray, keys: Sequence[str], data: FactorData, seed: int,
                 make_classifier: Callable[[int], object] | None = None) -> pd.DataFrame:
    """The benchmark's scores of one latent (rows keyed by ``keys``, ``dataset/relpath``): trained on
    the source site, tested in-domain and on every unseen site (coarse5), and in-domain in common13;
    one row per test site and label space with the mean and spread over the splits."""
    from bcfeat.evaluation.benchmark import summarize
    from bcfeat.study.benchmark_tables import run_feature_sets

    index = pd.Index(keys)
    rows = []
    for space, table in data.labelled.items():
        positions = index.get_indexer(sample_keys(table))
        if (positions < 0).any():
            raise KeyError(f"{int((positions < 0).sum())} {space} samples have no latent, e.g. "
                           f"{list(sample_keys(table)[positions < 0][:3])}: was it made from another data root?")
        scores, _ = run_feature_sets({"latent": latent[positions]}, table, data.splits[space], space, seed,
                                     make_classifier=make_classifier, train_domains=[data.design.source])
        rows.append(summarize(scores))
    return pd.concat(rows, ignore_index=True)


@dataclass
class FactorBudget:
    """Seconds a whole factor study may take, from ``started``."""

    seconds: float
    started: float = field(default_factory=time.monotonic)

    def left(self) -> float:
        return self.seconds - (time.monotonic() - self.started)


def run_factors(runs: Sequence[FactorRun], data: FactorData, checkpoints_dir: Path, out_dir: Path, *,
                ae_preset: str = "cpu", seed: int = 0, num_threads: int = 2, device: str = "auto",
                budget: FactorBudget | None = None, make_classifier: Callable[[int], object] | None = None,
                score: bool = True, scoring_seconds: float = 30.0, info: dict | None = None,
                amp: bool = True) -> pd.DataFrame:
    """Train every run's checkpoints in order, within ``budget``, and score them (``score``) or
    leave that to :func:`score_saved_latents` (a GPU machine trains, a CPU scores).

    Writes into ``out_dir`` after every checkpoint: ``latents_<run>.npz`` (the sample keys and
    each checkpoint's latent of every sample), ``factor_history.csv`` (the loss per epoch),
    ``factor_runs.json`` (``info``, each run's settings, what was done and what the budget cut)
    and, when scoring, ``factor_scores.csv``. Returns the scores (empty without ``score``).
    """
    from bcfeat.atomic_io import save_npz
    from bcfeat.autoencoder.aecfe_model import encode_features
    from bcfeat.autoencoder.training import fit_autoencoder
    from bcfeat.training.device import resolve_device
    from bcfeat.training.loop import NonFiniteLossError

    if data.instances is None:
        raise ValueError("run_factors needs the instance arrays: build FactorData with a detector_file")
    checkpoints_dir, out_dir = Path(checkpoints_dir), Path(out_dir)
    checkpoints_dir.mkdir(parents=True, exist_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    budget = budget or FactorBudget(float("inf"))
    domain = aes.domain_ids(data.samples)
    keys = np.asarray(sample_keys(data.samples), dtype=str)
    scores, histories = [], []
    report = {"info": info or {}, "runs": []}
    seconds_per_epoch: dict[str, float] = {}
    on_cuda = resolve_device(device).type == "cuda"

    def write() -> None:
        if scores:
            save_table(pd.concat(scores, ignore_index=True), out_dir / "factor_scores.csv")
        if histories:
            save_table(pd.concat(histories, ignore_index=True), out_dir / "factor_history.csv")
        report["info"]["elapsed_s"] = round(budget.seconds - budget.left(), 1) if np.isfinite(budget.seconds) else None
        (out_dir / "factor_runs.json").write_text(json.dumps(report, indent=1, default=str))

    for run in runs:
        variant = aes.VARIANTS[run.variant]
        rows = aes.training_rows(data.samples, variant)
        all_features = aes.variant_features(data.instances, data.samples, variant)
        arrays = dict(data.instances[variant.region], features=all_features)
        inputs = aes.autoencoder_inputs({k: v[rows] for k, v in arrays.items()}, domain[rows])
        path = checkpoints_dir / f"factor_{_slug(run.name)}.pt"
        entry = {"run": asdict(run), "slug": _slug(run.name), "done": [], "cut": []}
        report["runs"].append(entry)
        latents: dict[str, np.ndarray] = {}
        trained_to = 0
        for epochs in run.checkpoints:
            rate = seconds_per_epoch.get(run.rate_key) or max(seconds_per_epoch.values(), default=0.0)
            need = rate * (epochs - trained_to) + (scoring_seconds if score else 2.0)
            if need > budget.left():
                entry["cut"].append({"epochs": epochs, "needed_s": round(need, 1), "left_s": round(budget.left(), 1)})
                log.info("%s: epoch %d cut (needs about %.0f s, %.0f left)", run.name, epochs, need, budget.left())
                continue
            plan = factor_plan(run, ae_preset, seed, num_threads, epochs, device, amp)
            t0 = time.perf_counter()
            try:
                model, history = fit_autoencoder(inputs, plan.ae_config, plan.train_configs[run.variant], path,
                                                 resume=True)
            except NonFiniteLossError as error:
                if not amp or trained_to:
                    raise
                # Mixed precision that does not learn: this and every later run train in float32.
                log.warning("%s: %s; training in float32 from here on", run.name, error)
                report["info"]["amp_given_up"] = {"run": run.name, "error": str(error)}
                amp = False
                path.unlink(missing_ok=True)
                plan = factor_plan(run, ae_preset, seed, num_threads, epochs, device, amp)
                model, history = fit_autoencoder(inputs, plan.ae_config, plan.train_configs[run.variant], path,
                                                 resume=True)
            train_s = time.perf_counter() - t0
            new = history[history["epoch"] > trained_to]
            if len(new):
                seconds_per_epoch[run.rate_key] = float(new["seconds"].mean())
            histories.append(new.assign(run=run.name))
            latent = encode_features(model.eval(), all_features)
            latents[f"epoch_{epochs}"] = latent.astype(np.float32)
            save_npz(out_dir / f"latents_{_slug(run.name)}.npz", keys=keys, **latents)
            done = {"epochs": epochs, "train_s": round(train_s, 1), "latent_std": latent_spread(latent),
                    "amp": amp and on_cuda, "first_total": float(history["total"].iloc[0]),
                    "last_total": float(history["total"].iloc[-1])}
            if score:
                t1 = time.perf_counter()
                scores.append(_labelled(score_latent(latent, keys, data, seed, make_classifier), run, epochs,
                                        done["latent_std"]))
                done["score_s"] = round(time.perf_counter() - t1, 1)
            entry["done"].append(done)
            trained_to = epochs
            write()
            log.info("%s: epoch %d done (%s)", run.name, epochs, done)
    write()
    return pd.concat(scores, ignore_index=True) if scores else pd.DataFrame()


def latent_spread(latent: np.ndarray) -> float:
    """The mean over dimensions of each latent dimension's standard deviation over the images."""
    return float(latent.std(axis=0).mean())


def _labelled(score: pd.DataFrame, run: FactorRun, epochs: int, latent_std: float) -> pd.DataFrame:
    return score.assign(run=run.name, epochs=epochs, batch_size=run.batch_size, variant=run.variant,
                        alignment_weight=run.effective_alignment_weight, latent_std=latent_std)


def score_saved_latents(run_dir: Path, data: FactorData, seed: int = 0,
                        make_classifier: Callable[[int], object] | None = None) -> pd.DataFrame:
    """Score the latents :func:`run_factors` saved in ``run_dir`` (its ``factor_runs.json`` names the
    runs), in the order they ran; the rows of ``factor_scores.csv``."""
    report = json.loads((Path(run_dir) / "factor_runs.json").read_text())
    scores = []
    for entry in report["runs"]:
        if not entry["done"]:
            continue
        run = FactorRun(**{**entry["run"], "checkpoints": tuple(entry["run"]["checkpoints"])})
        with np.load(Path(run_dir) / f"latents_{entry['slug']}.npz") as stored:
            keys = stored["keys"]
            for done in entry["done"]:
                latent = stored[f"epoch_{done['epochs']}"]
                scores.append(_labelled(score_latent(latent, keys, data, seed, make_classifier), run, done["epochs"],
                                        latent_spread(latent)))
    return pd.concat(scores, ignore_index=True) if scores else pd.DataFrame()


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_").lower()


def factor_table(scores: pd.DataFrame, source: str) -> pd.DataFrame:
    """One row per run and epoch: in-domain accuracy (common13, the paper's cell), in-domain and
    mean unseen balanced accuracy (coarse5), each with its spread over the splits."""
    rows = []
    for (run, epochs), part in scores.groupby(["run", "epochs"], sort=False):
        c13 = part[(part["label_space"] == "common13") & (part["test_domain"] == source)]
        c5 = part[part["label_space"] == "coarse5"]
        in5 = c5[c5["test_domain"] == source]
        unseen = c5[c5["test_domain"] != source]
        rows.append({"run": run, "epochs": int(epochs), "batch_size": int(part["batch_size"].iloc[0]),
                     "alignment_weight": float(part["alignment_weight"].iloc[0]),
                     "common13_in_domain_accuracy": _first(c13, "accuracy_mean"),
                     "common13_in_domain_accuracy_std": _first(c13, "accuracy_std"),
                     "coarse5_in_domain_balanced_accuracy": _first(in5, "balanced_accuracy_mean"),
                     "coarse5_unseen_balanced_accuracy": float(unseen["balanced_accuracy_mean"].mean())
                     if len(unseen) else np.nan,
                     "latent_std": float(part["latent_std"].iloc[0])})
    return pd.DataFrame(rows)


def _first(frame: pd.DataFrame, column: str) -> float:
    return float(frame[column].iloc[0]) if len(frame) else np.nan


def provenance(device: str) -> dict:
    """Where a factor study ran: versions, the device, the commit (``BCFEAT_COMMIT`` if set)."""
    import platform

    import sklearn
    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__, "sklearn": sklearn.__version__,
            "device": device, "cpu_count": os.cpu_count(), "commit": os.environ.get("BCFEAT_COMMIT", "")}
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


# The steps from the cpu headline's setting to the released code's, and one beyond it, each read
# from a (run, epochs) point of the factor table: (label, run, epochs).
ATTRIBUTION_STEPS: tuple[tuple[str, str, int], ...] = (
    ("cpu headline: 12 epochs, batch 128, weight 5", "length (batch 128)", 12),
    ("+ 150 epochs", "length (batch 128)", 150),
    ("+ batch 500 (the released settings)", "length (batch 500)", 150),
    ("+ alignment weight 5 -> 0", "alignment weight 0 (batch 500)", 150),
)


def attribution_table(table: pd.DataFrame, published_pct: float,
                      steps: Sequence[tuple[str, str, int]] = ATTRIBUTION_STEPS) -> pd.DataFrame:
    """The in-domain common13 accuracy (percent) after each step, what the step changed, and the
    points left to the published value; a step whose point the run did not reach is left out."""
    rows, previous = [], None
    for label, run, epochs in steps:
        point = table[(table["run"] == run) & (table["epochs"] == epochs)]
        if point.empty:
            continue
        value = 100 * float(point["common13_in_domain_accuracy"].iloc[0])
        rows.append({"step": label, "accuracy_pct": value,
                     "std_pct": 100 * float(point["common13_in_domain_accuracy_std"].iloc[0]),
                     "change_pts": np.nan if previous is None else value - previous,
                     "below_published_pts": published_pct - value,
                     "unseen_balanced_accuracy": float(point["coarse5_unseen_balanced_accuracy"].iloc[0]),
                     "latent_std": float(point["latent_std"].iloc[0])})
        previous = value
    return pd.DataFrame(rows)


def attribution_display(steps: pd.DataFrame) -> pd.DataFrame:
    """:func:`attribution_table` for reading: named columns, rounded, no change on the first row."""
    shown = steps.set_index("step").rename(columns={
        "accuracy_pct": "accuracy (%)", "std_pct": "± (%)", "change_pts": "change (points)",
        "below_published_pts": "below published (points)", "unseen_balanced_accuracy": "unseen sites (BA)",
        "latent_std": "latent spread"})
    shown = shown.round({"accuracy (%)": 1, "± (%)": 1, "change (points)": 1, "below published (points)": 1,
                         "unseen sites (BA)": 3, "latent spread": 3})
    return shown.astype(object).where(shown.notna(), "")


def learning_curve_figure(table: pd.DataFrame, published_pct: float | None = None):
    """In-domain common13 accuracy and mean unseen balanced accuracy against epochs, one line per run."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
    panels = (("common13_in_domain_accuracy", "in-domain accuracy (common13)"),
              ("coarse5_unseen_balanced_accuracy", "unseen sites, mean balanced accuracy (coarse5)"),
              ("latent_std", "latent spread (mean std per dimension)"))
    for ax, (column, title) in zip(axes, panels):
        for run, part in table.groupby("run", sort=False):
            ax.plot(part["epochs"], part[column], marker="o", ms=4, label=run)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("epochs")
    if published_pct is not None:
        axes[0].axhline(published_pct / 100, color="black", ls="--", lw=1, label="published (AE-CFE-RF)")
    axes[0].legend(fontsize=7, frameon=False)
    fig.tight_layout()
    return fig


@dataclass
class FactorRunResults:
    """A finished run's folder read back: where it ran (``info``), its scores and its loss history."""

    info: dict
    runs: list[dict]
    scores: pd.DataFrame
    history: pd.DataFrame


def read_factor_run(folder: str | os.PathLike) -> FactorRunResults:
    """Read ``factor_runs.json``, ``factor_scores.csv`` (made where the run was scored) and
    ``factor_history.csv`` of a run of ``scripts/ae_factors.py``; a missing file is named."""
    folder = Path(folder)
    for name in ("factor_runs.json", "factor_scores.csv", "factor_history.csv"):
        if not (folder / name).is_file():
            hint = (" (score the saved latents with `python scripts/ae_factors.py --score-only --out "
                    f"{folder}`)" if name == "factor_scores.csv" else "")
            raise FileNotFoundError(f"{folder / name} does not exist: not a finished factor run{hint}")
    report = json.loads((folder / "factor_runs.json").read_text())
    return FactorRunResults(report.get("info", {}), report.get("runs", []), pd.read_csv(folder / "factor_scores.csv"),
                            pd.read_csv(folder / "factor_history.csv"))


@dataclass
class CpuPaperSummary:
    """The cpu-paper run read back: its learning curve (the factor table's columns and the
    cumulative training minutes at each checkpoint), the run's whole time in minutes (instance
    features and scoring included) and the checkpoints its budget cut."""

    curve: pd.DataFrame
    minutes: float
    cut: list[int]

    def display(self) -> pd.DataFrame:
        """The learning curve for reading: one row per checkpoint, named columns, rounded."""
        shown = self.curve.set_index("epochs")[[
            "common13_in_domain_accuracy", "common13_in_domain_accuracy_std", "coarse5_in_domain_balanced_accuracy",
            "coarse5_unseen_balanced_accuracy", "latent_std", "train_minutes"]].copy()
        shown[["common13_in_domain_accuracy", "common13_in_domain_accuracy_std"]] *= 100
        shown.columns = ["in-domain accuracy, common13 (%)", "± (%)", "in-domain BA, coarse5", "unseen sites (BA)",
                         "latent spread", "training minutes"]
        return shown.round({"in-domain accuracy, common13 (%)": 1, "± (%)": 1, "in-domain BA, coarse5": 3,
                            "unseen sites (BA)": 3, "latent spread": 3, "training minutes": 1})


def cpu_paper_summary(folder: str | os.PathLike, source: str, run: FactorRun = CPU_PAPER) -> CpuPaperSummary:
    """:class:`CpuPaperSummary` of a finished ``scripts/ae_factors.py --runs cpu-paper`` folder
    (:func:`read_factor_run` names a missing file)."""
    results = read_factor_run(folder)
    curve = factor_table(results.scores[results.scores["run"] == run.name], source)
    if curve.empty:
        raise ValueError(f"{folder}: no scored checkpoint of the run {run.name!r}")
    seconds = results.history[results.history["run"] == run.name].sort_values("epoch")
    cumulative = seconds.set_index("epoch")["seconds"].cumsum()
    curve["train_minutes"] = [float(cumulative.loc[:e].iloc[-1]) / 60 for e in curve["epochs"]]
    entry = next((r for r in results.runs if r["run"]["name"] == run.name), {"cut": []})
    elapsed = results.info.get("elapsed_s")
    return CpuPaperSummary(curve, float(elapsed) / 60 if elapsed is not None else float("nan"),
                           [int(c["epochs"]) for c in entry["cut"]])


def history_figure(history: pd.DataFrame):
    """The loss terms per epoch of every run (the autoencoder chapter's figure, one line per run)."""
    return aes.history_figure(history.rename(columns={"run": "variant"}))
