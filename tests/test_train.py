import json

import pytest
import torch

from sparseforge.checkpoint import load_weights_only
from sparseforge.evaluate import load_run
from sparseforge.sparsity import global_sparsity, load_masked_state_dict
from sparseforge.trainer import TrainingDiverged, lr_at, train

GMP = [{"type": "gmp", "sparsity": 0.8, "start_epoch": 0.5, "end_epoch": 2, "update_every": 0.25}]


def test_a_run_writes_everything_and_learns(make_recipe, tmp_path):
    run = train(make_recipe(modifiers=GMP), tmp_path / "run", progress=False)
    lines = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [1, 2, 3]
    assert lines[-1]["val_accuracy"] > 0.5  # 10 classes: chance is 0.1
    assert abs(lines[-1]["sparsity"] - 0.8) < 0.02
    summary = json.loads((run / "summary.json").read_text())
    assert summary["compressed"]["nonzeros"] < 0.35 * summary["compressed"]["params"]
    assert summary["dense"]["test_accuracy"] is None  # random init: no reference accuracy
    assert summary["compressed"]["file_bytes"] < summary["dense"]["file_bytes"]
    for name in ("report.html", "report.md", "recipe.yaml", "model/masked.pt"):
        assert (run / name).is_file(), name


def test_checkpoint_loads_weights_only_and_restores_the_model(make_recipe, tmp_path):
    run = train(make_recipe(modifiers=GMP, train={"epochs": 2}), tmp_path / "r", progress=False)
    state = load_weights_only(run / "checkpoints" / "last.pt")
    assert state["epoch"] == 2
    recipe, splits, trained = load_run(run)
    from sparseforge.evaluate import build_model

    fresh = build_model(recipe, splits, initial_weights=False)
    load_masked_state_dict(fresh, state["model"])
    x = splits.test.tensors[0][:8]
    assert torch.equal(fresh.eval()(x), trained.eval()(x))
    assert global_sparsity(fresh) == pytest.approx(0.8, abs=0.02)


def test_resume_after_a_kill_equals_the_uninterrupted_run(
    make_recipe, tmp_path, train_killed_after_epoch
):
    recipe = make_recipe(modifiers=GMP, data={"augment": True})
    straight = train(recipe, tmp_path / "straight", progress=False)
    train_killed_after_epoch(recipe, tmp_path / "resumed")
    with pytest.raises(FileExistsError, match="--resume"):
        train(recipe, tmp_path / "resumed", progress=False)
    resumed = train(recipe, tmp_path / "resumed", resume=True, progress=False)

    a = load_weights_only(straight / "checkpoints" / "last.pt")["model"]
    b = load_weights_only(resumed / "checkpoints" / "last.pt")["model"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k

    def metrics(run):
        rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]

    assert metrics(straight) == metrics(resumed)


def test_nan_loss_stops_with_a_message(make_recipe, tmp_path):
    recipe = make_recipe(train={"optimizer": {"name": "sgd", "lr": 1e30, "momentum": 0.0}})
    with pytest.raises(TrainingDiverged, match="lower train.optimizer.lr"):
        train(recipe, tmp_path / "nan", progress=False)


def test_finetuning_from_a_run_reports_the_dense_reference(make_recipe, tmp_path):
    dense = train(make_recipe(train={"epochs": 2}), tmp_path / "dense", progress=False)
    sparse = train(
        make_recipe(model={"checkpoint": str(dense)}, train={"epochs": 1},
                    modifiers=[{"type": "oneshot", "sparsity": 0.5}]),
        tmp_path / "sparse", progress=False,
    )
    dense_summary = json.loads((dense / "summary.json").read_text())
    summary = json.loads((sparse / "summary.json").read_text())
    assert summary["dense"]["test_accuracy"] == dense_summary["compressed"]["test_accuracy"]
    assert dense_summary["dense"] is None  # a dense run has no separate reference


def test_lr_schedule_warmup_and_cosine():
    from sparseforge.recipe import TrainConfig

    cfg = TrainConfig(epochs=10, optimizer={"lr": 1.0}, lr_schedule={"name": "cosine", "warmup_epochs": 1})
    assert lr_at(0, cfg, 10) == pytest.approx(0.1)
    assert lr_at(9, cfg, 10) == pytest.approx(1.0)
    assert lr_at(10, cfg, 10) == pytest.approx(1.0)
    assert lr_at(55, cfg, 10) == pytest.approx(0.5)
    assert lr_at(100, cfg, 10) == pytest.approx(0.0)
    step = TrainConfig(epochs=10, optimizer={"lr": 1.0}, lr_schedule={"name": "step", "step_epochs": 3, "gamma": 0.5})
    assert lr_at(29, step, 10) == 1.0 and lr_at(30, step, 10) == 0.5


def test_bf16_autocast_and_contiguous_layout_train(make_recipe, tmp_path):
    recipe = make_recipe(train={"epochs": 2, "precision": "bf16", "channels_last": False})
    run = train(recipe, tmp_path / "bf16", progress=False)
    lines = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["train_loss"] < lines[0]["train_loss"]


def test_a_modifier_can_drop_training_examples(make_recipe, tmp_path):
    """The data-efficiency hook: a plugin modifier sees per-example correctness and trains on
    a subset; the run takes fewer steps while the lr schedule still spans the epochs."""
    from typing import Literal

    from pydantic import BaseModel

    from sparseforge.algorithms import MODIFIERS, Modifier, register_modifier

    class EvenOnlyConfig(BaseModel):
        type: Literal["even_only_test"] = "even_only_test"

    seen = []

    class EvenOnly(Modifier):
        def on_batch(self, session, indices, correct):
            seen.append((indices.clone(), correct.clone()))

        def example_filter(self, session, n_examples):
            return torch.arange(n_examples) % 2 == 0

    if "even_only_test" not in MODIFIERS:
        register_modifier("even_only_test", EvenOnlyConfig)(EvenOnly)
    run = train(
        make_recipe(modifiers=[{"type": "even_only_test"}], train={"epochs": 2}),
        tmp_path / "subset", progress=False,
    )
    lines = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [3, 6]  # 80 of 160 examples, batch 32: 3 steps
    assert all(bool((i % 2 == 0).all()) for i, _ in seen)
    assert all(c.dtype == torch.bool and len(c) == len(i) for i, c in seen)
    assert lines[-1]["lr"] < 0.05 * 0.5  # cosine went most of the way down in 6 steps
