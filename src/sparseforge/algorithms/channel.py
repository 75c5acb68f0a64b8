"""A run's structured (channel/head) pruning stage, from the recipe's `structured:` section.

Hard: fuse (optional), remove the channels, fine-tune the smaller model. Soft (FuPruner's
dynamic filter pruning, after SFP): train the full model while, at every epoch end, the units
the criterion ranks lowest *now* are zeroed; they keep receiving gradients and may come back
next epoch. At the end the last choice is removed physically, which changes no output. Either
way the plan is saved in the run folder, so the pruned model can be rebuilt without tracing."""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import Tensor, nn

from ..graph import PrunePlan, apply_plan, channel_mask, fuse, prune_channels
from ..recipe import Recipe, StructuredConfig
from ..session import Session, unwrap
from .base import Modifier

PLAN_FILE = "structure.json"


def prepare_model(model: nn.Module, recipe: Recipe, example: Tensor, run_dir: Path,
                  resume: bool) -> nn.Module:
    """The model training starts from: fused if the recipe asks; already shrunk for a hard
    prune (or when resuming a run whose plan exists)."""
    cfg = recipe.structured
    if cfg is None:
        return model
    model = fused(model, cfg)
    plan_path = run_dir / PLAN_FILE
    if resume and plan_path.exists():
        return apply_plan(model, PrunePlan.load(plan_path))
    if cfg.soft:
        return model
    small, plan = _prune(model, cfg, example)
    plan.save(plan_path)
    return small


def finish_model(model: nn.Module, recipe: Recipe, example: Tensor, run_dir: Path) -> nn.Module:
    """After training: a soft run's final choice removed physically (its outputs unchanged,
    since those units were zeroed by the last epoch end) and its plan saved."""
    cfg = recipe.structured
    if cfg is None or not cfg.soft:
        return model
    small, plan = _prune(model, cfg, example)
    plan.save(run_dir / PLAN_FILE)
    return small


def rebuild(model: nn.Module, recipe: Recipe, run_dir: Path) -> nn.Module:
    """A freshly built model in the shape a finished run saved it (fused, then shrunk)."""
    if recipe.structured is None:
        return model
    plan_path = Path(run_dir) / PLAN_FILE
    if not plan_path.exists():
        raise FileNotFoundError(f"{plan_path} is missing: the run has structured pruning in "
                                "its recipe but did not finish; resume it first")
    return apply_plan(fused(model, recipe.structured), PrunePlan.load(plan_path))


def fused(model: nn.Module, cfg: StructuredConfig) -> nn.Module:
    if cfg.fuse is None:
        return model
    was_training = model.training
    out = fuse(model.eval(), **cfg.fuse.model_dump()).module
    return out.train(was_training)


def _prune(model: nn.Module, cfg: StructuredConfig, example: Tensor) -> tuple[nn.Module, PrunePlan]:
    device = next(model.parameters()).device
    cpu = copy.deepcopy(model).cpu().float().eval()
    small, plan = prune_channels(
        cpu, example.cpu(), importance=cfg.importance, scope=cfg.scope, round_to=cfg.round_to,
        max_ratio=cfg.max_ratio, limits=cfg.limits, ignore=cfg.ignore,
        latency_batch=cfg.latency_batch, depth=cfg.depth, **cfg.target(),
    )
    return small.to(device).train(model.training), plan


class SoftChannelPruning(Modifier):
    """FuPruner/SFP dynamic filter pruning: re-choose and zero the removed units every epoch."""

    def __init__(self, cfg: StructuredConfig, session: Session, example: Tensor) -> None:
        super().__init__(cfg, session)
        self.example = example
        self.removed_fraction = 0.0

    def on_epoch_end(self, session: Session) -> None:
        model = unwrap(session.model)
        _, plan = _prune(model, self.config, self.example)
        channel_mask(model, {k: torch.tensor(v, dtype=torch.long) for k, v in plan.kept.items()})
        f0, f1 = plan.flops
        self.removed_fraction = 1 - f1 / max(f0, 1)

    def metrics(self) -> dict[str, float]:
        return {"flops_removed": self.removed_fraction}
