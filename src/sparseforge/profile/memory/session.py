"""Record a few training steps of a recipe, exactly as the trainer runs them (same model, optimizer,
modifiers and step function), and measure what the recording costs in time."""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ...recipe import Recipe, load_recipe
from ...trainer import _batches, build_loop, lr_at
from .recorder import MemoryRecorder, Trace


class Checkpointed(nn.Module):
    """Runs `inner` under activation checkpointing: its forward keeps only its input and
    recomputes the rest in backward."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, *args: Tensor) -> Tensor:
        return checkpoint(self.inner, *args, use_reentrant=False)


def _segments(seq: nn.Sequential) -> nn.Sequential:
    """`seq` with its children grouped into about sqrt(n) consecutive segments, each run under
    checkpointing (the classic sqrt(n) trade: keep segment inputs, recompute one segment at a
    time in backward)."""
    children = list(seq.children())
    size = max(1, math.ceil(math.sqrt(len(children))))
    return nn.Sequential(*(
        Checkpointed(nn.Sequential(*children[i:i + size])) for i in range(0, len(children), size)
    ))


def checkpoint_activations(model: nn.Module) -> list[str]:
    """Put the model under activation checkpointing: each nn.Sequential child of the root (the
    usual `features`/`layers` stack) is split into ~sqrt(n) checkpointed segments, any other
    child with trainable parameters is checkpointed whole. Returns the names changed (module
    names inside them change: for profiling, not for saving)."""
    wrapped = []
    for name, child in list(model.named_children()):
        if not any(p.requires_grad for p in child.parameters()):
            continue
        setattr(model, name, _segments(child) if isinstance(child, nn.Sequential) else Checkpointed(child))
        wrapped.append(name)
    if not wrapped:
        raise ValueError(f"{type(model).__name__} has no child module with trainable parameters to checkpoint")
    return wrapped


@dataclass
class Recording:
    """A recorded training run: the trace, seconds per step without and with the recorder
    (same batches, this call), and the model and optimizer as they stand after it."""

    trace: Trace
    step_s: float
    recorded_step_s: float
    model: nn.Module
    optimizer: torch.optim.Optimizer

    @property
    def slowdown(self) -> float:
        return self.recorded_step_s / self.step_s


def _with_batch_size(recipe: Recipe, batch_size: int | None) -> Recipe:
    if batch_size is None:
        return recipe
    train = recipe.train.model_copy(update={"batch_size": batch_size})
    return recipe.model_copy(update={"train": train})


def record_training(
    recipe: Recipe | str | Path | dict,
    *,
    steps: int = 3,
    warmup: int = 1,
    batch_size: int | None = None,
    activation_checkpointing: bool = False,
    splits=None,  # DatasetSplits; loaded from the recipe when None
) -> Recording:
    """Run `warmup` unrecorded steps (so optimizer state exists, as in a long run), time `steps`
    plain steps, then record `steps` more."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    recipe = _with_batch_size(load_recipe(recipe), batch_size)
    with tempfile.TemporaryDirectory() as tmp:
        loop, _, _ = build_loop(recipe, Path(tmp), splits=splits)
    if activation_checkpointing:
        checkpoint_activations(loop.model)
    loop.model.train()
    cfg = recipe.train
    images, labels = loop.splits.train.tensors
    order = list(_batches(len(labels), cfg.batch_size, cfg.seed, 0, 0, 1))
    n_needed = warmup + 2 * steps
    if len(order) < n_needed:
        raise ValueError(
            f"{len(labels)} training examples give {len(order)} batches of {cfg.batch_size}; "
            f"profiling needs {n_needed} (warmup {warmup} + 2 x {steps} steps): lower --steps or the batch size"
        )

    def batches(start: int, count: int) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        """Gathered now, outside any recording (the dataset is not training memory; a batch
        counts from its first use), handed over one at a time so each is freed after its step."""
        pending = [(images[order[i]], labels[order[i]], order[i]) for i in range(start, start + count)]

        def hand_over() -> Iterator[tuple[Tensor, Tensor, Tensor]]:
            while pending:
                yield pending.pop(0)

        return hand_over()

    def run(x: Tensor, y: Tensor, idx: Tensor, step: int) -> None:
        loop.train_step(loop.model, x, y, idx, lr_at(step, cfg, loop.steps_per_epoch))

    step = 0
    for x, y, idx in batches(0, warmup):
        run(x, y, idx, step)
        step += 1
    t0 = time.perf_counter()
    for x, y, idx in batches(warmup, steps):
        run(x, y, idx, step)
        step += 1
    plain = (time.perf_counter() - t0) / steps
    del x, y, idx
    rec = MemoryRecorder(loop.model, loop.optimizer)
    recorded_batches = batches(warmup + steps, steps)
    t0 = time.perf_counter()
    with rec:
        for x, y, idx in recorded_batches:
            rec.mark_step()
            rec.label(x)
            rec.label(y)
            run(x, y, idx, step)
            step += 1
            del x, y, idx  # the batch is freed here, inside the recording, as in a data loader
    recorded = (time.perf_counter() - t0) / steps
    return Recording(rec.trace, plain, recorded, loop.model, loop.optimizer)
