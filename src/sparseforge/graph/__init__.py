"""Graph-level structure: model capture, channel dependency groups, physical channel removal,
and equivalence-preserving fusion (FuPruner)."""
