"""sparseforge: make trained PyTorch models smaller and measurably faster."""

from .data import load_dataset
from .models import create_model
from .recipe import Recipe, RecipeError, load_recipe
from .session import Session
from .sparsity import bake_masks, global_sparsity, layer_sparsity, load_masked_state_dict, prune
from .trainer import compress, train

__version__ = "0.1.0"

__all__ = [
    "Recipe", "RecipeError", "Session", "bake_masks", "compress", "create_model",
    "global_sparsity", "layer_sparsity", "load_dataset", "load_masked_state_dict", "load_recipe",
    "prune", "train",
]
