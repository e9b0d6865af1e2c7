"""Scoring features across labs: the random-forest benchmark (on the splits of
:mod:`bcfeat.data.splits`), the baselines, the supervised oracle and the domain-invariance measures."""
