"""The built-in trainer: runs a recipe end to end into one run folder (metrics.jsonl, atomic
checkpoints every epoch, --resume, NaN stop, seeded determinism, DDP under torchrun), then
measures the result and writes the report."""

from __future__ import annotations

import copy
import json
import math
import os
import sys
import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from .algorithms import channel as channel_stage
from .checkpoint import load_weights_only, save_atomic
from .data import DatasetSplits, augment_batch
from .evaluate import build_model, evaluate, load_splits, write_summary
from .recipe import OptimizerConfig, Recipe, TrainConfig, dump_recipe, load_recipe
from .session import Session
from .sparsity import load_masked_state_dict


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the run stops rather than write garbage."""


def build_optimizer(params, cfg: OptimizerConfig) -> torch.optim.Optimizer:
    if cfg.name == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0,
            weight_decay=cfg.weight_decay,
        )
    cls = torch.optim.AdamW if cfg.name == "adamw" else torch.optim.Adam
    return cls(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)


def lr_at(step: int, cfg: TrainConfig, steps_per_epoch: int) -> float:
    """Learning rate at a step: linear warm-up, then constant, cosine or step decay. Stateless,
    so a resumed run gets exactly the rates the uninterrupted run would have."""
    base, sched = cfg.optimizer.lr, cfg.lr_schedule
    warmup = int(sched.warmup_epochs * steps_per_epoch)
    if step < warmup:
        return base * (step + 1) / warmup
    if sched.name == "constant":
        return base
    if sched.name == "step":
        return base * sched.gamma ** int(step / (sched.step_epochs * steps_per_epoch))
    total = max(1, cfg.epochs * steps_per_epoch - warmup)
    progress = min(1.0, (step - warmup) / total)
    return sched.min_lr + (base - sched.min_lr) * 0.5 * (1 + math.cos(math.pi * progress))


class _Dist:
    """Rank and world size under torchrun (WORLD_SIZE set), else a single process."""

    def __init__(self, device: torch.device) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def _batches(
    n: int, batch_size: int, seed: int, epoch: int, rank: int, world: int,
    keep: Tensor | None = None,
) -> Iterator[Tensor]:
    """Index batches for one epoch: a permutation seeded by (seed, epoch), restricted to the
    examples `keep` marks, split evenly across ranks (the tail that does not divide is
    dropped, as DistributedSampler does)."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(n, generator=g)
    if keep is not None:
        order = order[keep[order]]
    per_rank = len(order) // world
    mine = order[rank * per_rank : (rank + 1) * per_rank]
    for i in range(0, per_rank, batch_size):
        yield mine[i : i + batch_size]


def _device(cfg: TrainConfig) -> torch.device:
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(cfg.device)


def _read_metrics(path: Path, up_to_epoch: int) -> list[str]:
    if not path.exists():
        return []
    return [ln for ln in path.read_text().splitlines() if ln and json.loads(ln)["epoch"] <= up_to_epoch]


@dataclass
class _Loop:
    """Everything one training run mutates, and the steps that mutate it."""

    recipe: Recipe
    splits: DatasetSplits
    model: nn.Module
    optimizer: torch.optim.Optimizer
    session: Session
    device: torch.device
    ranks: _Dist
    memory_format: torch.memory_format | None
    steps_per_epoch: int

    def run_epoch(self, epoch: int, progress: bool | None, ckpt_path: Path) -> dict:
        """One pass over this rank's share of the training set; returns the epoch's metrics."""
        cfg, session = self.recipe.train, self.session
        train_model = self.model
        if self.ranks.world > 1:
            train_model = self._ddp
        train_model.train()
        aug_gen = torch.Generator().manual_seed(cfg.seed * 7919 + epoch + 1)
        images, labels = self.splits.train.tensors
        t0 = time.perf_counter()
        seen, loss_sum, correct, lr = 0, 0.0, 0, 0.0
        keep = session.example_filter(len(labels))
        batches = list(_batches(
            len(labels), cfg.batch_size, cfg.seed, epoch, self.ranks.rank, self.ranks.world, keep
        ))
        bar = tqdm(
            batches, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False,
            disable=(None if self.ranks.main else True) if progress is None else not progress,
        )
        for i, idx in enumerate(bar):
            x, y = images[idx], labels[idx]
            if self.recipe.data.augment:
                x = augment_batch(x, aug_gen)
            # the schedule runs on nominal steps, so an epoch with dropped examples still
            # covers a whole epoch of it
            nominal_step = epoch * self.steps_per_epoch + i * self.steps_per_epoch // len(batches)
            lr = lr_at(nominal_step, cfg, self.steps_per_epoch)
            task_loss, hits = self.train_step(train_model, x, y, idx, lr, ckpt_path)
            seen += len(y)
            loss_sum += task_loss.item() * len(y)
            correct += hits.sum().item()
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", lr=f"{lr:.3g}")
        session.epoch_end()
        val_loss, val_acc = (float("nan"), float("nan"))
        if len(self.splits.val):
            val_loss, val_acc = evaluate(self.model, self.splits.val, cfg.eval_batch_size, str(self.device))
        return {
            "epoch": epoch + 1, "step": session.global_step, "lr": lr,
            "train_loss": loss_sum / max(1, seen), "train_accuracy": correct / max(1, seen),
            "val_loss": val_loss, "val_accuracy": val_acc,
            **session.metrics(), "seconds": time.perf_counter() - t0,
        }

    def train_step(
        self, train_model: nn.Module, x: Tensor, y: Tensor, idx: Tensor, lr: float,
        ckpt_path: Path | None = None,
    ) -> tuple[Tensor, Tensor]:
        """One optimizer step on the batch (x, y) whose indices into the training set are
        `idx`; returns the task loss and a bool per example (classified correctly)."""
        cfg, session, optimizer = self.recipe.train, self.session, self.optimizer
        x, y = x.to(self.device), y.to(self.device)
        if self.memory_format is not None:
            x = x.contiguous(memory_format=self.memory_format)
        for group in optimizer.param_groups:
            group["lr"] = lr
        bf16 = cfg.precision == "bf16"
        with torch.autocast(self.device.type, dtype=torch.bfloat16) if bf16 else nullcontext():
            logits = train_model(x)
            task_loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
        hits = logits.detach().argmax(1) == y
        session.observe_batch(idx, hits.cpu())
        loss = session.loss(task_loss)
        if not torch.isfinite(loss):
            last = ckpt_path if ckpt_path is not None and ckpt_path.exists() else None
            raise TrainingDiverged(
                f"loss became {loss.item()} at step {session.global_step + 1} (lr {lr:g}); lower "
                f"train.optimizer.lr or set train.grad_clip. The last good checkpoint is "
                f"{last or 'none (first epoch)'}"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        optimizer.step()
        session.step()
        return task_loss, hits

    @cached_property
    def _ddp(self) -> nn.Module:
        return nn.parallel.DistributedDataParallel(self.model)

    def state(self, epoch: int) -> dict:
        """What a resumed run needs to continue exactly where this one stands."""
        return {
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "session": self.session.state_dict(), "torch_rng": torch.get_rng_state(),
            "epoch": epoch,
        }

    def restore(self, state: dict) -> int:
        """Load a checkpoint written by `state`; returns the number of epochs it had done."""
        load_masked_state_dict(self.model, state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.session.load_state_dict(state["session"])
        torch.set_rng_state(state["torch_rng"])
        return int(state["epoch"])


def _start_run_dir(run_dir: Path, recipe: Recipe, resume: bool, ckpt_path: Path) -> None:
    if not resume and ckpt_path.exists():
        raise FileExistsError(
            f"{run_dir} already holds a run; pass --resume to continue it or choose another --out"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "recipe.yaml").write_text(dump_recipe(recipe))


def build_loop(
    recipe: Recipe, run_dir: Path, ranks: _Dist | None = None, *,
    splits: DatasetSplits | None = None, resume: bool = False,
) -> tuple[_Loop, nn.Module | None, Tensor]:
    """Model, optimizer and session for `recipe`, seeded, on its device: the training loop (also
    what `profile memory` steps through), the dense reference copy when the recipe compresses,
    and an example input of batch 1."""
    cfg = recipe.train
    device = _device(cfg)
    ranks = ranks or _Dist(device)
    torch.manual_seed(cfg.seed)
    splits = splits or load_splits(recipe)
    model = build_model(recipe, splits).to(device)
    compressing = bool(recipe.modifiers) or recipe.structured is not None
    reference = copy.deepcopy(model).cpu() if compressing else None
    example = torch.zeros(1, *splits.input_shape)
    model = channel_stage.prepare_model(model, recipe, example, run_dir, resume).to(device)
    optimizer = build_optimizer(model.parameters(), cfg.optimizer)
    steps_per_epoch = math.ceil((len(splits.train) // ranks.world) / cfg.batch_size)
    if steps_per_epoch == 0:
        raise ValueError(f"{len(splits.train)} training examples are too few for {ranks.world} ranks")
    # Masks are parametrizations: the optimizer keeps the same tensors (parametrize moves
    # `weight` to `parametrizations.weight.original`). The layout changes after the masks
    # exist so that masks and weights share it.
    session = Session(model, recipe, optimizer, steps_per_epoch)
    if recipe.structured is not None and recipe.structured.soft:
        session.modifiers.append(channel_stage.SoftChannelPruning(recipe.structured, session, example))
    memory_format = torch.channels_last if cfg.channels_last and len(splits.input_shape) == 3 else None
    if memory_format is not None:
        model.to(memory_format=memory_format)
    loop = _Loop(recipe, splits, model, optimizer, session, device, ranks, memory_format, steps_per_epoch)
    return loop, reference, example


def train(
    recipe: Recipe | str | Path | dict,
    run_dir: str | Path | None = None,
    *,
    resume: bool = False,
    splits: DatasetSplits | None = None,
    progress: bool | None = None,
) -> Path:
    """Train (and prune, per the recipe's modifiers) into `run_dir`; returns the folder.
    With `resume`, continue from `run_dir/checkpoints/last.pt` if it exists."""
    recipe = load_recipe(recipe)
    cfg = recipe.train
    run_dir = Path(run_dir) if run_dir is not None else recipe.run_dir()
    ranks = _Dist(_device(cfg))
    ckpt_path = run_dir / "checkpoints" / "last.pt"
    if ranks.main:
        _start_run_dir(run_dir, recipe, resume, ckpt_path)

    loop, reference, example = build_loop(recipe, run_dir, ranks, splits=splits, resume=resume)
    model = loop.model
    start_epoch = loop.restore(load_weights_only(ckpt_path)) if resume and ckpt_path.exists() else 0

    metrics_path = run_dir / "metrics.jsonl"
    if ranks.main:  # a killed run may have logged an epoch its checkpoint does not hold
        kept = _read_metrics(metrics_path, start_epoch)
        metrics_path.write_text("".join(ln + "\n" for ln in kept))
    for epoch in range(start_epoch, cfg.epochs):
        record = loop.run_epoch(epoch, progress, ckpt_path)
        if ranks.main:
            with metrics_path.open("a") as f:
                f.write(json.dumps(record) + "\n")
            save_atomic(loop.state(epoch + 1), ckpt_path)
            tqdm.write(
                f"epoch {epoch + 1}/{cfg.epochs}  loss {record['train_loss']:.4f}  "
                f"val acc {record['val_accuracy']:.4f}  sparsity {record['sparsity']:.3f}  "
                f"{record['seconds']:.1f}s"
            )
            sys.stdout.flush()  # progress reaches logs and pipes as it happens
        ranks.barrier()

    if ranks.main:
        from .report import write_report

        model = channel_stage.finish_model(model, recipe, example, run_dir)
        write_summary(run_dir, recipe, loop.splits, model.cpu(), reference, bool(recipe.model.checkpoint))
        write_report(run_dir)
    ranks.barrier()
    return run_dir

def compress(
    recipe: Recipe | str | Path | dict, run_dir: str | Path, *, resume: bool = False
) -> Path:
    """`train` for a recipe that must prune something: sparsify (usually a trained model named
    by `model.checkpoint`) with the recipe's modifiers and fine-tune it into `run_dir`."""
    recipe = load_recipe(recipe)
    if not recipe.modifiers and recipe.structured is None:
        raise ValueError(
            "the recipe has no modifiers: nothing to compress (use `sparseforge train` for "
            "dense training, or add e.g. `modifiers: [{type: gmp, sparsity: 0.9, end_epoch: 3}]`)"
        )
    return train(recipe, run_dir, resume=resume)
