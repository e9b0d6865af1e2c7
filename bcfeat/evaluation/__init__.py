"""Scoring features across labs: repeated splits, the random-forest benchmark, the baselines,
the supervised oracle and the domain-invariance measures."""
