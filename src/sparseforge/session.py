"""The Session attaches a recipe's modifiers to a model and optimizer and drives them from
the user's own training loop (or the built-in trainer):

    session = Session(model, recipe, optimizer, steps_per_epoch=len(loader))
    for epoch in range(epochs):
        for x, y in loader:
            loss = session.loss(F.cross_entropy(model(x), y))
            loss.backward(); optimizer.step(); session.step(); optimizer.zero_grad()
        session.epoch_end()
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .algorithms import MODIFIERS, Modifier
from .recipe import Recipe, load_recipe
from .sparsity import global_sparsity, masks_state


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside DDP / torch.compile wrappers, whose names recipes refer to."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


class Session:
    """Modifiers over time for one model. Call `step()` after each optimizer step (before
    `zero_grad`, so gradient criteria see the gradients) and `epoch_end()` after each epoch."""

    def __init__(
        self,
        model: nn.Module,
        recipe: Recipe | str | Path | dict,
        optimizer: torch.optim.Optimizer | None = None,
        steps_per_epoch: int = 1,
        *,
        seed: int | None = None,
    ) -> None:
        if steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be at least 1, got {steps_per_epoch}")
        self.recipe = load_recipe(recipe)
        self.model = unwrap(model)
        self.optimizer = optimizer
        self.steps_per_epoch = steps_per_epoch
        self.global_step = 0
        self.epoch = 0
        seed = self.recipe.train.seed if seed is None else seed
        self.generator = torch.Generator().manual_seed(seed)
        self.modifiers: list[Modifier] = [
            MODIFIERS.get(cfg.type).build(cfg, self) for cfg in self.recipe.modifiers
        ]
        for m in self.modifiers:
            m.on_start(self)

    def steps(self, epochs: float) -> int:
        """Epochs (possibly fractional) in optimizer steps."""
        return int(round(epochs * self.steps_per_epoch))

    def loss(self, loss: Tensor) -> Tensor:
        """The task loss plus every modifier's regularizer."""
        for m in self.modifiers:
            extra = m.loss(self)
            if extra is not None:
                loss = loss + extra
        return loss

    def observe_batch(self, indices: Tensor, correct: Tensor) -> None:
        """Tell modifiers which training examples the last forward pass got right (optional:
        only data-efficient modifiers use it)."""
        for m in self.modifiers:
            m.on_batch(self, indices, correct)

    def example_filter(self, n_examples: int) -> Tensor | None:
        """The training examples to use this epoch (all modifiers' filters combined), or None."""
        keep = None
        for m in self.modifiers:
            mine = m.example_filter(self, n_examples)
            if mine is not None:
                keep = mine if keep is None else keep & mine
        return keep

    def step(self) -> None:
        self.global_step += 1
        for m in self.modifiers:
            m.on_step(self)

    def epoch_end(self) -> None:
        self.epoch += 1
        for m in self.modifiers:
            m.on_epoch_end(self)

    def masks_changed(self) -> None:
        """Called by modifiers after they change masks: under torch.distributed, checks that
        every rank holds the same masks (they are computed identically on all ranks)."""
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            check_masks_equal(self.model)

    def metrics(self) -> dict[str, float]:
        out = {"sparsity": global_sparsity(self.model)}
        for m in self.modifiers:
            out.update(m.metrics())
        return out

    def state_dict(self) -> dict[str, Any]:
        return {
            "global_step": self.global_step,
            "epoch": self.epoch,
            "generator": self.generator.get_state(),
            "modifiers": [m.state_dict() for m in self.modifiers],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if len(state["modifiers"]) != len(self.modifiers):
            raise ValueError(
                f"checkpoint has {len(state['modifiers'])} modifiers, the recipe "
                f"{len(self.modifiers)}: resume with the recipe the run started with"
            )
        self.global_step = int(state["global_step"])
        self.epoch = int(state["epoch"])
        self.generator.set_state(state["generator"])
        for m, s in zip(self.modifiers, state["modifiers"], strict=True):
            m.load_state_dict(s)


def check_masks_equal(model: nn.Module) -> None:
    """Raise if any rank's masks differ from rank 0's."""
    for name, mask in masks_state(model).items():
        mine = mask.to(torch.uint8)  # gloo has no bool collectives
        reference = mine.clone()
        dist.broadcast(reference, src=0)
        if not torch.equal(reference, mine):
            raise RuntimeError(
                f"rank {dist.get_rank()}: the mask of '{name}' differs from rank 0's; masks "
                "must be computed identically on every rank (same seed, same data order)"
            )
