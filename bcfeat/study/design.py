"""The sites a run of the study uses, checked once: the study's design as parameters.

By default the study trains on Acevedo-20 and tests on the two Zheng-18 sets and the BCCD
crops, the four sets on these machines. A user holding the paper's other datasets runs its own
protocol by naming them (``-p sites matek19,mll23,pbc_acevedo20 -p source_site matek19 -p
label_space common13``): :class:`StudySites` checks such a choice before any work, and every
stage reads its sites from it. Every table and figure lists the sites in the order given.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from bcfeat.data.registry import DATASETS
from bcfeat.data.sites import CROSS_SITE_LABEL_SPACES, FINE_LABEL_DATASETS, SITES, SOURCE_SITE


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

    def order(self, names: Iterable[str]) -> list[str]:
        """``names`` (each once) with the study's sites first in the study's order, then any other."""
        present = list(dict.fromkeys(names))
        return [s for s in self.sites if s in present] + [s for s in present if s not in self.sites]


DEFAULT_SITES = StudySites()
