"""Edge-cloud collaborative inference, end to end through the real server: every split of a
run's model at each bandwidth (token-bucket paced upload and reply on loopback, rtt emulated
by a sleep), against all-edge (the whole model here) and all-cloud (the fp32 input sent). The
cloud is `sparseforge serve` in its own process (on this CPU with `--cloud-threads`, or the
GPU when present); the edge is this process with `--edge-threads`, its compute stretched by
`--edge-slowdown` (sleep) to emulate a slower device. Prints the planner's pick and the two
done-when checks, writes CSV, JSON and a latency-vs-bandwidth plot.

    python benchmarks/edge_cloud.py --out runs/edge_cloud            # full
    python benchmarks/edge_cloud.py --quick --out /tmp/edge_quick    # smoke check
"""

from __future__ import annotations

import argparse
import json
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from sparseforge.edge.client import EdgeClient, Link, ServerError, post_tensor
from sparseforge.edge.cloud import run_example
from sparseforge.edge.partition import cloud_tail_ms
from sparseforge.edge.planner import candidates, plan
from sparseforge.edge.plots import plot_latency_vs_bandwidth
from sparseforge.edge.profile import edge_ms, profile_splits
from sparseforge.edge.splits import INPUT, OUTPUT, split_model
from sparseforge.edge.wire import encode
from sparseforge.profile import machine_info
from sparseforge.profile.rows import write_csv


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_cloud(run: str, splits: list[str], token_file: Path, threads: int,
                timeout_s: float = 180.0) -> tuple[subprocess.Popen, int]:
    """`sparseforge serve` in a child process; returns it once it answers a request."""
    port = free_port()
    cmd = [sys.executable, "-m", "sparseforge.cli", "serve", run, "--split", *splits,
           "--port", str(port), "--token-file", str(token_file), "--threads", str(threads)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stdout.read()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return proc, port
        except OSError:
            time.sleep(0.5)
    proc.terminate()
    raise TimeoutError(f"server did not listen on 127.0.0.1:{port} within {timeout_s} s")


def time_split(model, x, split, precision, port, token, link, repeats) -> float:
    """Median end-to-end ms of requests through the server; the first is a warm-up."""
    head, _ = split_model(model, split)
    client = EdgeClient(head, split, precision, "127.0.0.1", port, token, link, ARGS.edge_slowdown)
    samples = [client.infer(x)[1]["total_ms"] for _ in range(repeats + 1)]
    return statistics.median(samples[1:])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--run", default="runs/demo/dense")
    ap.add_argument("--bandwidth-mbps", type=float, nargs="+", default=[1.0, 10.0, 100.0])
    ap.add_argument("--rtt-ms", type=float, default=20.0)
    ap.add_argument("--tolerance", type=float, default=0.5)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--edge-threads", type=int, default=1)
    ap.add_argument("--edge-slowdown", type=float, default=10.0)
    ap.add_argument("--cloud-threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--cell-budget-s", type=float, default=8.0,
                    help="fewer repeats (>= 2) for a split whose requests take long")
    ap.add_argument("--calibration", type=int, default=512)
    ap.add_argument("--quick", action="store_true", help="smoke: batch 2, 2 repeats, 64 images")
    ap.add_argument("--out", default="runs/edge_cloud")
    global ARGS
    ARGS = args = ap.parse_args()
    if args.quick:
        args.batch, args.repeats, args.calibration, args.cell_budget_s = 2, 2, 64, 2.0
    out = Path(args.out)
    torch.set_num_threads(args.edge_threads)
    info = machine_info()
    print(f"CPU: {info['cpu_model']} ({info['logical_cores']} logical cores); "
          f"GPU: {info['cuda_device']}")
    cloud = cloud_tail_ms(args.run, args.batch, args.cloud_threads)
    emulated = (f"edge: this CPU, {args.edge_threads} thread(s), compute x{args.edge_slowdown:g} "
                f"by sleeping; cloud: {cloud['device']}, {cloud['threads']} thread(s); link: token "
                f"bucket on loopback both ways, rtt {args.rtt_ms:g} ms by sleeping")
    print(emulated)
    model, x, images, labels = run_example(args.run, args.batch)
    profile = profile_splits(model, x, cloud["tail_ms"], images[:args.calibration],
                             labels[:args.calibration], edge_threads=args.edge_threads,
                             edge_slowdown=args.edge_slowdown)
    names = [p.name for p in profile if p.name != OUTPUT]
    token = secrets.token_urlsafe(24)
    rows, summary = [], []
    with tempfile.TemporaryDirectory() as tmp:
        token_file = Path(tmp) / "token"
        token_file.write_text(token)
        proc, port = start_cloud(args.run, names, token_file, args.cloud_threads)
        try:
            all_edge = edge_ms(lambda: model(x), args.edge_slowdown, args.repeats)
            for bw in args.bandwidth_mbps:
                link = Link(bw, args.rtt_ms)
                options = candidates(profile, bw, args.rtt_ms, args.tolerance)
                best_per_split = {}
                for c in options:  # per split, the admissible precision predicted fastest
                    if c.split not in best_per_split or c.predicted_ms < best_per_split[c.split].predicted_ms:
                        best_per_split[c.split] = c
                cells = list(best_per_split.values())
                cloud_fp32 = next(c for c in options if (c.split, c.precision) == (INPUT, "fp32"))
                measured = {}
                for c in [*cells, cloud_fp32]:
                    key = (c.split, c.precision)
                    if key in measured:
                        continue
                    if c.split == OUTPUT:
                        ms = all_edge
                    else:
                        n = int(max(2, min(args.repeats, args.cell_budget_s * 1e3 / c.predicted_ms)))
                        ms = time_split(model, x, c.split, c.precision, port, token, link, n)
                    measured[key] = ms
                    rows.append({"bandwidth_mbps": bw, "rtt_ms": args.rtt_ms, "batch": args.batch,
                                 "split": c.split, "precision": c.precision or "-",
                                 "predicted_ms": round(c.predicted_ms, 3), "measured_ms": round(ms, 3)})
                chosen = plan(profile, bw, args.rtt_ms, args.tolerance)
                ours = measured[(chosen.split, chosen.precision)]
                best_key = min(measured, key=measured.get)
                all_edge_ms, cloud_ms = measured[(OUTPUT, None)], measured[(INPUT, "fp32")]
                s = {"bandwidth_mbps": bw, "chosen": f"{chosen.split} ({chosen.precision or '-'})",
                     "predicted_ms": chosen.predicted_ms, "measured_ms": ours,
                     "best_measured": f"{best_key[0]} ({best_key[1] or '-'})",
                     "best_ms": measured[best_key], "all_edge_ms": all_edge_ms,
                     "all_cloud_ms": cloud_ms,
                     "within_10pct_of_best": ours <= 1.10 * measured[best_key],
                     "le_min_edge_cloud": ours <= min(all_edge_ms, cloud_ms)}
                summary.append(s)
                print(f"{bw:>7g} Mbit/s  planner: {s['chosen']:<28} {ours:8.1f} ms (pred "
                      f"{chosen.predicted_ms:7.1f})  best measured: {s['best_measured']:<28} "
                      f"{s['best_ms']:8.1f} ms  all-edge {all_edge_ms:8.1f}  all-cloud {cloud_ms:8.1f}  "
                      f"ratio to best {ours / s['best_ms']:.3f}  within 10%: "
                      f"{s['within_10pct_of_best']}  <= min(edge, cloud): {s['le_min_edge_cloud']}")
            # the server keeps serving after a bad request (checked live, once)
            try:
                post_tensor("127.0.0.1", port, token, *encode(x, "fp32", split="no-such-split"),
                            link=None)
            except ServerError as err:
                print(f"bad request answered: {err}")
            print(f"then served: {time_split(model, x, INPUT, 'fp32', port, token, None, 1):.1f} ms")
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    write_csv(rows, out / "edge_cloud.csv")
    (out / "edge_cloud.json").write_text(json.dumps(
        {"emulated": emulated, "machine": info, "summary": summary, "cloud": cloud}, indent=2))
    bws = [s["bandwidth_mbps"] for s in summary]
    plot_latency_vs_bandwidth(
        bws, {"all-edge": [s["all_edge_ms"] for s in summary],
              "all-cloud": [s["all_cloud_ms"] for s in summary],
              "collaborative": [s["measured_ms"] for s in summary]},
        [s["chosen"] for s in summary], out / "edge_cloud.png",
        f"measured, batch {args.batch}, rtt {args.rtt_ms:g} ms, edge x{args.edge_slowdown:g}")
    print(f"wrote {out / 'edge_cloud.csv'}, edge_cloud.json, edge_cloud.png")
    return 0 if all(s["within_10pct_of_best"] and s["le_min_edge_cloud"] for s in summary) else 1


if __name__ == "__main__":
    raise SystemExit(main())
