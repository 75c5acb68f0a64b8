"""Structured pruning on CPU: dense vs channel-pruned torchvision ResNet-18, MobileNetV2 and a
ViT-Tiny (random weights), at 30/50/70% of each dependency group's channels / heads, ours
(`sparseforge.graph.prune_channels`) side by side with Torch-Pruning (L2 magnitude, layer-wise,
classifier ignored). Ours runs twice per ratio: at the same ratio (`ours@ratio`) and at the
FLOPs reduction Torch-Pruning reached there (`ours@tp-flops`, so ours removes at least as many
FLOPs). Per model, every variant is timed in one interleaved loop (`compare_latency`).

    python benchmarks/structured.py                      # full run: ~15-25 min on 2 busy cores
    python benchmarks/structured.py --quick              # 64x64 input, one ratio, few repeats
    python benchmarks/structured.py --runs runs/resnet20_dense runs/resnet20_channel50 ...
                                     # trained runs: test accuracy, FLOPs, latency side by side
"""

from __future__ import annotations

import argparse
import copy
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from torchvision.models import mobilenet_v2, resnet18
from torchvision.models.vision_transformer import VisionTransformer

from sparseforge.graph import prune_channels
from sparseforge.profile import machine_info
from sparseforge.profile.flops import count_flops
from sparseforge.profile.latency import compare_latency
from sparseforge.profile.rows import write_csv

RATIOS = (0.3, 0.5, 0.7)
BATCHES = (1, 32)


def vit_tiny(image_size: int) -> VisionTransformer:
    """ViT-Tiny/16 (192 wide, 3 heads, 12 layers) in torchvision's implementation."""
    return VisionTransformer(image_size=image_size, patch_size=16, num_layers=12, num_heads=3,
                             hidden_dim=192, mlp_dim=768)


# name -> (builder(image_size), the classifier layer left whole)
MODELS: dict[str, tuple[Callable[[int], nn.Module], Callable[[nn.Module], nn.Module]]] = {
    "resnet18": (lambda s: resnet18(), lambda m: m.fc),
    "mobilenet_v2": (lambda s: mobilenet_v2(), lambda m: m.classifier[1]),
    "vit_tiny": (vit_tiny, lambda m: m.heads.head),
}


def tp_prune(dense: nn.Module, x: torch.Tensor, ratio: float,
             classifier: Callable[[nn.Module], nn.Module]) -> nn.Module:
    """Torch-Pruning's own recipe: L2 magnitude, layer-wise, classifier ignored; for the
    torchvision ViT its torchvision example's (num_heads per nn.MultiheadAttention, head dims
    pruned, then `hidden_dim` reset from conv_proj)."""
    import torch_pruning as tp

    model = copy.deepcopy(dense)
    heads = {m: m.num_heads for m in model.modules() if isinstance(m, nn.MultiheadAttention)}
    pruner = tp.pruner.MetaPruner(
        model, x, importance=tp.importance.MagnitudeImportance(p=2), pruning_ratio=ratio,
        global_pruning=False, ignored_layers=[classifier(model)], num_heads=heads,
    )
    pruner.step()
    if isinstance(model, VisionTransformer):
        model.hidden_dim = model.conv_proj.out_channels
    return model


def tp_at_flops(dense: nn.Module, x: torch.Tensor, flops: float,
                classifier: Callable[[nn.Module], nn.Module]) -> tuple[nn.Module, float]:
    """Torch-Pruning's recipe (`tp_prune`) at the smallest ratio that removes at least `flops`
    of the FLOPs (bisection, our counter); (model, ratio)."""
    base = count_flops(dense, x).dense_flops
    lo, hi, best = 0.0, 0.95, None
    for _ in range(12):
        mid = (lo + hi) / 2
        model = tp_prune(dense, x, mid, classifier)
        if 1 - count_flops(model, x).dense_flops / base >= flops:
            hi, best = mid, (model, mid)
        else:
            lo = mid
    if best is None:
        raise ValueError(f"Torch-Pruning does not reach {flops:.1%} fewer FLOPs below ratio 0.95")
    return best


def aten_flops(model: nn.Module, x: torch.Tensor) -> int:
    """Cross-check: every conv / matmul torch's FlopCounterMode sees in one forward (it does
    not count the attention score/value products of CPU SDPA, which count_flops does)."""
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model.eval()(x)
    return fc.get_total_flops()


def variant(name: str, target: str, method: str, model: nn.Module | None, prune_s: float,
            x1: torch.Tensor, note: str = "") -> dict[str, object]:
    """One row's static part; checks a pruned model still gives the dense output shape."""
    row: dict[str, object] = {"model": name, "target": target, "method": method,
                              "gflops": None, "flops_reduction_pct": None, "aten_gflops": None,
                              "params_m": None, "prune_s": prune_s, "note": note, "_m": model}
    if model is not None:
        with torch.no_grad():
            out = model.eval()(x1)
        if out.shape != (1, 1000):
            raise AssertionError(f"{name} {method} {target}: output shape {tuple(out.shape)}")
        row.update(gflops=count_flops(model, x1).dense_flops / 1e9,
                   aten_gflops=aten_flops(model, x1) / 1e9,
                   params_m=sum(p.numel() for p in model.parameters()) / 1e6)
    return row


def ours(dense: nn.Module, x1: torch.Tensor, **target: float) -> tuple[nn.Module, float]:
    t0 = time.perf_counter()
    small, plan = prune_channels(dense, x1, **target)
    took = time.perf_counter() - t0
    if not plan.kept:
        raise AssertionError(f"prune_channels({target}) returned an empty plan")
    return small, took


def bench_model(name: str, args: argparse.Namespace) -> list[dict[str, object]]:
    build, classifier = MODELS[name]
    torch.manual_seed(0)
    dense = build(args.image_size).eval()
    x1 = torch.randn(1, 3, args.image_size, args.image_size)
    rows = [variant(name, "-", "dense", dense, 0.0, x1)]
    for r in args.ratios:
        target = f"{r:.0%}"
        small, took = ours(dense, x1, ratio=r)
        rows.append(variant(name, target, "ours@ratio", small, took, x1))
        try:
            t0 = time.perf_counter()
            tp_model = tp_prune(dense, x1, r, classifier)
            rows.append(variant(name, target, "torch-pruning", tp_model,
                                time.perf_counter() - t0, x1))
        except Exception as e:  # noqa: BLE001 - a peer's failure is a result, not a crash
            print(f"  torch-pruning failed on {name} at {target}: {type(e).__name__}: {e}")
            rows.append(variant(name, target, "torch-pruning", None, 0.0, x1,
                                note=f"FAILED: {type(e).__name__}: {str(e)[:80]}"))
            continue
        f_tp = 1 - rows[-1]["gflops"] / rows[0]["gflops"]
        if f_tp <= 0:
            rows.append(variant(name, target, "ours@tp-flops", None, 0.0, x1,
                                note=f"skipped: TP reduced FLOPs by {f_tp:.1%} (our counter)"))
            continue
        try:
            small, took = ours(dense, x1, flops=f_tp)
            rows.append(variant(name, target, "ours@tp-flops", small, took, x1,
                                note=f"flops={f_tp:.4f}"))
        except ValueError as e:
            print(f"  ours@tp-flops out of reach on {name} at {target}: {e}")
            rows.append(variant(name, target, "ours@tp-flops", None, 0.0, x1,
                                note=f"FAILED: {str(e)[:80]}"))
    for row in rows:
        if row["gflops"] is not None:
            row["flops_reduction_pct"] = 100 * (1 - row["gflops"] / rows[0]["gflops"])
    timed = {i: row["_m"] for i, row in enumerate(rows) if row["_m"] is not None}
    lat = compare_latency(timed, (3, args.image_size, args.image_size), args.batches,
                          threads=args.threads, rounds=args.rounds, repeats=args.repeats)
    for i, row in enumerate(rows):
        tp_row = next((r for r in rows if r["method"] == "torch-pruning"
                       and r["target"] == row["target"]), None)
        for b in args.batches:
            ms = lat[i][b].median_ms if i in lat else None
            row[f"b{b}_ms"] = ms
            row[f"b{b}_speedup"] = lat[0][b].median_ms / ms if ms else None
            tp_ms = lat[rows.index(tp_row)][b].median_ms \
                if tp_row is not None and rows.index(tp_row) in lat else None
            row[f"b{b}_vs_tp"] = tp_ms / ms if ms and tp_ms and row["method"] != "dense" else None
        del row["_m"]
        print_row(row, args.batches)
    return rows


def fmt(v: object, spec: str, width: int, unit: str = "") -> str:
    return f"{v:{width}{spec}}{unit}" if v is not None else f"{'n/a':>{width + len(unit)}}"


def print_header(batches: list[int]) -> None:
    lat = " ".join(f"{f'b{b} ms':>9} {'vs dense':>8} {'vs TP':>6}" for b in batches)
    print(f"{'model':>12} {'target':>6} {'method':>13} {'GFLOPs':>7} {'-FLOPs':>7} "
          f"{'aten GF':>7} {'params M':>8} {lat} {'prune s':>7}  note")


def print_row(row: dict[str, object], batches: list[int]) -> None:
    red = row["flops_reduction_pct"]
    lat = " ".join(f"{fmt(row[f'b{b}_ms'], '.2f', 9)} {fmt(row[f'b{b}_speedup'], '.2f', 7, 'x')} "
                   f"{fmt(row[f'b{b}_vs_tp'], '.2f', 5, 'x')}" for b in batches)
    print(f"{row['model']:>12} {row['target']:>6} {row['method']:>13} "
          f"{fmt(row['gflops'], '.3f', 7)} {fmt(red, '.1f', 6, '%')} {fmt(row['aten_gflops'], '.3f', 7)} "
          f"{fmt(row['params_m'], '.3f', 8)} {lat} {row['prune_s']:7.1f}  {row['note']}", flush=True)


def bench_runs(run_dirs: list[Path], args: argparse.Namespace) -> None:
    """Trained run folders (the first is the reference): test accuracy from each run's
    summary, FLOPs, parameters, and CPU latency of the models as saved, timed side by side."""
    import json

    from sparseforge.evaluate import load_run

    models, rows = {}, []
    for run in run_dirs:
        _, splits, model = load_run(run)
        summary = json.loads((run / "summary.json").read_text())
        x1 = splits.test.tensors[0][:1]
        models[run.name] = model.eval()
        rows.append((run.name, summary["compressed"]["test_accuracy"],
                     count_flops(model, x1).dense_flops, sum(p.numel() for p in model.parameters())))
    if args.tp and len(rows) > 1:  # the peer on the same trained dense model, at run 2's FLOPs
        target = 1 - rows[1][2] / rows[0][2]
        tp_model, ratio = tp_at_flops(models[rows[0][0]], x1, target, lambda m: m.fc)
        name = f"torch-pruning@{rows[1][0]}"
        models[name] = tp_model.eval()
        rows.append((name, float("nan"), count_flops(tp_model, x1).dense_flops,
                     sum(p.numel() for p in tp_model.parameters())))
        print(f"{name}: Torch-Pruning (L2, layer-wise) at ratio {ratio:.3f} on the dense run, "
              "not fine-tuned (latency and FLOPs only)")
    shape = tuple(splits.test.tensors[0].shape[1:])
    if args.fold_bn:  # the same deploy-time folding on every side, dense included
        from sparseforge.graph import fuse

        models = {name: fuse(m, bn=True, pad=False, affine=False, identity=False).module
                  for name, m in models.items()}
        print("BatchNorm folded into the convolutions of every model (dense included)")
    if args.compile:
        x = torch.randn(1, *shape)
        models = {name: torch.compile(m, dynamic=False) for name, m in models.items()}
        with torch.inference_mode():  # compile for every timed batch size outside the loop
            for m in models.values():
                for b in args.batches:
                    m(x.expand(b, *shape))
        print("every model compiled by inductor (torch.compile, static shapes)")
    lat = compare_latency(models, shape, args.batches, threads=args.threads, rounds=args.rounds,
                          repeats=args.repeats)
    ref = rows[0]
    print(f"{'run':>22} {'test acc':>8} {'vs ref':>7} {'MFLOPs':>7} {'-FLOPs':>7} {'params k':>8} "
          + " ".join(f"{f'b{b} ms':>8} {'speed-up':>8}" for b in args.batches))
    for name, acc, flops, params in rows:
        cells = " ".join(f"{lat[name][b].median_ms:8.2f} {lat[ref[0]][b].median_ms / lat[name][b].median_ms:7.2f}x"
                         for b in args.batches)
        print(f"{name:>22} {acc:8.4f} {100 * (acc - ref[1]):+6.2f}pt {flops / 1e6:7.1f} "
              f"{100 * (1 - flops / ref[2]):6.1f}% {params / 1e3:8.1f} {cells}")
    if args.onnx:
        onnx_latency(models, shape, args)


def onnx_latency(models: dict[str, nn.Module], shape: tuple[int, ...], args: argparse.Namespace) -> None:
    """Every model exported to ONNX and run by onnxruntime (the export format `sparseforge
    deploy --format onnx` writes), timed side by side per batch size; the first is the reference."""
    import tempfile

    import onnxruntime

    from sparseforge.profile.latency import interleaved
    from sparseforge.runtime.export import export_model, onnx_session

    with tempfile.TemporaryDirectory() as tmp:
        sessions = {name: onnx_session(export_model(m, torch.randn(2, *shape), Path(tmp) / f"{name}.onnx",
                                                    "onnx"), args.threads)
                    for name, m in models.items()}
        ref = next(iter(sessions))
        print(f"onnxruntime {onnxruntime.__version__}, {args.threads} threads")
        for b in args.batches:
            x = torch.randn(b, *shape).numpy()
            t = interleaved({name: (lambda s=s, x=x: s.run(None, {s.get_inputs()[0].name: x}))
                             for name, s in sessions.items()}, rounds=args.rounds, repeats=args.repeats)
            for name in sessions:
                print(f"{name:>22} onnxruntime b{b} {t[name].median_ms:8.2f} ms "
                      f"{t[ref].median_s / t[name].median_s:6.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--csv", type=Path, default=Path("runs/structured/structured.csv"))
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--ratios", type=float, nargs="+", default=list(RATIOS))
    ap.add_argument("--batches", type=int, nargs="+", default=list(BATCHES))
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--threads", type=int, default=2, help="torch/OpenMP threads (default 2)")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds per batch size")
    ap.add_argument("--repeats", type=int, default=4, help="calls per model per round")
    ap.add_argument("--runs", type=Path, nargs="+",
                    help="instead: trained run folders, the first the dense reference")
    ap.add_argument("--fold-bn", action="store_true",
                    help="with --runs: fold BatchNorm into the convs of every model before timing")
    ap.add_argument("--compile", action="store_true",
                    help="with --runs: time every model compiled by inductor")
    ap.add_argument("--tp", action="store_true",
                    help="with --runs: also time Torch-Pruning applied to the dense run at the "
                         "FLOPs of the second run (model.fc kept)")
    ap.add_argument("--onnx", action="store_true",
                    help="with --runs: also time every model exported to ONNX in onnxruntime")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 64x64 input, ratio 0.5, batches 1 and 4, 2x3 repeats")
    args = ap.parse_args()
    if args.quick:
        args.image_size, args.ratios, args.batches, args.rounds, args.repeats = 64, [0.5], [1, 4], 2, 3
    import torch_pruning as tp

    torch.set_num_threads(args.threads)
    info = machine_info()
    print(f"CPU: {info['cpu_model']} ({info['cpu_capability']}), {info['logical_cores']} logical "
          f"cores, threads {info['torch_threads']}, torch {info['torch_version']}, torchvision "
          f"{torchvision.__version__}, torch-pruning {tp.__version__}; load average at start "
          f"{os.getloadavg()[0]:.2f}; input {args.image_size}x{args.image_size}")
    if args.runs:
        bench_runs(args.runs, args)
        return
    print_header(args.batches)
    rows = []
    for name in args.models:
        rows += bench_model(name, args)
    print(f"load average at end {os.getloadavg()[0]:.2f}")
    print(f"wrote {write_csv(rows, args.csv)}")


if __name__ == "__main__":
    main()
