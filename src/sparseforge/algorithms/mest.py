"""Dynamic sparse training at a fixed memory budget: MEST (Yuan et al. 2021), RigL (Evci et al.
2020) and SET (Mocanu et al. 2018) share one machinery. Start from random masks at the target
sparsity, then every `update_every` epochs drop the weakest active weights and grow as many
inactive ones (at random, or by dense gradient for RigL), until `stop_epoch`. Schemes:
unstructured, block (whole tiles move) and BCR (row and column segments move, sparsity.
bcr_mutation)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
import torch.distributed as dist
from pydantic import Field, model_validator
from torch import Tensor

from ..sparsity import SCHEMES, apply_mask, get_mask, select_layers
from ..sparsity.bcr_mutation import BCRSegments
from ..sparsity.compact import sparse_memory_bytes
from ..sparsity.mutation import (
    ElasticDecay,
    Units,
    drop_lowest,
    erk_densities,
    grow_by_score,
    grow_random,
)
from ..sparsity.spec import Fraction, name_matches, scheme_params
from .base import Modifier, register_modifier
from .forgetting import ForgettingConfig, ForgettingTracker
from .pruning import MaskedLayers, PruningConfig, _weight_param


class DSTConfig(PruningConfig):
    """What the three methods share; schemes `unstructured`, `block` and `bcr`."""

    distribution: Literal["uniform", "erk"] = "uniform"
    update_every: float = Field(1.0, gt=0.0, description="epochs between mutations (ΔT)")
    mutation_rate: Fraction = Field(0.1, description="p0: fraction of active weights swapped")
    mutation_schedule: Literal["cosine", "step", "constant"] = "cosine"
    decay_start_epoch: float | None = Field(
        None, ge=0.0, description="the decay of p starts here (default 0; step: 0.75·stop_epoch)"
    )
    step_levels: int = Field(2, ge=2, description="step schedule: 1, then (L-1)/L .. 1/L, then 0")
    stop_epoch: float | None = Field(None, gt=0.0, description="default 0.75·train.epochs")

    @model_validator(mode="after")
    def _supported(self) -> DSTConfig:
        if self.scheme.name not in ("unstructured", "block", "bcr"):
            raise ValueError(
                f"dynamic sparse training mutates `unstructured`, `block` or `bcr` masks, not "
                f"`{self.scheme.name}`: only these have a drop/grow swap that holds the budget "
                "exactly"
            )
        if self.scheme.name == "bcr" and getattr(self, "soft_bound", False):
            raise ValueError(
                "soft_bound prunes back to the exact budget, which BCR segments (each holding "
                "as many weights as its block keeps columns or rows) cannot always hit; use "
                "soft_bound: false with scheme bcr"
            )
        if self.criterion != "magnitude":
            raise ValueError("drop scores are |w| (mest: + grad_weight·|g|); drop `criterion`")
        if self.allocation != "layerwise":
            raise ValueError("share the budget with `distribution: uniform|erk`, not `allocation`")
        if self.final_sparsity >= 1.0:
            raise ValueError("sparsity must be below 1: a sparse network needs some weights")
        return self


class SETConfig(DSTConfig):
    type: Literal["set"] = "set"
    mutation_rate: Fraction = 0.3  # SET's zeta
    mutation_schedule: Literal["cosine", "step", "constant"] = "constant"


class RigLConfig(DSTConfig):
    type: Literal["rigl"] = "rigl"
    mutation_rate: Fraction = 0.3  # RigL's alpha, cosine-decayed


class MESTConfig(DSTConfig):
    type: Literal["mest"] = "mest"
    grad_weight: float = Field(0.0, ge=0.0, description="drop score |w| + grad_weight·|g|")
    soft_bound: bool = False
    grow_extra: Fraction = Field(0.05, description="soft bound: sparsity after growth is s - extra")
    soft_window: float | None = Field(
        None, gt=0.0, description="epochs the grown weights train before the prune back "
        "(default update_every, as MEST's scripts: prune back at the next update)"
    )
    forgetting: ForgettingConfig | None = None


def _synced(t: Tensor) -> Tensor:
    """Mean over ranks (RigL's dense gradient comes from a hook, outside DDP's all-reduce)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        t = t.clone()
        dist.all_reduce(t)
        t /= dist.get_world_size()
    return t


class DynamicSparse(Modifier):
    """The shared machinery: random masks at start, per-layer budgets of kept units (per
    unit size, so tile swaps keep the nonzero count exact), mutation on a schedule."""

    grow_mode: ClassVar[Literal["random", "gradient"]] = "random"

    def __init__(self, config: DSTConfig, session) -> None:
        super().__init__(config, session)
        self.session = session
        self.layers = MaskedLayers(select_layers(session.model, config), config).layers
        block = config.scheme.block if config.scheme.name == "block" else None
        self.units = {n: Units(m.weight.shape, block) for n, m in self.layers.items()}
        self.bcr_block = tuple(config.scheme.block) if config.scheme.name == "bcr" else None
        self.segments: dict[str, BCRSegments] = {}  # scheme bcr: each layer's mask as segments
        stop_epoch = config.stop_epoch
        if stop_epoch is None:
            stop_epoch = 0.75 * session.recipe.train.epochs
        self.stop = session.steps(stop_epoch)
        self.every = max(1, session.steps(config.update_every))
        start = config.decay_start_epoch
        start_step = session.steps(start) if start is not None else (
            int(0.75 * self.stop) if config.mutation_schedule == "step" else 0
        )
        if start_step >= self.stop and config.mutation_schedule != "constant":
            raise ValueError(
                f"the decay of p must start (step {start_step}) before stop_epoch (step "
                f"{self.stop}); lower decay_start_epoch or raise stop_epoch"
            )
        self.decay = ElasticDecay(
            config.mutation_schedule, start_step, self.stop, config.step_levels
        )
        self.soft = bool(getattr(config, "soft_bound", False))
        window = getattr(config, "soft_window", None)
        self.window = self.every if window is None else max(1, session.steps(window))
        if self.soft and self.window > self.every:
            raise ValueError(
                f"soft_window ({self.window} steps) must not exceed update_every ({self.every} "
                "steps): grown weights are pruned back before the next growth"
            )
        forgetting = getattr(config, "forgetting", None)
        self.forgetting = ForgettingTracker(forgetting) if forgetting is not None else None
        if forgetting is not None and forgetting.drop_after_epoch >= session.recipe.train.epochs:
            raise ValueError(
                "forgetting.drop_after_epoch must be below train.epochs, or nothing is dropped"
            )
        self.budget: dict[str, Tensor] = {}
        self.prune_at = -1
        self.rate = 0.0
        self.dense_grads: dict[str, Tensor] = {}
        if self.grow_mode == "gradient":
            for n, m in self.layers.items():
                m.parametrizations.weight.register_forward_hook(self._capture(n))

    # ---- schedule -------------------------------------------------------------------------
    def _due(self, step: int) -> bool:
        return 0 < step <= self.stop and step % self.every == 0 and self.decay(step) > 0

    def _capture(self, name: str):
        """Forward hook on the mask parametrization: on steps that mutate, keep the gradient
        w.r.t. its output, the effective weight (dense, unlike `original.grad`)."""

        def hook(module, args, out: Tensor) -> None:
            if out.requires_grad and self._due(self.session.global_step + 1):
                out.register_hook(lambda g: self.dense_grads.__setitem__(name, g.detach()))

        return hook

    # ---- masks ----------------------------------------------------------------------------
    def _targets(self) -> dict[str, float]:
        cfg: DSTConfig = self.config
        fixed = {}
        for override in cfg.overrides:
            for n in self.layers:
                if any(name_matches(n, p) for p in override.layers):
                    fixed[n] = override.sparsity
        s = cfg.final_sparsity
        if cfg.distribution == "erk":
            shapes = {n: tuple(m.weight.shape) for n, m in self.layers.items()}
            dens = erk_densities(shapes, 1.0 - s, fixed)
            out = {n: 1.0 - d for n, d in dens.items()}
        else:
            out = {n: fixed.get(n, s) for n in self.layers}
        return {n: min(v, cfg.max_layer_sparsity) if n not in fixed else v for n, v in out.items()}

    def _kept(self, name: str, units: Tensor) -> list[int]:
        """Kept units per size class of a layer."""
        return [self.units[name].count(units, c) for c in self.units[name].classes]

    def _set_mask(self, name: str, mask: Tensor) -> None:
        """Apply `mask`; weights and per-weight optimizer state of every entry that changed
        are zeroed, so grown weights start at 0 and dropped ones hold no stale momentum."""
        module = self.layers[name]
        changed = get_mask(module) ^ mask.to(torch.bool)
        param = _weight_param(module)
        opt = self.session.optimizer
        with torch.no_grad():
            param[changed] = 0
            state = opt.state.get(param, {}) if opt is not None else {}
            for value in state.values():
                if isinstance(value, Tensor) and value.shape == param.shape:
                    value[changed] = 0
        apply_mask(module, mask)

    def _weight_scores(self, name: str) -> Tensor:
        """Per weight: |w| (mest: + grad_weight·|g|), the drop score before pooling."""
        module = self.layers[name]
        with torch.no_grad():  # reading the weight must not arm RigL's gradient hook
            scores = module.weight.abs()
        lam = getattr(self.config, "grad_weight", 0.0)
        grad = _weight_param(module).grad
        if lam > 0 and grad is not None:
            scores = scores + lam * grad.detach().abs()
        return scores

    def _drop_scores(self, name: str) -> Tensor:
        return self.units[name].pool(self._weight_scores(name))

    def _dense_grad(self, name: str) -> Tensor:
        if name not in self.dense_grads:
            raise RuntimeError(
                f"rigl needs the dense gradient of '{name}' at a mutation step: run a forward "
                "and backward pass with gradients before each Session.step()"
            )
        return _synced(self.dense_grads[name]).abs()

    def _grow(self, name: str, units: Tensor, n: int, where: Tensor | None) -> Tensor:
        if self.grow_mode == "random":
            return grow_random(units, n, self.session.generator, where)
        return grow_by_score(units, self.units[name].pool(self._dense_grad(name)), n, where)

    def _each_layer(self, change) -> None:
        """Run `change(name, units) -> units` on every layer and apply the result."""
        for name, module in self.layers.items():
            units = self.units[name].units(get_mask(module))
            self._set_mask(name, self.units[name].expand(change(name, units)))
        self.session.masks_changed()

    # ---- the three operations ---------------------------------------------------------------
    def _mutate(self, p: float) -> None:
        if self.segments:
            self._mutate_segments(p)
            return

        def swap(name: str, units: Tensor) -> Tensor:
            scores, u = self._drop_scores(name), self.units[name]
            for c, kept in zip(u.classes, self._kept(name, units), strict=True):
                n, where = int(round(p * kept)), u.of_class(c, units)
                units = self._grow(name, drop_lowest(units, scores, n, where), n, where)
            return units

        self._each_layer(swap)

    def _mutate_segments(self, p: float) -> None:
        """Scheme bcr: swap row then column segments of equal size in every layer."""
        for name, module in self.layers.items():
            grow = None if self.grow_mode == "random" else self._dense_grad(name)
            seg = self.segments[name].mutate(self._weight_scores(name), p,
                                             self.session.generator, grow)
            self.segments[name] = seg
            self._set_mask(name, seg.mask().to(module.weight.device))
        self.session.masks_changed()

    def _grow_extra(self, extra: float) -> None:
        density = 1.0 - self.config.final_sparsity

        def grow(name: str, units: Tensor) -> Tensor:
            u, budget = self.units[name], self.budget[name].tolist()
            for c, k, b in zip(u.classes, self._kept(name, units), budget, strict=True):
                n = min(u.total(c) - k, int(round(extra / density * b)))
                units = self._grow(name, units, n, u.of_class(c, units))
            return units

        self._each_layer(grow)

    def _prune_back(self) -> None:
        def prune(name: str, units: Tensor) -> Tensor:
            scores, u = self._drop_scores(name), self.units[name]
            budget = self.budget[name].tolist()
            for c, k, b in zip(u.classes, self._kept(name, units), budget, strict=True):
                units = drop_lowest(units, scores, max(0, k - b), u.of_class(c, units))
            return units

        self._each_layer(prune)

    # ---- hooks ----------------------------------------------------------------------------
    def on_start(self, session) -> None:
        targets = self._targets()
        scheme, params = SCHEMES.get(self.config.scheme.name), scheme_params(self.config.scheme)
        for name, module in self.layers.items():
            if self.bcr_block is not None:
                seg = BCRSegments.random(module.weight.shape, self.bcr_block, targets[name],
                                         session.generator)
                self.segments[name] = seg
                self._set_mask(name, seg.mask().to(module.weight.device))
                self.budget[name] = torch.tensor([seg.nonzeros()])
                continue
            scores = torch.rand(module.weight.shape, generator=session.generator)
            self._set_mask(name, scheme(scores, targets[name], **params).to(module.weight.device))
            kept = self._kept(name, self.units[name].units(get_mask(module)))
            self.budget[name] = torch.tensor(kept)
        session.masks_changed()

    def on_step(self, session) -> None:
        step = session.global_step
        if step == self.prune_at:
            self._prune_back()
            self.prune_at = -1
        if self._due(step):
            factor = self.decay(step)
            if self.soft:
                self.rate = self.config.grow_extra * factor
                self._grow_extra(self.rate)
                self.prune_at = step + self.window
            else:
                self.rate = self.config.mutation_rate * factor
                self._mutate(self.rate)
        self.dense_grads.clear()

    def on_batch(self, session, indices: Tensor, correct: Tensor) -> None:
        if self.forgetting is not None:
            self.forgetting.observe(indices, correct)

    def example_filter(self, session, n_examples: int) -> Tensor | None:
        if self.forgetting is None:
            return None
        return self.forgetting.keep(session.epoch, n_examples, session.generator)

    def on_epoch_end(self, session) -> None:
        if self.prune_at >= 0 and session.epoch >= session.recipe.train.epochs:
            self._prune_back()  # schedules count optimizer steps, and dropped examples
            self.prune_at = -1  # shorten epochs: never end above the budget
        if self.forgetting is not None:
            self.forgetting.epoch_done(session.global_step, session.epoch * session.steps_per_epoch)

    def metrics(self) -> dict[str, float]:
        model, opt = self.session.model, self.session.optimizer
        kept = sum(int(get_mask(m).sum()) for m in self.layers.values())
        total = sum(m.weight.numel() for m in self.layers.values())
        out = {
            "mutation_rate": self.rate,
            "mask_sparsity": 1.0 - kept / total,  # above the budget inside a soft-bound window
            "memory_compact_bytes": float(sparse_memory_bytes(model, opt)),
            "memory_dense_bytes": float(sparse_memory_bytes(model, opt, compact=False)),
        }
        return {**out, **(self.forgetting.metrics() if self.forgetting is not None else {})}

    def state_dict(self) -> dict[str, Any]:
        state = {"budget": dict(self.budget), "prune_at": self.prune_at, "rate": self.rate}
        if self.segments:
            state["segments"] = {n: {"rows": s.rows, "cols": s.cols}
                                 for n, s in self.segments.items()}
        if self.forgetting is not None:
            state["forgetting"] = self.forgetting.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.budget = {n: t.clone() for n, t in state["budget"].items()}
        self.prune_at, self.rate = int(state["prune_at"]), float(state["rate"])
        for n, seg in state.get("segments", {}).items():
            weight = self.layers[n].weight
            self.segments[n] = BCRSegments(seg["rows"].clone(), seg["cols"].clone(),
                                           self.bcr_block, weight.shape)
        if self.forgetting is not None:
            self.forgetting.load_state_dict(state["forgetting"])


@register_modifier("mest", MESTConfig)
class MEST(DynamicSparse):
    """MEST: drop by |w| (+ grad_weight·|g|), grow at random, so no dense gradient is ever
    computed; optional soft memory bound and forgetting-based data efficiency."""


@register_modifier("rigl", RigLConfig)
class RigL(DynamicSparse):
    """RigL: drop by |w|, grow where the dense gradient is largest."""

    grow_mode = "gradient"


@register_modifier("set", SETConfig)
class SET(DynamicSparse):
    """SET: drop by |w|, grow at random, constant rate by default."""
