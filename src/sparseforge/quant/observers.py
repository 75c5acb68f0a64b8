"""Observers: watch the values a tensor takes (one weight, or activations over calibration
batches) and turn them into a range, then into scale and zero point. Registered by name;
`TensorQuant.observer` picks one. Each keeps its state as tensors (`state_dict`) so a QAT run
resumes exactly."""

from __future__ import annotations

import torch
from torch import Tensor

from ..registry import Registry
from .config import TensorQuant
from .grid import fake_quantize, qparams, reduce_range

OBSERVERS: Registry[type[Observer]] = Registry("observer")

_MAX_QUANTILE = 2**24 - 1  # torch.quantile's input limit


class Observer:
    """Base: `observe(x)` any number of times, then `range()` / `qparams()`. `axis` is the
    channel dim for per-channel scales, None for one scale over the tensor."""

    def __init__(self, spec: TensorQuant, axis: int | None) -> None:
        self.spec, self.axis = spec, axis
        self.lo: Tensor | None = None
        self.hi: Tensor | None = None

    def observe(self, x: Tensor) -> None:
        raise NotImplementedError

    def range(self) -> tuple[Tensor, Tensor]:
        if self.lo is None or self.hi is None:
            raise RuntimeError("the observer has seen no data: calibrate on at least one batch")
        return self.lo, self.hi

    def qparams(self) -> tuple[Tensor, Tensor]:
        lo, hi = self.range()
        return qparams(lo, hi, self.spec.bits, self.spec.symmetric)

    def state_dict(self) -> dict[str, Tensor | None]:
        return {"lo": self.lo, "hi": self.hi}

    def load_state_dict(self, state: dict[str, Tensor | None]) -> None:
        self.lo, self.hi = state["lo"], state["hi"]


@OBSERVERS.register("minmax")
class MinMax(Observer):
    """The smallest and largest value ever seen."""

    def observe(self, x: Tensor) -> None:
        lo, hi = reduce_range(x, self.axis)
        if self.lo is None:
            self.lo, self.hi = lo, hi
        else:
            self.lo, self.hi = torch.minimum(self.lo, lo), torch.maximum(self.hi, hi)


@OBSERVERS.register("moving_average")
class MovingAverageMinMax(Observer):
    """Exponential moving average of each batch's min and max (weight `averaging_constant`);
    the first batch sets them."""

    def observe(self, x: Tensor) -> None:
        lo, hi = reduce_range(x, self.axis)
        if self.lo is None:
            self.lo, self.hi = lo, hi
        else:
            c = self.spec.averaging_constant
            self.lo, self.hi = self.lo + c * (lo - self.lo), self.hi + c * (hi - self.hi)


def _rows(x: Tensor, axis: int | None) -> Tensor:
    """(C, n) view of the values per channel, or (1, n) for per-tensor."""
    x = x.detach().float()
    return x.reshape(1, -1) if axis is None else x.movedim(axis, 0).reshape(x.shape[axis], -1)


def _subsample(rows: Tensor, limit: int) -> Tensor:
    """At most `limit` columns, evenly strided (deterministic)."""
    if rows.shape[1] <= limit:
        return rows
    step = -(-rows.shape[1] // limit)
    return rows[:, ::step]


@OBSERVERS.register("percentile")
class Percentile(Observer):
    """Per batch, the `percentile` and 100 - `percentile` quantiles (clipping outliers), averaged
    over batches."""

    def __init__(self, spec: TensorQuant, axis: int | None) -> None:
        super().__init__(spec, axis)
        self.batches = 0

    def observe(self, x: Tensor) -> None:
        rows = _rows(x, self.axis)
        rows = _subsample(rows, _MAX_QUANTILE // rows.shape[0])
        q = torch.tensor([1.0 - self.spec.percentile / 100.0, self.spec.percentile / 100.0])
        lo, hi = torch.quantile(rows, q, dim=1)  # (C,) each
        if self.axis is None:
            lo, hi = lo[0], hi[0]
        n = self.batches
        self.lo = lo if self.lo is None else (self.lo * n + lo) / (n + 1)
        self.hi = hi if self.hi is None else (self.hi * n + hi) / (n + 1)
        self.batches += 1

    def state_dict(self) -> dict[str, Tensor | None]:
        return {**super().state_dict(), "batches": torch.tensor(self.batches)}

    def load_state_dict(self, state: dict[str, Tensor | None]) -> None:
        super().load_state_dict(state)
        self.batches = int(state["batches"])


@OBSERVERS.register("mse")
class MSEClip(Observer):
    """The clipped range alpha * [min, max] (alpha over `mse_grid` values in (0, 1]) whose
    fake-quantized values have the least squared error, per channel. Keeps up to 4096 evenly
    strided samples per channel per batch to search over."""

    samples_per_batch = 4096

    def __init__(self, spec: TensorQuant, axis: int | None) -> None:
        super().__init__(spec, axis)
        self.samples: list[Tensor] = []

    def observe(self, x: Tensor) -> None:
        self.samples.append(_subsample(_rows(x, self.axis), self.samples_per_batch))

    def range(self) -> tuple[Tensor, Tensor]:
        if not self.samples:
            raise RuntimeError("the observer has seen no data: calibrate on at least one batch")
        rows = torch.cat(self.samples, dim=1)  # (C, n)
        lo, hi = rows.amin(1), rows.amax(1)
        best_err = torch.full_like(lo, float("inf"))
        best_lo, best_hi = lo.clone(), hi.clone()
        bits, sym = self.spec.bits, self.spec.symmetric
        for i in range(self.spec.mse_grid):
            alpha = 1.0 - i / self.spec.mse_grid
            scale, zp = qparams(lo * alpha, hi * alpha, bits, sym)
            err = (fake_quantize(rows, scale, zp, bits, sym, axis=0) - rows).pow(2).mean(1)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_lo = torch.where(better, lo * alpha, best_lo)
            best_hi = torch.where(better, hi * alpha, best_hi)
        if self.axis is None:
            return best_lo[0], best_hi[0]
        return best_lo, best_hi

    def state_dict(self) -> dict[str, Tensor | None]:
        return {"samples": torch.cat(self.samples, dim=1) if self.samples else None}

    def load_state_dict(self, state: dict[str, Tensor | None]) -> None:
        self.samples = [] if state["samples"] is None else [state["samples"]]


def make_observer(spec: TensorQuant, axis: int | None) -> Observer:
    return OBSERVERS.get(spec.observer)(spec, axis)


def weight_qparams(weight: Tensor, spec: TensorQuant) -> tuple[Tensor, Tensor]:
    """Scale and zero point for a weight under `spec` (per output channel = dim 0)."""
    observer = make_observer(spec, 0 if spec.granularity == "per_channel" else None)
    observer.observe(weight)
    return observer.qparams()
