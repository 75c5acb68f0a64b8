"""Data efficiency by forgetting events (Toneva et al. 2019, as MEST uses it): count, per
training example, how often it goes from correctly to wrongly classified between consecutive
presentations; after a warm-up, stop training on examples learned once and never forgotten."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

UNSEEN, WRONG, RIGHT = -1, 0, 1


class ForgettingConfig(BaseModel):
    """The `forgetting:` block of a mest modifier."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    drop_after_epoch: int = Field(
        2, ge=1, description="epochs of statistics before the unforgettable examples are dropped"
    )
    max_drop_fraction: float = Field(
        1.0, gt=0.0, le=1.0,
        description="drop at most this fraction of the training set (a seeded random subset of "
        "the unforgettable when there are more)",
    )


def _all_ranks(t: Tensor) -> Tensor:
    """`t` concatenated over all ranks under torch.distributed (every rank sees its own share of
    each epoch, so the statistics must be merged to stay identical everywhere), else `t`."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return t
    on_gpu = dist.get_backend() == "nccl"
    device = torch.device("cuda", torch.cuda.current_device()) if on_gpu else torch.device("cpu")
    local = t.to(device=device, dtype=torch.int64)  # gloo has no bool collectives
    parts = [torch.empty_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, local)
    return torch.cat(parts).cpu().to(t.dtype)


class ForgettingTracker:
    """Per-example forgetting counts and the drop decision; all state is tensors so it goes
    into weights-only checkpoints."""

    def __init__(self, config: ForgettingConfig) -> None:
        self.config = config
        self.last = torch.empty(0, dtype=torch.int8)  # UNSEEN / WRONG / RIGHT
        self.forgets = torch.empty(0, dtype=torch.int32)
        self.dropped = torch.empty(0, dtype=torch.bool)
        self.decided = False
        self.steps_saved = 0.0

    def _ensure(self, n: int) -> None:
        grow = n - len(self.last)
        if grow > 0:
            self.last = torch.cat([self.last, torch.full((grow,), UNSEEN, dtype=torch.int8)])
            self.forgets = torch.cat([self.forgets, torch.zeros(grow, dtype=torch.int32)])
            self.dropped = torch.cat([self.dropped, torch.zeros(grow, dtype=torch.bool)])

    def observe(self, indices: Tensor, correct: Tensor) -> None:
        """Record one presentation of each example in `indices` (merged over ranks)."""
        indices = _all_ranks(indices.reshape(-1).long().cpu())
        now = _all_ranks(correct.reshape(-1).cpu().to(torch.int8))
        if indices.numel() == 0:
            return
        self._ensure(int(indices.max()) + 1)
        self.forgets[indices] += ((self.last[indices] == RIGHT) & (now == WRONG)).int()
        self.last[indices] = now

    def unforgettable(self) -> Tensor:
        """Examples presented correctly at least once and never forgotten since."""
        return (self.forgets == 0) & (self.last == RIGHT)

    def keep(self, epoch: int, n_examples: int, generator: torch.Generator) -> Tensor | None:
        """The examples to train on in the coming epoch (None = all): from `drop_after_epoch`
        on, everything but the unforgettable, decided once and then held."""
        self._ensure(n_examples)
        if not self.decided and epoch >= self.config.drop_after_epoch:
            drop = self.unforgettable()
            cap = int(self.config.max_drop_fraction * n_examples)
            chosen = torch.nonzero(drop).reshape(-1)
            if chosen.numel() > cap:
                chosen = chosen[torch.randperm(chosen.numel(), generator=generator)[:cap]]
            self.dropped = torch.zeros_like(drop)
            self.dropped[chosen] = True
            self.decided = True
        return ~self.dropped[:n_examples] if self.decided else None

    def epoch_done(self, steps_taken: int, nominal_steps: int) -> None:
        """Update the fraction of training steps saved against full epochs."""
        self.steps_saved = 1.0 - steps_taken / nominal_steps if nominal_steps else 0.0

    def metrics(self) -> dict[str, float]:
        return {
            "examples_dropped": float(self.dropped.sum()),
            "forgetting_events": float(self.forgets.sum()),
            "steps_saved_fraction": self.steps_saved,
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "last": self.last.clone(), "forgets": self.forgets.clone(),
            "dropped": self.dropped.clone(), "decided": torch.tensor(self.decided),
            "steps_saved": torch.tensor(self.steps_saved, dtype=torch.float64),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.last = state["last"].to(torch.int8).clone()
        self.forgets = state["forgets"].to(torch.int32).clone()
        self.dropped = state["dropped"].to(torch.bool).clone()
        self.decided = bool(state["decided"])
        self.steps_saved = float(state["steps_saved"])
