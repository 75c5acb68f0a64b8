"""Weight-sparse linear on CPU, per scheme and its format: `block` (16x16 tiles) -> BSR, `bcr`
(16x16 blocks, GRIM) -> BCR, `unstructured` -> CSR; at 50/70/80/90/95% sparsity, batch 1 and
32, in one run: dense F.linear (MKL), torch.sparse CSR and BSR matmul, ONNX Runtime on the same
masked nn.Linear (exported to ONNX, zeros included), and sparseforge's kernel, all timed in one
interleaved loop per row. Scheme `nm` -> N:M rows at 2:4, 1:4 and 2:8 (their own sparsities).
`--device cuda` runs the GPU set instead (benchmarks/weight_sparsity_gpu.py).

    python benchmarks/weight_sparsity.py --out runs/weight_sparsity   # prints table, writes CSV
    python benchmarks/weight_sparsity.py --schemes nm --quick         # smoke check
"""

from __future__ import annotations

import argparse
import importlib.util
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from sparseforge.kernels import SparseLinear
from sparseforge.kernels.extension import kernel_available
from sparseforge.profile import machine_info
from sparseforge.profile.latency import interleaved
from sparseforge.profile.rows import write_csv
from sparseforge.runtime import export_model
from sparseforge.sparsity import schemes

SHAPES = ((4096, 4096), (768, 3072))  # (out, in)
SPARSITIES = (0.5, 0.7, 0.8, 0.9, 0.95)
BATCHES = (1, 32)
BLOCK = (16, 16)  # BSR tiles of the `block` scheme, and the torch BSR peer's tiles
BCR_BLOCK = (16, 16)  # r x c blocks of the `bcr` scheme (GRIM)
# scheme -> our format for it
FORMAT = {"block": "bsr", "bcr": "bcr", "unstructured": "csr", "nm": "nm"}
NM_PATTERNS = ((2, 4), (1, 4), (2, 8))  # the `nm` scheme's rows, each at sparsity 1 - n/m
ROUNDS, REPEATS = 5, 10  # interleaved: 5 alternating blocks of 10 calls per candidate
ATOL = 1e-3  # every candidate's output vs dense F.linear


def sparse_linear(
    scheme: str, n: int, k: int, s: float, seed: int = 0, bcr_block: tuple[int, int] = BCR_BLOCK,
    nm: tuple[int, int] = (2, 4),
) -> tuple[torch.nn.Linear, torch.Tensor]:
    """nn.Linear whose weight is masked by `scheme` at sparsity s (random scores, so random
    kept tiles / rows and columns / entries), and the mask."""
    g = torch.Generator().manual_seed(seed)
    scores = torch.rand(n, k, generator=g)
    if scheme == "block":
        mask = schemes.block(scores, s, block=BLOCK)
    elif scheme == "bcr":
        mask = schemes.bcr(scores, s, block=bcr_block)
    elif scheme == "nm":
        mask = schemes.n_m(scores, s, n=nm[0], m=nm[1])
    else:
        mask = schemes.unstructured(scores, s)
    lin = torch.nn.Linear(k, n)
    with torch.no_grad():
        lin.weight.mul_(mask)
    return lin, mask


def ort_missing() -> str:
    """Why the ONNX Runtime peer cannot run here ("" when it can)."""
    missing = [m for m in ("onnxruntime", "onnx", "onnxscript") if not importlib.util.find_spec(m)]
    return f"{', '.join(missing)} not installed" if missing else ""


def ort_session(lin: torch.nn.Linear, path: Path, threads: int):
    """The masked nn.Linear (zeros kept as dense weights) exported to ONNX at `path` (batch
    dynamic), in an onnxruntime CPU session with `threads` intra-op threads."""
    import onnxruntime as ort

    export_model(lin, torch.randn(2, lin.in_features), path, "onnx")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def torch_sparse_fn(lin: torch.nn.Linear, x: torch.Tensor, layout: str,
                    ref: torch.Tensor) -> tuple[Callable[[], object] | None, str]:
    """torch.sparse CSR or BSR: y^T = W_sparse @ x^T (+ b), checked against `ref`; None with the
    reason if the CPU build lacks it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Sparse BSR/CSR tensor support is in beta"
        w = lin.weight.detach()
        w = w.to_sparse_csr() if layout == "csr" else w.to_sparse_bsr(BLOCK)
        xt, b = x.t().contiguous(), lin.bias.detach()[:, None]
        try:
            torch.testing.assert_close((w @ xt + b).t(), ref, atol=ATOL, rtol=0)
        except (RuntimeError, NotImplementedError) as e:
            return None, f"{layout} unsupported: {str(e).splitlines()[0][:60]}"
    return (lambda: w @ xt + b), ""


def ort_fn(sess, x: torch.Tensor, ref: torch.Tensor) -> Callable[[], object]:
    """sess.run on x (converted to numpy once, outside the timed call), checked against `ref`."""
    feed = {sess.get_inputs()[0].name: x.numpy()}
    (y,) = sess.run(None, feed)
    torch.testing.assert_close(torch.from_numpy(y), ref, atol=ATOL, rtol=0)
    return lambda: sess.run(None, feed)


def bench_row(scheme: str, fmt: str, lin: torch.nn.Linear, ours: SparseLinear, s: float,
              batch: int, sess=None) -> dict[str, object]:
    """Time dense, both torch.sparse peers, ONNX Runtime (when `sess`) and ours on one layer and
    batch, interleaved; print the row."""
    n, k = lin.out_features, lin.in_features
    x = torch.randn(batch, k)  # (B, K)
    with torch.no_grad():
        ref = F.linear(x, lin.weight, lin.bias)  # (B, N)
        torch.testing.assert_close(ours(x), ref, atol=ATOL, rtol=0)
    fns = {"dense": lambda: F.linear(x, lin.weight, lin.bias)}
    notes = []
    for layout in ("csr", "bsr"):
        fn, note = torch_sparse_fn(lin, x, layout, ref)
        if fn is not None:
            fns[layout] = fn
        notes += [note] if note else []
    if sess is not None:
        fns["ort"] = ort_fn(sess, x, ref)
    fns["ours"] = lambda: ours(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = {name: tm.median_ms for name, tm in
             interleaved(fns, rounds=ROUNDS, repeats=REPEATS).items()}
    peers = ("dense", "csr", "bsr") + (("ort",) if sess is not None else ())
    best, mine = min(t[p] for p in peers if p in t), t["ours"]
    row = {"scheme": scheme, "format": fmt, "shape": f"{n}x{k}", "sparsity": s, "batch": batch,
           "density": float((lin.weight != 0).float().mean()), "dense_ms": t["dense"],
           "torch_csr_ms": t.get("csr"), "torch_bsr_ms": t.get("bsr")}
    if sess is not None:
        row["ort_ms"] = t["ort"]
    row.update({"ours_ms": mine, "speedup_vs_dense": t["dense"] / mine,
                "speedup_vs_best_peer": best / mine, "note": "; ".join(notes)})
    cols = " ".join(f"{t[p]:9.3f}" if p in t else f"{'n/a':>9}" for p in peers[1:])
    print(f"{scheme:>12} {fmt:>3} {row['shape']:>9} {s:8.2f} {batch:5d} {t['dense']:9.3f} {cols} "
          f"{mine:8.3f} {t['dense'] / mine:7.2f}x {best / mine:11.2f}x {row['note']}", flush=True)
    return row


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs/weight_sparsity"))
    ap.add_argument("--threads", type=int, default=2,
                    help="torch/OpenMP and ONNX Runtime intra-op threads (default 2)")
    ap.add_argument("--schemes", nargs="+", default=list(FORMAT), choices=list(FORMAT))
    ap.add_argument("--sparsities", type=float, nargs="+", default=list(SPARSITIES),
                    help="weight sparsities in (0, 1) (default 0.5 0.7 0.8 0.9 0.95)")
    ap.add_argument("--bcr-block", type=int, nargs=2, default=BCR_BLOCK, metavar=("R", "C"),
                    help="BCR block size (GRIM tunes it per layer; default 16 16)")
    ap.add_argument("--no-ort", action="store_true",
                    help="skip the ONNX Runtime peer (export + session per layer)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke check: the smaller shape, the first sparsity, few repeats")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                    help="cuda: the GPU set (benchmarks/weight_sparsity_gpu.py)")
    args = ap.parse_args()
    if not all(0 < s < 1 for s in args.sparsities):
        ap.error(f"--sparsities must lie in (0, 1), got {args.sparsities}")
    return args


def layers(scheme: str, sparsities: list[float]) -> list[tuple[float, tuple[int, int]]]:
    """(sparsity, (n, m)) per row of a scheme: the N:M patterns for `nm`, else the sparsities."""
    if scheme == "nm":
        return [(1 - n / m, (n, m)) for n, m in NM_PATTERNS]
    return [(s, (2, 4)) for s in sparsities]


def main() -> None:
    args = parse_args()
    if args.device == "cuda":
        import weight_sparsity_gpu  # beside this file

        return weight_sparsity_gpu.main(args.out, args.quick)
    global SHAPES, ROUNDS, REPEATS
    if args.quick:
        SHAPES, ROUNDS, REPEATS = SHAPES[-1:], 2, 3
        args.sparsities = args.sparsities[:1]
    bcr_block = tuple(args.bcr_block)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)  # the layers' initial weights
    info = machine_info()
    print(f"CPU: {info['cpu_model']} ({info['cpu_capability']}), torch {info['torch_version']}, "
          f"threads {info['torch_threads']}, BSR block {BLOCK}, BCR block {bcr_block}")
    for fmt in (FORMAT[scheme] for scheme in args.schemes):
        if not kernel_available(f"{fmt}_linear"):
            raise SystemExit(f"the sparseforge {fmt} kernel did not build; see the warning above")
    use_ort = not args.no_ort
    if use_ort and (why := ort_missing()):
        print(f"note: ONNX Runtime peer skipped ({why}; pip install 'sparseforge[export]')")
        use_ort = False
    if use_ort:
        import onnxruntime

        print(f"ONNX Runtime {onnxruntime.__version__}, CPUExecutionProvider, intra-op threads "
              f"{args.threads}, inter-op 1, ORT_ENABLE_ALL")
    rows = []
    print(f"{'scheme':>12} {'fmt':>3} {'shape':>9} {'sparsity':>8} {'batch':>5} {'dense ms':>9} "
          f"{'torch CSR':>9} {'torch BSR':>9} " + (f"{'ORT ms':>9} " if use_ort else "")
          + f"{'ours ms':>8} {'vs dense':>8} {'vs best peer':>12}")
    with tempfile.TemporaryDirectory() as tmp:
        for scheme in args.schemes:
            fmt = FORMAT[scheme]
            for n, k in SHAPES:
                for s, nm in layers(scheme, args.sparsities):
                    lin, mask = sparse_linear(scheme, n, k, s, bcr_block=bcr_block, nm=nm)
                    blk = bcr_block if fmt == "bcr" else BLOCK
                    ours = SparseLinear.from_linear(lin.eval(), blk, fmt, mask=mask,
                                                    nm=nm if fmt == "nm" else None)
                    path = Path(tmp) / f"{scheme}_{n}x{k}_{s}.onnx"
                    sess = ort_session(lin, path, args.threads) if use_ort else None
                    for batch in BATCHES:
                        label = f"{nm[0]}:{nm[1]}" if fmt == "nm" else fmt
                        rows.append(bench_row(scheme, label, lin, ours, s, batch, sess))
                    del sess
                    path.unlink(missing_ok=True)
    print(f"wrote {write_csv(rows, args.out / 'weight_sparsity.csv')}")


if __name__ == "__main__":
    main()
