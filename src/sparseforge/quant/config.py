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
