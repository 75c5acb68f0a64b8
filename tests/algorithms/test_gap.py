"""GaP (scheduled grow-and-prune): which partition is dense when, prune-back by magnitude to the
target, regrown weights starting at zero, block scheme, resume, config errors, a tiny run."""

import copy
import json
from importlib import resources

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparseforge import Session
from sparseforge.algorithms.gap import contiguous_partitions
from sparseforge.sparsity import get_mask, global_sparsity, load_masked_state_dict
from sparseforge.sparsity.schemes import unstructured
from sparseforge.trainer import train

LAYERS = ["1", "3", "5", "7"]
STEPS_PER_EPOCH = 4


def net():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Flatten(), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(),
        nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4),
    )


def gap_recipe(**fields):
    # 4 steps per epoch, period 0.5 epoch = 2 steps, final prune at epoch 3 = step 12
    mod = {"type": "gap", "sparsity": 0.75, "period": 0.5, **fields}
    if "groups" not in fields:
        mod.setdefault("partitions", 2)
    return {"train": {"epochs": 4}, "modifiers": [mod]}


def setup(recipe):
    model = net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    return model, opt, Session(model, recipe, opt, STEPS_PER_EPOCH)


def train_steps(model, opt, session, steps, before_step=None, after_step=None):
    """Steps with batches seeded by the step index, so two runs see the same data."""
    for _ in range(steps):
        g = torch.Generator().manual_seed(session.global_step)
        x, y = torch.randn(8, 16, generator=g), torch.randint(0, 4, (8,), generator=g)
        session.loss(F.cross_entropy(model(x), y)).backward()
        opt.step()
        if before_step is not None:
            before_step()
        session.step()
        opt.zero_grad()
        if after_step is not None:
            after_step()
        if session.global_step % STEPS_PER_EPOCH == 0:
            session.epoch_end()


def layer(model, name):
    return model[int(name)]


def dense_layers(model):
    return [n for n in LAYERS if bool(get_mask(layer(model, n)).all())]


def test_partitions_cycle_on_schedule_and_prune_back_to_the_target():
    model, opt, session = setup(gap_recipe())
    parts = [["1", "3"], ["5", "7"]]
    assert dense_layers(model) == parts[0]
    assert global_sparsity(model) == 0.75  # sparse random start, regrown weights are zero
    seen = []

    def after():
        n = session.global_step
        expected = parts[(n // 2) % 2] if n < 12 else []
        seen.append((n, dense_layers(model), expected))
        for name in LAYERS:
            if name not in expected:  # every sparse layer sits exactly at s
                module = layer(model, name)
                assert (~get_mask(module)).sum().item() == 0.75 * module.weight.numel()
        if n % 2 == 0 or n >= 12:  # right after a prune-back (and the next grow, whose
            assert global_sparsity(model) == 0.75, n  # weights are zero), or fine-tuning
        else:  # mid-phase: the grown partition has trained its regrown weights
            assert global_sparsity(model) < 0.70, n

    train_steps(model, opt, session, 16, after_step=after)
    assert all(got == want for _, got, want in seen), seen
    assert [n for n, got, _ in seen if got == []] == [12, 13, 14, 15, 16]
    assert global_sparsity(model) == 0.75
    assert session.metrics()["gap_partition"] == -1.0 and session.metrics()["gap_phase"] == 5.0


def test_random_start_and_prune_back_by_magnitude_with_fresh_regrowth():
    model, opt, session = setup(gap_recipe())
    init_mask = get_mask(layer(model, "5")).clone()
    by_magnitude = unstructured(layer(net(), "5").weight.detach().abs(), 0.75)  # same init
    assert not torch.equal(init_mask, by_magnitude)  # the start is random, not magnitude
    captured = {}

    def before():  # weights after the optimizer step, before GaP prunes
        if session.global_step + 1 in (2, 4):
            captured.update({n: layer(model, n).weight.detach().clone() for n in LAYERS})
            captured["masks"] = {n: get_mask(layer(model, n)).clone() for n in LAYERS}

    def after():
        n = session.global_step
        if n not in (2, 4):
            return
        pruned, grown = (["1", "3"], ["5", "7"]) if n == 2 else (["5", "7"], ["1", "3"])
        for name in pruned:
            expect = unstructured(captured[name].abs(), 0.75)
            assert torch.equal(get_mask(layer(model, name)), expect), (n, name)
        for name in grown:
            was_pruned = ~captured["masks"][name]
            module = layer(model, name)
            param = module.parametrizations.weight.original
            assert torch.all(param[was_pruned] == 0)
            assert torch.all(opt.state[param]["momentum_buffer"][was_pruned] == 0)

    train_steps(model, opt, session, 4, before_step=before, after_step=after)
    assert set(captured) == set(LAYERS) | {"masks"}


def test_block_scheme_prunes_whole_tiles():
    model, opt, session = setup(gap_recipe(scheme={"name": "block", "block": [2, 2]}))

    def tiles_whole():
        for name in dense_layers_complement(model):
            mask = get_mask(layer(model, name))
            tiles = mask.reshape(mask.shape[0] // 2, 2, mask.shape[1] // 2, 2).permute(0, 2, 1, 3)
            per_tile = tiles.reshape(*tiles.shape[:2], 4).sum(-1)
            assert bool(((per_tile == 0) | (per_tile == 4)).all()), name
            assert (~mask).float().mean().item() == 0.75

    tiles_whole()
    train_steps(model, opt, session, 16, after_step=tiles_whole)
    assert dense_layers(model) == [] and global_sparsity(model) == 0.75


def dense_layers_complement(model):
    return [n for n in LAYERS if n not in dense_layers(model)]


def test_resume_state_round_trip_continues_identically():
    recipe = gap_recipe()
    model, opt, session = setup(recipe)
    train_steps(model, opt, session, 5)  # mid-way through phase 2 (partition 0 regrown)
    # a deep copy, as a checkpoint file would be: state dicts share the live tensors
    saved = copy.deepcopy(
        {"model": model.state_dict(), "opt": opt.state_dict(), "session": session.state_dict()}
    )
    assert saved["session"]["modifiers"][0] == {"phase": 2, "grown": 0}

    model2, opt2, session2 = setup(recipe)
    load_masked_state_dict(model2, saved["model"])
    opt2.load_state_dict(saved["opt"])
    session2.load_state_dict(saved["session"])
    train_steps(model, opt, session, 11)
    train_steps(model2, opt2, session2, 11)
    a, b = model.state_dict(), model2.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    finished = [{"phase": 5, "grown": None}]
    assert session2.state_dict()["modifiers"] == session.state_dict()["modifiers"] == finished
    with pytest.raises(ValueError, match="partition 7 does not exist"):
        session2.modifiers[0].load_state_dict({"phase": 0, "grown": 7})


def test_explicit_groups_and_global_allocation():
    recipe = gap_recipe(groups=[["1"], ["3", "5"], ["7"]], allocation="global")
    recipe["train"]["epochs"] = 3  # final prune at epoch 2 = step 8: 4 phases for 3 groups
    model, opt, session = setup(recipe)
    order = []
    train_steps(model, opt, session, 8, after_step=lambda: order.append(dense_layers(model)))
    assert order[1] == ["3", "5"] and order[3] == ["7"] and order[5] == ["1"] and order[7] == []
    assert global_sparsity(model) == pytest.approx(0.75, abs=1e-3)


def test_contiguous_partitions_balance_by_depth():
    assert contiguous_partitions(list("abcdefg"), 3) == [["a", "b", "c"], ["d", "e"], ["f", "g"]]
    with pytest.raises(ValueError, match="at most 2 partitions"):
        contiguous_partitions(["a", "b"], 3)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"partitions": 5}, "at most 4 partitions"),
        ({"period": 3.0}, "fewer than its 2 partitions"),
        ({"groups": [["1", "3"], ["5"]]}, "layer '7' matches no group"),
        ({"groups": [["*"], ["7"]]}, r"layer '7' matches groups \[0, 1\]"),
        ({"finetune_epochs": 4}, "outside"),
        ({"finetune_epochs": 1, "final_prune_epoch": 2}, "not both"),
        ({"groups": [["1", "3"], ["5", "7"]], "partitions": 3}, "drop `partitions`"),
    ],
)
def test_config_errors_say_what_to_do(fields, message):
    with pytest.raises(ValueError, match=message):
        setup(gap_recipe(**fields))


def test_shipped_recipe_builds_a_full_size_schedule():
    from sparseforge.models import create_model
    from sparseforge.recipe import parse_recipe

    text = resources.files("sparseforge.recipes").joinpath("fmnist_gap90.yaml").read_text()
    recipe = parse_recipe(text, "fmnist_gap90.yaml")
    model = create_model("cnn", num_classes=10, in_channels=1, input_size=(28, 28))
    session = Session(model, recipe, None, steps_per_epoch=422)  # 54k images, batch 128
    gap = session.modifiers[0]
    assert len(gap.partitions) == recipe.modifiers[0].partitions
    assert sum(len(p) for p in gap.partitions) == 6  # conv1-4, fc1, fc2
    assert gap.grown == 0


def test_a_tiny_run_through_the_trainer(make_recipe, tmp_path):
    mod = {"type": "gap", "sparsity": 0.8, "partitions": 3, "period": 0.5, "finetune_epochs": 1}
    run = train(make_recipe(modifiers=[mod]), tmp_path / "gap", progress=False)
    lines = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    # 5 steps per epoch, phases of 2 steps (round(2.5)), final prune at epoch 2 = step 10:
    # at the end of epoch 1 (step 5) phase 2 (partition 2) is growing, then fine-tuning
    assert [m["gap_partition"] for m in lines] == [2.0, -1.0, -1.0]
    assert [m["sparsity"] < 0.75 for m in lines] == [True, False, False]
    assert lines[-1]["sparsity"] == pytest.approx(0.8, abs=1e-3)
    assert lines[-1]["val_accuracy"] > 0.3  # 10 classes: chance is 0.1


def test_erk_distribution_sets_each_layer_and_keeps_the_model_budget():
    import torch
    from torch import nn

    from sparseforge import Session
    from sparseforge.sparsity import layer_sparsity, masked_modules

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 8))
    recipe = {
        "train": {"epochs": 4},
        "modifiers": [{"type": "gap", "sparsity": 0.9, "partitions": 2, "distribution": "erk",
                       "finetune_epochs": 1}],
    }
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    session = Session(model, recipe, opt, steps_per_epoch=2)
    gap = session.modifiers[0]
    targets = gap.erk_targets
    assert targets["2"] < targets["0"]  # ERK: the small output layer keeps more
    sizes = {n: m.weight.numel() for n, m in masked_modules(model)}
    kept = sum((1 - targets[n]) * sizes[n] for n in sizes)
    assert kept / sum(sizes.values()) == pytest.approx(0.1, abs=0.01)
    for _ in range(6):  # run until the final prune
        session.step()
    assert gap.grown is None
    for n, s in layer_sparsity(model).items():
        assert s == pytest.approx(targets[n], abs=0.01)


@pytest.mark.parametrize("allocation", ["layerwise", "global"])
def test_global_allocation_ranks_the_grown_partition_against_the_whole_model(allocation):
    """Partition 0's weights are scaled up before its prune-back: under global allocation they
    win the model-wide ranking and the sparse partition gives up weights (its mask only
    shrinks); layer-wise, each layer of partition 0 goes back to s and the rest is untouched."""
    model, opt, session = setup(gap_recipe(allocation=allocation))
    gap, before, after = session.modifiers[0], {}, {}
    grow = gap._grow

    def record_then_grow(index, session):  # the masks the prune-back left, before regrowth
        after.update({n: get_mask(layer(model, n)).clone() for n in LAYERS})
        grow(index, session)

    gap._grow = record_then_grow

    def boost():  # right before the first prune-back (step 2)
        if session.global_step + 1 == 2:
            with torch.no_grad():
                for n in ("1", "3"):
                    layer(model, n).parametrizations.weight.original.mul_(100)
            before.update({n: get_mask(layer(model, n)).clone() for n in LAYERS})

    train_steps(model, opt, session, 2, before_step=boost)
    kept = {n: after[n].float().mean().item() for n in LAYERS}
    total = sum(after[n].sum().item() for n in LAYERS)
    assert total == pytest.approx(0.25 * sum(m.numel() for m in after.values()), abs=2)
    for n in ("5", "7"):  # sparse while partition 0 grew: never gains a weight
        assert not (after[n] & ~before[n]).any()
    if allocation == "global":
        assert kept["1"] > 0.25 and kept["3"] > 0.25
        assert kept["5"] < 0.25 and kept["7"] < 0.25  # gave up weights it held at s
    else:
        assert kept["1"] == kept["3"] == 0.25
        assert torch.equal(after["5"], before["5"]) and torch.equal(after["7"], before["7"])


def test_erk_start_with_global_allocation():
    """ERK sets the random start; the global prune-backs keep the model-wide budget."""
    from sparseforge.sparsity import layer_sparsity

    model, opt, session = setup(gap_recipe(distribution="erk", allocation="global"))
    targets = session.modifiers[0].erk_targets
    for n in ("5", "7"):  # the sparse partition starts at its ERK sparsity
        assert layer_sparsity(model)[n] == pytest.approx(targets[n], abs=0.01)
    train_steps(model, opt, session, 16)
    assert global_sparsity(model) == pytest.approx(0.75, abs=1e-3)
