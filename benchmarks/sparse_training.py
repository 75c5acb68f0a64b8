"""Sparse-training study: every method on the same Fashion-MNIST model and training budget,
at 90% and 95% sparsity; test accuracy, wall time, peak memory (each run in its own process),
compact-format size. Writes CSV + markdown table + accuracy-vs-sparsity plot.

    python benchmarks/sparse_training.py --out runs/study --jobs 2   # reduced form, 2 CPU cores
    python benchmarks/sparse_training.py --out runs/study --full     # full data and epochs (GPU)
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import yaml

from sparseforge.demo import packaged_recipe
from sparseforge.profile import machine_info
from sparseforge.profile.rows import write_csv

SPARSITIES = (0.9, 0.95)


def base_recipe(full: bool, epochs: int, limit: int | None) -> dict:
    """The shared setting: model, data and budget are identical for every method."""
    recipe = packaged_recipe("fmnist_dense.yaml")
    recipe["train"]["epochs"] = epochs
    if not full:
        recipe["model"]["args"] = {"width": 16, "hidden": 128}
        recipe["data"]["limit"] = limit
    return recipe


def method_modifiers(method: str, s: float, epochs: int) -> list[dict]:
    """The modifier list of each method at sparsity s within `epochs` (the same budget for
    all; IMP, which needs several trainings by design, is run separately)."""
    half, late = epochs / 2, round(0.75 * epochs)
    layers = {"exclude": ["features.conv1"]}  # 1 input channel: 0.06% of the weights
    common = {"sparsity": s, "allocation": "global", "layers": layers}
    dst = {"sparsity": s, "update_every": 1.0, "stop_epoch": late, "distribution": "erk",
           "layers": layers}
    table = {
        "dense": [],
        "oneshot+finetune": [{"type": "oneshot", **common, "at_epoch": half}],
        "gmp": [{"type": "gmp", **common, "start_epoch": epochs / 4, "end_epoch": late,
                 "update_every": 0.25}],
        # ERK start, then every prune-back ranks against the whole model (allocation: global)
        "gap": [{"type": "gap", "sparsity": s, "layers": layers, "distribution": "erk",
                 "allocation": "global", "partitions": 4, "period": max(1.0, epochs / 10),
                 "finetune_epochs": epochs / 8}],
        "rigl": [{"type": "rigl", **dst}],
        "set": [{"type": "set", **dst}],
        "mest": [{"type": "mest", **dst, "soft_bound": True}],
        "admm": [{"type": "admm", **common, "prune_epoch": half, "admm_every": 0.5,
                  "rho": 1e-2, "rho_growth": 2.0, "rho_every": 0.5}],
    }
    return table[method]


METHODS = ("dense", "oneshot+finetune", "gmp", "gap", "rigl", "set", "mest", "admm", "imp")


CHILD_ENV = dict(os.environ)  # --jobs sets OMP_NUM_THREADS here for every training


def _child(args: list[str], log: Path) -> tuple[float, float]:
    """Run `python -m sparseforge.cli ARGS` in a child process, output to `log`:
    (wall seconds, peak RSS in MB of that process alone)."""
    start = time.perf_counter()
    with log.open("w") as f:
        proc = subprocess.Popen([sys.executable, "-m", "sparseforge.cli", *args], stdout=f, stderr=f,
                                env=CHILD_ENV)
        _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"`sparseforge {' '.join(args)}` failed; see {log}")
    return seconds, usage.ru_maxrss / 1024


def _result(summary_path: Path) -> dict:
    """Accuracy, sparsity and sizes of a finished run; the training-state memory (weights +
    optimizer state, compact vs dense) where the method logs it (the DST methods)."""
    c = json.loads(summary_path.read_text())["compressed"]
    lines = (summary_path.parent / "metrics.jsonl").read_text().splitlines()
    last = json.loads(lines[-1]) if lines else {}
    state = ""
    if "memory_compact_bytes" in last:
        state = f"{last['memory_compact_bytes'] / 1024:.0f} / {last['memory_dense_bytes'] / 1024:.0f}"
    return {
        "test_accuracy": c["test_accuracy"],
        "sparsity": 1 - c["nonzeros"] / c["params"],
        "compact_kb": c["file_bytes"] / 1024,
        "train_state_kb": state,
    }


def run_method(method: str, s: float, recipe: dict, out: Path) -> dict:
    """Train one method at one sparsity in its own process; returns the table row."""
    run_dir = out / f"{method}-{round(s * 100)}"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    path = run_dir.with_suffix(".yaml")
    if method == "imp":
        rounds = 2 if recipe["data"].get("limit") else 5
        rate = 1 - (1 - s) ** (1 / rounds)
        path.write_text(yaml.safe_dump(recipe))
        seconds, peak = _child(["ticket", str(path), "--out", str(run_dir), "--rounds",
                                str(rounds), "--prune-rate", f"{rate:.6f}"], path.with_suffix(".log"))
        ticket = json.loads((run_dir / "ticket.json").read_text())
        row = _result(run_dir / f"round_{rounds}" / "summary.json")
        row["note"] = f"{rounds} rounds + 2 sanity controls; verdict: {ticket['verdict']['text']}"
    else:
        r = copy.deepcopy(recipe)
        r["modifiers"] = method_modifiers(method, s, r["train"]["epochs"])
        path.write_text(yaml.safe_dump(r))
        seconds, peak = _child(["train", str(path), "--out", str(run_dir)], path.with_suffix(".log"))
        row = _result(run_dir / "summary.json")
        row["note"] = ""
    return {"method": method, "target": s, **row, "wall_s": seconds, "peak_rss_mb": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/study")
    parser.add_argument("--full", action="store_true", help="full data and 30 epochs")
    parser.add_argument("--epochs", type=int, help="override the training budget")
    parser.add_argument("--limit", type=int, default=12000, help="reduced form: examples per split")
    parser.add_argument("--seed", type=int, help="train.seed (initialisation and batch order)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="trainings at once, each with cores/jobs torch threads (2 on 2 cores: "
                             "small models train more per core on one thread; wall times then "
                             "include the other job's share of the machine)")
    parser.add_argument("--methods", nargs="*", default=list(METHODS), choices=METHODS)
    parser.add_argument("--sparsities", nargs="*", type=float, default=list(SPARSITIES))
    args = parser.parse_args()
    epochs = args.epochs or (30 if args.full else 8)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    recipe = base_recipe(args.full, epochs, args.limit)
    if args.seed is not None:
        recipe["train"]["seed"] = args.seed
    machine = machine_info()
    if args.jobs > 1:
        threads = max(1, (os.cpu_count() or 1) // args.jobs)
        CHILD_ENV["OMP_NUM_THREADS"] = str(threads)
        machine["torch_threads"] = f"{threads} (x {args.jobs} trainings at once)"
    print(f"machine: {machine['cpu_model']}, {machine['torch_threads']} threads, "
          f"torch {machine['torch_version']}; budget {epochs} epochs")
    runs = [(m, s) for m in args.methods for s in ((0.0,) if m == "dense" else args.sparsities)]
    started = time.perf_counter()
    # the longest (IMP, several trainings) first, so parallel jobs finish together
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = {pool.submit(run_method, m, s, recipe, out): (m, s)
                   for m, s in sorted(runs, key=lambda run: run[0] != "imp")}
        for future in as_completed(futures):
            row = future.result()
            print(f"{row['method']:18s} target {row['target']:.2f}  acc {row['test_accuracy']:.4f}  "
                  f"sparsity {row['sparsity']:.3f}  {row['wall_s']:.0f}s  "
                  f"peak {row['peak_rss_mb']:.0f} MB  {row['compact_kb']:.0f} kB", flush=True)
    row_of = {run: future.result() for future, run in futures.items()}
    rows = [row_of[run] for run in runs]  # the table in the methods' order
    total = time.perf_counter() - started
    write_outputs(rows, out, machine, epochs, total)
    print(f"total {total / 60:.1f} min; table: {out / 'study.md'}")


def write_outputs(rows: list[dict], out: Path, machine: dict, epochs: int, total: float) -> None:
    """CSV, a markdown table (accuracy change vs dense in points) and the plot."""
    write_csv(rows, out / "study.csv")
    dense = next((r["test_accuracy"] for r in rows if r["method"] == "dense"), None)
    lines = [
        f"Machine: {machine['cpu_model']}, {machine['torch_threads']} torch threads, torch "
        f"{machine['torch_version']}. Budget: {epochs} epochs per training. Total wall time "
        f"{total / 60:.1f} min.",
        "",
        "| method | target | test acc | vs dense (pt) | sparsity | wall (s) | peak RSS (MB) | "
        "train state compact / dense (kB) | model file compact (kB) | note |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        delta = "" if dense is None else f"{100 * (r['test_accuracy'] - dense):+.2f}"
        lines.append(
            f"| {r['method']} | {r['target']:.2f} | {100 * r['test_accuracy']:.2f}% | {delta} | "
            f"{100 * r['sparsity']:.1f}% | {r['wall_s']:.0f} | {r['peak_rss_mb']:.0f} | "
            f"{r['train_state_kb']} | {r['compact_kb']:.0f} | {r['note']} |"
        )
    (out / "study.md").write_text("\n".join(lines) + "\n")
    plot_per_method(rows, out / "accuracy_vs_sparsity.png")


def plot_per_method(rows: list[dict], path: Path) -> None:
    """Accuracy vs sparsity, one line per method, the dense model as a dashed reference."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = sorted((r["sparsity"], r["test_accuracy"]) for r in rows if r["method"] == method)
        if method == "dense":
            ax.axhline(100 * mine[0][1], color="k", ls="--", lw=1, label="dense")
            continue
        ax.plot([100 * x for x, _ in mine], [100 * y for _, y in mine], marker="o", label=method)
    ax.set_xlabel("sparsity (%)")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
