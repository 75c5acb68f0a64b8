"""Cloud-side tail latency: time every split's tail on the cloud device (the GPU when there is
one, else this CPU with its own thread count). Run as `python -m sparseforge.edge.cloud RUN_DIR`
so the numbers come from another process than the edge's, as a real cloud would give them."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..profile import measure
from .splits import tails_for


def cloud_device() -> str:
    """`cuda` when a GPU is present, else `cpu`."""
    return "cuda" if torch.cuda.is_available() else "cpu"


@torch.no_grad()
def time_tails(model: nn.Module, example: Tensor, device: str, repeats: int = 20
               ) -> dict[str, float]:
    """{split: median tail latency in ms} on `device` for a request shaped like `example`."""
    out = {}
    for name, (tail, shape) in tails_for(model.eval(), example).items():
        tail = tail.to(device)
        act = torch.zeros((len(example), *shape), device=device)  # dense: values do not matter
        out[name] = measure(lambda t=tail, a=act: t(a), repeats=repeats, device=device,
                            inference=True).median_ms
    return out


def run_example(run_dir: str | Path, batch: int) -> tuple[nn.Module, Tensor, Tensor, Tensor]:
    """(model, one request of `batch` test images, validation images, labels) of a run."""
    from ..evaluate import load_run
    from ..sparsity.masks import bake_masks

    _, splits, model = load_run(run_dir)
    model = bake_masks(model).eval()
    images, labels = splits.val.tensors[0], splits.val.tensors[1]
    return model, splits.test.tensors[0][:batch], images, labels


def main(argv: list[str] | None = None) -> int:
    """Print {"device", "threads", "tail_ms"} as JSON for a run's model."""
    ap = argparse.ArgumentParser(prog="python -m sparseforge.edge.cloud")
    ap.add_argument("run_dir")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, example, _, _ = run_example(args.run_dir, args.batch)
    device = cloud_device()
    result: dict[str, Any] = {
        "device": device if device == "cuda" else "cpu (another process on this machine)",
        "threads": torch.get_num_threads(),
        "tail_ms": time_tails(model, example, device, args.repeats),
    }
    json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
