"""Batch augmentation for small images: random zero-padded crop and horizontal flip, done with a
single gather so it costs far less than the training step it feeds."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def augment_batch(x: Tensor, generator: torch.Generator, pad: int = 2, flip: bool = True) -> Tensor:
    """Randomly shift each (N, C, H, W) image by up to `pad` pixels (zero fill) and mirror half of
    them; the draws come from `generator` only, so a seeded generator gives repeatable output."""
    if x.dim() != 4:
        raise ValueError(f"augment_batch expects (N, C, H, W) images, got shape {tuple(x.shape)}")
    if pad < 0:
        raise ValueError(f"pad must be >= 0, got {pad}")
    n, c, h, w = x.shape
    gdev = generator.device
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=gdev).to(x.device)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=gdev).to(x.device)
    flipped = (
        torch.rand((n,), generator=generator, device=gdev).to(x.device) < 0.5
        if flip
        else torch.zeros(n, dtype=torch.bool, device=x.device)
    )
    if n == 0:
        return x.clone()

    padded = F.pad(x, (pad, pad, pad, pad)) if pad else x
    width = w + 2 * pad
    ys = torch.arange(h, device=x.device)
    xs = torch.arange(w, device=x.device)
    rows = dy[:, None] + ys  # (N, H)
    cols = dx[:, None] + torch.where(flipped[:, None], w - 1 - xs, xs)  # (N, W)
    index = (rows[:, :, None] * width + cols[:, None, :]).view(n, 1, h * w).expand(n, c, h * w)
    out = padded.reshape(n, c, -1).gather(2, index)
    return out.view(n, c, h, w)
