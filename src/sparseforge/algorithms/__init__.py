"""Training-time methods, one module each, registered as modifiers that recipes name."""

from . import (  # noqa: F401  (registers the modifiers)
    act_semi_structured,
    admm,
    gap,
    gap_parallel,
    gmp,
    lottery,
    mest,
    oneshot,
    prosparse,
    qat,
)
from .base import MODIFIERS, Modifier, register_modifier

__all__ = ["MODIFIERS", "Modifier", "register_modifier"]
