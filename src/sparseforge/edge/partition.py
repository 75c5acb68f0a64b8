"""`sparseforge partition`: profile a run's model at every split (head here, tail in a separate
cloud process), plan the split and transfer precision per bandwidth, and write profile.json,
plan.json and a latency-vs-bandwidth plot."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .cloud import run_example
from .planner import SplitProfile, plan, predict
from .plots import plot_latency_vs_bandwidth
from .profile import profile_splits
from .splits import INPUT, OUTPUT


def cloud_tail_ms(run_dir: str | Path, batch: int, threads: int | None,
                  timeout_s: float = 600.0) -> dict[str, Any]:
    """Tail latencies measured by `python -m sparseforge.edge.cloud` in its own process."""
    cmd = [sys.executable, "-m", "sparseforge.edge.cloud", str(run_dir), "--batch", str(batch)]
    if threads:
        cmd += ["--threads", str(threads)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    if done.returncode != 0:
        raise RuntimeError(f"cloud profiling failed ({' '.join(cmd)}):\n{done.stderr[-2000:]}")
    return json.loads(done.stdout)


def all_cloud_ms(profile: list[SplitProfile], bandwidth: float, rtt_ms: float) -> float:
    """Predicted ms of the all-cloud baseline: the fp32 input sent, the whole model there."""
    first = next(p for p in profile if p.name == INPUT)
    return predict(first, "fp32", bandwidth, rtt_ms).predicted_ms


def partition_run(run_dir: str | Path, bandwidths: Sequence[float], rtt_ms: float, *,
                  tolerance: float = 0.5, out: str | Path | None = None, batch: int = 1,
                  edge_threads: int = 1, edge_slowdown: float = 1.0,
                  cloud_threads: int | None = None, calibration: int = 512) -> dict[str, Any]:
    """Profile, plan at each bandwidth, write `<out>` (default `<run_dir>/partition/`)."""
    out = Path(out) if out else Path(run_dir) / "partition"
    out.mkdir(parents=True, exist_ok=True)
    cloud = cloud_tail_ms(run_dir, batch, cloud_threads)
    model, example, images, labels = run_example(run_dir, batch)
    profile = profile_splits(model, example, cloud["tail_ms"], images[:calibration],
                             labels[:calibration], edge_threads=edge_threads,
                             edge_slowdown=edge_slowdown)
    plans = [plan(profile, bw, rtt_ms, tolerance) for bw in bandwidths]
    emulated = (f"edge: this CPU, {edge_threads} thread(s), head time x{edge_slowdown:g}; "
                f"cloud: {cloud['device']}, {cloud['threads']} thread(s)")
    (out / "profile.json").write_text(json.dumps(
        {"emulated": emulated, "batch": batch, "calibration_images": len(images[:calibration]),
         "splits": [asdict(p) for p in profile]}, indent=2))
    result = {"emulated": emulated, "rtt_ms": rtt_ms, "tolerance_points": tolerance,
              "plans": [p.to_json() for p in plans]}
    (out / "plan.json").write_text(json.dumps(result, indent=2))
    edge_ms = next(p.head_ms for p in profile if p.name == OUTPUT)
    plot_latency_vs_bandwidth(
        list(bandwidths),
        {"all-edge": [edge_ms] * len(plans),
         "all-cloud (fp32 input)": [all_cloud_ms(profile, bw, rtt_ms) for bw in bandwidths],
         "collaborative": [p.predicted_ms for p in plans]},
        [f"{p.split} ({p.precision or '-'})" for p in plans], out / "latency_vs_bandwidth.png",
        f"predicted, rtt {rtt_ms:g} ms")
    result["out"] = str(out)
    return result
