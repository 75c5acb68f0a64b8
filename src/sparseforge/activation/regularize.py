"""Progressive sparsity regularization (ProSparse step 2): the sine-staged factor λ(t) as a pure
function, and an L1 collector that hooks FFN activation outputs during the training forward."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor, nn


def sine_staged_lambda(
    t: float, lambdas: Sequence[float], starts: Sequence[float], warmups: Sequence[float]
) -> float:
    """λ(t) for stages i = 1..K: 0 before `starts[0]`; inside stage i (t >= starts[i]),
    λ_{i-1} + (λ_i − λ_{i-1}) · sin(π/2 · min(1, (t − t_i) / w_i)), with λ_0 = 0;
    a warm-up of 0 jumps straight to λ_i."""
    value = 0.0
    previous = 0.0
    for lam, start, warm in zip(lambdas, starts, warmups, strict=True):
        if t < start:
            break
        frac = 1.0 if warm <= 0 else min(1.0, (t - start) / warm)
        value = previous + (lam - previous) * math.sin(0.5 * math.pi * frac)
        previous = lam
    return value


class SineStages(BaseModel):
    """The stage targets λ_1 < ... < λ_K, stage starts t_1 < ... < t_K and warm-up lengths w_i
    (in steps, or epochs where a modifier says so). A stage must finish its warm-up before the
    next one starts, so λ(t) is continuous and non-decreasing."""

    model_config = ConfigDict(extra="forbid")

    lambdas: list[float] = Field(..., min_length=1)
    starts: list[float]
    warmups: list[float]

    @model_validator(mode="after")
    def _consistent(self) -> SineStages:
        k = len(self.lambdas)
        if len(self.starts) != k or len(self.warmups) != k:
            raise ValueError(
                f"lambdas, starts and warmups need one entry per stage: got {k}, "
                f"{len(self.starts)} and {len(self.warmups)}"
            )
        if self.lambdas[0] <= 0 or any(
            b <= a for a, b in zip(self.lambdas, self.lambdas[1:], strict=False)
        ):
            raise ValueError(f"lambdas must be positive and increasing, got {self.lambdas}")
        if self.starts[0] < 0 or any(w < 0 for w in self.warmups):
            raise ValueError("starts and warmups must be >= 0")
        for i in range(k - 1):
            if self.starts[i] + self.warmups[i] > self.starts[i + 1]:
                raise ValueError(
                    f"stage {i + 1} starts at {self.starts[i]} with warm-up {self.warmups[i]}, "
                    f"past the start of stage {i + 2} ({self.starts[i + 1]}); shorten the "
                    "warm-up or start the next stage later"
                )
        return self

    def __call__(self, t: float) -> float:
        return sine_staged_lambda(t, self.lambdas, self.starts, self.warmups)

    def scaled(self, factor: float) -> SineStages:
        """The same stages with starts and warm-ups multiplied by `factor` (epochs -> steps)."""
        return SineStages(
            lambdas=self.lambdas,
            starts=[s * factor for s in self.starts],
            warmups=[w * factor for w in self.warmups],
        )


def masked_mean_abs(x: Tensor, token_mask: Tensor | None) -> Tensor:
    """Mean |x| over all entries, or over the tokens where `token_mask` (B, T) is true when
    x is (B, T, I): mean over tokens of the L1 norm divided by the width I."""
    if token_mask is None:
        return x.abs().mean()
    m = token_mask.to(x.dtype).unsqueeze(-1)  # (B, T, 1)
    return (x.abs() * m).sum() / (m.sum() * x.shape[-1]).clamp_min(1.0)


class L1Collector:
    """Forward hooks on activation modules that record, during forward passes with gradients
    enabled, each layer's mean |activation| (see `masked_mean_abs`). `pop()` returns the mean
    over layers and calls since the last pop and clears it. Forwards under `no_grad`
    (evaluation) are not recorded. Set `token_mask` to a (B, T) bool tensor before a forward
    to leave padding tokens out."""

    def __init__(self, modules: Mapping[str, nn.Module] | Sequence[nn.Module]) -> None:
        mods = list(modules.values()) if isinstance(modules, Mapping) else list(modules)
        if not mods:
            raise ValueError("L1Collector needs at least one activation module")
        self.token_mask: Tensor | None = None
        self._values: list[Tensor] = []
        self._handles = [m.register_forward_hook(self._hook) for m in mods]

    def _hook(self, module: nn.Module, args, output: Tensor) -> None:
        if torch.is_grad_enabled():
            self._values.append(masked_mean_abs(output, self.token_mask))

    def pop(self) -> Tensor | None:
        """Mean recorded L1 since the last pop (a scalar with grad), or None if nothing ran."""
        if not self._values:
            return None
        out = torch.stack(self._values).mean()
        self._values = []
        return out

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self._values = []

    def __enter__(self) -> L1Collector:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()
