"""Lottery tickets: the rewind snapshot, IMP sparsity per round, exact rewinding, the sanity-check
controls, the verdict logic, ticket.json."""

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparseforge import Session
from sparseforge.algorithms.lottery import find_ticket, imp_sparsity, ticket_masks, ticket_verdict
from sparseforge.checkpoint import load_weights_only
from sparseforge.evaluate import build_model, load_splits
from sparseforge.recipe import load_recipe


@pytest.mark.parametrize(
    ("accs", "failed"),
    [
        ((0.90, 0.899, 0.85, 0.86), ()),
        ((0.90, 0.895, 0.85, 0.86), ()),  # exactly 0.5 point below dense still matches
        ((0.90, 0.89, 0.80, 0.80), ("matches_dense",)),
        ((0.90, 0.90, 0.899, 0.80), ("beats_reinit",)),
        ((0.90, 0.90, 0.80, 0.899), ("beats_random_mask",)),
        ((0.90, 0.85, 0.86, 0.87), ("matches_dense", "beats_reinit", "beats_random_mask")),
    ],
)
def test_verdict_names_each_failed_condition(accs, failed):
    verdict = ticket_verdict(*accs)
    assert verdict.failed == failed
    assert verdict.winning == (not failed)
    assert verdict.text.startswith("winning ticket" if not failed else "not a winning ticket")
    if "matches_dense" in failed:
        assert "below dense" in verdict.text
    if "beats_reinit" in failed:
        assert "re-initialised" in verdict.text


def test_verdict_thresholds_are_configurable():
    assert ticket_verdict(0.90, 0.89, 0.80, 0.80, tolerance_points=1.5).winning
    assert not ticket_verdict(0.90, 0.90, 0.89, 0.80, margin_points=2.0).winning


def test_weight_snapshot_copies_the_weights_at_step_k():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    mods = [{"type": "weight_snapshot", "at_epoch": e} for e in (0.0, 0.5)]
    session = Session(model, {"train": {"epochs": 1}, "modifiers": mods}, opt, steps_per_epoch=4)
    after_step_2 = None
    for step in range(4):
        x, y = torch.randn(4, 8), torch.randint(0, 2, (4,))
        F.cross_entropy(model(x), y).backward()
        opt.step()
        session.step()
        opt.zero_grad()
        if step == 1:
            after_step_2 = {k: v.clone() for k, v in model.state_dict().items()}
    at0, at2 = (m.state_dict() for m in session.modifiers)
    assert at0["at_step"] == 0 and at2["at_step"] == 2
    assert all(torch.equal(at0["weights"][k], initial[k]) for k in initial)
    assert all(torch.equal(at2["weights"][k], after_step_2[k]) for k in initial)
    assert not torch.equal(at2["weights"]["0.weight"], model.state_dict()["0.weight"])
    fresh = Session(nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2)),
                    {"train": {"epochs": 1}, "modifiers": mods}, None, steps_per_epoch=4)
    fresh.load_state_dict(session.state_dict())
    assert torch.equal(fresh.modifiers[1].weights["2.bias"], after_step_2["2.bias"])


def test_find_ticket_rounds_rewinding_controls_and_verdict(make_recipe, tmp_path):
    recipe = make_recipe(train={"epochs": 1})
    out = tmp_path / "ticket"
    # 5 steps per epoch: rewind point at step round(0.4 * 5) = 2
    result = find_ticket(recipe, out, rounds=2, prune_rate=0.2, rewind_epoch=0.4)

    # sparsity after r rounds = 1 - (1 - p)^r
    assert [r["round"] for r in result.rounds] == [0, 1, 2]
    for r in result.rounds:
        assert r["sparsity"] == pytest.approx(1 - 0.8 ** r["round"], abs=1e-3)
    assert result.final_sparsity == pytest.approx(0.36) == imp_sparsity(0.2, 2)
    m1, m2 = ticket_masks(out / "round_1"), ticket_masks(out / "round_2")
    assert set(m1) == {"features.conv1", "features.conv2", "features.conv3", "features.conv4",
                       "classifier.fc1", "classifier.fc2"}
    assert all(not bool((m2[n] & ~m1[n]).any()) for n in m1)  # pruned weights stay pruned

    # the survivors are rewound exactly to the snapshot at step 2
    checkpoint = load_weights_only(out / "round_0" / "checkpoints" / "last.pt")
    snapshot = checkpoint["session"]["modifiers"][0]
    rewind = snapshot["weights"]
    assert snapshot["at_step"] == 2
    splits = load_splits(load_recipe(recipe))
    torch.manual_seed(0)
    initial = build_model(load_recipe(recipe), splits).state_dict()
    assert not torch.equal(initial["features.conv1.weight"], rewind["features.conv1.weight"])
    for r, masks in ((1, m1), (2, m2)):
        start = build_model(load_recipe(out / f"round_{r}" / "recipe.yaml"), splits).state_dict()
        for key, value in rewind.items():
            name = key.removesuffix(".weight")
            if name in masks:
                original = start[f"{name}.parametrizations.weight.original"]
                assert torch.equal(original, value * masks[name])
                assert torch.equal(start[f"{name}.parametrizations.weight.0.mask"], masks[name])
            else:
                assert torch.equal(start[key], value), key

    # controls: same mask re-initialised; random mask at the same layer sparsity, rewound weights
    def start_of(run):
        return build_model(load_recipe(out / run / "recipe.yaml"), splits).state_dict()

    reinit, rand = start_of("control_reinit"), start_of("control_random_mask")
    for n, mask in m2.items():
        key = f"{n}.parametrizations.weight"
        assert torch.equal(reinit[f"{key}.0.mask"], mask)
        assert not torch.equal(reinit[f"{key}.original"], rewind[f"{n}.weight"] * mask)
        random_mask = rand[f"{key}.0.mask"]
        assert random_mask.sum() == mask.sum() and not torch.equal(random_mask, mask)
        assert torch.equal(rand[f"{key}.original"], rewind[f"{n}.weight"] * random_mask)
    for control in ("control_reinit", "control_random_mask"):
        assert (out / control / "summary.json").is_file()

    saved = json.loads((out / "ticket.json").read_text())
    acc = saved["accuracies"]
    assert set(acc) == {"dense", "ticket", "reinit", "random_mask"}
    assert acc["ticket"] == result.rounds[-1]["test_accuracy"]
    assert saved["verdict"]["winning"] == ticket_verdict(**acc).winning == result.verdict.winning
    assert saved["verdict"]["text"] == result.verdict.text
    s = saved["settings"]
    setting = (s["lr"], s["epochs"], s["model"], s["rewind_epoch"], s["rewind_step"])
    assert setting == (0.05, 1, "cnn", 0.4, 2)
    assert result.verdict.text in (out / "ticket.md").read_text()


def test_find_ticket_refuses_what_it_cannot_do(make_recipe, tmp_path):
    pruned = make_recipe(modifiers=[{"type": "oneshot", "sparsity": 0.5}])
    with pytest.raises(ValueError, match="dense training recipe"):
        find_ticket(pruned, tmp_path / "a", rounds=1)
    with pytest.raises(ValueError, match="prune_rate"):
        find_ticket(make_recipe(), tmp_path / "b", rounds=1, prune_rate=1.0)
    with pytest.raises(ValueError, match="rewind_epoch"):
        find_ticket(make_recipe(), tmp_path / "c", rounds=1, rewind_epoch=7)
    (tmp_path / "d" / "round_0").mkdir(parents=True)
    with pytest.raises(FileExistsError, match="another out_dir"):
        find_ticket(make_recipe(), tmp_path / "d", rounds=1)
