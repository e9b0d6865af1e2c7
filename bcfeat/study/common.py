"""The study's plumbing shared by the notebooks: which sites, which samples, which splits,
and where each feature set is stored.

One table of samples (all sites, one row per image) is the spine of the study; every feature
set is an array aligned with it by the image's dataset and relative path, so the random
forest, the oracle and the figures all look at the same cells and the same splits.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from bcfeat.atomic_io import save_npz, save_table
from bcfeat.data.splits import SplitPlan, make_splits
from bcfeat.data import load_image, scan_dataset
from bcfeat.study.data_overview import subsample
from bcfeat.data.sites import SITES, SOURCE_SITE
from bcfeat.validation import require_int


def parse_list(text: str) -> list[str]:
    """A comma-separated notebook parameter as a list (blank entries dropped)."""
    return [item.strip() for item in text.split(",") if item.strip()]


def site_samples(root: Path, label_space: str | None = "coarse5", sites: Sequence[str] = SITES,
                 max_per_site: int = 0, seed: int = 0) -> pd.DataFrame:
    """All sites' samples in one table, columns of :func:`bcfeat.data.scan_dataset` plus ``domain``.

    ``label_space=None`` keeps every image (for label-free steps: detector, autoencoder,
    feature extraction). ``max_per_site`` > 0 takes a seeded class-stratified subset per site.
    """
    require_int("max_per_site", max_per_site, 0, meaning="0: every image; else images per site")
    frames = []
    for site in sites:
        samples = scan_dataset(site, root=root, label_space=label_space).samples
        if label_space is None:
            samples = samples.assign(label=samples["cell_type"].fillna("unknown"))
        frames.append(subsample(samples, max_per_site, seed))
    table = pd.concat(frames, ignore_index=True)
    table["domain"] = table["dataset"]
    return table


def sample_keys(samples: pd.DataFrame) -> pd.Index:
    """``dataset/relpath`` of every row: the key that aligns feature arrays with samples."""
    return pd.Index(samples["dataset"] + "/" + samples["relpath"])


def study_splits(samples: pd.DataFrame, n_repetitions: int, seed: int, path: str | os.PathLike | None = None,
                 test_size: float = 0.2) -> SplitPlan:
    """Stratified per-site train/test splits, the same for every feature set and the oracle.

    With ``path``, the plan is written as CSV (one row per sample: key plus one 0/1 column per
    repetition) so the splits behind every number are on disk next to the results.
    """
    plan = make_splits(samples["label"].to_numpy(), samples["domain"].to_numpy(),
                       n_repetitions=n_repetitions, test_size=test_size, random_state=seed)
    if path is not None:
        frame = plan.to_frame()
        frame.insert(0, "key", sample_keys(samples))
        frame.insert(1, "label", samples["label"].to_numpy())
        save_table(frame, path)
    return plan


def first_repetitions(plan: SplitPlan, n: int) -> SplitPlan:
    """The first ``n`` repetitions of a plan (an expensive classifier runs on fewer)."""
    return SplitPlan(is_test=plan.is_test[:n], train_only=plan.train_only, method=plan.method,
                     test_size=plan.test_size, random_state=plan.random_state)


def decoded_images(paths: Sequence[str], size: int) -> np.ndarray:
    """Images decoded and resized to ``(n, size, size, 3)`` uint8 (whole crop, no detection)."""
    from PIL import Image

    out = np.empty((len(paths), size, size, 3), np.uint8)
    for i, path in enumerate(paths):
        out[i] = np.asarray(Image.fromarray(load_image(path)).resize((size, size), Image.BILINEAR))
    return out


def save_feature_set(path: str | os.PathLike, keys: Sequence[str], X: np.ndarray, **info) -> Path:
    """Write one feature set (rows keyed by ``dataset/relpath``) as ``.npz``, atomically."""
    return save_npz(path, keys=np.asarray(list(keys)), X=np.asarray(X), info=np.asarray(repr(info)))


def load_feature_set(path: str | os.PathLike, samples: pd.DataFrame) -> np.ndarray:
    """The rows of a saved feature set for ``samples``, in their order.

    Raises
    ------
    KeyError
        Naming the missing images when the feature set does not cover every sample.
    """
    with np.load(path) as stored:
        index = pd.Index(stored["keys"])
        X = stored["X"]
    positions = index.get_indexer(sample_keys(samples))
    missing = sample_keys(samples)[positions < 0]
    if len(missing):
        raise KeyError(f"{path}: no features for {len(missing)} samples, e.g. {list(missing[:3])}")
    return X[positions]


def run_feature_sets(feature_sets: dict[str, np.ndarray], samples: pd.DataFrame, plan: SplitPlan,
                     label_space: str, seed: int, make_classifier: Callable[[int], object] | None = None,
                     train_domains: Sequence[str] | None = None, cross_domain_test: str = "test",
                     classifier_per_set: dict[str, Callable[[int], object]] | None = None):
    """The domain matrix of every feature set; returns ``(scores, predictions)`` concatenated.

    ``make_classifier`` (default: the released code's random forest) serves every set unless
    ``classifier_per_set`` names another factory for it.
    """
    from bcfeat.evaluation.benchmark import domain_matrix

    scores, predictions = [], []
    for name, X in feature_sets.items():
        factory = (classifier_per_set or {}).get(name, make_classifier)
        s, p = domain_matrix(X, samples["label"].to_numpy(), samples["domain"].to_numpy(), plan,
                             make_classifier=factory, label_space_name=label_space,
                             feature_set_name=name, random_state=seed, train_domains=train_domains,
                             cross_domain_test=cross_domain_test, return_predictions=True)
        scores.append(s)
        predictions.append(p)
    return pd.concat(scores, ignore_index=True), pd.concat(predictions, ignore_index=True)


def oracle_factory(config, checkpoint_pattern: Path, train: bool) -> Callable[[int], object]:
    """A ``random_state -> OracleClassifier`` factory for :func:`run_feature_sets`.

    ``train=False`` restores: every checkpoint the benchmark needs must already exist (the
    error names the missing file), and nothing is trained.
    """
    from bcfeat.evaluation.oracle import OracleClassifier

    def make(random_state: int):
        path = Path(str(checkpoint_pattern).replace("{seed}", str(random_state)))
        if not train and not path.exists():
            raise FileNotFoundError(f"restore requested but the oracle checkpoint {path} does not exist; "
                                    "run with train_oracle=True first")
        return OracleClassifier(config, random_state=random_state, checkpoint_path=path)

    return make


def oracle_checkpoint_pattern(checkpoints: str | os.PathLike, config: object, samples: pd.DataFrame, norm: str,
                              seed: int | None = None) -> Path:
    """Where 04_oracle keeps the oracle of one normalisation: ``{seed}`` left in the name for
    :func:`oracle_factory`, or filled with ``seed`` (the oracle of the repetition of that seed)."""
    path = Path(checkpoints) / f"oracle_{norm}_{run_key(samples, config)}_seed{{seed}}.pt"
    return path if seed is None else Path(str(path).replace("{seed}", str(seed)))


def benchmark_samples(root: Path, max_per_site: int = 0, seed: int = 0) -> dict[str, pd.DataFrame]:
    """The labelled samples of the benchmark: coarse5 on every site, common13 within the source site."""
    return {
        "coarse5": site_samples(root, "coarse5", SITES, max_per_site, seed),
        "common13": site_samples(root, "common13", (SOURCE_SITE,), max_per_site, seed),
    }


def union_samples(tables: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Every image that any of the tables uses, once (features are computed for these)."""
    table = pd.concat(tables, ignore_index=True)
    return table.drop_duplicates(subset=["dataset", "relpath"]).sort_values(["dataset", "relpath"]) \
        .reset_index(drop=True)


def feature_path(features_dir: str | os.PathLike, name: str) -> Path:
    """Where feature set ``name`` is stored in ``features_dir`` (the folder ``03_features`` makes)."""
    return Path(features_dir) / f"{name}.npz"


# ----------------------------------------------------------------------------- feature-set names
# Every feature set's name is made here: the benchmark's tables, the figures and the profiles
# refer to feature sets by these names, and asking for one that does not exist is an error.
RAW_PIXELS, COLOUR_SHAPE = "raw_pixels", "colour_shape"
BASELINE_FEATURE_SETS: tuple[str, ...] = (RAW_PIXELS, COLOUR_SHAPE)


def aecfe_feature_set(variant: str) -> str:
    """The feature set of one autoencoder variant's latent code.

    >>> aecfe_feature_set("moment")
    'aecfe_moment'
    """
    return f"aecfe_{variant}"


def oracle_feature_set(arch: str, norm: str) -> str:
    """The oracle's feature-set name in the tables, from its architecture and normalisation.

    >>> oracle_feature_set("narrow_resnet", "batch")
    'oracle (narrow_resnet, batch norm)'
    """
    return f"oracle ({arch}, {norm} norm)"


def oracle_short_name(norm: str) -> str:
    """The name a parameter list uses for the oracle of one normalisation, whatever its
    architecture (a full name holds a comma, which a comma-separated list cannot).

    >>> oracle_short_name("batch")
    'oracle_batch'
    """
    return f"oracle_{norm}"


def feature_set_names(features_dir: str | os.PathLike) -> list[str]:
    """The feature sets stored in ``features_dir``, sorted."""
    return sorted(p.stem for p in Path(features_dir).glob("*.npz"))


def resolve_feature_sets(requested: Sequence[str], available: Sequence[str],
                         aliases: dict[str, str] | None = None) -> list[str]:
    """``requested`` names (or short names in ``aliases``) as feature-set names, in their order.

    Raises
    ------
    ValueError
        Naming the unknown names and listing the valid ones.

    Examples
    --------
    >>> resolve_feature_sets(["a", "oracle_batch"], ["a", "oracle (x, batch norm)"],
    ...                      {"oracle_batch": "oracle (x, batch norm)"})
    ['a', 'oracle (x, batch norm)']
    """
    aliases = {k: v for k, v in (aliases or {}).items() if v in set(available)}
    names = [aliases.get(name, name) for name in requested]
    unknown = [r for r, n in zip(requested, names) if n not in set(available)]
    if unknown:
        valid = list(dict.fromkeys([*available, *aliases]))
        raise ValueError(f"unknown feature set(s) {unknown}; valid names are {valid}")
    return names


def load_feature_sets(features_dir: str | os.PathLike, names: Sequence[str],
                      samples: pd.DataFrame) -> dict[str, np.ndarray]:
    """The named feature sets of ``features_dir`` for ``samples`` (an unknown name is an error
    listing the feature sets the folder holds)."""
    resolve_feature_sets(names, feature_set_names(features_dir))
    return {name: load_feature_set(feature_path(features_dir, name), samples) for name in names}


# ----------------------------------------------------------------------------- hand-off files
def require_input(path: str | os.PathLike, made_by: str) -> Path:
    """``path`` if the file exists; else an error naming the stage that makes it."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: it is made by the stage {made_by}; run that stage first")
    return path


def write_handoff(path: str | os.PathLike, record: dict) -> Path:
    """Write a stage's hand-off record (JSON: what it made and with which settings), atomically."""
    import json

    from bcfeat.atomic_io import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(record, indent=2, sort_keys=True, default=str))
    return Path(path)


def read_handoff(path: str | os.PathLike, made_by: str) -> dict:
    """A hand-off record written by :func:`write_handoff`; the error names the stage that makes it."""
    import json

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: run the stage {made_by} first")
    return json.loads(path.read_text())


def oracle_handoff(configs: dict[str, object], samples: pd.DataFrame, checkpoints: str | os.PathLike,
                   seed: int, n_repetitions: int) -> dict:
    """What ``04_oracle`` hands on: per normalisation, its feature-set name and the checkpoint of
    every repetition it trained (repetition ``r`` is trained with seed ``seed + r``)."""
    return {"feature_sets": {oracle_short_name(norm): oracle_feature_set(cfg.arch, norm)
                             for norm, cfg in configs.items()},
            "checkpoints": {norm: [str(oracle_checkpoint_pattern(checkpoints, cfg, samples, norm, seed + r))
                                   for r in range(n_repetitions)]
                            for norm, cfg in configs.items()}}


def oracle_checkpoint(oracles_file: str | os.PathLike, norm: str, repetition: int = 0) -> Path:
    """The oracle checkpoint of one normalisation and repetition, as ``04_oracle`` recorded it."""
    record = read_handoff(oracles_file, "04_oracle")
    if norm not in record["checkpoints"]:
        raise ValueError(f"{oracles_file}: no oracle with {norm!r} norm; 04_oracle trained {sorted(record['checkpoints'])}")
    return Path(record["checkpoints"][norm][repetition])


def check_same_splits(plan: SplitPlan, path: str | os.PathLike) -> bool:
    """The splits file ``04_oracle`` wrote must hold the same splits as ``plan`` (every later
    stage tests on the same cells); True when it does."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"the splits file {path} does not exist: run the stage 04_oracle first")
    stored = pd.read_csv(path)
    fresh = plan.to_frame()
    cols = [c for c in fresh.columns if c in stored.columns]
    if len(stored) != len(fresh) or not (stored[cols].astype(str).values == fresh[cols].astype(str).values).all():
        raise ValueError(f"{path} holds other splits than this run's; re-run 04_oracle and 05_benchmark first")
    return True


def transform_paths(transformer, paths: Sequence[str], chunk: int = 500) -> np.ndarray:
    """``transformer.transform`` over image paths in chunks, so only ``chunk`` images are in memory."""
    parts = [transformer.transform(list(paths[start:start + chunk])) for start in range(0, len(paths), chunk)]
    return np.concatenate(parts)


def pca_forest_factory(n_components: int) -> Callable[[int], object]:
    """``random_state -> make_pipeline(PCA, random forest)``: PCA is fitted on each training split."""
    from sklearn.decomposition import PCA
    from sklearn.pipeline import make_pipeline

    from bcfeat.evaluation.benchmark import default_classifier

    def make(random_state: int):
        return make_pipeline(PCA(n_components=n_components, random_state=random_state),
                             default_classifier(random_state))

    return make


def source_row_table(summary: pd.DataFrame, source: str = SOURCE_SITE, metric: str = "balanced_accuracy") -> pd.DataFrame:
    """Feature sets (rows) x test sites (columns): ``mean ± std`` of ``metric`` for training on ``source``."""
    rows = summary[summary["train_domain"] == source]
    cell = rows.apply(lambda r: f"{r[f'{metric}_mean']:.3f} ± {0 if pd.isna(r[f'{metric}_std']) else r[f'{metric}_std']:.3f}",
                      axis=1)
    table = rows.assign(cell=cell).pivot(index="feature_set", columns="test_domain", values="cell")
    order = [s for s in SITES if s in table.columns]
    return table[order].loc[list(dict.fromkeys(rows["feature_set"]))]


def target_check(summary: pd.DataFrame, feature_set: str, unseen_min: float, in_domain_min: float,
                 source: str = SOURCE_SITE) -> pd.DataFrame:
    """The headline feature set's balanced accuracy per test site against the quality target."""
    rows = summary[(summary["feature_set"] == feature_set) & (summary["train_domain"] == source)]
    rows = rows[["feature_set", "test_domain", "balanced_accuracy_mean", "balanced_accuracy_std", "macro_f1_mean"]].copy()
    rows["target"] = [in_domain_min if d == source else unseen_min for d in rows["test_domain"]]
    rows["meets_target"] = rows["balanced_accuracy_mean"] >= rows["target"]
    return rows.reset_index(drop=True)


def mean_unseen_score(summary: pd.DataFrame, source: str = SOURCE_SITE, metric: str = "balanced_accuracy") -> pd.Series:
    """Each feature set's ``metric`` averaged over the sites it was not trained on, best first."""
    rows = summary[(summary["train_domain"] == source) & (summary["test_domain"] != source)]
    return rows.groupby("feature_set")[f"{metric}_mean"].mean().sort_values(ascending=False)


def compare_readings(summary_test: pd.DataFrame, summary_all: pd.DataFrame, feature_set: str,
                     source: str = SOURCE_SITE) -> pd.DataFrame:
    """Balanced accuracy per test site when scoring on its test split vs on all of its cells."""
    def pick(summary, column):
        rows = summary[(summary["feature_set"] == feature_set) & (summary["train_domain"] == source)]
        return rows.set_index("test_domain")["balanced_accuracy_mean"].rename(column)

    return pd.concat([pick(summary_test, "test split (this book)"),
                      pick(summary_all, "all cells (released code)")], axis=1)


def domain_invariance_table(feature_sets: dict[str, np.ndarray], samples: pd.DataFrame, seed: int,
                            site_classification, pairwise_mmd, source: str = SOURCE_SITE) -> pd.DataFrame:
    """Per feature set: site-classification accuracy (mean over folds) and MMD² from the source site."""
    rows = []
    domain = samples["domain"].to_numpy()
    for name, X in feature_sets.items():
        sites = site_classification(X, domain, feature_set_name=name, random_state=seed)
        mmd = pairwise_mmd(X, domain, feature_set_name=name, random_state=seed)
        row = {"feature_set": name, "site_accuracy": sites["accuracy"].mean(),
               "site_balanced_accuracy": sites["balanced_accuracy"].mean(), "chance": sites["chance"].iloc[0]}
        for _, pair in mmd.iterrows():
            if source in (pair["site_a"], pair["site_b"]):
                other = pair["site_b"] if pair["site_a"] == source else pair["site_a"]
                row[f"mmd2 to {other}"] = pair["mmd2"]
        rows.append(row)
    return pd.DataFrame(rows).set_index("feature_set")


def run_key(samples: pd.DataFrame, config: object = None) -> str:
    """A short hash of the samples (keys and labels) and a config: checkpoint names carry it, so a
    run on other data or settings never collides with (or is refused by) an older checkpoint."""
    import hashlib
    import json
    from dataclasses import asdict, is_dataclass

    digest = hashlib.sha256()
    digest.update("\n".join(sample_keys(samples) + "\t" + samples["label"].astype(str)).encode())
    settings = asdict(config) if is_dataclass(config) else config
    digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:10]
