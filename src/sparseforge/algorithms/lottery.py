"""Lottery tickets: iterative magnitude pruning (IMP) with rewinding (Frankle & Carbin 2019;
Frankle et al. 2020) and the sanity checks of Ma et al. 2021, which decide whether the ticket
really wins: it must match the dense model and beat the same mask re-initialised and a random
mask at equal sparsity, all trained under the same setting.

IMP needs one full training per round, so `find_ticket` is a driver over `trainer.train`; the
only modifier is `weight_snapshot`, which keeps the rewind point in the run's checkpoint."""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from ..sparsity import PruningSpec, apply_mask, compute_masks, masks_state, select_layers
from .base import Modifier, register_modifier

if TYPE_CHECKING:
    from ..data import DatasetSplits
    from ..recipe import Recipe


class WeightSnapshotConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["weight_snapshot"] = "weight_snapshot"
    at_epoch: float = Field(0.0, ge=0.0, description="when to copy the weights; 0 = initial")


@register_modifier("weight_snapshot", WeightSnapshotConfig)
class WeightSnapshot(Modifier):
    """Copy the model's state dict after step k = round(at_epoch * steps per epoch) (k = 0: the
    initial weights) into the session state, so the run's checkpoint holds the rewind point."""

    def __init__(self, config: WeightSnapshotConfig, session) -> None:
        super().__init__(config, session)
        self.at_step = session.steps(config.at_epoch)
        self.weights: dict[str, Tensor] = {}

    def _take(self, session) -> None:
        self.weights = {
            k: v.detach().cpu().clone(memory_format=torch.contiguous_format)
            for k, v in session.model.state_dict().items()
        }

    def on_start(self, session) -> None:
        if self.at_step == 0:
            self._take(session)

    def on_step(self, session) -> None:
        if session.global_step == self.at_step:
            self._take(session)

    def state_dict(self) -> dict:
        return {"at_step": self.at_step, "weights": self.weights}

    def load_state_dict(self, state: dict) -> None:
        self.weights = dict(state["weights"])


@dataclass(frozen=True)
class Verdict:
    """Whether a ticket wins, and which sanity condition failed if not."""

    winning: bool
    failed: tuple[str, ...]  # of "matches_dense", "beats_reinit", "beats_random_mask"
    text: str


def ticket_verdict(
    dense: float,
    ticket: float,
    reinit: float,
    random_mask: float,
    *,
    tolerance_points: float = 0.5,
    margin_points: float = 0.2,
) -> Verdict:
    """Ma et al.'s conditions on accuracies in [0, 1]: the ticket is within `tolerance_points`
    (percentage points) of dense, and beats both controls by at least `margin_points`."""
    pts = {k: 100.0 * v for k, v in
           dict(dense=dense, ticket=ticket, reinit=reinit, random_mask=random_mask).items()}
    eps = 1e-9  # accuracies are ratios of counts: do not let float noise flip a boundary case
    checks = {
        "matches_dense": pts["ticket"] >= pts["dense"] - tolerance_points - eps,
        "beats_reinit": pts["ticket"] - pts["reinit"] >= margin_points - eps,
        "beats_random_mask": pts["ticket"] - pts["random_mask"] >= margin_points - eps,
    }
    why = {
        "matches_dense": f"ticket {pts['ticket']:.2f}% is more than {tolerance_points:g} points "
        f"below dense {pts['dense']:.2f}%",
        "beats_reinit": f"ticket {pts['ticket']:.2f}% does not beat the same mask re-initialised "
        f"({pts['reinit']:.2f}%) by {margin_points:g} points",
        "beats_random_mask": f"ticket {pts['ticket']:.2f}% does not beat a random mask "
        f"({pts['random_mask']:.2f}%) by {margin_points:g} points",
    }
    failed = tuple(k for k, ok in checks.items() if not ok)
    if not failed:
        return Verdict(True, (), (
            f"winning ticket: {pts['ticket']:.2f}% vs dense {pts['dense']:.2f}% (tolerance "
            f"{tolerance_points:g}), re-init {pts['reinit']:.2f}%, random mask "
            f"{pts['random_mask']:.2f}% (margin {margin_points:g})"
        ))
    return Verdict(False, failed, "not a winning ticket: " + "; ".join(why[k] for k in failed))


@dataclass
class TicketResult:
    """What `find_ticket` found: per-round results, the controls, the verdict, the settings."""

    out_dir: Path
    final_sparsity: float
    rounds: list[dict[str, Any]]
    accuracies: dict[str, float]  # dense, ticket, reinit, random_mask (test accuracy)
    verdict: Verdict
    settings: dict[str, Any] = field(default_factory=dict)


def imp_sparsity(prune_rate: float, rounds: int) -> float:
    """Sparsity after `rounds` rounds, each pruning `prune_rate` of the remaining weights."""
    return 1.0 - (1.0 - prune_rate) ** rounds


def _run_result(run: Path) -> dict[str, Any]:
    summary = json.loads((run / "summary.json").read_text())
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    return {
        "run": str(run), "test_accuracy": summary["compressed"]["test_accuracy"],
        "val_accuracy": last["val_accuracy"], "sparsity": last["sparsity"],
    }


def _trained_model(base: Recipe, splits: DatasetSplits, run: Path) -> nn.Module:
    from ..evaluate import build_model, load_model_state
    from ..sparsity import load_masked_state_dict

    model = build_model(base, splits, initial_weights=False)
    load_masked_state_dict(model, load_model_state(run))
    return model


def _pick(model: nn.Module, names: list[str]) -> dict[str, nn.Module]:
    """Modules by name: the ticket's controls prune exactly the layers the search pruned."""
    modules = dict(model.named_modules())
    return {n: modules[n] for n in names}


def _exact_layer_spec(spec: PruningSpec, sparsities: dict[str, float]) -> PruningSpec:
    """`spec` with random scores and each layer's rate fixed (a random mask per layer at the
    ticket's layer-wise sparsity)."""
    overrides = [{"layers": [f"re:{re.escape(n)}"], "sparsity": s} for n, s in sparsities.items()]
    data = spec.model_dump(mode="json")
    data.update(criterion="random", allocation="layerwise", overrides=overrides)
    return PruningSpec.model_validate(data)


def _check_arguments(
    base: Recipe, out: Path, rounds: int, prune_rate: float, rewind_epoch: float
) -> None:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise RuntimeError("find_ticket runs in one process: launch it without torchrun")
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}")
    if not 0.0 < prune_rate < 1.0:
        raise ValueError(
            "prune_rate is the fraction of the remaining weights pruned per round, in (0, 1); "
            f"got {prune_rate}"
        )
    if base.modifiers:
        names = ", ".join(m.type for m in base.modifiers)
        raise ValueError(
            f"find_ticket prunes by itself: give it a dense training recipe (this one has "
            f"modifiers: {names}; remove them)"
        )
    if not 0.0 <= rewind_epoch <= base.train.epochs:
        raise ValueError(
            f"rewind_epoch {rewind_epoch} lies outside [0, train.epochs = {base.train.epochs}]"
        )
    if (out / "round_0").exists():
        raise FileExistsError(f"{out} already holds a ticket search; choose another out_dir")


@dataclass
class _Search:
    """One ticket search: the dense recipe, where runs go, the data, what is pruned."""

    base: Recipe
    out: Path
    splits: DatasetSplits
    spec: PruningSpec
    progress: bool | None
    rewind: dict[str, Tensor] = field(default_factory=dict)  # state dict at the rewind step
    names: list[str] = field(default_factory=list)  # the pruned layers

    def run(self, tag: str, start: nn.Module | None = None, modifiers: list | None = None) -> Path:
        """Train the base recipe into `out/tag`, from `start`'s weights and masks if given."""
        from ..trainer import train

        checkpoint = None
        if start is not None:
            checkpoint = self.out / tag / "init.pt"
            checkpoint.parent.mkdir(parents=True, exist_ok=True)
            torch.save({k: v.detach().clone() for k, v in start.state_dict().items()}, checkpoint)
        from ..recipe import derive_recipe

        recipe = derive_recipe(
            self.base, name=f"{self.base.output.name}_{tag}", checkpoint=checkpoint,
            modifiers=modifiers,
        )
        return train(recipe, self.out / tag, splits=self.splits, progress=self.progress)

    def model(
        self, masks: dict[str, Tensor] | None = None, *, seed: int | None = None
    ) -> nn.Module:
        """The rewound model (or a fresh init from `seed`), with `masks` applied (pruned
        weights zeroed)."""
        from ..evaluate import build_model

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0 if seed is None else seed)
            model = build_model(self.base, self.splits, initial_weights=False)
        if seed is None:
            model.load_state_dict(self.rewind, strict=True)
        layers = _pick(model, list(masks or {}))
        for n, mask in (masks or {}).items():
            apply_mask(layers[n], mask)
        return model

    def dense(self, rewind_epoch: float) -> tuple[Path, int]:
        """Round 0, keeping the weights at the rewind step; returns the run and that step."""
        from ..checkpoint import load_weights_only

        run = self.run("round_0", None, [{"type": "weight_snapshot", "at_epoch": rewind_epoch}])
        state = load_weights_only(run / "checkpoints" / "last.pt")["session"]["modifiers"][0]
        if not state["weights"]:
            raise RuntimeError(f"round 0 never reached the rewind step {state['at_step']}")
        self.rewind = state["weights"]
        self.names = list(select_layers(self.model(), self.spec))
        return run, int(state["at_step"])

    def prune_round(self, trained_run: Path, target: float, masks: dict[str, Tensor]) -> dict:
        """Magnitude masks at `target` from a trained run, nested in the previous `masks`."""
        trained = _pick(_trained_model(self.base, self.splits, trained_run), self.names)
        new = compute_masks(trained, self.spec, target)
        return {n: m & masks[n] if n in masks else m for n, m in new.items()}

    def random_masks(self, masks: dict[str, Tensor], seed: int) -> dict[str, Tensor]:
        """Random masks with each layer's sparsity of `masks` (the random-mask control)."""
        per_layer = {n: 1.0 - m.float().mean().item() for n, m in masks.items()}
        return compute_masks(
            _pick(self.model(), self.names), _exact_layer_spec(self.spec, per_layer), 0.0, None,
            torch.Generator().manual_seed(seed),
        )


def find_ticket(
    recipe: Recipe | str | Path | dict,
    out_dir: str | Path,
    *,
    rounds: int,
    prune_rate: float = 0.2,
    rewind_epoch: float = 0.0,
    scheme: str | dict = "unstructured",
    allocation: Literal["global", "layerwise"] = "global",
    layers: str | list[str] | dict | None = None,
    tolerance_points: float = 0.5,
    margin_points: float = 0.2,
    splits: DatasetSplits | None = None,
    progress: bool | None = False,
) -> TicketResult:
    """IMP with rewinding on a dense `recipe`, then the sanity checks at the final sparsity.
    Runs go to `out_dir/round_k` (k = 0 dense), `control_reinit`, `control_random_mask`; the
    accuracies, settings and verdict to `out_dir/ticket.json` and `out_dir/ticket.md`."""
    from ..evaluate import load_splits
    from ..recipe import load_recipe

    base, out = load_recipe(recipe), Path(out_dir)
    _check_arguments(base, out, rounds, prune_rate, rewind_epoch)
    spec_args: dict[str, Any] = {"scheme": scheme, "allocation": allocation}
    if layers is not None:
        spec_args["layers"] = layers
    spec = PruningSpec.model_validate(spec_args)  # criterion: magnitude
    search = _Search(base, out, splits or load_splits(base), spec, progress)

    dense_run, rewind_step = search.dense(rewind_epoch)
    history = [{"round": 0, "target_sparsity": 0.0, **_run_result(dense_run)}]
    masks: dict[str, Tensor] = {}
    previous = dense_run
    for r in range(1, rounds + 1):
        target = imp_sparsity(prune_rate, r)
        masks = search.prune_round(previous, target, masks)
        previous = search.run(f"round_{r}", search.model(masks))
        history.append({"round": r, "target_sparsity": target, **_run_result(previous)})

    seed = base.train.seed + 1  # for the re-init and the random mask
    controls = {
        "reinit": _run_result(search.run("control_reinit", search.model(masks, seed=seed))),
        "random_mask": _run_result(
            search.run("control_random_mask", search.model(search.random_masks(masks, seed)))
        ),
    }
    accuracies = {
        "dense": history[0]["test_accuracy"], "ticket": history[-1]["test_accuracy"],
        **{k: c["test_accuracy"] for k, c in controls.items()},
    }
    verdict = ticket_verdict(
        **accuracies, tolerance_points=tolerance_points, margin_points=margin_points
    )
    settings = _settings(base, spec, rounds, prune_rate, rewind_epoch, rewind_step, seed)
    settings.update(tolerance_points=tolerance_points, margin_points=margin_points)
    final = imp_sparsity(prune_rate, rounds)
    result = TicketResult(out, final, history, accuracies, verdict, settings)
    write_ticket(result, controls)
    return result


def _settings(
    base: Recipe, spec: PruningSpec, rounds: int, prune_rate: float, rewind_epoch: float,
    rewind_step: int, seed: int,
) -> dict[str, Any]:
    """The setting the verdict depends on (Ma et al.: lr, epochs, capacity, residuals)."""
    t = base.train
    return {
        "model": base.model.name, "model_args": base.model.args, "dataset": base.data.name,
        "epochs": t.epochs, "batch_size": t.batch_size,
        "optimizer": t.optimizer.model_dump(mode="json"), "lr": t.optimizer.lr,
        "lr_schedule": t.lr_schedule.model_dump(mode="json"), "seed": t.seed,
        "rounds": rounds, "prune_rate": prune_rate, "rewind_epoch": rewind_epoch,
        "rewind_step": rewind_step, "scheme": spec.scheme.model_dump(mode="json"),
        "allocation": spec.allocation, "layers": spec.layers.model_dump(mode="json"),
        "control_seed": seed,
        "random_mask": "rewound weights under a random mask per layer at the ticket's sparsity",
        "accuracy": "test accuracy of each run's final model",
        "retraining": "every run trains the full schedule; rounds >= 1 start from the weights "
        "at the rewind step (so k steps more than the dense run when k > 0)",
    }


def write_ticket(result: TicketResult, controls: dict[str, dict]) -> tuple[Path, Path]:
    """`ticket.json` (everything) and `ticket.md` (a report section) in the result's folder."""
    out = result.out_dir
    payload = {
        "final_sparsity": result.final_sparsity, "accuracies": result.accuracies,
        "verdict": asdict(result.verdict), "settings": result.settings,
        "rounds": result.rounds, "controls": controls,
    }
    json_path, md_path = out / "ticket.json", out / "ticket.md"
    json_path.write_text(json.dumps(payload, indent=2))
    md_path.write_text(ticket_markdown(result))
    return json_path, md_path


def ticket_markdown(result: TicketResult) -> str:
    """A markdown section: settings, IMP rounds, the sanity checks and the verdict."""
    s, acc = result.settings, result.accuracies
    lines = [
        "## Lottery ticket (IMP with rewinding, sanity checks of Ma et al. 2021)", "",
        f"**Verdict:** {result.verdict.text}", "",
        f"Setting: model `{s['model']}` {s['model_args'] or ''}, epochs per run: {s['epochs']}, "
        f"{s['optimizer']['name']} lr {s['lr']:g} ({s['lr_schedule']['name']}), batch "
        f"{s['batch_size']}, rewind to epoch {s['rewind_epoch']:g} (step {s['rewind_step']}), "
        f"{s['rounds']} rounds pruning {s['prune_rate']:.0%} of the remaining weights "
        f"({s['allocation']}, {s['scheme']['name']}).", "",
        "| round | sparsity | test acc | val acc |", "|---|---|---|---|",
    ]
    lines += [
        f"| {r['round']} | {r['sparsity']:.3f} | {r['test_accuracy']:.4f} | "
        f"{r['val_accuracy']:.4f} |"
        for r in result.rounds
    ]
    lines += [
        "", f"At sparsity {result.final_sparsity:.3f}:", "",
        "| run | test acc | Δ vs ticket (points) |", "|---|---|---|",
    ]
    names = {"dense": "dense (round 0)", "ticket": "ticket (mask + rewound weights)",
             "reinit": "same mask, random re-init", "random_mask": "random mask, rewound weights"}
    lines += [
        f"| {names[k]} | {v:.4f} | {100 * (v - acc['ticket']):+.2f} |" for k, v in acc.items()
    ]
    return "\n".join(lines) + "\n"


def ticket_masks(run: str | Path) -> dict[str, Tensor]:
    """The masks of a finished run (e.g. `out_dir/round_k`), by layer name."""
    from ..evaluate import load_run

    return masks_state(load_run(run)[2])
