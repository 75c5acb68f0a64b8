"""Direct sparse convolution per layer on CPU, at torchvision ResNet-18's 3x3 conv shapes
(224 x 224 input), magnitude-pruned per layer: F.conv2d on the masked weight (NCHW, oneDNN: the
dense baseline), the same in channels-last, and oneDNN with the weight packed for the input's
shape (`mkldnn._convolution_pointwise`, what TorchInductor's freezing emits: the peers), vs
`sparseforge::sparse_conv2d` (DirectSparseConv2d, NCHW), all with the bias. Every candidate of a
row is timed in one interleaved loop, its output checked against F.conv2d first.

    python benchmarks/sparse_conv.py --out runs/sparse_conv   # table + CSV
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from sparseforge.kernels.extension import best_isa, kernel_available
from sparseforge.kernels.sparse_conv import DirectSparseConv2d
from sparseforge.profile import machine_info
from sparseforge.profile.latency import checked_medians
from sparseforge.profile.rows import write_csv
from sparseforge.sparsity import schemes

# (in, out, input height = width, stride): ResNet-18's 3x3 convs at a 224 x 224 input
LAYERS = ((64, 64, 56, 1), (64, 128, 56, 2), (128, 128, 28, 1), (128, 256, 28, 2),
          (256, 256, 14, 1), (256, 512, 14, 2), (512, 512, 7, 1))
SPARSITIES = (0.9, 0.95)
BATCHES = (1, 8)
ROUNDS, REPEATS = 5, 10
RTOL = 1e-4  # vs F.conv2d, relative to the output's largest magnitude
PEERS = ("onednn_cl", "onednn_packed")


def pruned_conv(cin: int, cout: int, stride: int, sparsity: float, g: torch.Generator) -> nn.Conv2d:
    conv = nn.Conv2d(cin, cout, 3, stride, 1)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) / (9 * cin) ** 0.5)
        conv.weight.mul_(schemes.unstructured(conv.weight.abs(), sparsity))
    return conv.eval()


def bench_row(cin: int, cout: int, hw: int, stride: int, sparsity: float, batch: int,
              g: torch.Generator) -> dict[str, object]:
    conv = pruned_conv(cin, cout, stride, sparsity, g)
    ours = DirectSparseConv2d.from_conv(conv).eval()
    w, b = conv.weight.detach(), conv.bias.detach()
    x = torch.randn(batch, cin, hw, hw, generator=g)
    xcl = x.contiguous(memory_format=torch.channels_last)
    args = ([1, 1], [stride, stride], [1, 1], 1)  # padding, stride, dilation, groups
    packed = torch.ops.mkldnn._reorder_convolution_weight(w, *args, list(x.shape))
    fns = {
        "dense": lambda: F.conv2d(x, w, b, stride, 1),
        "onednn_cl": lambda: F.conv2d(xcl, w, b, stride, 1),
        "onednn_packed": lambda: torch.ops.mkldnn._convolution_pointwise(xcl, packed, b, *args,
                                                                         "none", [], ""),
        "ours": lambda: ours(x),
    }
    t = checked_medians(fns, reference="dense", rtol=RTOL, where=f"{cin}->{cout}, {hw}x{hw}",
                        rounds=ROUNDS, repeats=REPEATS)
    peer = min(PEERS, key=t.__getitem__)
    out_hw = (hw + 2 - 3) // stride + 1
    nonzero_macs = int((w != 0).sum()) * out_hw * out_hw * batch
    row = {"layer": f"{cin}->{cout} {hw}x{hw} s{stride}", "sparsity": sparsity, "batch": batch,
           **{f"{n}_ms": ms for n, ms in t.items()}, "best_peer": peer,
           "vs_dense": t["dense"] / t["ours"], "vs_best_peer": t[peer] / t["ours"],
           "ours_gflops": 2 * nonzero_macs / (t["ours"] * 1e6)}
    print(f"{row['layer']:>22} {sparsity:5.2f} {batch:5d} {t['dense']:8.3f} {t['onednn_cl']:9.3f} "
          f"{t['onednn_packed']:9.3f} {t['ours']:8.3f} {row['vs_dense']:8.2f}x "
          f"{row['vs_best_peer']:7.2f}x ({peer}) {row['ours_gflops']:6.1f}", flush=True)
    return row


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs/sparse_conv"))
    ap.add_argument("--threads", type=int, default=2, help="torch/OpenMP threads (default 2)")
    ap.add_argument("--sparsities", type=float, nargs="+", default=list(SPARSITIES))
    ap.add_argument("--batches", type=int, nargs="+", default=list(BATCHES))
    args = ap.parse_args()
    if not all(0 < s < 1 for s in args.sparsities):
        ap.error(f"--sparsities must lie in (0, 1), got {args.sparsities}")
    if not all(b >= 1 for b in args.batches):
        ap.error(f"--batches must be positive, got {args.batches}")
    return args


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    if not kernel_available("sparse_conv2d"):
        raise SystemExit("the sparseforge sparse_conv2d kernel did not build; see the warning "
                         "above")
    info = machine_info()
    print(f"CPU: {info['cpu_model']} ({info['cpu_capability']}), torch {info['torch_version']}, "
          f"threads {info['torch_threads']}; our kernel's variant: {best_isa()}")
    print(f"{'layer':>22} {'spars':>5} {'batch':>5} {'dense ms':>8} {'onednn_cl':>9} "
          f"{'packed':>9} {'ours ms':>8} {'vs dense':>9} {'vs best peer':>23} {'GFLOP/s':>7}")
    g = torch.Generator().manual_seed(0)
    rows = []
    with torch.inference_mode():
        for s in args.sparsities:
            for batch in args.batches:
                for cin, cout, hw, stride in LAYERS:
                    rows.append(bench_row(cin, cout, hw, stride, s, batch, g))
    print(f"wrote {write_csv(rows, args.out / 'sparse_conv.csv')}")


if __name__ == "__main__":
    main()
