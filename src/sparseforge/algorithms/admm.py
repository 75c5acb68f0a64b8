"""ADMM pruning: minimise f(W) s.t. W in S (a scheme's sparse set, or weight unification) by
adding rho/2 ||W - Z + U||^2 to the loss, with Z <- Proj_S(W + U), U <- U + W - Z every
`admm_every` epochs and rho growing; at `prune_epoch` the weights are hard-pruned to Proj_S(W)
through the mask engine and masked retraining runs to the end."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor, nn

from ..sparsity import apply_mask, select_layers
from ..sparsity.patterns import KEPT_PER_KERNEL, derive_library, library_tensor
from ..sparsity.pruner import masks_for
from ..sparsity.spec import Fraction, scheme_params
from ..sparsity.unify import apply_unified, project_unify, sync_unified
from .base import Modifier, register_modifier
from .pruning import MaskedLayers, PruningConfig

PATTERN_SPARSITY = 1.0 - KEPT_PER_KERNEL / 9


class UnifyConfig(BaseModel):
    """Weight unification as the ADMM set: per bh x bw block of the (out, in*kh*kw) matrix,
    `prune` of the blocks become 0 and `unify` of them one shared magnitude (signs kept)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    block: tuple[Annotated[int, Field(ge=1)], Annotated[int, Field(ge=1)]] = (1, 4)
    prune: Fraction
    unify: Fraction

    @model_validator(mode="after")
    def _fits(self) -> UnifyConfig:
        if self.prune + self.unify > 1.0 + 1e-9:
            raise ValueError(f"prune ({self.prune}) + unify ({self.unify}) exceed all blocks (1.0)")
        return self


class AdmmConfig(PruningConfig):
    type: Literal["admm"] = "admm"
    prune_epoch: float = Field(..., gt=0.0, description="hard prune, then masked retraining")
    admm_every: float = Field(1.0, gt=0.0, description="epochs between Z and U updates")
    rho: float = Field(1e-3, gt=0.0, description="initial penalty weight")
    rho_growth: float = Field(1.3, ge=1.0, le=10.0, description="rho factor every rho_every")
    rho_every: float = Field(1.0, gt=0.0, description="epochs between rho increases")
    rho_max: float | None = Field(None, gt=0.0)
    rescale_dual: bool = Field(True, description="U *= old rho / new rho when rho grows")
    unify: UnifyConfig | None = Field(None, description="project by weight unification instead")

    def _implied(self) -> tuple[float, str] | None:
        """(sparsity, what fixes it) when the set itself fixes the sparsity."""
        s = self.scheme
        if self.unify is not None:
            return self.unify.prune, f"unify.prune = {self.unify.prune}"
        if s.name == "nm":
            return 1.0 - s.n / s.m, f"the {s.n}:{s.m} scheme"
        if s.name == "pattern" and s.connectivity is not None:
            implied = 1.0 - (1.0 - PATTERN_SPARSITY) * (1.0 - s.connectivity)
            return implied, f"patterns (5/9) with connectivity {s.connectivity}"
        return None

    @property
    def final_sparsity(self) -> float:
        implied = self._implied()
        return implied[0] if implied is not None else float(self.sparsity)

    @model_validator(mode="after")
    def _sparsity_given(self) -> AdmmConfig:  # replaces PruningConfig's check of the same name
        implied = self._implied()
        if implied is not None:
            if self.sparsity is not None and abs(self.sparsity - implied[0]) > 1e-9:
                raise ValueError(
                    f"sparsity {self.sparsity} contradicts {implied[1]} (which means sparsity "
                    f"{implied[0]:g}); drop `sparsity`"
                )
        elif self.sparsity is None:
            raise ValueError("`sparsity` is required (the final fraction of zero weights)")
        if self.scheme.name == "pattern":
            if self.scheme.connectivity is None and self.final_sparsity < PATTERN_SPARSITY - 1e-9:
                raise ValueError(
                    f"patterns alone prune 5/9 of every kernel: sparsity {self.final_sparsity} is "
                    "too low; set sparsity >= 0.5556 or scheme.connectivity"
                )
            if self.scheme.connectivity is not None and self.allocation == "global":
                raise ValueError(
                    "scheme.connectivity fixes every layer's rate; use allocation: layerwise"
                )
        if self.criterion not in ("magnitude", "l2"):
            raise ValueError(
                f"ADMM projects by magnitude: criterion must be magnitude (groups ranked by L1) "
                f"or l2 (the exact Euclidean projection), got '{self.criterion}'"
            )
        if self.unify is not None:
            if "scheme" in self.model_fields_set and self.scheme.name != "unstructured":
                raise ValueError(
                    "unify replaces the scheme (it prunes whole blocks itself); drop `scheme`"
                )
            if self.allocation != "layerwise" or self.overrides:
                raise ValueError(
                    "unify applies its budget to every layer: drop allocation and overrides"
                )
        if self.rho_max is not None and self.rho_max < self.rho:
            raise ValueError(f"rho_max ({self.rho_max}) is below the initial rho ({self.rho})")
        return self


class Projection:
    """Proj_S for the modifier's set: the scheme's mask of the scores of V at the target (values
    kept where the mask keeps), or weight unification."""

    def __init__(self, config: AdmmConfig, layers: dict[str, nn.Module]) -> None:
        self.config = config
        self.params: dict[str, Any] = {} if config.unify else scheme_params(config.scheme)
        if config.scheme.name == "pattern" and config.scheme.library == "derive":
            # one model-wide library, from the weights ADMM starts from
            weights = [m.weight for m in layers.values()]
            self.params["library"] = derive_library(weights, config.scheme.library_size)

    def masks(self, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
        """The scheme's mask of each tensor at the final sparsity (allocation as configured)."""
        return masks_for(
            tensors, self.config, self.config.final_sparsity, scheme_args=self.params,
            labels={n: repr(n) for n in tensors},
        )

    def __call__(self, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
        """The projected values: Z = Proj_S(V)."""
        u = self.config.unify
        if u is not None:
            return {
                n: project_unify(t, u.block, u.prune, u.unify).values for n, t in tensors.items()
            }
        masks = self.masks(tensors)
        return {n: t * masks[n] for n, t in tensors.items()}


def _norm(tensors: list[Tensor]) -> float:
    return math.sqrt(sum(float(t.double().pow(2).sum()) for t in tensors))


@register_modifier("admm", AdmmConfig)
class Admm(Modifier):
    def __init__(self, config: AdmmConfig, session) -> None:
        super().__init__(config, session)
        epochs = session.recipe.train.epochs
        if config.prune_epoch > epochs:
            raise ValueError(
                f"admm prune_epoch = {config.prune_epoch} lies beyond train.epochs = {epochs}; "
                "the model would never be pruned"
            )
        self.layers = MaskedLayers(select_layers(session.model, config), config).layers
        self.prune_step = max(1, session.steps(config.prune_epoch))
        self.every = max(1, session.steps(config.admm_every))
        self.rho_every = max(1, session.steps(config.rho_every))
        self.projection = Projection(config, self.layers)
        self.rho = config.rho
        self.pruned = False
        self.step = 0
        self.primal = self.dual = 0.0
        self.unified: dict[str, tuple[Tensor, Tensor]] = {}
        with torch.no_grad():
            weights = self._weights()
            self.z = self.projection(weights)
            self.u = {n: torch.zeros_like(w) for n, w in weights.items()}
        self.z_sparsity = self._z_sparsity()

    def _weights(self) -> dict[str, Tensor]:
        return {n: m.weight.detach() for n, m in self.layers.items()}

    def _z_sparsity(self) -> float:
        zeros = sum(z.numel() - int(torch.count_nonzero(z)) for z in self.z.values())
        return zeros / max(1, sum(z.numel() for z in self.z.values()))

    def rho_at(self, step: int) -> float:
        """rho * rho_growth ^ floor(step / rho_every steps), capped at rho_max."""
        c = self.config
        log_rho = math.log(c.rho) + (step // self.rho_every) * math.log(c.rho_growth)
        return min(math.exp(min(log_rho, 700.0)), c.rho_max or math.inf)

    def loss(self, session) -> Tensor | None:
        """rho/2 * sum over layers of ||W - Z + U||^2 until the hard prune, then nothing."""
        if self.pruned:
            return None
        total = sum((m.weight - self.z[n] + self.u[n]).pow(2).sum() for n, m in self.layers.items())
        return 0.5 * self.rho * total

    def on_step(self, session) -> None:
        step = self.step = session.global_step
        if self.pruned:
            for m in self.layers.values():
                sync_unified(m)
            return
        if step >= self.prune_step:
            self.hard_prune(session)
            return
        if step % self.every == 0:
            self.update()
        new_rho = self.rho_at(step)
        if new_rho != self.rho and self.config.rescale_dual:
            for u in self.u.values():
                u.mul_(self.rho / new_rho)  # U = dual / rho (Boyd et al. 2011, 3.4.1)
        self.rho = new_rho

    @torch.no_grad()
    def update(self) -> None:
        """Z <- Proj_S(W + U), U <- U + W - Z; records the primal ||W - Z|| and dual
        rho ||Z - Z_old|| residuals."""
        weights = self._weights()
        z_old = self.z
        self.z = self.projection({n: w + self.u[n] for n, w in weights.items()})
        for n, w in weights.items():
            self.u[n] += w - self.z[n]
        self.primal = _norm([w - self.z[n] for n, w in weights.items()])
        self.dual = self.rho * _norm([self.z[n] - z_old[n] for n in weights])
        self.z_sparsity = self._z_sparsity()

    @torch.no_grad()
    def hard_prune(self, session) -> None:
        """W <- Proj_S(W) through the mask engine; the penalty stops, Z and U are dropped."""
        weights = self._weights()
        u = self.config.unify
        if u is not None:
            for n, w in weights.items():
                r = project_unify(w, u.block, u.prune, u.unify)
                self.unified[n] = (r.kinds, r.sign)
                apply_unified(self.layers[n], r.kinds, r.sign, u.block)
        else:
            for n, mask in self.projection.masks(weights).items():
                apply_mask(self.layers[n], mask)
        self.pruned, self.z, self.u = True, {}, {}
        session.masks_changed()

    def metrics(self) -> dict[str, float | str]:
        # the epoch whose last step hard-pruned trained under ADMM: it is logged as such
        retraining = self.pruned and self.step > self.prune_step
        return {
            "phase": "retrain" if retraining else "admm", "rho": self.rho,
            "admm_primal_residual": self.primal, "admm_dual_residual": self.dual,
            "admm_z_sparsity": self.z_sparsity,
        }

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "rho": self.rho, "pruned": self.pruned, "step": self.step,
            "primal": self.primal, "dual": self.dual, "z_sparsity": self.z_sparsity, "z": self.z, "u": self.u,
            "kinds": {n: k for n, (k, _) in self.unified.items()},
            "signs": {n: s for n, (_, s) in self.unified.items()},
        }
        scheme = self.config.scheme
        if scheme.name == "pattern" and scheme.library == "derive":
            state["library"] = library_tensor(self.projection.params["library"])
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        names = set(state["z"]) | set(state["kinds"])
        if names and names != set(self.layers):
            raise ValueError(
                f"the checkpoint's ADMM state covers layers {sorted(names)}, this recipe selects "
                f"{sorted(self.layers)}: resume with the recipe the run started with"
            )
        dev = {n: m.weight.device for n, m in self.layers.items()}
        self.rho, self.pruned = float(state["rho"]), bool(state["pruned"])
        self.step = int(state["step"])
        self.primal, self.dual = float(state["primal"]), float(state["dual"])
        self.z_sparsity = float(state["z_sparsity"])
        self.z = {n: t.to(dev[n]).clone() for n, t in state["z"].items()}
        self.u = {n: t.to(dev[n]).clone() for n, t in state["u"].items()}
        if "library" in state:
            self.projection.params["library"] = [
                tuple(row.nonzero().flatten().tolist()) for row in state["library"]
            ]
        self.unified = {n: (k, state["signs"][n]) for n, k in state["kinds"].items()}
        for n, (kinds, sign) in self.unified.items():
            apply_unified(self.layers[n], kinds, sign, self.config.unify.block)
