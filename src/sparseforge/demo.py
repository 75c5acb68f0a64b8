"""The main job on the embedded default: train a compact CNN on Fashion-MNIST, prune it to
90% with gradual magnitude pruning while fine-tuning, and compare both in one report."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from .trainer import train

DEMO_RECIPES = ("fmnist_dense.yaml", "fmnist_gmp90.yaml")


def packaged_recipe(name: str) -> dict[str, Any]:
    """A recipe shipped inside the package (src/sparseforge/recipes), as a dict."""
    return yaml.safe_load(resources.files("sparseforge.recipes").joinpath(name).read_text())


def _quick(recipe: dict[str, Any]) -> dict[str, Any]:
    """Shrink a demo recipe to a smoke run: a few hundred examples, two epochs."""
    recipe["data"]["limit"] = 512
    recipe["train"]["epochs"] = 2
    for mod in recipe.get("modifiers", []):
        mod["start_epoch"], mod["end_epoch"], mod["update_every"] = 0.0, 1.0, 0.25
    return recipe


def run_demo(out: Path, *, quick: bool = False, data_root: str | None = None) -> Path:
    """Run both demo recipes into `out/dense` and `out/gmp90` (each resumable) and write the
    comparison report to `out/report.html`."""
    from .report import compare_runs

    runs = []
    for name in DEMO_RECIPES:
        recipe = packaged_recipe(name)
        if quick:
            recipe = _quick(recipe)
        if data_root:
            recipe["data"]["root"] = data_root
        run_dir = out / recipe["output"]["name"]
        if runs:  # the sparse run starts from the dense run's weights
            recipe["model"]["checkpoint"] = str(runs[0])
        if (run_dir / "summary.json").exists():
            print(f"{run_dir} is complete; reusing it")
        else:
            train(recipe, run_dir, resume=True)
        runs.append(run_dir)
    return compare_runs(runs, out)
