"""`sparseforge profile memory` end to end on a tiny recipe, and the GPU check (skipped without
CUDA): the recorded peak equals the caching allocator's own peak."""

import json

import pytest
import torch
from torch import nn

from sparseforge.cli import main
from sparseforge.profile.memory import checkpoint_activations, peak, record_steps
from sparseforge.recipe import dump_recipe, load_recipe


def test_profile_memory_writes_trace_summary_figures_and_report(make_recipe, write_fmnist, tiny_fmnist, tmp_path, capsys):
    write_fmnist(tiny_fmnist, n_train=400, n_test=20)
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(dump_recipe(load_recipe(make_recipe(train={"batch_size": 16}))))
    out = tmp_path / "mem"
    assert main(["profile", "memory", str(recipe), "--steps", "2", "--batch-sizes", "8", "16",
                 "--budget-gb", "0.05", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "peak" in printed and "largest batch within 0.05 GB" in printed
    s = json.loads((out / "memory.json").read_text())
    assert s["peak_bytes"] == sum(s["peak_by_category"].values())
    assert s["period"]["match"] == 1.0 and s["stability"]["share"] == 1.0
    assert s["fit"]["batch_sizes"] == [8, 16] and s["largest_batch"] > 16
    for f in ("memory.html", "memory.md", "memory_timeline.png", "memory_lifetimes.png",
              "memory_ati.png", "memory_prediction.png", "trace/events.parquet"):
        assert (out / f).is_file(), f
    assert "Peak composition" in (out / "memory.md").read_text()


def test_activation_checkpointing_lowers_the_peak():
    def run(checkpointed: bool) -> int:
        torch.manual_seed(0)
        body = nn.Sequential(*(nn.Sequential(nn.Linear(128, 128), nn.ReLU()) for _ in range(16)))
        model = nn.Sequential(body, nn.Linear(128, 10))
        if checkpointed:  # the root's Sequential child in 4 segments of 4 (sqrt 16), and the head
            assert checkpoint_activations(model) == ["0", "1"]
            assert len(model[0]) == 4
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        return peak(record_steps(model, opt, [(torch.randn(2048, 128), torch.randint(0, 10, (2048,)))])).nbytes

    # ~16 saved layer outputs without; 4 segment inputs + one segment recomputed (4) with
    assert run(True) < 0.7 * run(False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_gpu_the_recorded_peak_is_the_allocators_peak():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(512, 1024), nn.ReLU(), nn.Linear(1024, 10)).cuda()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    batches = [(torch.randn(256, 512, device="cuda"), torch.randint(0, 10, (256,), device="cuda")) for _ in range(3)]
    x, y = batches.pop()
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    del x, y
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    trace = record_steps(model, opt, batches)
    torch.cuda.synchronize()
    allocator_peak = torch.cuda.max_memory_allocated()
    pre = sum(n for n, p in zip(trace.nbytes, trace.preexisting, strict=True) if p)
    # blocks alive before recording that the model never touches (the batches) count in base
    assert peak(trace).nbytes - pre == pytest.approx(allocator_peak - base, rel=0.05)
