"""One-shot pruning: prune once to the final sparsity at a given epoch, then hold the masks
while training (fine-tuning) goes on."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..sparsity import select_layers
from .base import Modifier, register_modifier
from .pruning import MaskedLayers, PruningConfig


class OneShotConfig(PruningConfig):
    type: Literal["oneshot"] = "oneshot"
    at_epoch: float = Field(0.0, ge=0.0)


@register_modifier("oneshot", OneShotConfig)
class OneShot(Modifier):
    def __init__(self, config: OneShotConfig, session) -> None:
        super().__init__(config, session)
        self.owned = MaskedLayers(select_layers(session.model, config), config)
        self.at_step = session.steps(config.at_epoch)
        self.done = False

    def _maybe_prune(self, session) -> None:
        if not self.done and session.global_step >= self.at_step:
            self.owned.prune_to(self.config.final_sparsity, session)
            self.done = True

    def on_start(self, session) -> None:
        self._maybe_prune(session)

    def on_step(self, session) -> None:
        self.owned.observe_gradients()
        self._maybe_prune(session)

    def state_dict(self) -> dict:
        return {"done": self.done}

    def load_state_dict(self, state: dict) -> None:
        self.done = bool(state["done"])
