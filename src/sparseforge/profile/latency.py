"""Forward latency of a model per batch size, on random input, through `timing.measure`."""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Callable, Iterable, Mapping

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
    in eval + inference mode on the model's device and dtype (see `compare_latency`)."""
    return compare_latency(
        {"model": model}, example_input_shape, batch_sizes, threads=threads, rounds=1,
        repeats=repeats,
    )["model"]


def interleaved(
    fns: Mapping[str, Callable[[], object]], *, rounds: int, repeats: int,
    device: torch.device | str | None = None,
) -> dict[str, Timing]:
    """Time several callables side by side: `rounds` alternating blocks of `repeats` calls each
    (warm-up before the first), so drift of a shared machine hits every one alike; the median
    is over all samples. The one interleaving loop for every side-by-side comparison."""
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for r in range(rounds):
        for name, fn in fns.items():
            t = measure(fn, warmup=3 if r == 0 else 1, repeats=repeats, device=device,
                        inference=True)
            samples[name].extend(t.samples)
    return {name: Timing.from_samples(s) for name, s in samples.items()}


def checked_medians(
    fns: Mapping[str, Callable[[], torch.Tensor]], *, reference: str, rtol: float, where: str,
    rounds: int, repeats: int,
) -> dict[str, float]:
    """Median ms of each of `fns`, timed side by side (`interleaved`), after checking that every
    one returns `fns[reference]()`'s output to `rtol` times its largest magnitude: a kernel
    benchmark must not time a wrong answer. SystemExit naming the one that disagrees and `where`
    (e.g. the shape). Warnings raised while timing are silenced (they repeat per call)."""
    ref = fns[reference]()
    atol = rtol * max(1.0, float(ref.abs().max())) if ref.numel() else rtol
    for name, fn in fns.items():
        try:
            torch.testing.assert_close(fn(), ref, rtol=0, atol=atol)
        except AssertionError as e:
            raise SystemExit(f"{name} disagrees with {reference} at {where}: {e}") from e
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        timings = interleaved(fns, rounds=rounds, repeats=repeats)
    return {name: t.median_ms for name, t in timings.items()}


def compare_latency(
    models: Mapping[str, nn.Module],
    example_input_shape: tuple[int, ...],
    batch_sizes: Iterable[int] = (1, 64),
    *,
    threads: int | None = None,
    rounds: int = 5,
    repeats: int = 10,
    flush_denormal: bool = True,
) -> dict[str, dict[int, Timing]]:
    """Time several models side by side on the same input: `rounds` alternating blocks of
    `repeats` calls each, so drift of a shared machine hits every model alike; the median is
    over all samples. Denormals are flushed to zero while timing (as inference runtimes do),
    so tiny weights of one model do not slow it through slow-path float arithmetic.
    `threads` sets torch's intra-op thread count for the measurement only; the previous
    count and training flags come back, and denormal flushing is reset to torch's default (off)."""
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be a positive integer or None, got {threads}")
    sizes = list(batch_sizes)
    if not sizes or any(int(b) < 1 for b in sizes):
        raise ValueError(f"batch_sizes must be positive integers, got {sizes}")
    if rounds < 1 or not models:
        raise ValueError("need at least one model and one round")
    param = next(next(iter(models.values())).parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32

    previous_threads = torch.get_num_threads()
    results: dict[str, dict[int, Timing]] = {name: {} for name in models}
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        torch.set_flush_denormal(flush_denormal)
        with contextlib.ExitStack() as stack:
            for model in models.values():
                stack.enter_context(evaluating(model))
            for batch in sizes:
                x = torch.randn(int(batch), *example_input_shape, device=device, dtype=dtype)
                fns = {name: functools.partial(model, x) for name, model in models.items()}
                timed = interleaved(fns, rounds=rounds, repeats=repeats, device=device)
                for name, timing in timed.items():
                    results[name][int(batch)] = timing
    finally:
        torch.set_num_threads(previous_threads)
        torch.set_flush_denormal(False)
    return results
