"""`sparseforge quantize RUN_DIR`: quantize a trained run (PTQ, or the mixed-precision search)
and compare fp32 / int8 / int8 weights / mixed (or ptq) / sparse+int8 on the test split:
accuracy, weight bytes, latency. Writes quantize.json, quantize.md and the Pareto plots."""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..sparsity import bake_masks
from ..sparsity.masks import masked_modules
from .config import QuantizeConfig
from .layers import quantizable_layers
from .mixed import accuracy, apply_bits, mixed_precision
from .mixed_plot import plot_latency_pareto, plot_size_pareto
from .mixed_sensitivity import Batches, weight_bytes
from .ptq import ptq

SUMMARY_FILE = "quantize.json"


def calibration_batches(train: torch.utils.data.TensorDataset, config: QuantizeConfig,
                        seed: int = 0) -> Batches:
    """`config.calibration_batches` (x, y) batches drawn without replacement from `train`."""
    x, y = train.tensors
    n = min(len(y), config.calibration_batches * config.calibration_batch_size)
    if n == 0:
        raise ValueError("the run's training split is empty; calibration needs training images")
    idx = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))[:n]
    step = config.calibration_batch_size
    return [(x[idx[i:i + step]], y[idx[i:i + step]]) for i in range(0, n, step)]


def _bytes(layers: dict[str, nn.Module], bits: dict[str, int] | int, config: QuantizeConfig,
           sparse: bool = False) -> float:
    """Weight bytes of `layers`; `sparse`: nonzeros only plus a 1-bit-per-entry bitmap."""
    total = 0.0
    for name, m in layers.items():
        b = bits if isinstance(bits, int) else bits[name]
        w = m.weight.detach()
        total += weight_bytes(w, b, config.weights)
        if sparse:
            total -= (w == 0).sum().item() * b / 8 - w.numel() / 8
    return total


def _latency(models: dict[str, nn.Module], shape: tuple[int, ...], batch_sizes: Sequence[int],
             repeats: int) -> dict[str, dict[str, float]]:
    from ..profile import compare_latency

    timed = compare_latency(models, shape, batch_sizes, rounds=3, repeats=repeats)
    return {name: {str(b): t.median_ms for b, t in per.items()} for name, per in timed.items()}


def quantize_run(
    run_dir: str | Path, config: QuantizeConfig, out: str | Path, *,
    latency: bool = True, batch_sizes: Sequence[int] = (1, 64), repeats: int = 10,
) -> dict[str, Any]:
    """Quantize the run's model per `config`, compare it on the test split with fp32 and
    uniform int8 (and sparse+int8 when the run is sparse), write the summary, markdown and
    plots into `out`, and return the summary. Latency (with `latency`) compiles fp32 and the
    int8 model (quant.deploy.to_int8) with inductor; mixed widths have no int4 kernel here,
    so the mixed row reports bytes and accuracy only."""
    from ..evaluate import load_run

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    recipe, splits, model = load_run(run_dir)
    sparse = any(True for _ in masked_modules(model))
    fp32 = bake_masks(copy.deepcopy(model)).eval()
    calib = calibration_batches(splits.train, config, recipe.train.seed)
    layers = quantizable_layers(fp32, config)
    test = splits.test
    rows: dict[str, dict[str, Any]] = {
        "fp32": {"accuracy": accuracy(fp32, test), "weight_bytes": _bytes(layers, 32, config)}}
    int8_spec = config.model_copy(update={"weights": config.weights.model_copy(update={"bits": 8})})
    rows["int8"] = {"accuracy": accuracy(ptq(fp32, calib, int8_spec), test),
                    "weight_bytes": _bytes(layers, 8, config),
                    "what": "weights and activations per the quantize section, 8-bit, simulated"}
    rows["int8 weights"] = {"accuracy": accuracy(apply_bits(fp32, dict.fromkeys(layers, 8),
                                                            config.weights), test),
                            "weight_bytes": _bytes(layers, 8, config), "what": "weights only"}
    summary: dict[str, Any] = {"run": str(run_dir), "config": config.model_dump(mode="json"),
                               "sparse": sparse, "rows": rows}
    if config.mode == "mixed":
        result = mixed_precision(fp32, calib, splits.val, config, config.mixed)
        rows["mixed"] = {"accuracy": accuracy(apply_bits(fp32, result.assignment,
                                                         config.weights), test),
                         "weight_bytes": result.weight_bytes, "what": "weights only, "
                         "bits per layer from the search; latency not measured (no int4 kernel)"}
        summary["mixed"] = result.to_json()
        chosen = next(c for c in result.candidates if c["assignment"] == result.assignment)
        int8_val = accuracy(apply_bits(fp32, dict.fromkeys(layers, 8), config.weights), splits.val)
        plot_size_pareto(result.candidates, {"fp32": (result.fp32_bytes, result.fp32_val_accuracy),
                                             "int8 weights": (result.int8_bytes, int8_val)},
                         chosen, out / "pareto_size.png")
    else:
        rows["ptq"] = {"accuracy": accuracy(ptq(fp32, calib, config), test),
                       "weight_bytes": _bytes(layers, config.weights.bits, config),
                       "what": f"{config.weights.bits}-bit weights per the quantize section"}
    if sparse:
        rows["sparse+int8"] = {**rows["int8"], "weight_bytes": _bytes(layers, 8, config, True),
                               "what": "int8 nonzeros + 1-bit bitmap; latency: dense int8 kernels"}
    if latency:
        from .deploy import compile_frozen, to_int8

        int8 = to_int8(fp32, calib, calibration_batches=config.calibration_batches)
        rows["int8"]["deployed_accuracy"] = accuracy(int8, test)
        ms = _latency({"fp32": compile_frozen(fp32), "int8": int8}, splits.input_shape,
                      batch_sizes, repeats)
        for name in ("fp32", "int8"):
            rows[name]["latency_ms"] = ms[name]
        if sparse:
            rows["sparse+int8"]["latency_ms"] = ms["int8"]
        b = str(batch_sizes[-1])
        plot_latency_pareto({n: (r["latency_ms"][b], r["accuracy"]) for n, r in rows.items()
                             if "latency_ms" in r}, int(b), out / "pareto_latency.png")
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))
    (out / "quantize.md").write_text(summary_markdown(summary))
    return summary


def summary_markdown(summary: dict[str, Any]) -> str:
    """The comparison table (and the chosen widths) as markdown."""
    rows = summary["rows"]
    sizes = sorted({b for r in rows.values() for b in r.get("latency_ms", {})}, key=int)
    int8 = rows["int8 weights"]["weight_bytes"]
    head = ("| model | test acc (%) | weight KiB | vs int8 | "
            + "".join(f"ms @ b{b} | " for b in sizes))
    lines = [f"# Quantization of {summary['run']}", "", head,
             "|" + "---|" * (4 + len(sizes))]
    for name, r in rows.items():
        ms = "".join(f"{r['latency_ms'][b]:.3f} | " if "latency_ms" in r else "- | "
                     for b in sizes)
        lines.append(f"| {name} | {r['accuracy']:.2f} | {r['weight_bytes'] / 1024:.1f} | "
                     f"{r['weight_bytes'] / int8:.3f} | {ms}")
    if "deployed_accuracy" in rows["int8"]:
        lines += ["", f"int8 through quant.deploy.to_int8 (real kernels): test accuracy "
                      f"{rows['int8']['deployed_accuracy']:.2f}%."]
    if "mixed" in summary:
        m = summary["mixed"]
        lines += ["", f"Mixed precision ({m['solver']}): "
                      f"{m['weight_bytes'] / m['int8_bytes']:.3f} x int8 weight bytes, "
                      f"validation {m['val_accuracy']:.2f}% vs fp32 {m['fp32_val_accuracy']:.2f}%. "
                      f"{m['note']}.", "", "| layer | bits |", "|---|---|"]
        lines += [f"| {n} | {b} |" for n, b in m["assignment"].items()]
        lines += ["", "![accuracy vs size](pareto_size.png)"]
    if any("latency_ms" in r for r in rows.values()):
        lines += ["", "![accuracy vs latency](pareto_latency.png)"]
    return "\n".join(lines) + "\n"


def quantize_config(run_dir: str | Path, recipe: str | Path | None = None,
                    **overrides: Any) -> QuantizeConfig:
    """The `quantize:` section to use: from `recipe` (a YAML file that must have one), else the
    run's own recipe.yaml, else the defaults; then `overrides` (None = not given): mode,
    calibration_batches, and mixed.{bits, criterion, solver, trials, weight_bytes,
    accuracy_drop}. A mixed override without `mode` switches the mode to mixed."""
    from ..recipe import load_recipe

    if recipe is not None:
        section = load_recipe(recipe).quantize
        if section is None:
            raise ValueError(f"{recipe} has no `quantize:` section; add one (see "
                             "sparseforge/recipes/fmnist_mixed_precision.yaml) or pass flags")
    else:
        own = Path(run_dir) / "recipe.yaml"
        section = load_recipe(own).quantize if own.is_file() else None
    data = (section or QuantizeConfig()).model_dump(mode="json")
    given = {k: v for k, v in overrides.items() if v is not None}
    for key in ("mode", "calibration_batches"):
        if key in given:
            data[key] = given.pop(key)
    if given:
        if overrides.get("mode") is None:
            data["mode"] = "mixed"
        elif data["mode"] == "ptq":
            raise ValueError(f"{', '.join(sorted(given))} only apply to mode mixed, "
                             "not ptq: drop them or pass --mode mixed")
        mixed = data.get("mixed") or {}
        if {"weight_bytes", "accuracy_drop"} & given.keys():
            mixed["budget"] = {k: given.pop(k) for k in ("weight_bytes", "accuracy_drop")
                               if k in given}
        data["mixed"] = {**mixed, **given}
    if data["mode"] == "ptq":
        data["mixed"] = None
    return QuantizeConfig.model_validate(data)
