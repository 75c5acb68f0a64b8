"""The modifier contract: a modifier decides *what happens when* during training (prune at a
step, regularize the loss, regrow weights) and leaves the tensor math to sparsity/. New
methods are new modifiers registered under a name that recipes use as `type`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel
from torch import Tensor, nn

from ..registry import Registry

if TYPE_CHECKING:
    from ..session import Session


class Modifier:
    """Base class: every hook is optional. Hooks run in the order modifiers are listed."""

    def __init__(self, config: BaseModel, session: Session) -> None:
        self.config = config

    @staticmethod
    def rebuild(model: nn.Module, config: BaseModel, seed: int) -> None:
        """Change `model`'s modules the way this modifier does when it is built (a state dict
        holds tensors, not modules): how a saved run's model is rebuilt before loading.
        Default: the modifier changes no modules."""

    def on_start(self, session: Session) -> None:
        """Once, before the first training step (not again on resume)."""

    def on_step(self, session: Session) -> None:
        """After each optimizer step; `session.global_step` counts the steps done."""

    def on_epoch_end(self, session: Session) -> None:
        """After each epoch; `session.epoch` counts the epochs done."""

    def on_batch(self, session: Session, indices: Tensor, correct: Tensor) -> None:
        """After each training batch (before the optimizer step): the batch's indices into the
        training set and a bool per example, True if the model classified it correctly."""

    def example_filter(self, session: Session, n_examples: int) -> Tensor | None:
        """Before each epoch: a bool per training example, True to train on it this epoch,
        or None to keep all (data-efficient methods drop examples here)."""
        return None

    def loss(self, session: Session) -> Tensor | None:
        """An extra loss term (a regularizer), or None."""
        return None

    def metrics(self) -> dict[str, float]:
        """Numbers to log with the epoch's metrics."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


@dataclass(frozen=True)
class ModifierEntry:
    config: type[BaseModel]
    build: Callable[[BaseModel, Session], Modifier]


MODIFIERS: Registry[ModifierEntry] = Registry("modifier")


def register_modifier(name: str, config: type[BaseModel]):
    """Class decorator: register a Modifier under `name` with its pydantic config, whose
    `type` field must be `Literal[name]`."""

    def add(cls: type[Modifier]) -> type[Modifier]:
        MODIFIERS.register(name)(ModifierEntry(config, cls))
        return cls

    return add
