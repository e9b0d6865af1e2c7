"""The study's steps, one module per notebook chapter, and the plumbing they share (samples,
splits, feature sets)."""
