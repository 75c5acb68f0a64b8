"""A deployed model: the inference module plus the plan (per layer: candidates, timings,
choice, reasons). Saved as `deploy.json` + a weights-only state file; loaded by rebuilding the
chosen kernels by registry name from the source model, so loading never runs stored code.
A deployment made with fuse=True also holds the fused module (graph/lower.py), saves its fusion
plan and lowering report beside deploy.json, and fuses again on load."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..checkpoint import load_weights_only, save_atomic
from ..profile import machine_info
from ..sparsity.masks import bake_masks
from .candidates import CANDIDATES, DENSE

PLAN_FILE = "deploy.json"
STATE_FILE = "deployed.pt"
FORMAT_VERSION = 1


def set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put `new` at the qualified `name` inside `model` (the root itself cannot be replaced)."""
    parent_name, _, child = name.rpartition(".")
    if not child:
        raise ValueError("cannot replace the model's root module; wrap it in nn.Sequential")
    setattr(model.get_submodule(parent_name), child, new)


@dataclass
class DeployedModel:
    """The inference module (`module`, baked, eval mode) and how it was chosen (`plan`)."""

    module: nn.Module
    plan: list[dict[str, Any]]
    target: str
    example_input_shape: tuple[int, ...]
    settings: dict[str, Any] = field(default_factory=dict)
    machine: dict[str, Any] = field(default_factory=machine_info)
    fusion: Any = None  # graph.lower.Fusion when deployed with fuse=True (and it could export)

    def __call__(self, x: Tensor) -> Tensor:
        """The fused module on inputs shaped like the example (it was exported with static
        shapes), else the per-layer module."""
        if self.fusion is not None and tuple(x.shape) == self.example_input_shape:
            return self.fusion.module(x)
        return self.module(x)

    def choices(self) -> dict[str, str]:
        """{layer name: chosen candidate}."""
        return {r["name"]: r["choice"] for r in self.plan}

    def to_json(self) -> dict[str, Any]:
        """What deploy.json holds: target, machine, timing settings, the per-layer plan and
        the summed per-layer medians (dense vs chosen)."""
        timed = [r for r in self.plan if r["candidates"]]
        return {
            "format": FORMAT_VERSION,
            "target": self.target,
            "example_input_shape": list(self.example_input_shape),
            "settings": self.settings,
            "machine": self.machine,
            "layers_dense_ms": sum(r["candidates"][DENSE]["median_ms"] for r in timed),
            "layers_chosen_ms": sum(r["candidates"][r["choice"]]["median_ms"] for r in timed),
            "layers": self.plan,
        }

    def save(self, directory: str | Path) -> Path:
        """Write `deploy.json` and `deployed.pt` (state dict, weights-only loadable) into
        `directory`; returns the JSON path."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_atomic(self.module.state_dict(), directory / STATE_FILE)
        if self.fusion is not None:
            self.fusion.save(directory)  # fusion_plan.json, lowering.json
        path = directory / PLAN_FILE
        path.write_text(json.dumps(self.to_json(), indent=2))
        return path

    @classmethod
    def load(cls, directory: str | Path, model: nn.Module) -> DeployedModel:
        """Rebuild a saved deployment from the model it was deployed from (masked or baked):
        the plan's choices are built by registry name without re-measuring, and the rebuilt
        state must equal the saved one exactly (else: a different model, re-run deploy)."""
        directory = Path(directory)
        path = directory / PLAN_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{directory} holds no {PLAN_FILE}; run `sparseforge deploy` first")
        saved = json.loads(path.read_text())
        if saved.get("format") != FORMAT_VERSION:
            raise ValueError(f"{path} has format {saved.get('format')}, this sparseforge reads "
                             f"{FORMAT_VERSION}; re-run `sparseforge deploy`")
        settings, shape = saved.get("settings", {}), tuple(saved["example_input_shape"])
        module = apply_plan(model, saved["layers"], saved["target"],
                            fold_bn=settings.get("fold_bn", False))
        _check_same_state(module.state_dict(), load_weights_only(directory / STATE_FILE), directory)
        fusion = None
        if settings.get("fuse"):  # the fused module is compiled code: made again, never stored
            from .deploy import fuse_deployed

            fusion = fuse_deployed(module.eval(), torch.randn(shape), saved["target"],
                                   settings.get("freezing"))
        return cls(module.eval(), saved["layers"], saved["target"], shape, settings,
                   saved["machine"], fusion)


def prepare(model: nn.Module, device: torch.device | str, fold_bn: bool = False) -> nn.Module:
    """The module deploy picks kernels for: a baked, eval-mode copy of `model` on `device`,
    with BatchNorm folded into the layer before it when `fold_bn` (nothing to do, and no trace,
    for a model without BatchNorm)."""
    work = bake_masks(copy.deepcopy(model)).to(torch.device(device)).eval()
    if fold_bn and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in work.modules()):
        from ..graph import fuse

        work = fuse(work, bn=True, pad=False, affine=False, identity=False).module.eval()
    return work


def apply_plan(model: nn.Module, plan: list[dict[str, Any]], target: str,
               fold_bn: bool = False) -> nn.Module:
    """A baked copy of `model` on `target` (BatchNorm folded when `fold_bn`) with each layer
    replaced by its planned candidate."""
    work = prepare(model, target, fold_bn)
    for record in plan:
        if record["choice"] == DENSE:
            continue
        layer = work.get_submodule(record["name"])
        set_submodule(work, record["name"], CANDIDATES.get(record["choice"]).build(layer))
    return work.to(torch.device(target))


def _check_same_state(rebuilt: dict[str, Tensor], saved: dict[str, Tensor], directory: Path) -> None:
    """Raise unless both state dicts hold the same keys and bitwise-equal tensors."""
    if set(rebuilt) != set(saved):
        diff = sorted(set(rebuilt) ^ set(saved))[:5]
        raise ValueError(f"{directory / STATE_FILE} does not fit the rebuilt model (keys differ: "
                         f"{diff}); pass the model it was deployed from, or re-run deploy")
    for key, tensor in rebuilt.items():
        other = saved[key].to(tensor.device)
        if tensor.shape != other.shape or not torch.equal(tensor, other):
            raise ValueError(f"{directory / STATE_FILE} was deployed from a different model "
                             f"('{key}' differs); re-run `sparseforge deploy`")
