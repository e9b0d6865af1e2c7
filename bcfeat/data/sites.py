"""The study's four sites (labs), defined once.

The paper trains on one lab's cells and tests on the others (Sec. 3); here the source is
Acevedo-20 (Barcelona) and the unseen sites are the two Zheng-18 sets and the BCCD crops.
Every table and figure lists the sites in this order.
"""

from __future__ import annotations

SITES: tuple[str, ...] = ("pbc_acevedo20", "jtsc_zheng18", "cellavision_zheng18", "bccd_crops")
# The site classifiers are trained on (the in-domain column of every table).
SOURCE_SITE: str = SITES[0]
