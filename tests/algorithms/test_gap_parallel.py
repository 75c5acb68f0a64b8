import json

import pytest
import torch

from sparseforge.algorithms.gap_parallel import merge_workers, parallel_gap
from sparseforge.checkpoint import load_weights_only
from sparseforge.evaluate import load_model_state

MASK = ".parametrizations.weight.0.mask"
ORIG = ".parametrizations.weight.original"


def test_merge_takes_each_partition_from_its_worker_and_averages_the_rest():
    def state(v: float) -> dict:
        return {
            "a" + ORIG: torch.full((2,), v), "a" + MASK: torch.tensor([True, v > 1]),
            "b" + ORIG: torch.full((2,), v + 10), "b" + MASK: torch.tensor([v > 1, True]),
            "a.bias": torch.full((2,), v), "bn.num_batches_tracked": torch.tensor(int(v)),
        }

    merged = merge_workers([state(1.0), state(3.0)], [["a"], ["b"]])
    assert torch.equal(merged["a" + ORIG], torch.full((2,), 1.0))  # worker 0 grew a
    assert torch.equal(merged["a" + MASK], torch.tensor([True, False]))
    assert torch.equal(merged["b" + ORIG], torch.full((2,), 13.0))  # worker 1 grew b
    assert torch.equal(merged["b" + MASK], torch.tensor([True, True]))
    assert torch.equal(merged["a.bias"], torch.full((2,), 2.0))  # shared: averaged
    assert merged["bn.num_batches_tracked"].item() == 1  # counters: from worker 0


def test_parallel_gap_end_to_end(make_recipe, tmp_path):
    recipe = make_recipe(train={"epochs": 1})
    result = parallel_gap(recipe, tmp_path / "pgap", sparsity=0.8, partitions=2, cycles=1)
    run = tmp_path / "pgap" / "cycle_0"
    workers = [load_model_state(run / f"worker_{k}") for k in range(2)]
    merged = load_weights_only(run / "merged.pt")
    groups = json.loads((tmp_path / "pgap" / "parallel_gap.json").read_text())["partitions"]
    for k, group in enumerate(groups):
        for layer in group:
            assert torch.equal(merged[layer + ORIG], workers[k][layer + ORIG])
            # each worker pruned its grown partition back to s (layer-wise)
            assert 1 - workers[k][layer + MASK].float().mean().item() == pytest.approx(0.8, abs=0.01)
    final = load_model_state(result.final_run)
    masks = [v for k, v in final.items() if k.endswith(MASK)]
    zeros = sum((~m).sum().item() for m in masks)
    assert zeros / sum(m.numel() for m in masks) == pytest.approx(0.8, abs=0.01)
    summary = json.loads((result.final_run / "summary.json").read_text())
    assert summary["compressed"]["test_accuracy"] > 0.1  # learned beyond chance


def test_parallel_gap_refuses_a_recipe_with_modifiers(make_recipe, tmp_path):
    recipe = make_recipe(modifiers=[{"type": "oneshot", "sparsity": 0.5}])
    with pytest.raises(ValueError, match="dense recipe"):
        parallel_gap(recipe, tmp_path / "x", sparsity=0.5)
