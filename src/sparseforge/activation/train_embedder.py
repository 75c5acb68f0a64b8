"""ProSparse training for a sentence embedder: the ReLU-substituted student learns to match the
frozen original's embeddings while λ(t) · L1 pushes its FFN activations to zero.

Distillation loss: (1 − cos) between the student's and the original's mean-pooled sentence
embeddings, plus `token_weight` · mean over real tokens of (1 − cos) between their last hidden
states. The pooled term is exactly what the quality metric measures (embeddings are used only
after L2 normalization, so cosine, not MSE: the scale is free); the token term is a denser
signal that keeps every token state, not only their mean, close to the original.

The student runs without dropout (eval mode) so it is trained on the same function it is
measured with. Checkpoints (`checkpoint.pt` in `out_dir`, written atomically, loaded with
weights_only=True) hold the student, the optimizer and the history; batches are a function of
the step and seed only, so a resumed run continues exactly where the killed one left off."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from ..checkpoint import load_weights_only, save_atomic
from ..data.splits import seeded_permutation
from .hf import Encode, mean_pool
from .measure import ZeroCounter
from .regularize import L1Collector, SineStages
from .relu import fatrelu_modules

CHECKPOINT = "checkpoint.pt"


class DistillConfig(BaseModel):
    """Schedule starts and warm-ups are in optimizer steps."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    steps: int = Field(..., ge=1)
    schedule: SineStages
    batch_size: int = Field(32, ge=1)
    lr: float = Field(3e-5, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    token_weight: float = Field(1.0, ge=0, description="weight of the token-state (1 − cos) term")
    grad_clip: float = Field(1.0, gt=0)
    freeze_embeddings: bool = Field(True, description="keep the input embedding table fixed")
    checkpoint_every: int = Field(200, ge=1)
    log_every: int = Field(50, ge=1)
    seed: int = 0


def distill_loss(
    student_hidden: Tensor, teacher_hidden: Tensor, mask: Tensor, token_weight: float
) -> Tensor:
    """(B, T, D) student / teacher states, (B, T) mask -> scalar loss (see module docstring)."""
    pooled = (
        1
        - F.cosine_similarity(
            mean_pool(student_hidden, mask), mean_pool(teacher_hidden, mask), dim=-1
        ).mean()
    )
    if token_weight == 0:
        return pooled
    per_token = 1 - F.cosine_similarity(student_hidden, teacher_hidden, dim=-1)  # (B, T)
    m = mask.to(per_token.dtype)
    return pooled + token_weight * (per_token * m).sum() / m.sum().clamp_min(1.0)


class _Batches:
    """Batch `step` of a seeded per-epoch permutation (last partial batch dropped)."""

    def __init__(self, n: int, batch_size: int, seed: int) -> None:
        if n < batch_size:
            raise ValueError(f"{n} training sentences are fewer than one batch of {batch_size}")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.per_epoch = n // batch_size
        self._epoch, self._perm = -1, None

    def __call__(self, step: int) -> Tensor:
        epoch, j = divmod(step, self.per_epoch)
        if epoch != self._epoch:
            self._epoch, self._perm = epoch, seeded_permutation(self.n, self.seed + epoch)
        return self._perm[j * self.batch_size : (j + 1) * self.batch_size]


def _resume(path: Path, config: DistillConfig, student: nn.Module, opt) -> tuple[int, list]:
    state = load_weights_only(path)
    if state["config"] != config.model_dump():
        raise ValueError(
            f"{path} was written by a run with another configuration; resume with the same "
            "settings, or write to a new output folder"
        )
    student.load_state_dict(state["student"])
    opt.load_state_dict(state["optimizer"])
    return int(state["step"]), list(state["history"])


def distill_prosparse(
    student: nn.Module,
    teacher: nn.Module,
    encode: Encode,
    sentences: Sequence[str],
    config: DistillConfig,
    out_dir: str | Path,
    *,
    on_step: Callable[[int], None] | None = None,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Train `student` (already substituted: see `substitute_activations`) in place, resuming
    from `out_dir/checkpoint.pt` if present; returns the logged history (one record per
    `log_every` steps). `on_step(step)` runs after each optimizer step."""
    sites = fatrelu_modules(student)
    if not sites:
        raise ValueError(
            "the student has no FATReLU activation; call substitute_activations(student) first"
        )
    teacher.eval().requires_grad_(False)
    student.eval()  # no dropout: see module docstring
    if config.freeze_embeddings and hasattr(student, "embeddings"):
        student.embeddings.requires_grad_(False)
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    path = Path(out_dir) / CHECKPOINT
    step, history = _resume(path, config, student, opt) if path.is_file() else (0, [])
    if step:
        log(f"resumed from {path} at step {step}")
    batches = _Batches(len(sentences), config.batch_size, config.seed)
    sums = {"loss": 0.0, "distill": 0.0, "l1": 0.0}

    with L1Collector(sites) as collector, ZeroCounter(sites) as zeros:
        while step < config.steps:
            batch = encode([sentences[i] for i in batches(step).tolist()])
            mask = batch["attention_mask"].bool()  # (B, T)
            with torch.no_grad():
                target = teacher(**batch).last_hidden_state  # (B, T, D)
            collector.token_mask = zeros.token_mask = mask
            hidden = student(**batch).last_hidden_state
            distill = distill_loss(hidden, target, mask, config.token_weight)
            l1 = collector.pop()
            lam = config.schedule(step)
            loss = distill + lam * l1
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"loss became {float(loss.detach())} at step {step} "
                    f"(distill {float(distill.detach()):.4g}, L1 {float(l1.detach()):.4g}, "
                    f"lambda {lam:.4g}); lower lr ({config.lr}) or the "
                    f"lambdas ({config.schedule.lambdas}) and resume from the last checkpoint"
                )
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            for key, value in (("loss", loss), ("distill", distill), ("l1", l1)):
                sums[key] += float(value.detach())
            if step % config.log_every == 0 or step == config.steps:
                n = (step - 1) % config.log_every + 1
                record = {"step": step, "lambda": lam, "sparsity": zeros.result.overall}
                record.update({k: v / n for k, v in sums.items()})
                history.append(record)
                log(
                    " ".join(
                        f"{k}={v:.5g}" if isinstance(v, float) else f"{k}={v}"
                        for k, v in record.items()
                    )
                )
                sums = dict.fromkeys(sums, 0.0)
                zeros.reset()
            if step % config.checkpoint_every == 0 or step == config.steps:
                save_atomic(
                    {
                        "step": step,
                        "config": config.model_dump(),
                        "student": student.state_dict(),
                        "optimizer": opt.state_dict(),
                        "history": history,
                    },
                    path,
                )
            if on_step is not None:
                on_step(step)
    if any(not math.isfinite(float(p.detach().sum())) for p in params):
        raise FloatingPointError("the student's weights hold NaN/inf after training")
    return history
