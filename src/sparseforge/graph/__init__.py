"""Graph-level structure: model capture, channel dependency groups, physical channel removal,
and equivalence-preserving fusion (FuPruner)."""

from .capture import Captured, capture
from .dependency import ChannelGroup, DependencyGraph, dependency_graph
from .fusion import FusionResult, fold_affine, fold_batchnorm, fold_padding, fuse, remove_identity
from .importance import IMPORTANCE, unit_scores
from .prune import PrunePlan, apply_plan, prune_channels, select_units
from .shrink import HeadPrunedAttention, channel_mask, shrink

__all__ = [
    "IMPORTANCE", "Captured", "ChannelGroup", "DependencyGraph", "FusionResult",
    "HeadPrunedAttention", "PrunePlan", "apply_plan", "capture", "channel_mask",
    "dependency_graph", "fold_affine", "fold_batchnorm", "fold_padding", "fuse",
    "prune_channels", "remove_identity", "select_units", "shrink", "unit_scores",
]
