"""LANCE int8 Winograd 3x3 conv on CPU: speed and accuracy.

Speed: ResNet-18 / VGG 3x3 layer shapes (C = K = 64 @ 56, 128 @ 28, 256 @ 14, 512 @ 7; VGG
64 @ 224 with --vgg), batch 1 and 8, input NCHW and channels last (every implementation gets
the same input; inside a network ours leaves channels last for the next layer), one interleaved
loop per row (median): fp32 F.conv2d
(oneDNN), int8 direct conv through PT2E + X86InductorQuantizer (quant/deploy.py `to_int8`),
fbgemm's eager quantized conv, and ours F(2,3) and F(4,3) (`sparseforge::winograd_int8_conv2d`,
best ISA variant). Ratios vs fp32 and vs the best int8 peer, beside the targets (1.3x over the
best int8 direct conv, 4x over fp32), so a miss shows by how much. No GPU rows: on CUDA the op
runs the Triton kernel (time it with --device cuda when one is present).

Accuracy: the demo CNN (runs/demo/dense) and ResNet-20 (runs/resnet20_dense) with their 3x3
stride-1 convs as int8 Winograd after calibration, F(2,3) and F(4,3), V scales per position and
per (position, channel), plus F(4,3) after Winograd-aware QAT, on the Fashion-MNIST test set.

    python benchmarks/winograd.py --out runs/winograd            # full: prints tables, writes CSV
    python benchmarks/winograd.py --quick                        # smoke: one shape, 500 images
"""

from __future__ import annotations

import argparse
import functools
import itertools
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from sparseforge.evaluate import evaluate, load_run
from sparseforge.kernels import extension, winograd_ops
from sparseforge.profile import machine_info
from sparseforge.profile.latency import interleaved
from sparseforge.profile.rows import write_csv
from sparseforge.quant.deploy import to_int8
from sparseforge.quant.winograd_conv import (
    freeze,
    prepare_winograd_qat,
    quantize_winograd,
    winograd_layers,
)

SHAPES = ((64, 56), (128, 28), (256, 14), (512, 7))  # ResNet-18 3x3 convs (C = K, H = W)
VGG = ((64, 224),)
TARGET_VS_INT8, TARGET_VS_FP32 = 1.3, 4.0
OBSERVER_NAMES = ("minmax", "percentile")  # V calibration: min-max, and 99.99% quantiles
RUNS = {"cnn": Path("runs/demo/dense"), "resnet20": Path("runs/resnet20_dense")}


def fbgemm_conv(conv: nn.Conv2d, calib: torch.Tensor) -> nn.Module | str:
    """fbgemm's eager int8 conv (quant/dequant stubs around it), or why it is unavailable."""
    try:
        from torch.ao import quantization as tq

        torch.backends.quantized.engine = "fbgemm"
        model = nn.Sequential(tq.QuantStub(), conv, tq.DeQuantStub()).eval()
        model.qconfig = tq.get_default_qconfig("fbgemm")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            prepared = tq.prepare(model)
            prepared(calib)
            return tq.convert(prepared)
    except Exception as e:  # noqa: BLE001 -- reported in the table, not hidden
        return f"fbgemm unavailable: {type(e).__name__}: {e}"


def speed_row(c: int, hw: int, batch: int, layout: str, rounds: int, repeats: int, pt2e: bool) -> dict:
    """One layer shape, every implementation fed the same input in `layout` ("nchw", or
    "channels_last" as inside a network whose previous layer leaves channels last)."""
    torch.manual_seed(0)
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    conv = nn.Conv2d(c, c, 3, padding=1).eval()
    x = torch.randn(batch, c, hw, hw)
    calib = [torch.relu(torch.randn(max(2, batch), c, hw, hw)).contiguous(memory_format=fmt)
             for _ in range(2)]
    x = torch.relu(x).contiguous(memory_format=fmt)  # post-ReLU activations, as in the networks
    fns: dict[str, nn.Module] = {"fp32": conv}
    if pt2e:
        fns["int8_pt2e"] = to_int8(nn.Sequential(conv), calib)
    fb = fbgemm_conv(nn.Sequential(conv)[0], calib[0])
    if isinstance(fb, str):
        print(f"  {fb}")
    else:
        fns["int8_fbgemm"] = fb
    for tile in (2, 4):
        fns[f"wino_f{tile}"], _ = quantize_winograd(nn.Sequential(conv), calib, tile)
    calls = {k: functools.partial(m, x) for k, m in fns.items()}
    with torch.inference_mode():
        ref = conv(x)
        for k, call in calls.items():  # compiles / builds outside the timed loop
            err = ((call() - ref).norm() / ref.norm()).item()
            if err > 0.1:
                print(f"  warning: {k} relative error {err:.3f}")
        t = interleaved(calls, rounds=rounds, repeats=repeats)
    row: dict[str, object] = {"C": c, "HW": hw, "batch": batch, "layout": layout}
    row.update({f"{k}_ms": v.median_ms for k, v in t.items()})
    peers = [k for k in t if k.startswith("int8_")]
    best_peer = min(peers, key=lambda k: t[k].median_s) if peers else None
    for tile in (2, 4):
        ours = t[f"wino_f{tile}"].median_s
        row[f"f{tile}_x_fp32"] = t["fp32"].median_s / ours
        if best_peer:
            row[f"f{tile}_x_best_int8"] = t[best_peer].median_s / ours
    row["best_int8_peer"] = best_peer or "none"
    return row


def print_speed(row: dict) -> None:
    cells = "  ".join(f"{k[:-3]} {row[k]:.3f}" for k in row if k.endswith("_ms"))
    print(f"C={row['C']} {row['HW']}x{row['HW']} b{row['batch']} {row['layout']} (ms): {cells}")
    for tile in (2, 4):
        fp = row[f"f{tile}_x_fp32"]
        line = f"    F({tile},3): {fp:.2f}x fp32 (target {TARGET_VS_FP32}x: {fp / TARGET_VS_FP32:.0%})"
        if f"f{tile}_x_best_int8" in row:
            r = row[f"f{tile}_x_best_int8"]
            line += (f", {r:.2f}x {row['best_int8_peer']} (target {TARGET_VS_INT8}x: "
                     f"{r / TARGET_VS_INT8:.0%})")
        print(line, flush=True)


def qat_finetune(model: nn.Module, train: TensorDataset, steps: int, lr: float = 1e-4) -> None:
    """Winograd-aware QAT: `steps` Adam steps (batch 64) with BatchNorm frozen (eval) and the
    Winograd layers fake-quantizing (train), then freeze to int8."""
    model.eval()
    for m in winograd_layers(model):
        m.train()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(0)
    images, labels = train.tensors
    for _ in range(steps):
        idx = torch.randint(0, len(labels), (64,), generator=g)
        loss = F.cross_entropy(model(images[idx]), labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    freeze(model)
    model.eval()


def accuracy_rows(name: str, run: Path, limit: int | None, qat_steps: int, qat_lr: float) -> list[dict]:
    _, splits, model = load_run(run)
    model.eval()
    test = splits.test
    if limit:
        test = TensorDataset(*(t[:limit] for t in test.tensors))
    calib = [splits.train.tensors[0][i:i + 64] for i in range(0, 64 * 8, 64)]
    base = evaluate(model, test)[1]
    rows = [{"model": name, "variant": "fp32", "accuracy": base, "drop_points": 0.0}]
    grans = ("position", "position_channel")
    for tile, gran, obs in itertools.product((2, 4), grans, OBSERVER_NAMES):
        q, skipped = quantize_winograd(model, calib, tile, v_granularity=gran, observer=obs)
        rows.append({"model": name, "variant": f"F({tile},3) v={gran} {obs}",
                     "accuracy": evaluate(q, test)[1]})
    if qat_steps:
        q, skipped = prepare_winograd_qat(model, calib, 4, v_granularity="position_channel",
                                          observer="percentile")
        qat_finetune(q, splits.train, qat_steps, qat_lr)
        rows.append({"model": name, "variant": f"F(4,3) v=position_channel percentile + QAT {qat_steps}",
                     "accuracy": evaluate(q, test)[1]})
    for r in rows[1:]:
        r["drop_points"] = 100 * (base - r["accuracy"])
    print(f"{name}: {len(test)} test images; convs left fp32: {skipped or 'none'}")
    for r in rows:
        print(f"    {r['variant']:<56} {100 * r['accuracy']:.2f}%  (drop {r['drop_points']:+.2f} points; "
              f"target <= 1)", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("runs/winograd"))
    ap.add_argument("--cnn-run", type=Path, default=RUNS["cnn"], help="trained demo CNN run")
    ap.add_argument("--accuracy-models", nargs="+", default=list(RUNS), choices=list(RUNS),
                    help="trained models to measure accuracy on (default: both)")
    ap.add_argument("--resnet-run", type=Path, default=RUNS["resnet20"],
                    help="trained ResNet-20 run (fmnist_resnet20_dense.yaml)")
    ap.add_argument("--quick", action="store_true", help="smoke: one shape, batch 1, 500 images")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    ap.add_argument("--vgg", action="store_true", help="also VGG's 64 @ 224 layer (slow)")
    ap.add_argument("--layouts", default="nchw,channels_last",
                    help="input memory layouts to time, comma-separated (nchw, channels_last)")
    ap.add_argument("--no-pt2e", action="store_true", help="skip the PT2E peer (compiles per row)")
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--skip-accuracy", action="store_true")
    ap.add_argument("--qat-steps", type=int, default=None, help="QAT steps (default 400, quick 10)")
    ap.add_argument("--qat-lr", type=float, default=1e-5, help="QAT Adam learning rate")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    info = machine_info()
    print(f"# {info['cpu_model']} ({info['cpu_capability']}), {info['logical_cores']} cores, "
          f"{torch.get_num_threads()} threads, torch {info['torch_version']}; winograd kernel "
          f"variant {extension.best_isa(winograd_ops.VARIANTS)} "
          f"(runs {extension.supported_isas(winograd_ops.VARIANTS)})")
    if not args.skip_speed:
        shapes = SHAPES[:1] if args.quick else SHAPES + (VGG if args.vgg else ())
        batches = (1,) if args.quick else (1, 8)
        rounds, repeats = (2, 3) if args.quick else (5, 10)
        rows = []
        layouts = args.layouts.split(",")
        if unknown := set(layouts) - {"nchw", "channels_last"}:
            ap.error(f"--layouts: unknown {sorted(unknown)}; use nchw and/or channels_last")
        for layout, (c, hw), batch in itertools.product(layouts, shapes, batches):
            rows.append(speed_row(c, hw, batch, layout, rounds, repeats, pt2e=not args.no_pt2e))
            print_speed(rows[-1])
        path = write_csv([{**r, "machine": info["cpu_model"]} for r in rows], args.out / "winograd_speed.csv")
        print(f"wrote {path}")
    if not args.skip_accuracy:
        qat = args.qat_steps if args.qat_steps is not None else (10 if args.quick else 400)
        acc = []
        runs = {k: v for k, v in {"cnn": args.cnn_run, "resnet20": args.resnet_run}.items()
                if k in args.accuracy_models}
        for name, run in runs.items():
            acc += accuracy_rows(name, run, 500 if args.quick else None, qat, args.qat_lr)
        path = write_csv(acc, args.out / "winograd_accuracy.csv")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
