"""Parallel GaP (Ma et al. 2022): K workers start from the same sparse model, each grows a
different partition of the layers to dense, trains `period` epochs and prunes it back to s;
the merged model takes partition k from worker k and averages everything else. Cycles
repeat, then the merged model is fine-tuned at s. Workers are independent trainings, so they
run as separate processes or machines; here they run one after another."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from pydantic import Field
from torch import Tensor

from ..checkpoint import save_atomic
from ..data import DatasetSplits
from ..sparsity import apply_mask, compute_masks, select_layers
from ..sparsity.spec import PruningSpec
from .base import Modifier, register_modifier
from .gap import contiguous_partitions
from .pruning import MaskedLayers, PruningConfig

if TYPE_CHECKING:
    from ..recipe import Recipe


class GaPWorkerConfig(PruningConfig):
    """One parallel-GaP worker: grow the layers named in `grow` (exact names) at the start,
    prune them back to `sparsity` at the last step; other masks stay as loaded."""

    type: Literal["gap_worker"] = "gap_worker"
    grow: list[str] = Field(..., min_length=1)


@register_modifier("gap_worker", GaPWorkerConfig)
class GaPWorker(Modifier):
    def __init__(self, config: GaPWorkerConfig, session) -> None:
        super().__init__(config, session)
        layers = select_layers(session.model, config)
        missing = [n for n in config.grow if n not in layers]
        if missing:
            raise ValueError(f"gap_worker: {missing} are not among the selected layers")
        self.owned = MaskedLayers({n: layers[n] for n in config.grow}, config)
        self.last_step = session.steps(session.recipe.train.epochs)

    def on_start(self, session) -> None:
        for module in self.owned.layers.values():
            apply_mask(module, torch.ones_like(module.weight, dtype=torch.bool))
        session.masks_changed()

    def on_step(self, session) -> None:
        self.owned.observe_gradients()
        if session.global_step == self.last_step:
            self.owned.prune_to(self.config.final_sparsity, session)


def merge_workers(states: list[dict[str, Tensor]], partitions: list[list[str]]) -> dict[str, Tensor]:
    """Worker k's tensors for the layers of partition k; every other floating tensor averaged
    over workers; anything else (masks of layers nobody grew, counters) from worker 0."""
    owner = {layer: k for k, names in enumerate(partitions) for layer in names}
    merged: dict[str, Tensor] = {}
    for key, first in states[0].items():
        layer = next((n for n in owner if key.startswith(n + ".")), None)
        if layer is not None and (".parametrizations.weight." in key):
            merged[key] = states[owner[layer]][key].clone()
        elif first.is_floating_point():
            merged[key] = torch.stack([s[key] for s in states]).mean(0)
        else:
            merged[key] = first.clone()
    return merged


@dataclass
class ParallelGaPResult:
    final_run: Path
    cycles: list[dict[str, Any]]


def parallel_gap(
    recipe: Recipe | str | Path | dict,
    out_dir: str | Path,
    *,
    sparsity: float,
    partitions: int = 2,
    cycles: int = 2,
    period: int = 1,
    finetune_epochs: int = 1,
    scheme: str | dict = "unstructured",
    layers: str | list[str] | dict | None = None,
    splits: DatasetSplits | None = None,
) -> ParallelGaPResult:
    """Run parallel GaP on a dense `recipe` (its model, data and optimizer; its epochs are
    replaced by `period` per worker phase and `finetune_epochs` at the end). Writes
    `out_dir/cycle_c/worker_k`, `out_dir/finetune` and `out_dir/parallel_gap.json`."""
    from ..evaluate import build_model, load_model_state, load_splits
    from ..recipe import derive_recipe, load_recipe
    from ..trainer import train

    base, out = load_recipe(recipe), Path(out_dir)
    if base.modifiers:
        raise ValueError("parallel_gap prunes by itself: give it a dense recipe (no modifiers)")
    if min(partitions, cycles, period) < 1 or finetune_epochs < 0:
        raise ValueError("partitions, cycles and period must be >= 1, finetune_epochs >= 0")
    spec_args: dict[str, Any] = {"scheme": scheme, "criterion": "random"}
    if layers is not None:
        spec_args["layers"] = layers
    spec = PruningSpec.model_validate(spec_args)
    splits = splits or load_splits(base)

    torch.manual_seed(base.train.seed)
    model = build_model(base, splits)
    picked = select_layers(model, spec)
    groups = contiguous_partitions(list(picked), partitions)
    generator = torch.Generator().manual_seed(base.train.seed)
    for name, mask in compute_masks(picked, spec, sparsity, None, generator).items():
        apply_mask(picked[name], mask)  # a random sparse start: no dense pretraining
    merged_path = save_atomic(model.state_dict(), out / "start.pt")

    worker_spec = spec.model_dump(mode="json") | {"criterion": "magnitude", "sparsity": sparsity}
    history = []
    for c in range(cycles):
        runs = []
        for k, group in enumerate(groups):
            worker = {"type": "gap_worker", **worker_spec, "grow": group}
            name = f"cycle_{c}_worker_{k}"
            run_recipe = derive_recipe(
                base, name=name, checkpoint=merged_path, modifiers=[worker], epochs=period
            )
            runs.append(train(run_recipe, out / f"cycle_{c}" / f"worker_{k}", splits=splits))
        merged = merge_workers([load_model_state(r) for r in runs], groups)
        merged_path = save_atomic(merged, out / f"cycle_{c}" / "merged.pt")
        history.append({"cycle": c, "workers": [_val_accuracy(r) for r in runs]})

    finetune = derive_recipe(base, name="finetune", checkpoint=merged_path, epochs=finetune_epochs)
    final = train(finetune, out / "finetune", splits=splits)
    (out / "parallel_gap.json").write_text(json.dumps(
        {"sparsity": sparsity, "partitions": groups, "cycles": history, "final_run": str(final)},
        indent=2,
    ))
    return ParallelGaPResult(final, history)


def _val_accuracy(run: Path) -> float | None:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return json.loads(lines[-1]).get("val_accuracy") if lines else None
