"""The study's default sites (labs), defined once.

The paper trains on one lab's cells and tests on the others (Sec. 3); by default the source is
Acevedo-20 (Barcelona) and the unseen sites are the two Zheng-18 sets and the BCCD crops, the
four sets on these machines. A run may name others (:class:`bcfeat.study.design.StudySites`).
"""

from __future__ import annotations

SITES: tuple[str, ...] = ("pbc_acevedo20", "jtsc_zheng18", "cellavision_zheng18", "bccd_crops")
# The site classifiers are trained on (the in-domain column of every table).
SOURCE_SITE: str = SITES[0]
# Datasets whose labels name the fine cell type (so that they have common13 labels); the others
# only say "neutrophil" or "lymphocyte", which lies outside common13.
FINE_LABEL_DATASETS: tuple[str, ...] = ("pbc_acevedo20", "matek19", "mll23")
# The label space of the table in which every site is both source and target.
CROSS_SITE_LABEL_SPACES: tuple[str, ...] = ("coarse5", "common13")
