"""Measure a trained model for the run's summary: test accuracy, parameters and nonzeros,
dense and effective FLOPs, file sizes, CPU latency. Used by the trainer and `sparseforge eval`."""

from __future__ import annotations

import copy
import json
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from .checkpoint import load_weights_only, save_atomic
from .data import DatasetSplits, load_dataset
from .models import create_model
from .profile import FlopReport, compare_latency, count_flops, count_parameters, machine_info
from .recipe import Recipe, dump_recipe, load_recipe
from .sparsity import bake_masks, layer_sparsity, load_masked_state_dict, masked_modules
from .sparsity.compact import to_compact


@torch.no_grad()
def evaluate(
    model: nn.Module, data: TensorDataset, batch_size: int = 1000, device: str = "cpu"
) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of `model` on a tensor dataset, in eval mode."""
    was_training = model.training
    model.eval()
    images, labels = data.tensors
    total_loss, correct = 0.0, 0
    for i in range(0, len(labels), batch_size):
        x = images[i : i + batch_size].to(device)
        y = labels[i : i + batch_size].to(device)
        logits = model(x).float()
        total_loss += F.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
    model.train(was_training)
    n = max(1, len(labels))
    return total_loss / n, correct / n


def build_model(recipe: Recipe, splits: DatasetSplits, *, initial_weights: bool = True) -> nn.Module:
    """The recipe's model for this data, with `model.checkpoint` loaded if one is named and
    `initial_weights` is set."""
    args = dict(recipe.model.args)
    model = create_model(
        recipe.model.name,
        num_classes=splits.num_classes,
        in_channels=splits.input_shape[0],
        input_size=args.pop("input_size", splits.input_shape[1:]),
        **args,
    )
    if initial_weights and recipe.model.checkpoint:
        load_masked_state_dict(model, load_model_state(recipe.model.checkpoint))
    return model


def load_model_state(path: str | Path) -> dict[str, torch.Tensor]:
    """A model state dict from a run folder (its model/masked.pt) or a .pt file."""
    path = Path(path)
    if path.is_dir():
        path = path / "model" / "masked.pt"
    state = load_weights_only(path)
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict")
    return state.get("model", state)


def load_run(run_dir: str | Path) -> tuple[Recipe, DatasetSplits, nn.Module]:
    """Recipe, data and trained (masked) model of a finished run folder."""
    run_dir = Path(run_dir)
    recipe_path = run_dir / "recipe.yaml"
    if not recipe_path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run folder (no recipe.yaml)")
    recipe = load_recipe(recipe_path)
    splits = load_splits(recipe)
    model = build_model(recipe, splits, initial_weights=False)
    from .algorithms import MODIFIERS

    for cfg in recipe.modifiers:  # modifiers that swap modules (FATReLU, tile-masked convs)
        MODIFIERS.get(cfg.type).build.rebuild(model, cfg, recipe.train.seed)
    if recipe.structured is not None:  # channels were removed: rebuild that shape first
        from .algorithms.channel import rebuild

        model = rebuild(model, recipe, run_dir)
    load_masked_state_dict(model, load_model_state(run_dir))
    return recipe, splits, model


def load_splits(recipe: Recipe) -> DatasetSplits:
    d = recipe.data
    return load_dataset(
        d.name, root=d.root, val_fraction=d.val_fraction, split_seed=d.split_seed,
        test_fraction=d.test_fraction, channels=d.channels, image_size=d.image_size, limit=d.limit,
    )


def _file_bytes(state: dict[str, torch.Tensor], path: Path) -> int:
    save_atomic(state, path)
    return path.stat().st_size


def measure(
    model: nn.Module, splits: DatasetSplits, recipe: Recipe, out_dir: Path, tag: str
) -> tuple[dict[str, Any], FlopReport, nn.Module]:
    """One column of the report for `model` except latency: test accuracy, parameters, FLOPs,
    and file sizes (`file_bytes`: the compact format, bitmap + nonzeros; `dense_file_bytes`:
    the plain state dict; written to `out_dir` as `<tag>.compact.pt` and `<tag>.pt`). Also
    returns the per-layer FLOP report and the baked model (default memory layout) to time."""
    model = model.cpu().eval()
    _, acc = evaluate(model, splits.test, recipe.train.eval_batch_size)
    baked = bake_masks(copy.deepcopy(model)).to(memory_format=torch.contiguous_format)
    dense_state = baked.state_dict()
    flops = count_flops(baked, torch.zeros(1, *splits.input_shape))
    params, nonzeros = count_parameters(baked)
    column = {
        "test_accuracy": acc,
        "params": params,
        "nonzeros": nonzeros,
        "dense_flops": flops.dense_flops,
        "effective_flops": flops.effective_flops,
        "file_bytes": _file_bytes(to_compact(dense_state), out_dir / f"{tag}.compact.pt"),
        "dense_file_bytes": _file_bytes(dense_state, out_dir / f"{tag}.pt"),
    }
    return column, flops, baked


def activation_sparsity(model: nn.Module, splits: DatasetSplits, n: int = 1000) -> dict[str, Any] | None:
    """Exact zeros at each FATReLU (ProSparse) output over the first `n` test examples, per
    layer and overall; None for a model without FATReLU."""
    from .activation import fatrelu_modules, measure_activation_sparsity

    modules = fatrelu_modules(model)
    if not modules:
        return None
    x = splits.test.tensors[0][:n]
    model.eval()
    with torch.no_grad():
        return measure_activation_sparsity(modules, x.split(250), model).as_dict()


def write_summary(
    run_dir: Path,
    recipe: Recipe,
    splits: DatasetSplits,
    model: nn.Module,
    reference: nn.Module | None,
    reference_has_weights: bool,
) -> dict[str, Any]:
    """Measure the trained model and the dense reference it started from side by side (CPU
    latency interleaved in one run, fp32, masked weights computed densely) and write
    `summary.json` plus the model files under `model/`."""
    model_dir = run_dir / "model"
    save_atomic(model.state_dict(), model_dir / "masked.pt")
    compressed, flops, to_time = measure(model, splits, recipe, model_dir, "final")
    columns, timed = {"compressed": compressed}, {"compressed": to_time}
    if reference is not None:
        with tempfile.TemporaryDirectory() as tmp:
            columns["dense"], _, timed["dense"] = measure(reference, splits, recipe, Path(tmp), "dense")
        if not reference_has_weights:
            columns["dense"]["test_accuracy"] = None  # a random init has no meaningful accuracy
    latency = compare_latency(timed, splits.input_shape, recipe.output.latency_batch_sizes)
    for name, column in columns.items():
        column["latency_ms"] = {str(b): t.median_ms for b, t in latency[name].items()}
    sparsities = layer_sparsity(model)
    layers = [
        {**lf.__dict__, "sparsity": sparsities.get(lf.name, 1 - lf.nonzeros / max(1, lf.params))}
        for lf in flops.layers
    ]
    summary = {
        "name": recipe.output.name,
        "model": recipe.model.name,
        "dataset": recipe.data.name,
        "machine": machine_info(),
        "accelerated": False,
        "masked_layers": [n for n, _ in masked_modules(model)],
        "dense": columns.get("dense"),
        "compressed": compressed,
        "layers": layers,
    }
    activations = activation_sparsity(model, splits)
    if activations is not None:
        summary["activation_sparsity"] = activations
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    (run_dir / "recipe.yaml").write_text(dump_recipe(recipe))
    return summary
