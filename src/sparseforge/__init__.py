"""sparseforge: make trained PyTorch models smaller and measurably faster."""

from .data import load_dataset
from .graph import PrunePlan, apply_plan, fuse, prune_channels
from .models import create_model
from .profile.memory import MemoryRecorder
from .recipe import Recipe, RecipeError, load_recipe
from .runtime import check_onnx, export_model
from .session import Session
from .sparsity import bake_masks, global_sparsity, layer_sparsity, load_masked_state_dict, prune
from .trainer import compress, train

__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "profile_memory":  # its report imports matplotlib: loaded on first use
        from .profile.memory import profile_memory

        return profile_memory
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "MemoryRecorder", "PrunePlan", "Recipe", "RecipeError", "Session", "apply_plan", "bake_masks", "check_onnx", "compress", "create_model",
    "export_model", "fuse", "global_sparsity", "layer_sparsity", "load_dataset", "load_masked_state_dict",
    "load_recipe", "profile_memory", "prune", "prune_channels", "train",
]
