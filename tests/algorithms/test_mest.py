import io
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparseforge import Session
from sparseforge.checkpoint import load_weights_only
from sparseforge.recipe import RecipeError
from sparseforge.sparsity import apply_mask, get_mask, global_sparsity, masked_modules
from sparseforge.sparsity.compact import sparse_memory_bytes
from sparseforge.sparsity.mutation import ElasticDecay, Units
from sparseforge.trainer import train


def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))


def recipe(epochs=4, **modifier):
    return {"train": {"epochs": epochs}, "modifiers": [modifier]}


def masks(model):
    return {n: get_mask(m).clone() for n, m in masked_modules(model)}


def run(model, session, opt, steps, after_step=None):
    """`steps` optimizer steps on random data; `after_step(step)` after each."""
    torch.manual_seed(1)
    for _ in range(steps):
        x, y = torch.randn(8, 16), torch.randint(0, 4, (8,))
        opt.zero_grad()
        session.loss(F.cross_entropy(model(x), y)).backward()
        opt.step()
        session.step()
        if after_step is not None:
            after_step(session.global_step)
        if session.global_step % session.steps_per_epoch == 0:
            session.epoch_end()


@pytest.mark.parametrize("kind", ["mest", "rigl", "set"])
@pytest.mark.parametrize("scheme", ["unstructured", {"name": "block", "block": [3, 5]}])
def test_every_mutation_holds_each_layer_at_its_budget(kind, scheme):
    model = net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    r = recipe(
        type=kind, sparsity=0.8, scheme=scheme, update_every=0.5, mutation_rate=0.3,
        mutation_schedule="cosine",
    )
    session = Session(model, r, opt, steps_per_epoch=4)  # mutate every 2 steps until step 12
    budget = {n: int(m.sum()) for n, m in masks(model).items()}
    for n, m in masks(model).items():  # s of the weights, or of the (ragged) tiles
        units = m.reshape(-1) if scheme == "unstructured" else Units(m.shape, (3, 5)).units(m)
        assert int((~units).sum()) == round(0.8 * units.numel()), n
    changed_at = []

    def check(step):
        before = check.masks
        check.masks = masks(model)
        for (n, m), (_, old) in zip(masked_modules(model), before.items(), strict=True):
            mask = get_mask(m)
            assert int(mask.sum()) == budget[n], (step, n)
            assert torch.all(m.weight[~mask] == 0)
            if scheme != "unstructured":
                Units(mask.shape, (3, 5)).units(mask)  # raises unless whole tiles
            grown = mask & ~old
            original = m.parametrizations.weight.original
            assert torch.all(original[grown] == 0)  # new weights start at zero ...
            assert torch.all(opt.state[original]["momentum_buffer"][grown] == 0)  # ... and still
            if not torch.equal(mask, old):
                changed_at.append(step)

    check.masks = masks(model)
    run(model, session, opt, 16, check)
    assert changed_at and all(s % 2 == 0 and s < 12 for s in changed_at)  # cosine: 0 at stop
    assert session.modifiers[0].rate == 0.3 * ElasticDecay("cosine", 0, 12)(10)


def test_elastic_mutation_decays_to_zero_by_cosine_or_steps():
    cosine = ElasticDecay("cosine", 0, 100)
    assert [cosine(t) for t in (0, 50, 100, 150)] == pytest.approx([1.0, 0.5, 0.0, 0.0])
    assert cosine(25) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    official = ElasticDecay("step", 90, 120, levels=2)  # MEST's 90-120 decay window
    assert [official(t) for t in (0, 89, 90, 119, 120)] == [1.0, 1.0, 0.5, 0.5, 0.0]
    four = ElasticDecay("step", 0, 90, levels=4)
    assert [four(t) for t in (0, 29, 30, 60, 89, 90)] == [0.75, 0.75, 0.5, 0.25, 0.25, 0.0]
    assert ElasticDecay("constant", 50, 60)(59) == 1.0 and ElasticDecay("constant", 0, 60)(60) == 0


def test_step_schedule_defaults_to_the_official_decay_window():
    model = net()
    r = recipe(epochs=160, type="mest", sparsity=0.9, mutation_schedule="step", update_every=5)
    mod = Session(model, r, None, steps_per_epoch=1).modifiers[0]
    assert (mod.decay.start, mod.decay.stop) == (90, 120)
    assert [mod._due(t) for t in (5, 115, 120, 125)] == [True, True, False, False]


def test_soft_bound_exceeds_the_budget_then_prunes_back_to_it():
    model = net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    r = recipe(
        type="mest", sparsity=0.8, soft_bound=True, grow_extra=0.1, update_every=1,
        soft_window=0.5, mutation_schedule="constant",
    )
    session = Session(model, r, opt, steps_per_epoch=4)  # grow at 4 and 8, prune at 6 and 10
    budget = sum(int(m.sum()) for m in masks(model).values())
    history = {}
    run(model, session, opt, 16, lambda s: history.__setitem__(s, masks(model)))
    kept = {s: sum(int(m.sum()) for m in ms.values()) for s, ms in history.items()}
    assert [kept[s] > budget for s in range(1, 13)] == [
        False, False, False, True, True, False, False, True, True, False, False, False
    ]
    assert all(kept[s] == budget for s in (1, 6, 7, 10, 16))
    assert 1 - kept[4] / 640 == pytest.approx(0.8 - 0.1, abs=0.005)  # sparsity s - extra


def test_rigl_grows_where_the_dense_gradient_is_largest():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 6, bias=False))
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    r = recipe(type="rigl", sparsity=0.5, update_every=1, mutation_schedule="constant")
    session = Session(model, r, opt, steps_per_epoch=1)  # mutates at step 1
    layer, old = model[0], get_mask(model[0]).clone()
    x, y = torch.randn(16, 12), torch.randint(0, 6, (16,))
    dense = layer.weight.detach().clone().requires_grad_()
    F.cross_entropy(F.linear(x, dense), y).backward()
    g = dense.grad.abs()
    F.cross_entropy(model(x), y).backward()
    assert torch.all(layer.parametrizations.weight.original.grad[~old] == 0)  # masked grad
    opt.step()
    session.step()
    new = get_mask(layer)
    grown = new & ~old
    assert int(new.sum()) == int(old.sum()) and 0 < int(grown.sum()) <= round(0.3 * 36)
    assert g[grown].min() >= g[~new].max()


def test_erk_gives_small_layers_more_density_at_the_same_total():
    model = net()
    Session(model, recipe(type="set", sparsity=0.8, distribution="erk"), None, 4)
    per_layer = {n: 1 - m.float().mean().item() for n, m in masks(model).items()}
    assert per_layer["3"] < per_layer["1"]  # 32x4 layer denser than 16x32
    assert global_sparsity(model) == pytest.approx(0.8, abs=0.01)


def test_mest_forgetting_reaches_the_session_hooks():
    model = net()
    r = recipe(type="mest", sparsity=0.5, forgetting={"drop_after_epoch": 1})
    session = Session(model, r, None, 2)
    assert session.example_filter(4) is None
    session.observe_batch(torch.arange(4), torch.tensor([True, False, True, True]))
    session.epoch_end()
    assert session.example_filter(4).tolist() == [False, True, False, False]
    assert session.metrics()["examples_dropped"] == 3


def test_state_dict_round_trips_through_a_weights_only_checkpoint():
    model = net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    r = recipe(
        type="mest", sparsity=0.8, soft_bound=True, update_every=0.5, soft_window=0.25,
        forgetting={"drop_after_epoch": 1},
    )
    session = Session(model, r, opt, steps_per_epoch=4)
    session.observe_batch(torch.arange(6), torch.tensor([True, False, True, True, False, True]))
    run(model, session, opt, 6)
    buffer = io.BytesIO()
    torch.save(session.state_dict(), buffer)
    buffer.seek(0)
    fresh = Session(net(), r, None, steps_per_epoch=4)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    a, b = session.modifiers[0], fresh.modifiers[0]
    assert a.prune_at == b.prune_at == 7
    assert all(torch.equal(a.budget[n], b.budget[n]) for n in a.budget)
    assert torch.equal(a.forgetting.last, b.forgetting.last) and b.forgetting.last[1] == 0


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"scheme": {"name": "bcr"}, "soft_bound": True}, "soft_bound: false with scheme bcr"),
        ({"scheme": "2:4", "sparsity": 0.5}, "not `nm`"),
        ({"criterion": "taylor"}, "drop `criterion`"),
        ({"allocation": "global"}, "distribution"),
        ({"sparsity": 1.0}, "below 1"),
    ],
)
def test_unsupported_settings_are_rejected_with_advice(fields, message):
    with pytest.raises(RecipeError, match=message):
        Session(net(), recipe(type="mest", **{"sparsity": 0.9, **fields}), None, 4)


def test_a_soft_window_longer_than_the_update_interval_is_rejected():
    r = recipe(type="mest", sparsity=0.9, soft_bound=True, update_every=1, soft_window=2)
    with pytest.raises(ValueError, match="soft_window"):
        Session(net(), r, None, 4)


def test_sparse_memory_counts_kept_values_indices_and_momentum():
    model = nn.Sequential(nn.Linear(100, 10))
    keep = torch.zeros(10, 100, dtype=torch.bool)
    keep[:, :10] = True  # 100 of 1000 kept
    apply_mask(model[0], keep)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 100)).sum().backward()
    opt.step()
    # weight: 100 values + bitmap of 1000 bits (125 B < 400 B of int32 indices) + 100 momenta;
    # bias: 10 values + 10 momenta, dense
    assert sparse_memory_bytes(model, opt) == 400 + 125 + 400 + 40 + 40
    assert sparse_memory_bytes(model, opt, compact=False) == 4000 + 4000 + 40 + 40
    assert sparse_memory_bytes(model) == 400 + 125 + 40


def test_mest_with_forgetting_trains_end_to_end(make_recipe, tmp_path):
    mest = {
        "type": "mest", "sparsity": 0.9, "update_every": 0.4, "soft_bound": True,
        "forgetting": {"drop_after_epoch": 1},
    }
    run_dir = train(make_recipe(modifiers=[mest]), tmp_path / "mest", progress=False)
    lines = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    dropped = [m["examples_dropped"] for m in lines]
    assert dropped[0] == 0 and dropped[1] == dropped[2]  # decided once, after epoch 1
    per_epoch = math.ceil((160 - dropped[1]) / 32)
    assert [m["step"] for m in lines] == [5, 5 + per_epoch, 5 + 2 * per_epoch]
    assert lines[-1]["steps_saved_fraction"] == pytest.approx(1 - lines[-1]["step"] / 15)
    assert all(m["memory_compact_bytes"] < m["memory_dense_bytes"] for m in lines)
    state = load_weights_only(run_dir / "checkpoints" / "last.pt")
    mod = state["session"]["modifiers"][0]
    assert mod["forgetting"]["forgets"].dtype == torch.int32 and mod["prune_at"] == -1
    for name, budget in mod["budget"].items():  # the run ends exactly at the memory budget
        mask = state["model"][f"{name}.parametrizations.weight.0.mask"]
        assert int(mask.sum()) == int(budget.sum())
    assert lines[-1]["sparsity"] >= 0.9 - 0.005


@pytest.mark.parametrize(
    "modifier",
    [
        # grows at step 4, prunes back at 6: the checkpoint after epoch 1 (step 5) is mid-window
        {"type": "mest", "sparsity": 0.8, "update_every": 0.4, "soft_bound": True,
         "forgetting": {"drop_after_epoch": 1}},
        {"type": "rigl", "sparsity": 0.8, "update_every": 0.4, "distribution": "erk"},
    ],
    ids=["mest", "rigl"],
)
def test_resume_after_a_kill_equals_the_uninterrupted_run(
    make_recipe, tmp_path, train_killed_after_epoch, modifier
):
    recipe = make_recipe(modifiers=[modifier])
    straight = train(recipe, tmp_path / "straight", progress=False)
    train_killed_after_epoch(recipe, tmp_path / "resumed")
    resumed = train(recipe, tmp_path / "resumed", resume=True, progress=False)
    a = load_weights_only(straight / "checkpoints" / "last.pt")
    b = load_weights_only(resumed / "checkpoints" / "last.pt")
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    ma, mb = a["session"]["modifiers"][0], b["session"]["modifiers"][0]
    assert ma["prune_at"] == mb["prune_at"] == -1
    assert all(torch.equal(ma["budget"][n], mb["budget"][n]) for n in ma["budget"])
    if "forgetting" in ma:
        assert torch.equal(ma["forgetting"]["dropped"], mb["forgetting"]["dropped"])


@pytest.mark.parametrize("kind", ["mest", "rigl", "set"])
def test_bcr_mutations_keep_the_nonzero_count_and_the_bcr_shape(kind):
    from sparseforge.formats import BCR

    model = net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    r = recipe(type=kind, sparsity=0.8, scheme={"name": "bcr", "block": [4, 4]}, update_every=0.5,
               mutation_rate=0.3, mutation_schedule="constant", stop_epoch=3)
    session = Session(model, r, opt, steps_per_epoch=4)
    budget = {n: int(m.sum()) for n, m in masks(model).items()}
    assert sum(budget.values()) / 640 == pytest.approx(0.2, abs=0.05)  # near the target
    changed = []

    def check(step):
        for n, m in masked_modules(model):
            mask = get_mask(m)
            assert int(mask.sum()) == budget[n], (step, n)  # exact after every mutation
            assert torch.all(m.weight[~mask] == 0)
            BCR.from_dense(m.weight.detach() * mask, (4, 4), mask=mask)  # raises unless BCR
        now = masks(model)
        changed.append(any(not torch.equal(a, b) for a, b in zip(now.values(), check.last.values(),
                                                                  strict=True)))
        check.last = now

    check.last = masks(model)
    run(model, session, opt, 12, check)
    assert changed[1] and changed[3] and not changed[0]  # mutates every 2 steps

    buffer = io.BytesIO()  # the segments survive a weights-only checkpoint
    torch.save(session.state_dict(), buffer)
    buffer.seek(0)
    fresh = Session(net(), r, None, steps_per_epoch=4)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    for n, seg in session.modifiers[0].segments.items():
        assert torch.equal(seg.mask(), fresh.modifiers[0].segments[n].mask())
