"""sparseforge: make trained PyTorch models smaller and measurably faster."""

from .recipe import Recipe, RecipeError, load_recipe
from .session import Session
from .sparsity import bake_masks, global_sparsity, layer_sparsity, prune

__version__ = "0.1.0"

__all__ = [
    "Recipe", "RecipeError", "Session", "bake_masks", "global_sparsity", "layer_sparsity",
    "load_recipe", "prune",
]
