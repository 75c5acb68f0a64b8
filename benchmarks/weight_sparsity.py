"""Block-sparse linear on CPU: dense F.linear (MKL) vs torch.sparse BSR vs sparseforge's BSR
kernel, at 50/70/90/95% block sparsity (16x16 tiles), batch 1 and 32, in one run.

    python benchmarks/weight_sparsity.py --out runs/weight_sparsity   # prints table, writes CSV
"""

from __future__ import annotations

import argparse
import csv
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from sparseforge.kernels import SparseLinear
from sparseforge.kernels.sparse_linear import kernel_available
from sparseforge.profile import machine_info, measure

SHAPES = ((4096, 4096), (768, 3072))  # (out, in)
SPARSITIES = (0.5, 0.7, 0.9, 0.95)
BATCHES = (1, 32)
BLOCK = (16, 16)


def block_sparse_linear(n: int, k: int, s: float, seed: int = 0) -> torch.nn.Linear:
    """nn.Linear whose weight keeps round((1-s) * tiles) random BLOCK tiles."""
    g = torch.Generator().manual_seed(seed)
    bh, bw = BLOCK
    tiles = torch.zeros(n // bh * (k // bw), dtype=torch.bool)
    tiles[torch.randperm(tiles.numel(), generator=g)[: round((1 - s) * tiles.numel())]] = True
    mask = tiles.reshape(n // bh, k // bw).repeat_interleave(bh, 0).repeat_interleave(bw, 1)
    lin = torch.nn.Linear(k, n)
    with torch.no_grad():
        lin.weight.mul_(mask)
    return lin


def time_ms(fn) -> float:
    return measure(fn, warmup=5, repeats=30, min_time_s=0.2, inference=True).median_ms


def torch_bsr_ms(lin: torch.nn.Linear, x: torch.Tensor) -> tuple[float | None, str]:
    """torch.sparse BSR: y^T = W_bsr @ x^T (+ b); None with the reason if CPU lacks it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Sparse BSR tensor support is in beta"
        w = lin.weight.detach().to_sparse_bsr(BLOCK)
        xt, b = x.t().contiguous(), lin.bias.detach()[:, None]
        try:
            ref = (w @ xt + b).t()
            torch.testing.assert_close(ref, F.linear(x, lin.weight, lin.bias), atol=1e-3, rtol=0)
        except (RuntimeError, NotImplementedError) as e:
            return None, f"unsupported: {str(e).splitlines()[0][:60]}"
        return time_ms(lambda: w @ xt + b), ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs/weight_sparsity"))
    ap.add_argument("--threads", type=int, default=2, help="torch/OpenMP threads (default 2)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    info = machine_info()
    print(f"CPU: {info['cpu_model']} ({info['cpu_capability']}), torch {info['torch_version']}, "
          f"threads {info['torch_threads']}, block {BLOCK}")
    if not kernel_available():
        raise SystemExit("the sparseforge C++ kernel did not build; see the warning above")
    rows = []
    head = (f"{'shape':>10} {'sparsity':>8} {'batch':>5} {'dense ms':>9} {'torch BSR ms':>12} "
            f"{'ours ms':>8} {'vs dense':>8} {'vs best peer':>12}")
    print(head)
    for n, k in SHAPES:
        for s in SPARSITIES:
            lin = block_sparse_linear(n, k, s).eval()
            ours = SparseLinear.from_linear(lin, BLOCK)
            for batch in BATCHES:
                x = torch.randn(batch, k)
                dense = time_ms(lambda: F.linear(x, lin.weight, lin.bias))  # noqa: B023
                peer, note = torch_bsr_ms(lin, x)
                mine = time_ms(lambda: ours(x))  # noqa: B023
                best = min(dense, peer) if peer is not None else dense
                row = {"shape": f"{n}x{k}", "sparsity": s, "batch": batch, "dense_ms": dense,
                       "torch_bsr_ms": peer, "ours_ms": mine, "speedup_vs_dense": dense / mine,
                       "speedup_vs_best_peer": best / mine, "note": note}
                rows.append(row)
                peer_s = f"{peer:12.3f}" if peer is not None else f"{'n/a':>12}"
                print(f"{row['shape']:>10} {s:8.2f} {batch:5d} {dense:9.3f} {peer_s} {mine:8.3f} "
                      f"{dense / mine:7.2f}x {best / mine:11.2f}x {note}")
    args.out.mkdir(parents=True, exist_ok=True)
    with (args.out / "weight_sparsity.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {args.out / 'weight_sparsity.csv'}")


if __name__ == "__main__":
    main()
