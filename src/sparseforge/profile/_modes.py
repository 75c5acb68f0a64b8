"""Put a model in eval mode for a measurement and give every submodule its own training flag
back afterwards, so profiling never changes the model it looks at."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


@contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode inside the block; each module's previous `training` flag restored on exit."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, was_training in flags:
            module.training = was_training
