import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparseforge import Session
from sparseforge.sparsity import get_mask, global_sparsity, masked_modules


def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))


def run(model, session, opt, epochs, steps_per_epoch, record=None):
    torch.manual_seed(1)
    for _ in range(epochs):
        for _ in range(steps_per_epoch):
            x, y = torch.randn(8, 16), torch.randint(0, 4, (8,))
            loss = session.loss(F.cross_entropy(model(x), y))
            loss.backward()
            opt.step()
            session.step()
            opt.zero_grad()
            if record is not None:
                record.append(global_sparsity(model))
        session.epoch_end()


def recipe(**modifier):
    return {"train": {"epochs": 4}, "modifiers": [modifier]}


def test_gmp_in_a_user_loop_follows_the_cubic_schedule_to_the_target():
    model = net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    r = recipe(type="gmp", sparsity=0.8, start_epoch=1, end_epoch=3, update_every=0.5)
    session = Session(model, r, opt, steps_per_epoch=10)
    history = []
    run(model, session, opt, epochs=4, steps_per_epoch=10, record=history)
    assert history[8] == 0.0  # nothing before start_epoch (step 10)
    assert abs(history[-1] - 0.8) < 0.01
    distinct = sorted(set(round(h, 3) for h in history))
    assert len(distinct) >= 4  # several intermediate targets: gradual, not one-shot
    assert all(a <= b + 1e-9 for a, b in zip(history, history[1:], strict=False))
    assert session.global_step == 40 and session.epoch == 4


def test_oneshot_at_epoch_zero_prunes_on_construction_and_masks_hold():
    model = net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    session = Session(model, recipe(type="oneshot", sparsity=0.5, scheme="channel"), opt, 5)
    masks = {n: get_mask(m).clone() for n, m in masked_modules(model)}
    assert set(masks) == {"1", "3"}
    run(model, session, opt, epochs=2, steps_per_epoch=5)
    for n, m in masked_modules(model):
        assert torch.equal(get_mask(m), masks[n])
        assert torch.all(m.weight[~masks[n]] == 0)


def test_taylor_criterion_uses_gradients_seen_in_steps():
    model = net()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # weights frozen: only scores differ
    r = recipe(type="oneshot", sparsity=0.5, criterion="taylor", at_epoch=1)
    session = Session(model, r, opt, steps_per_epoch=3)
    run(model, session, opt, epochs=1, steps_per_epoch=3)
    taylor_mask = get_mask(model[1]).clone()
    magnitude = net()
    Session(magnitude, recipe(type="oneshot", sparsity=0.5), None, 3)
    assert abs(1 - taylor_mask.float().mean().item() - 0.5) < 0.01
    assert not torch.equal(taylor_mask, get_mask(magnitude[1]))


def test_state_dict_round_trip_and_mismatch():
    model = net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    r = recipe(type="gmp", sparsity=0.8, end_epoch=2)
    s = Session(model, r, opt, steps_per_epoch=4)
    run(model, s, opt, 1, 4)
    fresh = Session(net(), r, None, steps_per_epoch=4)
    fresh.load_state_dict(s.state_dict())
    assert fresh.global_step == 4 and fresh.metrics()["target_sparsity"] == s.metrics()["target_sparsity"]
    with pytest.raises(ValueError, match="resume with the recipe"):
        Session(net(), {"modifiers": []}, None, 4).load_state_dict(s.state_dict())


def test_session_validates_steps_per_epoch():
    with pytest.raises(ValueError, match="steps_per_epoch"):
        Session(net(), {}, None, 0)
