"""ProSparse (Song et al., COLING 2025) as a modifier: on start, FFN activations become
FATReLU (ReLU at threshold 0); the loss adds λ(t) · mean L1 of the FFN activation outputs, λ
rising along sine-staged curves. Threshold shifting (step 3) runs after training with
`sparseforge.activation.search_threshold`, since it needs a quality function of the user's."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ..activation.regularize import L1Collector, SineStages
from ..activation.relu import fatrelu_modules, substitute_activations
from .base import Modifier, register_modifier


class ProSparseConfig(BaseModel):
    """`schedule` starts and warm-ups are in epochs (fractions allowed)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["prosparse"] = "prosparse"
    schedule: SineStages
    patterns: list[str] | None = Field(
        None,
        description="fnmatch patterns naming the FFN modules of a plain model (e.g. "
        "'blocks.*.mlp'); none = HF BERT/LLaMA-family FFNs",
    )
    threshold: float = Field(0.0, ge=0.0, description="FATReLU threshold during training")


@register_modifier("prosparse", ProSparseConfig)
class ProSparse(Modifier):
    def __init__(self, config: ProSparseConfig, session) -> None:
        super().__init__(config, session)
        self.schedule = config.schedule.scaled(session.steps_per_epoch)
        # at build time, not on_start: a resumed run (no on_start) needs its FATReLUs too
        self.sites = substitute_activations(session.model, config.patterns, threshold=config.threshold)
        modules = fatrelu_modules(session.model)
        self.collector: L1Collector | None = L1Collector({name: modules[name] for name in self.sites})
        self.current_lambda = 0.0
        self.last_l1 = 0.0

    @staticmethod
    def rebuild(model, config: ProSparseConfig, seed: int) -> None:
        substitute_activations(model, config.patterns, threshold=config.threshold)

    def loss(self, session):
        l1 = self.collector.pop() if self.collector is not None else None
        if l1 is None:
            return None
        self.current_lambda = self.schedule(session.global_step)
        self.last_l1 = float(l1.detach())
        return self.current_lambda * l1

    def metrics(self) -> dict[str, float]:
        return {"prosparse_lambda": self.current_lambda, "ffn_l1": self.last_l1}
