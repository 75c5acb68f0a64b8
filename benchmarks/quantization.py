"""int8 CPU inference vs fp32, whole models: the demo CNN (Fashion-MNIST shape), a linear-heavy
MLP and a ResNet-18 (torchvision, 3x224x224), in one interleaved loop per row: fp32 eager,
fp32 compiled (inductor) without and with freezing (the int8 deploy is frozen, so the frozen
fp32 is its like-for-like baseline), PT2E int8 (torchao X86InductorQuantizer) compiled with
freezing (also with inductor's C++ wrapper, as the planner compiles), the same without
freezing (what happens when the flag is missing), torchao `quantize_` int8
dynamic (linears only), our int8 Winograd F(2,3) / F(4,3) for the 3x3 stride-1 convs (BatchNorm
folded first, the other layers fp32 eager; the same model compiled by inductor with freezing,
so the other layers run frozen fp32 around our op; and PT2E int8 of that model, so every other
conv and linear runs oneDNN int8 around our op, compiled with freezing as is and through the
fusion planner, which folds the uint8 quantize / dequantize around our op into it), and sparse
+ int8 (90% of every weight but the first layer's masked by magnitude, then PT2E int8; checked
against its own fp32 model).

    python benchmarks/quantization.py --out runs/quantization   # prints table, writes CSV
"""

from __future__ import annotations

import argparse
import copy
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
from sparseforge.quant.deploy import compile_frozen, to_int8, to_int8_dynamic
from sparseforge.quant.winograd_conv import quantize_winograd
from sparseforge.sparsity import prune

ROUNDS, REPEATS = 5, 10


def mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 1024), nn.ReLU(), nn.Linear(1024, 1024),
                         nn.ReLU(), nn.Linear(1024, 10))


def resnet18() -> nn.Module:
    import torchvision

    return torchvision.models.resnet18(num_classes=10)


# name: (factory, input shape, batch sizes, (rounds, repeats))
MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...], tuple[int, ...], tuple[int, int]]] = {
    "cnn": (lambda: create_model("cnn", num_classes=10, in_channels=1), (1, 28, 28), (1, 64),
            (ROUNDS, REPEATS)),
    "mlp": (mlp, (1, 28, 28), (1, 64), (ROUNDS, REPEATS)),
    "resnet18": (resnet18, (3, 224, 224), (1, 8), (3, 3)),
}


def winograd(model: nn.Module, calib: list[torch.Tensor], tile: int) -> nn.Module | None:
    """Our int8 Winograd for the 3x3 stride-1 convs after BatchNorm folding; None if none fits."""
    try:
        return quantize_winograd(model, calib, tile=tile, fold_bn=True)[0]
    except ValueError:
        return None


def sparse(model: nn.Module, sparsity: float = 0.9) -> nn.Module:
    """A copy with every weight but the first layer's masked to `sparsity` by magnitude."""
    out = copy.deepcopy(model)
    first = next(n for n, m in out.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    prune(out, "unstructured", sparsity, layers={"exclude": [first]})
    return out


def candidates(model: nn.Module, calib: list[torch.Tensor]) -> dict[str, tuple[nn.Module, nn.Module]]:
    """name: (model to time, the fp32 model its output is checked against)."""
    with torch.no_grad():
        converted = to_int8(model, calib, compile=False)
        sparse_fp32 = sparse(model)
        wino = {t: m for t in (2, 4) if (m := winograd(model, calib, t)) is not None}
        out = {
            "fp32_eager": model,
            "fp32_compiled": torch.compile(model, dynamic=False),
            "fp32_compiled_freeze": compile_frozen(model),
            "int8_pt2e": to_int8(model, calib),
            # the planner's lowering calls its kernels from inductor's C++ wrapper: the same for
            # plain PT2E, so the planner rows can be read against both
            "int8_pt2e_cpp": compile_frozen(to_int8(model, calib, compile=False), cpp_wrapper=True),
            "int8_pt2e_nofreeze": torch.compile(converted, dynamic=False),
            "int8_quantize_": to_int8_dynamic(model),
            **{f"int8_winograd_f{t}": m for t, m in wino.items()},
            **{f"int8_winograd_f{t}_freeze": compile_frozen(m) for t, m in wino.items()},
            **{f"int8_pt2e_winograd_f{t}": to_int8(m, calib) for t, m in wino.items()},
            **{f"int8_pt2e_winograd_f{t}_planner": to_int8(m, calib, fuse=True) for t, m in wino.items()},
            "sparse90_int8": to_int8(sparse_fp32, calib),
        }
    return {k: (m, sparse_fp32 if k.startswith("sparse") else model) for k, m in out.items()}


def bench_row(name: str, batch: int, shape: tuple[int, ...], timing: tuple[int, int],
              fns: dict[str, tuple[nn.Module, nn.Module]]) -> dict[str, object]:
    x = torch.randn(batch, *shape, generator=torch.Generator().manual_seed(1))
    calls = {k: functools.partial(m, x) for k, (m, _) in fns.items()}
    with torch.inference_mode():
        for k, (m, ref_model) in fns.items():  # also compiles outside the timed loop
            ref = ref_model(x)
            err = (m(x) - ref).abs().max().item()
            if err > 0.1 * ref.abs().max().item():
                warnings.warn(f"{name} b{batch} {k}: max error {err:.3g}", stacklevel=1)
    timed = interleaved(calls, rounds=timing[0], repeats=timing[1])
    row: dict[str, object] = {"model": name, "batch": batch}
    for k, t in timed.items():
        row[f"{k}_ms"] = round(t.median_ms, 4)
    base = min(timed[k].median_ms for k in ("fp32_compiled", "fp32_compiled_freeze"))
    for k, t in timed.items():
        row[f"{k}_x_vs_best_fp32_compiled"] = round(base / t.median_ms, 3)
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
        factory, shape, batches, timing = MODELS[name]
        torch.manual_seed(0)
        model = factory().eval()
        g = torch.Generator().manual_seed(0)
        calib = [torch.randn(8, *shape, generator=g) for _ in range(4)]
        fns = candidates(model, calib)
        for batch in batches:
            row = bench_row(name, batch, shape, timing, fns)
            rows.append(row)
            cells = "  ".join(f"{k[:-3]} {row[k]:.3f} ms" for k in row if k.endswith("_ms"))
            ratios = "  ".join(f"{k.split('_x_')[0]} {row[k]:.2f}x" for k in row if "_x_" in k)
            print(f"{name} b{batch}: {cells}\n    vs best fp32 compiled: {ratios}", flush=True)
    path = write_csv([{**row, "machine": info["cpu_model"]} for row in rows], args.out / "quantization.csv")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
