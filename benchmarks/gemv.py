"""Dense float32 linear at a few rows (batch-1 inference, decoding) on CPU, in one run per row:
F.linear (MKL: the dense baseline), the packed-weight kernels TorchInductor's freezing emits for
an nn.Linear (`mkl._mkl_linear` and oneDNN's `mkldnn._linear_pointwise`: the peers) and
`sparseforge::gemv_linear`, all with the bias. Shapes: the FFN projections of MiniLM
(384 <-> 1536), BERT-base (768 <-> 3072) and LLaMA-7B (4096 x 4096, 4096 <-> 11008).

"cold" rotates through copies of the weights covering COLD_BYTES, so every call reads its
weight from DRAM, as a model larger than the cache does at batch 1; "warm" calls one weight
(cache-resident where it fits). Every candidate of a row is timed in one interleaved loop, its
output checked against F.linear first.

    python benchmarks/gemv.py --out runs/gemv   # table + CSV
"""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from sparseforge.kernels import ops
from sparseforge.kernels.extension import best_isa, kernel_available
from sparseforge.profile import machine_info
from sparseforge.profile.latency import checked_medians
from sparseforge.profile.rows import write_csv

SHAPES = ((1536, 384), (384, 1536), (3072, 768), (768, 3072), (4096, 4096), (11008, 4096),
          (4096, 11008))  # (out_features N, in_features K)
BATCHES = (1, 4, 16)
COLD_BYTES = 256 << 20  # more than any L3 seen here (32 MB)
ROUNDS, REPEATS = 5, 10
RTOL = 1e-4  # vs F.linear, relative to the output's largest magnitude
PEERS = ("mkl_linear", "onednn")


def rotating(calls: list[Callable[[], torch.Tensor]]) -> Callable[[], torch.Tensor]:
    """One callable that runs the next of `calls` each time (each on its own weight copy)."""
    it = itertools.cycle(calls)
    return lambda: next(it)()


def candidates(w: torch.Tensor, b: torch.Tensor,
               x: torch.Tensor) -> dict[str, Callable[[], torch.Tensor]]:
    """The four ways to compute F.linear(x, w, b) on one weight copy (packing done here)."""
    batch = x.shape[0]
    mkl_packed = torch.ops.mkl._mkl_reorder_linear_weight(w, batch)
    onednn_packed = torch.ops.mkldnn._reorder_linear_weight(w)
    return {
        "dense": lambda: F.linear(x, w, b),
        "mkl_linear": lambda: torch.ops.mkl._mkl_linear(x, mkl_packed, w, b, batch),
        "onednn": lambda: torch.ops.mkldnn._linear_pointwise(x, onednn_packed, b, "none", [], ""),
        "ours": lambda: ops.gemv_linear(x, w, b),
    }


def bench_row(n: int, k: int, batch: int, cache: str, g: torch.Generator) -> dict[str, object]:
    copies = max(1, COLD_BYTES // (n * k * 4)) if cache == "cold" else 1
    x = torch.randn(batch, k, generator=g)
    per_copy = [candidates(torch.randn(n, k, generator=g) / k**0.5, torch.randn(n, generator=g), x)
                for _ in range(copies)]
    fns = {name: rotating([c[name] for c in per_copy]) for name in per_copy[0]}
    t = checked_medians(fns, reference="dense", rtol=RTOL, where=f"{n}x{k}, batch {batch}",
                        rounds=ROUNDS, repeats=REPEATS)
    peer = min(PEERS, key=t.__getitem__)
    row = {"shape": f"{n}x{k}", "batch": batch, "cache": cache,
           **{f"{name}_ms": ms for name, ms in t.items()},
           "best_peer": peer, "vs_dense": t["dense"] / t["ours"],
           "vs_best_peer": t[peer] / t["ours"],
           "ours_gb_s": n * k * 4 / (t["ours"] * 1e6)}
    print(f"{row['shape']:>11} {batch:5d} {cache:>5} {t['dense']:9.3f} {t['mkl_linear']:10.3f} "
          f"{t['onednn']:9.3f} {t['ours']:8.3f} {row['vs_dense']:8.2f}x "
          f"{row['vs_best_peer']:7.2f}x ({peer}) {row['ours_gb_s']:6.1f}", flush=True)
    return row


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs/gemv"))
    ap.add_argument("--threads", type=int, default=2, help="torch/OpenMP threads (default 2)")
    ap.add_argument("--batches", type=int, nargs="+", default=list(BATCHES))
    ap.add_argument("--cache", nargs="+", choices=("cold", "warm"), default=["cold", "warm"])
    args = ap.parse_args()
    if not all(b >= 1 for b in args.batches):
        ap.error(f"--batches must be positive, got {args.batches}")
    return args


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    if not kernel_available("gemv_linear"):
        raise SystemExit("the sparseforge gemv_linear kernel did not build; see the warning above")
    info = machine_info()
    print(f"CPU: {info['cpu_model']} ({info['cpu_capability']}), torch {info['torch_version']}, "
          f"threads {info['torch_threads']}; our kernel's variant: {best_isa()}")
    print(f"{'N x K':>11} {'batch':>5} {'cache':>5} {'dense ms':>9} {'mkl_linear':>10} "
          f"{'onednn':>9} {'ours ms':>8} {'vs dense':>9} {'vs best peer':>20} {'GB/s':>6}")
    g = torch.Generator().manual_seed(0)
    rows = []
    with torch.inference_mode():
        for cache in args.cache:
            for n, k in SHAPES:
                for batch in args.batches:
                    rows.append(bench_row(n, k, batch, cache, g))
    print(f"wrote {write_csv(rows, args.out / 'gemv.csv')}")


if __name__ == "__main__":
    main()
