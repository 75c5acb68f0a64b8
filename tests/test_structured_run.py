"""Structured pruning inside a run: hard (prune, then fine-tune the smaller model) and
FuPruner's fuse + soft pruning; the run folder rebuilds the pruned model."""

import json

import pytest
import torch
from torch import nn

from sparseforge.evaluate import load_run
from sparseforge.recipe import RecipeError, load_recipe
from sparseforge.trainer import compress, train

RESNET = {"name": "resnet", "args": {"depth": 8}}


def convs(model):
    return [m for m in model.modules() if isinstance(m, nn.Conv2d)]


@pytest.mark.parametrize("structured", [
    {"flops": 0.4},
    {"ratio": 0.5, "soft": True, "fuse": {"bn": True}, "importance": "l1"},
], ids=["hard", "fupruner-soft"])
def test_structured_run_shrinks_and_reloads(make_recipe, tmp_path, structured):
    recipe = make_recipe(model=RESNET, structured=structured, train={"epochs": 2})
    run = compress(recipe, tmp_path / "run")
    plan = json.loads((run / "structure.json").read_text())
    assert plan["flops"]["after"] < 0.65 * plan["flops"]["before"]
    _, splits, model = load_run(run)
    widths = [c.out_channels for c in convs(model)]
    assert widths[0] < 16
    if structured.get("fuse"):  # BatchNorm folded away before pruning
        assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    summary = json.loads((run / "summary.json").read_text())
    assert summary["compressed"]["params"] < summary["dense"]["params"]
    report = (run / "report.md").read_text()
    assert "Channels removed" in report and "reach the model's output" in report
    x = splits.test.tensors[0][:16]
    assert model.eval()(x).shape == (16, 10)
    metrics = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    if not structured.get("soft"):  # the fine-tuned small model learns the tiny task
        assert metrics[-1]["val_accuracy"] > 0.3
    from sparseforge.runtime import check_onnx, export_model

    onnx = export_model(model, x[:2], tmp_path / "small.onnx", "onnx")
    assert check_onnx(onnx, model, x[:3]) < 1e-4  # the shrunk model exports and runs


def test_soft_pruning_zeroes_units_each_epoch_and_they_can_come_back(make_recipe, tmp_path):
    recipe = make_recipe(model=RESNET, structured={"ratio": 0.5, "soft": True},
                         train={"epochs": 2})
    run = train(recipe, tmp_path / "soft", progress=False)
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(r["flops_removed"] > 0.3 for r in rows)


def straight_and_resumed(recipe, tmp_path, train_killed_after_epoch):
    """Train `recipe` straight through and, separately, killed after an epoch and resumed;
    check both reloaded models give the same outputs. Returns (straight run, model, input)."""
    straight = train(recipe, tmp_path / "a", progress=False)
    train_killed_after_epoch(recipe, tmp_path / "b")
    resumed = train(recipe, tmp_path / "b", resume=True, progress=False)
    _, splits, ma = load_run(straight)
    _, _, mb = load_run(resumed)
    x = splits.test.tensors[0][:8]
    assert torch.equal(ma.eval()(x), mb.eval()(x))
    return straight, ma, x


def test_resume_of_a_hard_structured_run_rebuilds_the_shape(make_recipe, tmp_path,
                                                            train_killed_after_epoch):
    recipe = make_recipe(model=RESNET, structured={"ratio": 0.5}, train={"epochs": 2})
    straight_and_resumed(recipe, tmp_path, train_killed_after_epoch)


@pytest.mark.parametrize("structured,match", [
    ({"importance": "l2"}, "exactly one of ratio, flops, speedup"),
    ({"ratio": 0.5, "flops": 0.5}, "exactly one"),
    ({"ratio": 1.5}, "ratio"),
    ({"ratio": 0.5, "fuse": {"bn": True, "conv": True}}, "conv"),
])
def test_bad_structured_sections_name_the_field(make_recipe, structured, match):
    with pytest.raises(RecipeError, match=match):
        load_recipe(make_recipe(structured=structured))


def test_structured_and_modifiers_together_are_refused(make_recipe):
    with pytest.raises(RecipeError, match="two recipes"):
        load_recipe(make_recipe(structured={"ratio": 0.5},
                                modifiers=[{"type": "oneshot", "sparsity": 0.5}]))


@pytest.mark.parametrize("name", ["fmnist_resnet20_channel50.yaml", "fmnist_resnet20_fupruner50.yaml",
                                  "fmnist_resnet20_latency50.yaml", "fmnist_resnet20_depth50.yaml"])
def test_shipped_structured_recipes_run(name, tiny_fmnist, tmp_path):
    from importlib import resources

    import yaml

    recipe = yaml.safe_load(resources.files("sparseforge.recipes").joinpath(name).read_text())
    recipe["model"].pop("checkpoint")
    recipe["data"]["root"] = str(tiny_fmnist)
    recipe["train"]["epochs"] = 1
    recipe["output"]["latency_batch_sizes"] = [1]
    recipe["structured"]["latency_batch"] = 1  # scope latency times its proposals: keep it quick
    run = compress(recipe, tmp_path / "run")
    plan = json.loads((run / "structure.json").read_text())
    assert 1 - plan["flops"]["after"] / plan["flops"]["before"] >= 0.5


def test_depth_run_drops_blocks_reloads_and_resumes(make_recipe, tmp_path, fake_clock,
                                                   train_killed_after_epoch):
    # a machine where only full-resolution convs cost time: whole stage-1 blocks are the buy
    fake_clock(lambda conv, y: float(y.shape[1]) if y.shape[-1] == 28 else 0.0)
    recipe = make_recipe(model={"name": "resnet", "args": {"depth": 20}}, train={"epochs": 2},
                         structured={"flops": 0.3, "scope": "latency", "depth": True,
                                     "max_ratio": 0.5, "round_to": 4})
    straight, ma, x = straight_and_resumed(recipe, tmp_path, train_killed_after_epoch)
    plan = json.loads((straight / "structure.json").read_text())
    assert plan["dropped_branches"]
    assert "Dropped branches" in (straight / "report.md").read_text()
    from sparseforge.runtime import check_onnx, export_model

    onnx = export_model(ma, x[:2], tmp_path / "depth.onnx", "onnx")
    assert check_onnx(onnx, ma, x[:3]) < 1e-4
