"""Deploy and bench a finished run folder (the API behind `sparseforge deploy|bench`): the
example input is a batch of the run's own test images; results go to `<run>/deploy/`."""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from ..profile import compare_latency, machine_info
from ..sparsity.masks import bake_masks
from .deploy import deploy, target_device
from .deployed import PLAN_FILE, DeployedModel

DEPLOY_DIR = "deploy"
BENCH_FILE = "bench.json"


def _test_batch(splits: Any, batch: int) -> Tensor:
    images = splits.test.tensors[0]
    if batch < 1:
        raise ValueError(f"--batch must be a positive integer, got {batch}")
    if len(images) == 0:
        raise ValueError("the run's test split is empty; deploy needs test images as example input")
    return images[:batch]


def deploy_run(
    run_dir: str | Path, target: str = "cpu", *, batch: int = 1, repeats: int = 20,
    rounds: int = 3, fuse: bool = False, fold_bn: bool = False,
) -> tuple[DeployedModel, Path]:
    """Deploy the run's trained model with `batch` test images as example input and save the
    plan and state to `<run_dir>/deploy/` (with `fuse`, also the fusion plan and lowering
    report: see `deploy`); returns the deployment and the deploy.json path."""
    from ..evaluate import load_run

    _, splits, model = load_run(run_dir)
    deployed = deploy(model, _test_batch(splits, batch), target, repeats=repeats, rounds=rounds,
                      fuse=fuse, fold_bn=fold_bn)
    return deployed, deployed.save(Path(run_dir) / DEPLOY_DIR)


def _saved_deployment(out: Path, model: nn.Module, target: str) -> DeployedModel | None:
    """The deployment saved in `out` for this model and target, else None (deploy again)."""
    if not (out / PLAN_FILE).is_file():
        return None
    if json.loads((out / PLAN_FILE).read_text()).get("target") != target:
        return None
    try:
        deployed = DeployedModel.load(out, model)
    except ValueError:  # stale: deployed from another model or an older format
        return None
    return deployed


def bench_run(
    run_dir: str | Path, target: str = "cpu", *, batch_sizes: Sequence[int] = (1, 64),
    repeats: int = 10, rounds: int = 5,
) -> tuple[dict[str, Any], Path]:
    """End-to-end latency of the run's model, dense (baked) vs deployed, side by side at each
    batch size; reuses `<run_dir>/deploy/` when it was deployed for `target`, else deploys
    first. Writes and returns bench.json (latencies, speedups, machine, per-layer plan)."""
    from ..evaluate import load_run

    device = target_device(target)
    out = Path(run_dir) / DEPLOY_DIR
    _, splits, model = load_run(run_dir)
    deployed, source = _saved_deployment(out, model, target), "reused"
    if deployed is None:
        deployed = deploy(model, _test_batch(splits, 1), target, repeats=repeats)
        source = "deployed now"
        deployed.save(out)
    dense = bake_masks(copy.deepcopy(model)).to(device).eval()
    latency = compare_latency({"dense": dense, "deployed": deployed.module}, splits.input_shape,
                              batch_sizes, rounds=rounds, repeats=repeats)
    ms = {name: {str(b): t.median_ms for b, t in per.items()} for name, per in latency.items()}
    result = {
        "target": target,
        "deployment": f"{source}: {out / PLAN_FILE}",
        "machine": machine_info(),
        "batch_sizes": [int(b) for b in batch_sizes],
        "latency_ms": ms,
        "speedup": {b: ms["dense"][b] / ms["deployed"][b] for b in ms["dense"]},
        "choices": deployed.choices(),
        "layers": deployed.plan,
    }
    path = out / BENCH_FILE
    path.write_text(json.dumps(result, indent=2))
    return result, path
