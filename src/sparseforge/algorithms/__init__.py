"""Training-time methods, one module each, registered as modifiers that recipes name."""

from . import admm, gap, gap_parallel, gmp, lottery, mest, oneshot, prosparse, qat  # noqa: F401  (registers the modifiers)
from .base import MODIFIERS, Modifier, register_modifier

__all__ = ["MODIFIERS", "Modifier", "register_modifier"]
