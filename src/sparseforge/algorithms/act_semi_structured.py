"""Semi-structured activation sparsity (Grimaldi et al. 2023) as a modifier: the selected convs
become `SemiStructuredConv2d`, whose tile mask on the im2col/GEMM layout rises from
`initial_ratio` to `ratio` along a cubic or linear schedule between `start_epoch` and
`end_epoch`, re-chosen every `update_every` epochs; at `end_epoch` the masks freeze, and from
then on eval mode (validation, the summary, deployment) runs the runtime that skips the masked
tiles. The tensor math lives in `activation.semi_structured`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from ..activation.im2col_tiles import DEFAULT_TILE, check_tile
from ..activation.semi_structured import (
    SemiStructuredConv2d,
    default_layers,
    wrap_convs,
    wrappable_convs,
)
from ..sparsity import Cubic
from ..sparsity.spec import Fraction, name_matches
from .base import Modifier, register_modifier


@dataclass(frozen=True)
class Linear:
    """r(t) rising linearly from `initial` at t0 to `final` at t1, held outside."""

    initial: float
    final: float
    start: int
    end: int

    def __call__(self, step: int) -> float:
        if step <= self.start:
            return self.initial
        if step >= self.end:
            return self.final
        return self.initial + (self.final - self.initial) * (step - self.start) / (self.end - self.start)


class SemiStructuredActivationConfig(BaseModel):
    """`ratio` is the final masked fraction of each layer's im2col matrix; `tile` is
    (channels,) for geometry `channel` and (output rows, output columns) for `spatial`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["semi_structured_activation"] = "semi_structured_activation"
    geometry: Literal["channel", "spatial"] = "channel"
    tile: tuple[Annotated[int, Field(ge=1)], ...] | None = Field(
        None, description="tile shape; default (4,) for channel, (2, 2) for spatial")
    ratio: float = Field(..., gt=0.0, lt=1.0, description="final masked ratio")
    initial_ratio: Fraction = 0.0
    schedule: Literal["cubic", "linear"] = "cubic"
    criterion: Literal["magnitude", "random"] = Field(
        "magnitude", description="tiles with the lowest mean |activation| go first, or random")
    contiguous: bool = Field(
        False, description="channel geometry: keep one contiguous run of channel tiles, so the "
        "runtime slices its input instead of gathering the kept channels")
    start_epoch: float = Field(0.0, ge=0.0)
    end_epoch: float = Field(..., gt=0.0, description="the ratio is final and masks freeze here")
    update_every: float = Field(0.25, gt=0.0, description="epochs between mask updates")
    layers: list[str] | None = Field(
        None, description="glob (or re:) patterns of convs; none = every conv but the first")
    ignore: list[str] = []

    @model_validator(mode="after")
    def _consistent(self) -> SemiStructuredActivationConfig:
        check_tile(self.geometry, self.tile or DEFAULT_TILE[self.geometry])
        if self.contiguous and self.geometry != "channel":
            raise ValueError("contiguous: true needs geometry: channel")
        if self.end_epoch <= self.start_epoch:
            raise ValueError(
                f"end_epoch ({self.end_epoch}) must come after start_epoch ({self.start_epoch})")
        if self.initial_ratio > self.ratio:
            raise ValueError("initial_ratio must not exceed the final ratio")
        return self


def _select(model: nn.Module, config: SemiStructuredActivationConfig) -> list[str]:
    """The convs to wrap: `layers` (any wrappable conv) or every wrappable conv but the first,
    minus `ignore`."""
    if config.layers is None:
        picked = default_layers(model)
    else:
        wrappable = set(wrappable_convs(model))
        picked = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)
                  and any(name_matches(n, p) for p in config.layers)]
        bad = [n for n in picked if n not in wrappable]
        if bad:
            raise ValueError(
                f"layers {bad} cannot carry semi-structured activation sparsity (it needs "
                f"groups=1, numeric zero padding and no weight mask); exclude them with "
                f"`ignore`; wrappable convs: {sorted(wrappable)}")
    picked = [n for n in picked if not any(name_matches(n, p) for p in config.ignore)]
    if not picked:
        raise ValueError(f"no conv selected (layers={config.layers}, ignore={config.ignore}); "
                         f"wrappable convs: {wrappable_convs(model)}")
    return picked


def wrap_model(model: nn.Module, config: SemiStructuredActivationConfig,
               seed: int = 0) -> dict[str, SemiStructuredConv2d]:
    """Wrap the convs `config` selects, as the modifier does: also how a saved run's model is
    rebuilt before its state dict (with the tile masks) is loaded."""
    return wrap_convs(model, _select(model, config), geometry=config.geometry, tile=config.tile,
                      criterion=config.criterion, seed=seed, contiguous=config.contiguous)


@register_modifier("semi_structured_activation", SemiStructuredActivationConfig)
class SemiStructuredActivation(Modifier):
    def __init__(self, config: SemiStructuredActivationConfig, session) -> None:
        super().__init__(config, session)
        self.layers = wrap_model(session.model, config, seed=session.recipe.train.seed)
        self.start = session.steps(config.start_epoch)
        self.end = max(self.start + 1, session.steps(config.end_epoch))
        self.every = max(1, session.steps(config.update_every))
        shape = Cubic if config.schedule == "cubic" else Linear
        self.schedule = shape(config.initial_ratio, config.ratio, self.start, self.end)
        self.current = 0.0
        self.frozen = False

    @staticmethod
    def rebuild(model: nn.Module, config: SemiStructuredActivationConfig, seed: int) -> None:
        wrap_model(model, config, seed=seed)

    def _update_due(self, step: int) -> bool:
        if self.frozen or step < self.start or step > self.end:
            return False
        return step == self.end or (step - self.start) % self.every == 0

    def on_start(self, session) -> None:
        if self.start == 0 and self.config.initial_ratio > 0:
            self._set(0)

    def on_step(self, session) -> None:
        step = session.global_step
        if self._update_due(step):
            self._set(step)
        if step >= self.end and not self.frozen:
            self._freeze()

    def _set(self, step: int) -> None:
        self.current = self.schedule(step)
        for layer in self.layers.values():
            layer.set_ratio(self.current)

    def _freeze(self) -> None:
        for layer in self.layers.values():
            if layer._pending and layer.tile_keep.numel():
                layer._choose()
            layer.frozen = True
        self.frozen = True

    def masked_ratios(self) -> dict[str, float]:
        """Each wrapped layer's masked fraction of its im2col matrix now."""
        return {name: layer.masked_ratio for name, layer in self.layers.items()}

    def metrics(self) -> dict[str, float]:
        ratios = list(self.masked_ratios().values())
        return {"act_target_ratio": self.current,
                "act_masked_ratio": sum(ratios) / max(1, len(ratios))}

    def state_dict(self) -> dict:
        return {"current": self.current, "frozen": self.frozen}

    def load_state_dict(self, state: dict) -> None:
        self.current, self.frozen = float(state["current"]), bool(state["frozen"])
        for layer in self.layers.values():  # the masks themselves come with the model's state
            layer.ratio, layer.frozen = self.current, self.frozen
