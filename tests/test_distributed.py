"""Two CPU processes (gloo): DDP training under torchrun keeps masks equal on every rank, and
a rank whose masks drift is caught."""

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml
from torch import nn

from sparseforge.checkpoint import load_weights_only
from sparseforge.session import check_masks_equal
from sparseforge.sparsity import apply_mask


def test_torchrun_two_processes_trains_with_equal_masks(make_recipe, tmp_path):
    recipe = make_recipe(
        modifiers=[{"type": "gmp", "sparsity": 0.7, "start_epoch": 0, "end_epoch": 2, "update_every": 0.5}],
        train={"epochs": 2},
    )
    path = tmp_path / "ddp.yaml"
    path.write_text(yaml.safe_dump(recipe))
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "sparseforge.cli", "train", str(path), "--out", str(out)],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    # 160 training examples split over 2 ranks of batch 32: 3 steps per epoch per rank
    assert [m["step"] for m in metrics] == [3, 6]
    assert abs(metrics[-1]["sparsity"] - 0.7) < 0.02
    state = load_weights_only(out / "checkpoints" / "last.pt")
    assert any(k.endswith("parametrizations.weight.0.mask") for k in state["model"])


def _drifting_rank(rank: int, world: int, port: int, errors) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        layer = nn.Linear(4, 4)
        mask = torch.ones(4, 4, dtype=torch.bool)
        if rank == 1:
            mask[0, 0] = False
        apply_mask(layer, mask)
        check_masks_equal(nn.Sequential(layer))
    except RuntimeError as err:
        errors.put((rank, str(err)))
    finally:
        dist.destroy_process_group()


def test_a_rank_with_different_masks_is_caught():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    errors = ctx.Queue()
    procs = [ctx.Process(target=_drifting_rank, args=(r, 2, port, errors)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert all(p.exitcode == 0 for p in procs)
    rank, message = errors.get(timeout=5)
    assert rank == 1 and "differs from rank 0" in message
    assert errors.empty()


if not dist.is_available():  # pragma: no cover
    pytest.skip("torch.distributed is not available", allow_module_level=True)
