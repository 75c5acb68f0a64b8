"""Activation-sparse FFN on CPU: the down projection of an FFN whose intermediate activation is
mostly exact zeros (ProSparse: ReLU / FATReLU), at 0/50/80/90/95% activation sparsity, batch 1
and 8, FFN shapes 384x1536 (MiniLM) and 4096x11008 (LLaMA-7B), in one run: dense F.linear on
the full activation (MKL), gather-then-matmul in PyTorch (index_select the active rows of W^T,
then a matmul) and sparseforge's kernel; and for 4096x11008 the whole gated FFN, dense (three
F.linear) vs `sparseforge::relu_gated_ffn`. Every candidate of a row is timed in one
interleaved loop; its output is checked against dense first. Activations are i.i.d.: each entry
zero with the given probability, independently per token (the worst case for batching, as
tokens share no active neurons beyond chance).

    python benchmarks/activation_sparsity.py --out runs/activation_sparsity   # table + CSV
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

from sparseforge.kernels import ops
from sparseforge.kernels.extension import kernel_available
from sparseforge.profile import machine_info
from sparseforge.profile.latency import checked_medians
from sparseforge.profile.rows import write_csv

SHAPES = ((384, 1536), (4096, 11008))  # (hidden H, intermediate I): down projection I -> H
FFN_SHAPE = (4096, 11008)  # the gated FFN rows
SPARSITIES = (0.0, 0.5, 0.8, 0.9, 0.95)
BATCHES = (1, 8)
ROUNDS, REPEATS = 5, 10  # interleaved: 5 alternating blocks of 10 calls per candidate
RTOL = 1e-4  # every candidate's output vs dense, relative to its largest magnitude


def sparse_activation(batch: int, i: int, s: float, g: torch.Generator) -> torch.Tensor:
    """(batch, i) ReLU-like activation: each entry exactly 0 with probability s, else |N(0,1)|."""
    return torch.randn(batch, i, generator=g).abs() * (torch.rand(batch, i, generator=g) >= s)


def gather_matmul(a: torch.Tensor, weight_t: torch.Tensor,
                  bias: torch.Tensor) -> torch.Tensor:
    """The PyTorch peer: the active rows (union over tokens) of W^T, gathered, then a matmul."""
    active = (a != 0).any(0).nonzero().squeeze(1)  # (nact,)
    return torch.addmm(bias, a.index_select(1, active), weight_t.index_select(0, active))


def down_row(h: int, i: int, s: float, batch: int, g: torch.Generator) -> dict[str, object]:
    """Dense, gather-then-matmul and ours on the (i -> h) down projection; print the row."""
    w = torch.randn(h, i, generator=g) / i**0.5  # (H, I) as nn.Linear holds it
    wt, bias = w.t().contiguous(), torch.randn(h, generator=g)  # W^T (I, H), done at deploy
    a = sparse_activation(batch, i, s, g)  # (B, I)
    fns = {"dense": lambda: F.linear(a, w, bias), "gather": lambda: gather_matmul(a, wt, bias),
           "ours": lambda: ops.sparse_input_linear(a, wt, bias)}
    t = checked_medians(fns, reference="dense", rtol=RTOL, rounds=ROUNDS, repeats=REPEATS,
                        where=f"down {h}x{i}, {s:.0%}, batch {batch}")
    row = {"op": "down_proj", "shape": f"{h}x{i}", "sparsity": s, "batch": batch,
           "active_fraction": float((a != 0).any(0).float().mean()), "dense_ms": t["dense"],
           "gather_ms": t["gather"], "ours_ms": t["ours"],
           "speedup_vs_dense": t["dense"] / t["ours"], "speedup_vs_gather": t["gather"] / t["ours"]}
    print_row(row)
    return row


def ffn_row(h: int, i: int, s: float, batch: int, g: torch.Generator) -> dict[str, object]:
    """Dense gated FFN (three F.linear) vs ours, the FATReLU threshold set so a fraction s >= 0.5
    of the gates is zero (ReLU, threshold 0, gives ~0.5); print the row (no gather peer:
    "gather_ms" is empty)."""
    x = torch.randn(batch, h, generator=g)  # (B, H)
    wg, wu = (torch.randn(i, h, generator=g) / h**0.5 for _ in range(2))  # (I, H)
    wd = torch.randn(h, i, generator=g) / i**0.5  # (H, I)
    wdt = wd.t().contiguous()  # (I, H)
    gate = F.linear(x, wg)
    thr = max(float(gate.flatten().quantile(s)), 0.0)  # FATReLU threshold for s, >= 0

    def dense() -> torch.Tensor:
        gt = F.linear(x, wg)
        return F.linear(torch.where(gt >= thr, gt, 0.0) * F.linear(x, wu), wd)

    fns = {"dense": dense, "ours": lambda: ops.relu_gated_ffn(x, wg, wu, wdt, thr)}
    t = checked_medians(fns, reference="dense", rtol=RTOL, rounds=ROUNDS, repeats=REPEATS,
                        where=f"gated FFN {h}x{i}, {s:.0%}, batch {batch}")
    row = {"op": "gated_ffn", "shape": f"{h}x{i}", "sparsity": s, "batch": batch,
           "active_fraction": float((gate >= thr).any(0).float().mean()), "dense_ms": t["dense"],
           "gather_ms": None, "ours_ms": t["ours"], "speedup_vs_dense": t["dense"] / t["ours"],
           "speedup_vs_gather": None}
    print_row(row)
    return row


def print_row(r: dict[str, object]) -> None:
    gather = f"{r['gather_ms']:9.3f}" if r["gather_ms"] is not None else f"{'n/a':>9}"
    vs_gather = (f"{r['speedup_vs_gather']:9.2f}x" if r["speedup_vs_gather"] is not None
                 else f"{'n/a':>10}")
    print(f"{r['op']:>9} {r['shape']:>10} {r['sparsity']:8.2f} {r['batch']:5d} "
          f"{r['active_fraction']:6.3f} {r['dense_ms']:9.3f} {gather} {r['ours_ms']:8.3f} "
          f"{r['speedup_vs_dense']:7.2f}x {vs_gather}", flush=True)


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs/activation_sparsity"))
    ap.add_argument("--threads", type=int, default=2, help="torch/OpenMP threads (default 2)")
    ap.add_argument("--sparsities", type=float, nargs="+", default=list(SPARSITIES),
                    help="activation sparsities in [0, 1) (default 0 0.5 0.8 0.9 0.95)")
    ap.add_argument("--batches", type=int, nargs="+", default=list(BATCHES))
    ap.add_argument("--no-ffn", action="store_true", help="skip the gated-FFN rows")
    args = ap.parse_args()
    if not all(0 <= s < 1 for s in args.sparsities):
        ap.error(f"--sparsities must lie in [0, 1), got {args.sparsities}")
    if not all(b >= 1 for b in args.batches):
        ap.error(f"--batches must be positive, got {args.batches}")
    return args


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    info = machine_info()
    print(f"CPU: {info['cpu_model']} ({info['cpu_capability']}), torch {info['torch_version']}, "
          f"threads {info['torch_threads']}; activations i.i.d. per token")
    for op in ("sparse_input_linear", "relu_gated_ffn"):
        if not kernel_available(op, ops.ACT_SPARSE_FILE):
            raise SystemExit(f"the sparseforge {op} kernel did not build; see the warning above")
    g = torch.Generator().manual_seed(0)
    print(f"{'op':>9} {'shape HxI':>10} {'sparsity':>8} {'batch':>5} {'active':>6} "
          f"{'dense ms':>9} {'gather ms':>9} {'ours ms':>8} {'vs dense':>8} {'vs gather':>10}")
    rows = []
    with torch.inference_mode():
        for h, i in SHAPES:
            for s in args.sparsities:
                for batch in args.batches:
                    rows.append(down_row(h, i, s, batch, g))
        if not args.no_ffn:  # below 50% the gate is plain ReLU, which leaves ~50% zeros
            for s in (s for s in args.sparsities if s >= 0.5):
                for batch in args.batches:
                    rows.append(ffn_row(*FFN_SHAPE, s, batch, g))
    print(f"wrote {write_csv(rows, args.out / 'activation_sparsity.csv')}")


if __name__ == "__main__":
    main()
