"""The `sparseforge` command line: thin verbs over the Python API."""

from __future__ import annotations

import argparse
import ipaddress
import json
import sys
from pathlib import Path


def _train(args: argparse.Namespace) -> int:
    from .trainer import train

    run_dir = train(args.recipe, args.out, resume=args.resume)
    print(f"run written to {run_dir} (report: {run_dir / 'report.html'})")
    return 0


def _compress(args: argparse.Namespace) -> int:
    from .trainer import compress

    run_dir = compress(args.recipe, args.out, resume=args.resume)
    print(f"compressed run written to {run_dir} (report: {run_dir / 'report.html'})")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from .evaluate import load_run, write_summary

    recipe, splits, model = load_run(args.run_dir)
    summary = write_summary(Path(args.run_dir), recipe, splits, model, None, False)
    print(json.dumps(summary["compressed"], indent=2))
    return 0


def _report(args: argparse.Namespace) -> int:
    from .report import compare_runs, write_report

    if len(args.run_dirs) == 1:
        path = write_report(Path(args.run_dirs[0]))
    else:
        path = compare_runs([Path(d) for d in args.run_dirs], Path(args.out))
    print(f"report written to {path}")
    return 0


def _ticket(args: argparse.Namespace) -> int:
    from .algorithms.lottery import find_ticket

    result = find_ticket(
        args.recipe, args.out, rounds=args.rounds, prune_rate=args.prune_rate,
        rewind_epoch=args.rewind_epoch, allocation=args.allocation,
    )
    print(f"sparsity {result.final_sparsity:.3f}: {result.verdict.text}")
    print(f"details: {Path(args.out) / 'ticket.md'}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from .runtime import export_run

    path, diff = export_run(args.run_dir, args.format, batch=args.batch)
    print(f"exported to {path}")
    if diff is not None:
        print(f"onnxruntime vs PyTorch on {args.batch} test image(s): max abs difference {diff:.3g}")
    return 0


def _deploy(args: argparse.Namespace) -> int:
    from .runtime import deploy_run, format_plan

    if args.format:
        return _export(args)
    deployed, path = deploy_run(args.run_dir, args.target, batch=args.batch, repeats=args.repeats,
                                fuse=args.fuse, fold_bn=args.fold_bn)
    print(format_plan(deployed.plan))
    if deployed.fusion is not None:
        print(deployed.fusion.summary())
    print(f"plan and timings written to {path}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from .runtime import bench_run, format_plan

    result, path = bench_run(args.run_dir, args.target, batch_sizes=args.batch_sizes,
                             repeats=args.repeats)
    print(format_plan(result["layers"]))
    print(f"end to end ({result['deployment']}):")
    for b in result["latency_ms"]["dense"]:
        dense, ours = result["latency_ms"]["dense"][b], result["latency_ms"]["deployed"][b]
        print(f"  batch {b}: dense {dense:.3f} ms, deployed {ours:.3f} ms, "
              f"speedup {result['speedup'][b]:.2f}x")
    print(f"written to {path}")
    return 0


def _profile_memory(args: argparse.Namespace) -> int:
    from .profile.memory import profile_memory

    out = Path(args.out or f"runs/memory/{Path(args.recipe).stem}")
    s = profile_memory(
        args.recipe, out, steps=args.steps, batch_sizes=args.batch_sizes,
        bandwidth_gbps=args.bandwidth, activation_checkpointing=args.checkpoint_activations,
        budget_bytes=args.budget_gb * 1e9 if args.budget_gb else None,
    )
    mib = 2**20
    print(f"peak {s['peak_bytes'] / mib:.1f} MiB at {s['peak_at']['op']} ({s['peak_at']['phase']}); "
          + ", ".join(f"{c} {v / mib:.1f}" for c, v in s["peak_by_category"].items()))
    if s["period"]:
        print(f"iteration: {s['period']['length']} ops; {s['stability']['share']:.1%} of block patterns repeat")
    if s.get("largest_batch") is not None:
        print(f"largest batch within {args.budget_gb:g} GB: {s['largest_batch']}")
    print(f"recorder slowdown {s['recorder_slowdown']:.2f}x; report: {out / 'memory.html'}")
    return 0


def _quantize(args: argparse.Namespace) -> int:
    from .quant.mixed_run import quantize_config, quantize_run, summary_markdown

    config = quantize_config(
        args.run_dir, args.recipe, mode=args.mode, calibration_batches=args.calibration_batches,
        bits=args.bits, criterion=args.criterion, solver=args.solver, trials=args.trials,
        weight_bytes=args.weight_bytes, accuracy_drop=args.accuracy_drop,
    )
    summary = quantize_run(args.run_dir, config, args.out, latency=args.latency,
                           batch_sizes=args.batch_sizes, repeats=args.repeats)
    print(summary_markdown(summary))
    print(f"written to {Path(args.out) / 'quantize.json'} and quantize.md")
    return 0


def _partition(args: argparse.Namespace) -> int:
    from .edge.partition import partition_run

    result = partition_run(
        args.run_dir, args.bandwidth_mbps, args.rtt_ms, tolerance=args.tolerance, out=args.out,
        batch=args.batch, edge_threads=args.edge_threads, edge_slowdown=args.edge_slowdown,
        cloud_threads=args.cloud_threads, calibration=args.calibration,
    )
    print(result["emulated"])
    for p in result["plans"]:
        print(f"{p['bandwidth_mbps']:>8g} Mbit/s: split {p['split']:<22} "
              f"transfer {p['precision'] or '-':<5} predicted {p['predicted_ms']:.2f} ms")
    print(f"profile, plan and plot written to {result['out']}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    try:
        import aiohttp  # noqa: F401
    except ImportError as err:
        raise ImportError("`sparseforge serve` needs aiohttp: pip install 'sparseforge[serve]'") from err
    import torch

    from .edge.cloud import cloud_device, run_example
    from .edge.server import make_app, read_token, serve
    from .edge.splits import tails_for

    if not ipaddress.ip_address(args.host).is_loopback:
        print(f"warning: serving on {args.host}, reachable from other machines; the token is "
              "sent in clear text over HTTP", flush=True)
    token = read_token(args.token_file)
    model, example, _, _ = run_example(args.run_dir, 1)
    device = cloud_device()
    app = make_app(tails_for(model, example, args.split), token,
                   max_bytes=int(args.max_mb * 2**20), threads=args.threads, device=device)
    where = "GPU" if device == "cuda" else f"CPU of this process, {torch.get_num_threads()} threads"
    print(json.dumps({"serving": args.split, "tail_on": where}), flush=True)
    serve(app, args.host, args.port)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    path = run_demo(Path(args.out), quick=args.quick, data_root=args.data_root)
    print(f"demo finished; comparison report: {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sparseforge", description="Make trained PyTorch models smaller and measurably faster."
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", help="train a recipe (dense or with modifiers) into a run folder")
    t.add_argument("recipe", help="recipe YAML file")
    t.add_argument("--out", help="run folder (default: the recipe's output.dir)")
    t.add_argument("--resume", action="store_true", help="continue from the run's last checkpoint")
    t.set_defaults(fn=_train)

    c = sub.add_parser("compress", help="sparsify a model with a recipe's modifiers and fine-tune it")
    c.add_argument("recipe", help="recipe YAML file with modifiers or a structured: section")
    c.add_argument("--out", required=True, help="run folder to write")
    c.add_argument("--resume", action="store_true", help="continue from the run's last checkpoint")
    c.set_defaults(fn=_compress)

    e = sub.add_parser("eval", help="re-measure a finished run (test accuracy, size, FLOPs, latency)")
    e.add_argument("run_dir", help="run folder written by train or compress")
    e.set_defaults(fn=_eval)

    r = sub.add_parser("report", help="render a run's report, or compare several runs")
    r.add_argument("run_dirs", nargs="+", help="one run folder, or several to compare")
    r.add_argument("--out", default="runs/compare", help="folder for a comparison report")
    r.set_defaults(fn=_report)

    k = sub.add_parser(
        "ticket", help="lottery tickets: IMP with rewinding, then the sanity checks and a verdict"
    )
    k.add_argument("recipe", help="a dense training recipe (no modifiers)")
    k.add_argument("--out", required=True, help="folder for the rounds, controls and ticket.json")
    k.add_argument("--rounds", type=int, default=5, help="pruning rounds (default 5)")
    k.add_argument("--prune-rate", type=float, default=0.2,
                   help="fraction of the remaining weights pruned per round (default 0.2)")
    k.add_argument("--rewind-epoch", type=float, default=0.0,
                   help="rewind survivors to their values at this epoch (0 = initial weights)")
    k.add_argument("--allocation", choices=["global", "layerwise"], default="global")
    k.set_defaults(fn=_ticket)

    dp = sub.add_parser(
        "deploy", help="pick the fastest measured kernel per layer; save choices and timings"
    )
    dp.add_argument("run_dir", help="run folder written by train or compress")
    dp.add_argument("--target", choices=["cpu", "cuda"], default="cpu")
    dp.add_argument("--batch", type=int, default=1,
                    help="test images in the example input the layers are timed on, or the "
                         "export is traced and checked on (default 1)")
    dp.add_argument("--repeats", type=int, default=20, help="timed calls per candidate and round")
    dp.add_argument("--fold-bn", action="store_true",
                    help="fold every BatchNorm into the conv/linear before it first (exact in "
                         "eval), so sparse kernels can take the ReLU/residual after it")
    dp.add_argument("--fuse", action="store_true",
                    help="then plan the deployed model's fusion (DNNFusion) and lower it: residual "
                         "add / relu / gelu into our sparse kernels, the rest through TorchInductor; "
                         "writes fusion_plan.json and lowering.json beside deploy.json (CPU)")
    dp.add_argument("--format", choices=["onnx", "pt2"],
                    help="instead of picking kernels, export the model (masks baked, dynamic "
                         "batch) to DIR/export/model.onnx or model.pt2")
    dp.set_defaults(fn=_deploy)

    b = sub.add_parser("bench", help="end-to-end latency dense vs deployed, and the per-layer table")
    b.add_argument("run_dir", help="run folder (deployed first if it has no deploy/ for --target)")
    b.add_argument("--target", choices=["cpu", "cuda"], default="cpu")
    b.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64], metavar="N",
                   help="batch sizes to time (default 1 64)")
    b.add_argument("--repeats", type=int, default=10, help="timed calls per model and round")
    b.set_defaults(fn=_bench)

    pr = sub.add_parser("profile", help="profile a recipe's training (memory)")
    prof = pr.add_subparsers(dest="what", required=True, metavar="WHAT")
    m = prof.add_parser(
        "memory", help="record every memory block's alloc/read/write/free over a few training "
                       "steps; peak, iteration pattern, swap/recompute candidates, prediction")
    m.add_argument("recipe", help="recipe YAML file")
    m.add_argument("--steps", type=int, default=3, help="training steps to record (default 3)")
    m.add_argument("--batch-sizes", type=int, nargs="+", metavar="N",
                   help="record at each size and fit peak vs batch (default: the recipe's)")
    m.add_argument("--bandwidth", type=float, default=25.0, metavar="GBPS",
                   help="host<->device link for swap decisions, GB/s (default 25, PCIe 4.0 x16)")
    m.add_argument("--budget-gb", type=float, help="with 2+ batch sizes: the largest batch that fits")
    m.add_argument("--checkpoint-activations", action="store_true",
                   help="wrap the model's blocks in activation checkpointing first")
    m.add_argument("--out", help="folder to write (default runs/memory/<recipe name>)")
    m.set_defaults(fn=_profile_memory)

    q = sub.add_parser(
        "quantize", help="PTQ or mixed-precision search on a trained run; compare fp32, int8, "
                         "mixed (and sparse+int8): accuracy, weight bytes, latency")
    q.add_argument("run_dir", help="run folder written by train or compress")
    q.add_argument("--out", required=True, help="folder for quantize.json/.md and the plots")
    q.add_argument("--recipe", help="YAML whose `quantize:` section to use (default: the run's "
                                    "own recipe's, else defaults); flags below override it")
    q.add_argument("--mode", choices=["ptq", "mixed"])
    q.add_argument("--calibration-batches", type=int, metavar="N")
    q.add_argument("--bits", type=int, nargs="+", metavar="B", help="widths to choose from")
    q.add_argument("--criterion", choices=["loss", "hessian"])
    q.add_argument("--solver", choices=["dp", "optuna"])
    q.add_argument("--trials", type=int, metavar="N", help="optuna evaluations")
    budget = q.add_mutually_exclusive_group()
    budget.add_argument("--weight-bytes", type=float, metavar="RATIO",
                        help="weight bytes budget as a share of uniform int8 (0.75 = 25%% fewer)")
    budget.add_argument("--accuracy-drop", type=float, metavar="POINTS",
                        help="validation accuracy points below fp32 allowed; minimises bytes")
    q.add_argument("--latency", action=argparse.BooleanOptionalAction, default=True,
                   help="time fp32 and int8 (inductor compiles; slow on the first call)")
    q.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64], metavar="N")
    q.add_argument("--repeats", type=int, default=10, help="timed calls per model and round")
    q.set_defaults(fn=_quantize)

    pa = sub.add_parser("partition", help="plan an edge-cloud split of a run's model per bandwidth")
    pa.add_argument("run_dir")
    pa.add_argument("--bandwidth-mbps", type=float, nargs="+", default=[1.0, 10.0, 100.0])
    pa.add_argument("--rtt-ms", type=float, default=20.0)
    pa.add_argument("--tolerance", type=float, default=0.5,
                    help="accuracy points the transfer precision may cost (validation images)")
    pa.add_argument("--out", help="output folder (default RUN_DIR/partition)")
    pa.add_argument("--batch", type=int, default=1, help="images per request")
    pa.add_argument("--edge-threads", type=int, default=1)
    pa.add_argument("--edge-slowdown", type=float, default=1.0,
                    help="emulate a slower edge: head time x this factor")
    pa.add_argument("--cloud-threads", type=int, help="threads of the cloud process (CPU only)")
    pa.add_argument("--calibration", type=int, default=512, help="validation images for accuracy")
    pa.set_defaults(fn=_partition)

    se = sub.add_parser("serve", help="host a run's model tail(s) for edge clients over HTTP")
    se.add_argument("run_dir")
    se.add_argument("--split", nargs="+", required=True, help="split name(s) to host")
    se.add_argument("--port", type=int, default=8080)
    se.add_argument("--token-file", required=True, help="file holding the shared secret")
    se.add_argument("--host", default="127.0.0.1")
    se.add_argument("--threads", type=int, help="torch threads for the tail (CPU)")
    se.add_argument("--max-mb", type=float, default=64.0, help="request size limit in MiB")
    se.set_defaults(fn=_serve)

    d = sub.add_parser("demo", help="Fashion-MNIST: train dense, prune 90%% gradually, report")
    d.add_argument("--out", default="runs/demo", help="folder for the demo's runs")
    d.add_argument("--data-root", help="folder with the Fashion-MNIST IDX files")
    d.add_argument("--quick", action="store_true", help="a one-minute smoke version")
    d.set_defaults(fn=_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except (ValueError, FileNotFoundError, FileExistsError, KeyError, ImportError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"error: {message}", file=sys.stderr)
        return 2
    except RuntimeError as err:  # TrainingDiverged and friends: say it, exit non-zero
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
