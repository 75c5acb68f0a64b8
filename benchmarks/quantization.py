"""int8 CPU inference vs fp32: the demo CNN (Fashion-MNIST shape) and a linear-heavy MLP, at
batch 1 and 64, in one interleaved loop per row: fp32 eager, fp32 compiled (inductor), PT2E
int8 (torchao X86InductorQuantizer) compiled with freezing, the same without freezing (what
happens when the flag is missing), and torchao `quantize_` int8 dynamic (linears only).

    python benchmarks/quantization.py --out runs/quantization   # prints table, writes CSV
"""

from __future__ import annotations

import argparse
import functools
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from sparseforge.models import create_model
from sparseforge.profile import machine_info
from sparseforge.profile.latency import interleaved
from sparseforge.profile.rows import write_csv
from sparseforge.quant.deploy import to_int8, to_int8_dynamic

BATCHES = (1, 64)
ROUNDS, REPEATS = 5, 10


def mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 1024), nn.ReLU(), nn.Linear(1024, 1024),
                         nn.ReLU(), nn.Linear(1024, 10))


MODELS: dict[str, Callable[[], nn.Module]] = {
    "cnn": lambda: create_model("cnn", num_classes=10, in_channels=1),
    "mlp": mlp,
}


def candidates(model: nn.Module, calib: list[torch.Tensor]) -> dict[str, nn.Module]:
    with torch.no_grad():
        converted = to_int8(model, calib, compile=False)
    return {
        "fp32_eager": model,
        "fp32_compiled": torch.compile(model, dynamic=False),
        "int8_pt2e": to_int8(model, calib),
        "int8_pt2e_nofreeze": torch.compile(converted, dynamic=False),
        "int8_quantize_": to_int8_dynamic(model),
    }


def bench_row(name: str, batch: int, fns: dict[str, nn.Module]) -> dict[str, object]:
    x = torch.randn(batch, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    calls = {k: functools.partial(m, x) for k, m in fns.items()}
    with torch.inference_mode():
        ref = fns["fp32_eager"](x)
        for k, call in calls.items():  # compile outside the timed loop
            err = (call() - ref).abs().max().item()
            if err > 0.1 * ref.abs().max().item():
                warnings.warn(f"{name} b{batch} {k}: max error {err:.3g}", stacklevel=1)
    timed = interleaved(calls, rounds=ROUNDS, repeats=REPEATS)
    row: dict[str, object] = {"model": name, "batch": batch}
    for k, t in timed.items():
        row[f"{k}_ms"] = round(t.median_ms, 4)
    base = timed["fp32_compiled"].median_ms
    for k, t in timed.items():
        row[f"{k}_x_vs_fp32_compiled"] = round(base / t.median_ms, 3)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("runs/quantization"))
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    info = machine_info()
    print(f"# {info['cpu_model']} ({info['cpu_capability']}), {info['logical_cores']} cores, "
          f"{torch.get_num_threads()} threads, torch {info['torch_version']}")
    rows = []
    for name in args.models:
        torch.manual_seed(0)
        model = MODELS[name]().eval()
        g = torch.Generator().manual_seed(0)
        calib = [torch.randn(64, 1, 28, 28, generator=g) for _ in range(4)]
        fns = candidates(model, calib)
        for batch in BATCHES:
            row = bench_row(name, batch, fns)
            rows.append(row)
            cells = "  ".join(f"{k[:-3]} {row[k]:.3f} ms" for k in row if k.endswith("_ms"))
            ratios = "  ".join(f"{k.split('_x_')[0]} {row[k]:.2f}x" for k in row if "_x_" in k)
            print(f"{name} b{batch}: {cells}\n    vs fp32 compiled: {ratios}", flush=True)
    path = write_csv([{**row, "machine": info["cpu_model"]} for row in rows], args.out / "quantization.csv")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
