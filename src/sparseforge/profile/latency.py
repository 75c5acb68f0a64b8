"""Forward latency of a model per batch size, on random input, through `timing.measure`."""

from __future__ import annotations

import functools
from collections.abc import Iterable

import torch
from torch import nn

from ._modes import evaluating
from .timing import Timing, measure


def model_latency(
    model: nn.Module,
    example_input_shape: tuple[int, ...],
    batch_sizes: Iterable[int] = (1, 64),
    *,
    threads: int | None = None,
    repeats: int = 20,
) -> dict[int, Timing]:
    """Time `model` on randn input of shape (batch, *example_input_shape) for each batch size,
    in eval + inference mode on the model's device and dtype. `threads` sets torch's intra-op
    thread count for the measurement only; the previous count and training flags come back."""
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be a positive integer or None, got {threads}")
    sizes = list(batch_sizes)
    if not sizes or any(int(b) < 1 for b in sizes):
        raise ValueError(f"batch_sizes must be positive integers, got {sizes}")
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32

    previous_threads = torch.get_num_threads()
    results: dict[int, Timing] = {}
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        with evaluating(model):
            for batch in sizes:
                x = torch.randn(int(batch), *example_input_shape, device=device, dtype=dtype)
                results[int(batch)] = measure(
                    functools.partial(model, x), repeats=repeats, device=device, inference=True
                )
    finally:
        torch.set_num_threads(previous_threads)
    return results
