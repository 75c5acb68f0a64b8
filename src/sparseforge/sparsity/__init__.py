"""The mask engine: schemes shape masks, criteria score weights, schedules set targets over
time, masks live as parametrizations."""

from . import patterns  # noqa: F401  (registers the pattern scheme)
from .criteria import CRITERIA, TaylorAccumulator
from .masks import (
    Mask,
    apply_mask,
    bake_masks,
    get_mask,
    global_sparsity,
    layer_sparsity,
    load_masked_state_dict,
    masked_modules,
    masks_state,
)
from .pruner import compute_masks, layer_targets, prune, select_layers
from .schedules import Constant, Cubic
from .schemes import SCHEMES
from .spec import PruningSpec

__all__ = [
    "CRITERIA", "SCHEMES", "Constant", "Cubic", "Mask", "PruningSpec", "TaylorAccumulator",
    "apply_mask", "bake_masks", "compute_masks", "get_mask", "global_sparsity", "layer_sparsity",
    "layer_targets", "load_masked_state_dict", "masked_modules", "masks_state", "prune",
    "select_layers",
]
