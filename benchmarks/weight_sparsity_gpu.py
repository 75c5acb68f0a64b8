"""Weight-sparse linear on a CUDA GPU, float16: dense F.linear (cuBLAS) beside sparseforge's
Triton kernels (BSR 16x16 at 90%, BCR 16x16 at 90%, N:M 2:4 / 1:4 / 2:8), torch.sparse BSR and,
on 2:4 rows, PyTorch's semi-structured 2:4 (`torch.sparse.to_sparse_semi_structured`, sparse
tensor cores) as the peer; batch 1, 32 and 8192, each row timed in one interleaved loop. Our
Triton block sizes are untuned. Without CUDA it says so and exits cleanly.

    python benchmarks/weight_sparsity_gpu.py --out runs/weight_sparsity_gpu   # or --quick
    python benchmarks/weight_sparsity.py --device cuda                         # the same
"""

from __future__ import annotations

import argparse
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from sparseforge.kernels import SparseLinear
from sparseforge.profile import machine_info
from sparseforge.profile.latency import interleaved
from sparseforge.profile.rows import write_csv
from sparseforge.sparsity import schemes

SHAPES = ((4096, 4096), (768, 3072))  # (out, in)
BATCHES = (1, 32, 8192)
BLOCK = (16, 16)  # BSR / BCR blocks and the torch BSR peer's tiles
BLOCK_SPARSITY = 0.9
NM_PATTERNS = ((2, 4), (1, 4), (2, 8))
DTYPE = torch.float16
ROUNDS, REPEATS = 5, 20
RTOL = 2e-2  # every candidate's output vs dense, relative to dense's largest magnitude


def layers(n: int, k: int, seed: int = 0) -> list[tuple[str, float, torch.Tensor]]:
    """(label, sparsity, mask (n, k)) for every row set: BSR, BCR and each N:M pattern."""
    g = torch.Generator().manual_seed(seed)
    scores = torch.rand(n, k, generator=g)
    out = [("bsr", BLOCK_SPARSITY, schemes.block(scores, BLOCK_SPARSITY, block=BLOCK)),
           ("bcr", BLOCK_SPARSITY, schemes.bcr(scores, BLOCK_SPARSITY, block=BLOCK))]
    for nn_, m in NM_PATTERNS:
        s = 1 - nn_ / m
        out.append((f"nm{nn_}:{m}", s, schemes.n_m(scores, s, n=nn_, m=m)))
    return out


def peer_fns(weight: torch.Tensor, bias: torch.Tensor, x: torch.Tensor, label: str,
             ) -> tuple[dict[str, Callable[[], object]], list[str]]:
    """torch BSR and (2:4 rows) semi-structured 2:4 on the GPU, or notes on why not."""
    fns, notes = {}, []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # beta / prototype warnings
        try:
            w_bsr, xt = weight.to_sparse_bsr(BLOCK), x.t().contiguous()
            fns["torch_bsr"] = lambda: (w_bsr @ xt).t() + bias
            fns["torch_bsr"]()
        except (RuntimeError, NotImplementedError) as e:
            fns.pop("torch_bsr", None)
            notes.append(f"torch bsr unsupported: {str(e).splitlines()[0][:60]}")
        if label == "nm2:4":
            try:
                w_semi = torch.sparse.to_sparse_semi_structured(weight)
                fns["semi_2_4"] = lambda: F.linear(x, w_semi, bias)
                fns["semi_2_4"]()
            except (RuntimeError, NotImplementedError, ValueError) as e:
                fns.pop("semi_2_4", None)
                notes.append(f"semi-structured unsupported: {str(e).splitlines()[0][:60]}")
    return fns, notes


def bench_row(label: str, s: float, lin: torch.nn.Linear, ours: SparseLinear, batch: int,
              ) -> dict[str, object]:
    """Dense, peers and ours on one layer and batch, checked against dense, interleaved."""
    n, k = lin.out_features, lin.in_features
    x = torch.randn(batch, k, device="cuda", dtype=DTYPE)  # (B, K)
    w, b = lin.weight.detach(), lin.bias.detach()
    with torch.no_grad():
        ref = F.linear(x, w, b)  # (B, N)
        fns: dict[str, Callable[[], object]] = {"dense": lambda: F.linear(x, w, b)}
        peers, notes = peer_fns(w, b, x, label)
        fns.update(peers)
        fns["ours"] = lambda: ours(x)
        scale = float(ref.abs().max()) or 1.0
        for name, fn in fns.items():
            err = float((fn().float() - ref.float()).abs().max()) / scale
            if err > RTOL:
                raise SystemExit(f"{name} differs from dense on {label} {n}x{k} batch {batch}: "
                                 f"max error {err:.3g} of the output's scale")
        t = {name: tm.median_ms for name, tm in
             interleaved(fns, rounds=ROUNDS, repeats=REPEATS, device="cuda").items()}
    mine = t["ours"]
    best = min(v for name, v in t.items() if name != "ours")
    row = {"format": label, "shape": f"{n}x{k}", "sparsity": s, "batch": batch,
           "dtype": str(DTYPE).removeprefix("torch."), "dense_ms": t["dense"],
           "torch_bsr_ms": t.get("torch_bsr"), "semi_2_4_ms": t.get("semi_2_4"),
           "ours_ms": mine, "speedup_vs_dense": t["dense"] / mine,
           "speedup_vs_best_peer": best / mine, "note": "; ".join(notes)}
    fmt = lambda v: f"{v:9.3f}" if v is not None else f"{'n/a':>9}"  # noqa: E731
    print(f"{label:>7} {row['shape']:>9} {s:8.2f} {batch:5d} {fmt(t['dense'])} "
          f"{fmt(t.get('torch_bsr'))} {fmt(t.get('semi_2_4'))} {fmt(mine)} "
          f"{t['dense'] / mine:7.2f}x {best / mine:11.2f}x {row['note']}", flush=True)
    return row


def main(out: Path, quick: bool = False) -> None:
    """Run every row set (`quick`: the smaller shape, batch 1 and 32, few repeats)."""
    global ROUNDS, REPEATS
    if not torch.cuda.is_available():
        print("no CUDA device here (torch.cuda.is_available() is False): the GPU benchmark needs "
              "one; nothing run")
        return
    from sparseforge.kernels.triton_sparse_linear import has_triton

    if not has_triton():
        print("triton is not installed: our GPU kernels need it (pip install triton); nothing run")
        return
    shapes, batches = (SHAPES[-1:], BATCHES[:2]) if quick else (SHAPES, BATCHES)
    if quick:
        ROUNDS, REPEATS = 2, 5
    info = machine_info()
    print(f"GPU: {info['cuda_device']}, torch {info['torch_version']}, {DTYPE}, BSR/BCR block "
          f"{BLOCK}; Triton kernels untuned")
    print(f"{'format':>7} {'shape':>9} {'sparsity':>8} {'batch':>5} {'dense ms':>9} "
          f"{'torch BSR':>9} {'semi 2:4':>9} {'ours ms':>9} {'vs dense':>8} {'vs best peer':>12}")
    rows = []
    torch.manual_seed(0)
    for n, k in shapes:
        for label, s, mask in layers(n, k):
            lin = torch.nn.Linear(k, n)
            with torch.no_grad():
                lin.weight.mul_(mask)
            fmt = "nm" if label.startswith("nm") else label
            nm = tuple(int(v) for v in label[2:].split(":")) if fmt == "nm" else None
            ours = SparseLinear.from_linear(lin, BLOCK, fmt, mask=mask, nm=nm)
            lin, ours = lin.to("cuda", DTYPE).eval(), ours.to("cuda", DTYPE).eval()
            for batch in batches:
                rows.append(bench_row(label, s, lin, ours, batch))
    print(f"wrote {write_csv(rows, out / 'weight_sparsity_gpu.csv')}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs/weight_sparsity_gpu"))
    ap.add_argument("--quick", action="store_true", help="smoke check: one shape, batch 1 and 32")
    args = ap.parse_args()
    main(args.out, args.quick)
