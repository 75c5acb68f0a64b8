"""Semi-structured activation sparsity on CPU: per conv layer of the demo CNN (28x28 input) and
ResNet-18 (224x224 input), batch 1 and 32, masked ratio 0/25/50/75%: dense F.conv2d (oneDNN)
against sparseforge's skipping runtime for both tile geometries (`channel`: whole im2col rows,
a conv over the kept input channels, gathered; `channel_run`: the same with the kept tiles one
contiguous run, so the input is sliced, not gathered; `spatial`: whole im2col columns, a GEMM
over the kept output positions), timed in one interleaved loop per row, each output checked against the
masked F.conv2d reference. Two clocks: wall-clock medians through the repo's `interleaved`
helper, and the calling thread's CPU time per call (median, warm-up excluded), which a busy
shared machine distorts far less (preemption is not counted); with --threads 1 all the work
runs on the calling thread, so CPU time is the compute time.

    python benchmarks/act_semi_structured.py --out runs/act_semi_structured   # table + CSV
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from sparseforge.activation.im2col_tiles import semi_structured_conv2d_reference
from sparseforge.activation.semi_structured import SemiStructuredConv2d
from sparseforge.profile import machine_info
from sparseforge.profile.latency import interleaved
from sparseforge.profile.rows import write_csv

# name -> (in, out, input side, stride); 3x3 convs, padding 1
LAYERS = {
    "cnn.conv2": (32, 32, 28, 1),
    "cnn.conv3": (32, 64, 14, 1),
    "cnn.conv4": (64, 64, 14, 1),
    "r18.layer1": (64, 64, 56, 1),
    "r18.layer2.0.conv1": (64, 128, 56, 2),
    "r18.layer2": (128, 128, 28, 1),
    "r18.layer3": (256, 256, 14, 1),
    "r18.layer4": (512, 512, 7, 1),
}
RATIOS = (0.0, 0.25, 0.5, 0.75)
# variant -> (geometry, tile, contiguous): channel_run keeps one contiguous run of channel tiles
GEOMETRIES = {"channel": ("channel", (4,), False), "channel_run": ("channel", (4,), True),
              "spatial": ("spatial", (2, 2), False)}
BATCHES = (1, 32)
ATOL = 1e-3


def masked_layer(conv: nn.Conv2d, geometry: str, tile: tuple[int, ...], contiguous: bool,
                 ratio: float, x: torch.Tensor) -> SemiStructuredConv2d:
    """`conv` wrapped with a random (seeded) tile mask at `ratio`, in eval (skipping) mode."""
    layer = SemiStructuredConv2d.from_conv(conv, geometry=geometry, tile=tile,
                                           criterion="random", seed=0, contiguous=contiguous)
    with torch.no_grad():
        layer.train()(x[:1])  # sizes the spatial mask
    layer.set_ratio(ratio)
    layer.frozen = True
    return layer.eval()


class CpuClock:
    """`fn` that records the calling thread's CPU seconds of every call."""

    def __init__(self, fn) -> None:
        self.fn, self.samples = fn, []

    def __call__(self) -> None:
        start = time.thread_time()
        self.fn()
        self.samples.append(time.thread_time() - start)

    def median_ms(self, skip: int = 3) -> float:
        return statistics.median(self.samples[skip:]) * 1e3


def run_row(name: str, batch: int, fmt: torch.memory_format, budget_s: float) -> list[dict]:
    cin, cout, side, stride = LAYERS[name]
    torch.manual_seed(0)
    conv = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False).to(memory_format=fmt)
    x = torch.randn(batch, cin, side, side).contiguous(memory_format=fmt)
    fns, layers = {"dense": lambda: conv(x)}, {}
    with torch.inference_mode():
        for variant, (geometry, tile, contiguous) in GEOMETRIES.items():
            for ratio in RATIOS:
                key = f"{variant}@{ratio:g}"
                layer = layers[key] = masked_layer(conv, geometry, tile, contiguous, ratio, x)
                ref = semi_structured_conv2d_reference(x, layer, geometry, layer.keep_mask())
                err = (layer(x) - ref).abs().max().item()
                if err > ATOL * max(1.0, ref.abs().max().item()):
                    raise AssertionError(f"{name} b{batch} {key}: max error {err:g}")
                fns[key] = (lambda m: lambda: m(x))(layer)
        one = interleaved({"dense": fns["dense"]}, rounds=1, repeats=1)["dense"].median_s
        repeats = max(2, min(10, int(budget_s / (len(fns) * 3 * max(one, 1e-6)))))
        clocks = {k: CpuClock(fn) for k, fn in fns.items()}
        timed = interleaved(clocks, rounds=3, repeats=repeats)
    dense_ms, dense_cpu = timed["dense"].median_ms, clocks["dense"].median_ms()
    rows = []
    for key, layer in layers.items():
        variant, ratio = key.split("@")
        rows.append({
            "layer": name, "shape": f"{cin}->{cout} @{side} s{stride}", "batch": batch,
            "geometry": variant, "tile": "x".join(map(str, layer.tile)),
            "ratio": float(ratio), "masked": round(layer.masked_ratio, 3),
            "dense_cpu_ms": round(dense_cpu, 4), "skip_cpu_ms": round(clocks[key].median_ms(), 4),
            "speedup": round(dense_cpu / clocks[key].median_ms(), 3),
            "dense_ms": round(dense_ms, 4), "skip_ms": round(timed[key].median_ms, 4),
            "wall_speedup": round(dense_ms / timed[key].median_ms, 3),
            "ideal": round(1 / max(1e-9, 1 - layer.masked_ratio), 2),
        })
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/act_semi_structured"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--layers", nargs="*", default=list(LAYERS), choices=list(LAYERS))
    parser.add_argument("--batches", nargs="*", type=int, default=list(BATCHES))
    parser.add_argument("--format", choices=("channels_last", "contiguous"),
                        default="channels_last", help="activation and weight memory layout")
    parser.add_argument("--budget", type=float, default=1.5,
                        help="rough seconds of timing per row (sets repeats)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    fmt = torch.channels_last if args.format == "channels_last" else torch.contiguous_format
    info = machine_info()
    print(f"# {info['cpu_model']} | {info['cpu_capability']} | torch {info['torch_version']} | "
          f"threads {args.threads} | {args.format} | load avg {os.getloadavg()[0]:.2f}")
    print("# 3 interleaved rounds; cpu = median thread CPU ms per call, wall = median wall ms; "
          "speedup = dense F.conv2d / skipping runtime; ideal = 1 / (1 - masked)")
    header = (f"{'layer':<20} {'shape':<18} {'b':>3} {'geometry':<11} {'tile':<5} {'masked':>6} "
              f"{'dense cpu':>9} {'skip cpu':>9} {'speedup':>7} {'ideal':>5} "
              f"{'dense wall':>10} {'skip wall':>9} {'wall x':>6}")
    print(header)
    rows = []
    for name in args.layers:
        for batch in args.batches:
            for r in run_row(name, batch, fmt, args.budget):
                rows.append(r)
                print(f"{r['layer']:<20} {r['shape']:<18} {r['batch']:>3} {r['geometry']:<11} "
                      f"{r['tile']:<5} {r['masked']:>6.2f} {r['dense_cpu_ms']:>9.3f} "
                      f"{r['skip_cpu_ms']:>9.3f} {r['speedup']:>7.2f} {r['ideal']:>5.2f} "
                      f"{r['dense_ms']:>10.3f} {r['skip_ms']:>9.3f} {r['wall_speedup']:>6.2f}",
                      flush=True)
    load = round(os.getloadavg()[0], 2)
    path = write_csv([{**r, "load_avg": load} for r in rows], args.out / "act_semi_structured.csv")
    print(f"# wrote {path}; load avg at end {load:.2f}")


if __name__ == "__main__":
    main()
