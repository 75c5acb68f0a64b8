"""Per-layer kernel choice by measurement: every Conv2d/Linear of a model is timed as dense and
as each applicable candidate on its real input (captured from an example batch), side by side;
the fastest candidate whose output equals dense replaces the layer in a baked copy."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from ..profile import Timing
from ..profile.latency import interleaved
from ..sparsity.masks import get_mask, masked_modules, module_type_name
from .candidates import CANDIDATES, DENSE, Candidate, check
from .capture import capture_inputs
from .deployed import DeployedModel, prepare, set_submodule

if TYPE_CHECKING:
    from ..graph.lower import Fusion

LAYER_TYPES: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.Linear)
TARGETS = ("cpu", "cuda")


def target_device(target: str) -> torch.device:
    """The torch device for a deploy target; a clear error when it is not there."""
    if target not in TARGETS:
        raise ValueError(f"unknown deploy target {target!r}; choose from {', '.join(TARGETS)}")
    if target == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            "target 'cuda' needs a CUDA device, but torch sees none "
            f"(torch {torch.__version__}, built with CUDA {torch.version.cuda}); "
            "deploy with --target cpu, or run on a machine with a GPU and a CUDA build of torch"
        )
    return torch.device(target)


def output_mismatch(built: nn.Module, dense: nn.Module, x: Tensor) -> str | None:
    """None when `built(x)` equals `dense(x)` up to float rounding, else what differs."""
    with torch.no_grad():
        want, got = dense(x), built(x)
    if got.shape != want.shape:
        return f"output shape {tuple(got.shape)} differs from dense {tuple(want.shape)}"
    scale = float(want.abs().max()) if want.numel() else 0.0
    if torch.allclose(got, want, rtol=1e-4, atol=1e-4 * max(scale, 1e-6)):
        return None
    err = float((got - want).abs().max())
    return f"output differs from dense (max abs error {err:.3g}, output scale {scale:.3g})"


def time_side_by_side(
    modules: dict[str, nn.Module], x: Tensor, device: torch.device, repeats: int, rounds: int
) -> dict[str, Timing]:
    """Time each module on the same input, interleaved (`profile.latency.interleaved`)."""
    fns = {name: functools.partial(module, x) for name, module in modules.items()}
    return interleaved(fns, rounds=rounds, repeats=repeats, device=device)


def _timing_record(t: Timing) -> dict[str, float | int]:
    return {"median_ms": t.median_ms, "min_ms": t.min_s * 1e3, "samples": t.repeats}


def plan_layer(
    name: str, module: nn.Module, mask: Tensor | None, x: Tensor | None, target: str,
    candidates: list[Candidate], *, repeats: int, rounds: int,
) -> tuple[dict[str, Any], nn.Module | None]:
    """The plan record of one (baked) layer and its replacement (None: dense kept)."""
    weight = module.weight.detach()
    record: dict[str, Any] = {
        "name": name, "type": module_type_name(module),
        "input_shape": None if x is None else list(x.shape),
        "weight_shape": list(weight.shape),
        "sparsity": 1.0 - int(torch.count_nonzero(weight)) / max(1, weight.numel()),
        "candidates": {}, "skipped": {}, "choice": DENSE, "speedup": 1.0, "note": "",
    }
    if x is None:
        record["note"] = "not called by the example input: dense kept"
        return record, None
    usable: dict[str, nn.Module] = {DENSE: module}
    for cand in candidates:
        reason = check(cand, module, mask, target)
        if reason is None:
            try:
                built = cand.build(module).to(x.device).eval()
            except Exception as err:  # a kernel that cannot take this layer must not stop deploy
                reason = f"build failed: {type(err).__name__}: {err}"
            else:
                reason = output_mismatch(built, module, x)
        if reason is None:
            usable[cand.name] = built
        else:
            record["skipped"][cand.name] = reason
    timings = time_side_by_side(usable, x, x.device, repeats, rounds)
    record["candidates"] = {n: _timing_record(t) for n, t in timings.items()}
    choice = min(timings, key=lambda n: timings[n].median_s)
    record["choice"] = choice
    record["speedup"] = timings[DENSE].median_s / timings[choice].median_s
    if choice != DENSE:
        record["note"] = "fastest measured"
        return record, usable[choice]
    if len(usable) > 1:
        record["note"] = "no faster kernel: dense kept"
    elif all(r.startswith("only for ") for r in record["skipped"].values()):
        record["note"] = f"no candidate for {record['type']}: dense kept"
    else:
        record["note"] = "no applicable candidate (see skipped): dense kept"
    return record, None


def _pick_candidates(names: Iterable[str] | None) -> list[Candidate]:
    chosen = CANDIDATES.names() if names is None else list(names)
    return [CANDIDATES.get(n) for n in chosen if n != DENSE]  # get: unknown names say so


def fuse_deployed(module: nn.Module, example_input: Tensor, target: str,
                  freezing: bool | None = None, *, repeats: int = 20,
                  rounds: int = 3) -> Fusion | None:
    """The fusion planner on a deployed module (graph.lower.fuse_model): epilogues folded into
    our kernels, the rest compiled by TorchInductor. `freezing` (inductor folds the weights in
    as constants): True or False lowers once that way; None lowers both ways and keeps the one
    faster on `example_input`, the medians in `report.compile["measured_ms"]`, since neither
    wins everywhere (on a 2-core CPU freezing made ResNet-18 1.6x faster through oneDNN's
    packed convs and a LLaMA-style decoder 1.12x slower). Returns None, with a warning saying
    why, when the target is not the CPU or the module cannot be exported."""
    from ..graph.lower import fuse_model

    if target != "cpu":
        warnings.warn(f"fuse=True lowers for the CPU only; the {target} deployment runs unfused",
                      RuntimeWarning, stacklevel=3)
        return None
    try:
        if freezing is not None:
            return fuse_model(module, example_input, freezing=freezing)
        fusions = {label: fuse_model(module, example_input, freezing=label == "freezing")
                   for label in ("freezing", "no freezing")}
    except ValueError as err:  # graph.capture: torch.export could not trace the module
        warnings.warn(f"fuse=True: {err}; the deployment runs unfused (the per-layer kernels "
                      "are kept)", RuntimeWarning, stacklevel=3)
        return None
    times = interleaved({label: functools.partial(f.module, example_input)
                         for label, f in fusions.items()}, rounds=rounds, repeats=repeats)
    best = min(times, key=lambda label: times[label].median_ms)
    fusions[best].report.compile["measured_ms"] = {k: t.median_ms for k, t in times.items()}
    return fusions[best]


def deploy(
    model: nn.Module,
    example_input: Tensor,
    target: str = "cpu",
    *,
    repeats: int = 20,
    rounds: int = 3,
    candidates: Iterable[str] | None = None,
    fuse: bool = False,
    fold_bn: bool = False,
) -> DeployedModel:
    """Pick the fastest measured kernel for every Conv2d/Linear of `model` (masked or baked) on
    `target`, with each layer's real input from one forward of `example_input`; `candidates`
    limits the registered kernels tried (dense is always measured). `model` is not changed:
    the result holds a baked, eval-mode copy with the chosen layers replaced, and the plan.
    `fuse` then exports the deployed copy, plans its fusion and lowers it (`fuse_deployed`):
    the result calls the fused module on inputs shaped like `example_input`. `fold_bn` first
    folds every BatchNorm into the conv/linear before it (FuPruner's fold, exact in eval; zero
    weights stay zero), so a sparse kernel's epilogue can take the ReLU and residual after it."""
    device = target_device(target)
    if repeats < 1 or rounds < 1:
        raise ValueError(f"repeats and rounds must be >= 1, got {repeats} and {rounds}")
    picked = _pick_candidates(candidates)
    masks = {n: get_mask(m) for n, m in masked_modules(model)}
    work = prepare(model, device, fold_bn)
    x = example_input.to(device)
    layers = [(n, m) for n, m in work.named_modules() if isinstance(m, LAYER_TYPES)]
    if not layers:
        raise ValueError("the model has no Conv2d or Linear layer: nothing to deploy")
    inputs = capture_inputs(work, x, [n for n, _ in layers])
    plan, replacements = [], {}
    for name, module in layers:
        record, new = plan_layer(name, module, masks.get(name), inputs.get(name), target, picked,
                                 repeats=repeats, rounds=rounds)
        plan.append(record)
        if new is not None:
            replacements[name] = new
    for name, new in replacements.items():
        set_submodule(work, name, new)
    settings: dict[str, Any] = {"repeats": repeats, "rounds": rounds}
    if fold_bn:
        settings["fold_bn"] = True
    fusion = None
    if fuse:
        settings["fuse"] = True
        fusion = fuse_deployed(work.eval(), x, target, repeats=repeats, rounds=rounds)
        if fusion is not None:  # made again on load with the freezing measured faster here
            settings["freezing"] = fusion.report.compile["freezing"]
    return DeployedModel(work.eval(), plan, target, tuple(example_input.shape), settings,
                         fusion=fusion)
