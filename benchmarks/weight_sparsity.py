"""Weight-sparse linear on CPU, per scheme and its format: `block` (16x16 tiles) -> BSR, `bcr`
(16x16 blocks, GRIM) -> BCR, `unstructured` -> CSR; at 50/70/80/90/95% sparsity, batch 1 and
32, in one run: dense F.linear (MKL), torch.sparse CSR and BSR matmul, and sparseforge's kernel.

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
from sparseforge.sparsity import schemes

SHAPES = ((4096, 4096), (768, 3072))  # (out, in)
SPARSITIES = (0.5, 0.7, 0.8, 0.9, 0.95)
BATCHES = (1, 32)
BLOCK = (16, 16)  # BSR tiles of the `block` scheme, and the torch BSR peer's tiles
BCR_BLOCK = (16, 16)  # r x c blocks of the `bcr` scheme (GRIM)
# scheme -> our format for it
FORMAT = {"block": "bsr", "bcr": "bcr", "unstructured": "csr"}


def sparse_linear(
    scheme: str, n: int, k: int, s: float, seed: int = 0, bcr_block: tuple[int, int] = BCR_BLOCK
) -> tuple[torch.nn.Linear, torch.Tensor]:
    """nn.Linear whose weight is masked by `scheme` at sparsity s (random scores, so random
    kept tiles / rows and columns / entries), and the mask."""
    g = torch.Generator().manual_seed(seed)
    scores = torch.rand(n, k, generator=g)
    if scheme == "block":
        mask = schemes.block(scores, s, block=BLOCK)
    elif scheme == "bcr":
        mask = schemes.bcr(scores, s, block=bcr_block)
    else:
        mask = schemes.unstructured(scores, s)
    lin = torch.nn.Linear(k, n)
    with torch.no_grad():
        lin.weight.mul_(mask)
    return lin, mask


def time_ms(fn) -> float:
    return measure(fn, warmup=5, repeats=30, min_time_s=0.2, inference=True).median_ms


def torch_sparse_ms(lin: torch.nn.Linear, x: torch.Tensor, layout: str) -> tuple[float | None, str]:
    """torch.sparse CSR or BSR: y^T = W_sparse @ x^T (+ b); None with the reason if CPU lacks
    it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Sparse BSR/CSR tensor support is in beta"
        w = lin.weight.detach()
        w = w.to_sparse_csr() if layout == "csr" else w.to_sparse_bsr(BLOCK)
        xt, b = x.t().contiguous(), lin.bias.detach()[:, None]
        try:
            ref = (w @ xt + b).t()
            torch.testing.assert_close(ref, F.linear(x, lin.weight, lin.bias), atol=1e-3, rtol=0)
        except (RuntimeError, NotImplementedError) as e:
            return None, f"{layout} unsupported: {str(e).splitlines()[0][:60]}"
        return time_ms(lambda: w @ xt + b), ""


def bench_row(scheme: str, fmt: str, lin: torch.nn.Linear, ours: SparseLinear, s: float,
              batch: int) -> dict[str, object]:
    """Time dense, both torch.sparse peers and ours on one layer and batch; print the row."""
    n, k = lin.out_features, lin.in_features
    x = torch.randn(batch, k)
    dense = time_ms(lambda: F.linear(x, lin.weight, lin.bias))
    csr, note_csr = torch_sparse_ms(lin, x, "csr")
    bsr, note_bsr = torch_sparse_ms(lin, x, "bsr")
    mine = time_ms(lambda: ours(x))
    best = min(t for t in (dense, csr, bsr) if t is not None)
    note = "; ".join(v for v in (note_csr, note_bsr) if v)
    row = {"scheme": scheme, "format": fmt, "shape": f"{n}x{k}", "sparsity": s, "batch": batch,
           "density": float((lin.weight != 0).float().mean()), "dense_ms": dense,
           "torch_csr_ms": csr, "torch_bsr_ms": bsr, "ours_ms": mine,
           "speedup_vs_dense": dense / mine, "speedup_vs_best_peer": best / mine, "note": note}
    peers = " ".join(f"{t:9.3f}" if t is not None else f"{'n/a':>9}" for t in (csr, bsr))
    print(f"{scheme:>12} {fmt:>3} {row['shape']:>9} {s:8.2f} {batch:5d} {dense:9.3f} {peers} "
          f"{mine:8.3f} {dense / mine:7.2f}x {best / mine:11.2f}x {note}", flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs/weight_sparsity"))
    ap.add_argument("--threads", type=int, default=2, help="torch/OpenMP threads (default 2)")
    ap.add_argument("--schemes", nargs="+", default=list(FORMAT), choices=list(FORMAT))
    ap.add_argument("--bcr-block", type=int, nargs=2, default=BCR_BLOCK, metavar=("R", "C"),
                    help="BCR block size (GRIM tunes it per layer; default 16 16)")
    args = ap.parse_args()
    bcr_block = tuple(args.bcr_block)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)  # the layers' initial weights
    info = machine_info()
    print(f"CPU: {info['cpu_model']} ({info['cpu_capability']}), torch {info['torch_version']}, "
          f"threads {info['torch_threads']}, BSR block {BLOCK}, BCR block {bcr_block}")
    for fmt in (FORMAT[scheme] for scheme in args.schemes):
        if not kernel_available(f"{fmt}_linear"):
            raise SystemExit(f"the sparseforge {fmt} kernel did not build; see the warning above")
    rows = []
    print(f"{'scheme':>12} {'fmt':>3} {'shape':>9} {'sparsity':>8} {'batch':>5} {'dense ms':>9} "
          f"{'torch CSR':>9} {'torch BSR':>9} {'ours ms':>8} {'vs dense':>8} {'vs best peer':>12}")
    for scheme in args.schemes:
        fmt = FORMAT[scheme]
        for n, k in SHAPES:
            for s in SPARSITIES:
                lin, mask = sparse_linear(scheme, n, k, s, bcr_block=bcr_block)
                blk = bcr_block if fmt == "bcr" else BLOCK
                ours = SparseLinear.from_linear(lin.eval(), blk, fmt, mask=mask)
                for batch in BATCHES:
                    rows.append(bench_row(scheme, fmt, lin, ours, s, batch))
    args.out.mkdir(parents=True, exist_ok=True)
    with (args.out / "weight_sparsity.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {args.out / 'weight_sparsity.csv'}")


if __name__ == "__main__":
    main()
