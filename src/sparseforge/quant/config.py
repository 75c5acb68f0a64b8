"""What to quantize and how, as pydantic models (unknown keys are errors): one `TensorQuant`
for weights, one (or none) for the activations entering each quantized layer."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..sparsity.spec import LayerSelection


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


Granularity = Literal["per_tensor", "per_channel", "per_token"]


class TensorQuant(_Strict):
    """How one tensor is quantized. Symmetric grids are narrow (int8: -127..127, int4: -7..7,
    zero point 0); asymmetric grids are unsigned (uint8: 0..255, uint4: 0..15) with an integer
    zero point, and the range always includes 0, so 0.0 is represented exactly either way.
    `per_channel`: one scale per output channel of a weight (dim 0) or per channel of an
    activation (dim 1). `per_token`: activations only, one scale per row over the channel
    dim, computed on the fly (dynamic, no observer)."""

    bits: Literal[4, 8] = 8
    symmetric: bool = True
    granularity: Granularity = "per_channel"
    observer: Literal["minmax", "moving_average", "percentile", "mse"] = "minmax"
    percentile: float = Field(99.99, gt=50.0, le=100.0, description="percentile observer: kept share")
    averaging_constant: float = Field(0.01, gt=0.0, le=1.0, description="moving_average: EMA weight")
    mse_grid: int = Field(100, ge=2, description="mse observer: clipping ratios tried in (0, 1]")


class QuantSpec(_Strict):
    """Weights (default int8, symmetric, per output channel, min-max) and optionally the
    activations entering each selected layer; layers are picked like pruning's `layers:`."""

    weights: TensorQuant = TensorQuant()
    activations: TensorQuant | None = TensorQuant(symmetric=False, granularity="per_tensor")
    layers: LayerSelection = LayerSelection(types=["Conv1d", "Conv2d", "Conv3d", "Linear"])

    @model_validator(mode="after")
    def _valid_granularities(self) -> QuantSpec:
        if self.weights.granularity == "per_token":
            raise ValueError("weights.granularity: per_token is for activations; "
                             "use per_channel (one scale per output channel) or per_tensor")
        return self


class QuantConfig(QuantSpec):
    """Post-training quantization: activations (default uint8 per tensor, asymmetric, min-max)
    calibrated on `calibration_batches` batches."""

    calibration_batches: int = Field(16, ge=1)


Bits = Literal[4, 8, 16, 32]


class MixedBudget(_Strict):
    """One budget for the mixed-precision search: `weight_bytes` as a share of the uniform
    int8 weight bytes (0.75 = 25% fewer), or `accuracy_drop` in points of validation accuracy
    below fp32 (0.5 = half a point), in which case the search minimises bytes."""

    weight_bytes: float | None = Field(None, gt=0.0, le=4.0)
    accuracy_drop: float | None = Field(None, ge=0.0, le=100.0)

    @model_validator(mode="after")
    def _one_budget(self) -> MixedBudget:
        given = [n for n in ("weight_bytes", "accuracy_drop") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of weight_bytes, accuracy_drop (got {given or 'none'})")
        return self


class MixedConfig(_Strict):
    """Per-layer weight bit width chosen from `bits` (4/8: the weight grid with per-channel
    scales, 16: bf16 rounding, 32: unchanged). `criterion`: calibration-loss increase when
    only that layer is rounded (`loss`), or Hutchinson Hessian trace / params x ||Q(W)-W||^2
    (`hessian`, HAWQ). `solver`: `dp` (exact multiple-choice knapsack on the additive
    sensitivities) or `optuna` (TPE on real validation accuracy, `trials` evaluations)."""

    bits: list[Bits] = [4, 8, 16, 32]
    criterion: Literal["loss", "hessian"] = "loss"
    budget: MixedBudget = MixedBudget(weight_bytes=0.75)
    solver: Literal["dp", "optuna"] = "dp"
    trials: int = Field(30, ge=1)
    hessian_samples: int = Field(8, ge=1, description="Rademacher probes per calibration batch")
    resolution: int = Field(2000, ge=10, description="byte-budget steps of the dp table")
    candidates: int = Field(12, ge=2, description="Pareto points evaluated on the validation split")
    seed: int = 0

    @model_validator(mode="after")
    def _bits_distinct(self) -> MixedConfig:
        if len(set(self.bits)) != len(self.bits) or len(self.bits) < 2:
            raise ValueError(f"bits must list at least two distinct widths from 4, 8, 16, 32 "
                             f"(got {self.bits})")
        return self


class QuantizeConfig(QuantConfig):
    """The `quantize:` section of a recipe (`sparseforge quantize`): `mode: ptq` quantizes
    every selected layer per `weights`/`activations`; `mode: mixed` searches a bit width per
    layer (weights only) under `mixed.budget`. QAT is the `qat` modifier, not this."""

    mode: Literal["ptq", "mixed"] = "ptq"
    calibration_batch_size: int = Field(128, ge=1)
    mixed: MixedConfig | None = None

    @model_validator(mode="after")
    def _mixed_matches_mode(self) -> QuantizeConfig:
        if self.mode == "ptq" and self.mixed is not None:
            raise ValueError("a `mixed:` block needs `mode: mixed` (mode is ptq)")
        if self.mode == "mixed" and self.mixed is None:
            self.mixed = MixedConfig()
        return self
