"""Gradual magnitude pruning (Zhu & Gupta 2017): raise sparsity along the cubic schedule,
recomputing masks every `update_every` epochs between `start_epoch` and `end_epoch`, over any
scheme and criterion."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from ..sparsity import Cubic, select_layers
from ..sparsity.spec import Fraction
from .base import Modifier, register_modifier
from .pruning import MaskedLayers, PruningConfig


class GMPConfig(PruningConfig):
    type: Literal["gmp"] = "gmp"
    initial_sparsity: Fraction = 0.0
    start_epoch: float = Field(0.0, ge=0.0)
    end_epoch: float = Field(..., gt=0.0)
    update_every: float = Field(0.25, gt=0.0, description="epochs between mask updates")

    @model_validator(mode="after")
    def _ordered(self) -> GMPConfig:
        if self.end_epoch <= self.start_epoch:
            raise ValueError(
                f"end_epoch ({self.end_epoch}) must come after start_epoch ({self.start_epoch})"
            )
        if self.initial_sparsity > self.final_sparsity:
            raise ValueError("initial_sparsity must not exceed the final sparsity")
        return self


@register_modifier("gmp", GMPConfig)
class GradualMagnitude(Modifier):
    def __init__(self, config: GMPConfig, session) -> None:
        super().__init__(config, session)
        self.owned = MaskedLayers(select_layers(session.model, config), config)
        self.start = session.steps(config.start_epoch)
        self.end = max(self.start + 1, session.steps(config.end_epoch))
        self.every = max(1, session.steps(config.update_every))
        self.schedule = Cubic(config.initial_sparsity, config.final_sparsity, self.start, self.end)
        self.current = 0.0

    def _update_due(self, step: int) -> bool:
        if step < self.start or step > self.end:
            return False
        return step == self.end or (step - self.start) % self.every == 0

    def on_start(self, session) -> None:
        if self.start == 0 and self.config.initial_sparsity > 0:
            self._prune(session, 0)

    def on_step(self, session) -> None:
        self.owned.observe_gradients()
        step = session.global_step
        if self._update_due(step):
            self._prune(session, step)

    def _prune(self, session, step: int) -> None:
        self.current = self.schedule(step)
        self.owned.prune_to(self.current, session)

    def metrics(self) -> dict[str, float]:
        return {"target_sparsity": self.current}

    def state_dict(self) -> dict:
        return {"current": self.current}

    def load_state_dict(self, state: dict) -> None:
        self.current = float(state["current"])
