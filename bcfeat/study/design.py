"""The study's design, chosen once: which sites, which source, how many cells, which splits, which
feature set is the headline.

By default the study trains on Acevedo-20 and tests on the two Zheng-18 sets and the BCCD
crops, the four sets on these machines. A user holding the paper's other datasets runs its own
protocol by naming them (``-p sites matek19,mll23,pbc_acevedo20 -p source_site matek19 -p
label_space common13``): :class:`StudySites` checks such a choice before any work. Every table
and figure lists the sites in the order given.

:class:`StudyDesign` adds the sizes (cells per site, repetitions of the splits), the seed of the
samples and splits and the headline feature set. The first stage (``00_data_overview``) takes
them as parameters and writes them, with the splits, to the design file
(:func:`bcfeat.study.samples.write_study_design`); every later stage declares that file as an
input (:mod:`bcfeat.runner.stages`) and reads its design from it, so one ``-p`` changes one
experiment and no stage re-derives another's choice.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from typing import Any

from bcfeat.data.registry import DATASETS
from bcfeat.data.sites import CROSS_SITE_LABEL_SPACES, FINE_LABEL_DATASETS, SITES, SOURCE_SITE
from bcfeat.validation import require_int


def parse_list(text: str) -> list[str]:
    """A comma-separated notebook parameter as a list (blank entries dropped)."""
    return [item.strip() for item in str(text).split(",") if item.strip()]


@dataclass(frozen=True)
class StudySites:
    """Which labs a run of the study uses, which one it trains on, and the label space of the
    table in which every site is trained on and tested on.

    Attributes
    ----------
    sites : tuple of str
        Dataset names of the registry (:data:`bcfeat.data.registry.DATASETS`), in table order.
    source : str
        The site every classifier and the cross-lab model are trained on; one of ``sites``.
    label_space : {"coarse5", "common13"}
        ``"coarse5"``: the coarse5 table covers every site and common13 is scored within the
        source site (the four shared sets have common13 labels for Acevedo-20 only).
        ``"common13"``: the paper's table, every site as source and target in common13; every
        site must have fine labels (:data:`FINE_LABEL_DATASETS`).

    Examples
    --------
    >>> StudySites.from_parameters("matek19, mll23,pbc_acevedo20", "matek19", "common13").unseen
    ('mll23', 'pbc_acevedo20')
    >>> StudySites.from_parameters("pbc_acevedo20,bccd_crops", "matek19")
    Traceback (most recent call last):
    ...
    ValueError: source_site 'matek19' is not one of the sites ['pbc_acevedo20', 'bccd_crops']
    """

    sites: tuple[str, ...] = SITES
    source: str = SOURCE_SITE
    label_space: str = "coarse5"

    def __post_init__(self) -> None:
        sites = tuple(self.sites)
        object.__setattr__(self, "sites", sites)
        unknown = [s for s in sites if s not in DATASETS]
        if unknown:
            raise ValueError(f"sites: unknown dataset(s) {unknown}; known: {sorted(DATASETS)}")
        doubles = sorted({s for s in sites if sites.count(s) > 1})
        if doubles:
            raise ValueError(f"sites: {doubles} named twice")
        if len(sites) < 2:
            raise ValueError(f"sites: a cross-site study needs at least two sites, got {list(sites)}")
        if self.source not in sites:
            raise ValueError(f"source_site {self.source!r} is not one of the sites {list(sites)}")
        if self.label_space not in CROSS_SITE_LABEL_SPACES:
            raise ValueError(f"label_space must be one of {list(CROSS_SITE_LABEL_SPACES)}, got {self.label_space!r}")
        coarse_only = [s for s in sites if s not in FINE_LABEL_DATASETS]
        if self.label_space == "common13" and coarse_only:
            raise ValueError(f"label_space common13 needs fine labels on every site; {coarse_only} only have "
                             f"coarse5 labels (sites with fine labels: {list(FINE_LABEL_DATASETS)})")

    @classmethod
    def from_parameters(cls, sites: str, source_site: str | None = None, label_space: str = "coarse5") -> StudySites:
        """The design from a notebook's parameters: comma-separated site names (blanks dropped);
        ``source_site`` None (a stage that trains no classifier): the first site."""
        names = tuple(parse_list(sites))
        return cls(names, names[0] if source_site is None and names else (source_site or ""), label_space)

    @property
    def unseen(self) -> tuple[str, ...]:
        """The sites other than the source, in order."""
        return tuple(s for s in self.sites if s != self.source)

    @property
    def common13_sites(self) -> tuple[str, ...]:
        """The sites scored in common13: all of them in the paper's table, else the source."""
        return self.sites if self.label_space == "common13" else (self.source,)

    def sites_for(self, label_space: str) -> tuple[str, ...]:
        """The sites with labelled samples in ``label_space``: every site in coarse5, and
        :attr:`common13_sites` in common13."""
        if label_space not in CROSS_SITE_LABEL_SPACES:
            raise ValueError(f"label_space must be one of {list(CROSS_SITE_LABEL_SPACES)}, got {label_space!r}")
        return self.sites if label_space == "coarse5" else self.common13_sites

    def order(self, names: Iterable[str]) -> list[str]:
        """``names`` (each once) with the study's sites first in the study's order, then any other."""
        present = list(dict.fromkeys(names))
        return [s for s in self.sites if s in present] + [s for s in present if s not in self.sites]


DEFAULT_SITES = StudySites()


DESIGN_FORMAT = "bcfeat-study-design/1"
HEADLINE_PREFIX = "aecfe_"  # the headline is one autoencoder variant's latent code


@dataclass(frozen=True)
class StudyDesign:
    """Everything a run of the study fixes once and every stage shares.

    Attributes
    ----------
    sites : StudySites
        The sites, the source site and the label space of the paper's table.
    max_per_site : int
        0: every image; else a seeded class-stratified subset of this many images per site.
    n_repetitions : int
        Stratified train/test splits of every site (the oracle, the forests and the cross-lab
        model are all tested on them).
    seed : int
        Seed of the subsets and of the splits.
    headline : str
        The feature set of the headline numbers: ``aecfe_<variant>``, one autoencoder variant's
        latent code (``02_autoencoder`` must train that variant).
    test_size : float
        Share of every class of a site in the test split.

    Examples
    --------
    >>> StudyDesign.from_parameters("pbc_acevedo20,bccd_crops", "pbc_acevedo20", n_repetitions=2).headline_variant
    'moment'
    >>> StudyDesign.from_parameters("pbc_acevedo20,bccd_crops", headline="moment")
    Traceback (most recent call last):
    ...
    ValueError: headline must name an autoencoder variant's feature set, aecfe_<variant>, got 'moment'
    """

    sites: StudySites = DEFAULT_SITES
    max_per_site: int = 0
    n_repetitions: int = 5
    seed: int = 0
    headline: str = "aecfe_moment"
    test_size: float = 0.2

    def __post_init__(self) -> None:
        require_int("max_per_site", self.max_per_site, 0, meaning="0: every image; else images per site")
        require_int("n_repetitions", self.n_repetitions, 1)
        require_int("seed", self.seed, 0)
        if not isinstance(self.headline, str) or not self.headline.startswith(HEADLINE_PREFIX) \
                or len(self.headline) == len(HEADLINE_PREFIX):
            raise ValueError(f"headline must name an autoencoder variant's feature set, {HEADLINE_PREFIX}<variant>, "
                             f"got {self.headline!r}")
        if not 0 < float(self.test_size) < 1:
            raise ValueError(f"test_size must be in (0, 1), got {self.test_size!r}")

    @classmethod
    def from_parameters(cls, sites: str, source_site: str | None = None, label_space: str = "coarse5",
                        max_per_site: int = 0, n_repetitions: int = 5, seed: int = 0,
                        headline: str = "aecfe_moment") -> StudyDesign:
        """The design from the first stage's parameters (see :meth:`StudySites.from_parameters`)."""
        return cls(StudySites.from_parameters(sites, source_site, label_space), max_per_site, n_repetitions, seed,
                   headline)

    @property
    def headline_variant(self) -> str:
        """The autoencoder variant whose features are the headline (``moment`` for ``aecfe_moment``)."""
        return self.headline[len(HEADLINE_PREFIX):]

    def to_record(self) -> dict[str, Any]:
        """The design as JSON-ready values (the design file's ``design`` entry)."""
        return {"sites": list(self.sites.sites), "source_site": self.sites.source, "label_space": self.sites.label_space,
                "max_per_site": self.max_per_site, "n_repetitions": self.n_repetitions, "seed": self.seed,
                "headline": self.headline, "test_size": self.test_size}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> StudyDesign:
        """The inverse of :meth:`to_record`; a missing or unknown entry is an error naming it."""
        expected = set(cls().to_record())
        if not isinstance(record, dict) or set(record) != expected:
            got = sorted(record) if isinstance(record, dict) else type(record).__name__
            raise ValueError(f"a study design needs the entries {sorted(expected)}, got {got}")
        return cls(StudySites(tuple(record["sites"]), record["source_site"], record["label_space"]),
                   record["max_per_site"], record["n_repetitions"], record["seed"], record["headline"],
                   record["test_size"])
