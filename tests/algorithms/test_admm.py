import io
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparseforge import Session
from sparseforge.algorithms.admm import Admm, AdmmConfig, Projection
from sparseforge.evaluate import load_run
from sparseforge.recipe import RecipeError
from sparseforge.sparsity import get_mask, global_sparsity, load_masked_state_dict, masked_modules
from sparseforge.sparsity.patterns import DEFAULT_LIBRARY, kernel_patterns
from sparseforge.sparsity.schemes import as_matrix
from sparseforge.sparsity.unify import PRUNE, UNIFY, get_unified, shared_values
from sparseforge.trainer import train


def mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))


def convnet(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.Flatten())


def admm_recipe(epochs=4, **modifier):
    return {"train": {"epochs": epochs}, "modifiers": [{"type": "admm", **modifier}]}


def run(model, session, opt, epochs, steps, shape=(8, 16), seed=1):
    torch.manual_seed(seed)
    for _ in range(epochs):
        for _ in range(steps):
            x, y = torch.randn(*shape), torch.randint(0, 4, (shape[0],))
            out = model(x)
            loss = session.loss(F.cross_entropy(out.reshape(len(x), -1)[:, :4], y))
            loss.backward()
            opt.step()
            session.step()
            opt.zero_grad()
        session.epoch_end()


def admm_of(session) -> Admm:
    return session.modifiers[0]


@pytest.mark.parametrize(
    "scheme, check",
    [
        ({"name": "nm", "n": 2, "m": 4}, "nm"),
        ({"name": "block", "block": [2, 3]}, "block"),
        ({"name": "pattern", "connectivity": 0.25}, "pattern"),
        ("channel", "channel"),
        ({"name": "bcr", "block": [2, 2]}, "bcr"),
    ],
)
def test_projection_returns_the_schemes_structure_and_keeps_values(scheme, check):
    cfg = AdmmConfig(scheme=scheme, sparsity=None if check in ("nm", "pattern") else 0.5, prune_epoch=1)
    v = torch.randn(8, 4, 3, 3, generator=torch.Generator().manual_seed(0))
    proj = Projection(cfg, {"conv": nn.Conv2d(4, 8, 3)})
    mask = proj.masks({"conv": v})["conv"]
    z = proj({"conv": v})["conv"]
    assert mask.shape == v.shape and torch.equal(z, v * mask)
    if check == "nm":  # exactly n of every m along input channels
        assert torch.all(mask.permute(0, 2, 3, 1).reshape(-1, 4).sum(1) == 2)
    elif check == "block":
        mat = as_matrix(mask)
        for i in range(0, mat.shape[0], 2):
            for j in range(0, mat.shape[1], 3):
                tile = mat[i : i + 2, j : j + 3]
                assert tile.all() or not tile.any()
    elif check == "pattern":
        ids = kernel_patterns(mask, DEFAULT_LIBRARY)
        assert torch.all(ids >= -1) and (ids == -1).sum().item() == 8  # a quarter of 32 kernels
    elif check == "channel":
        rows = as_matrix(mask)
        assert torch.all(rows.all(1) | ~rows.any(1)) and (~rows.any(1)).sum().item() == 4
    else:
        assert 1 - mask.float().mean().item() >= 0.5
    # magnitude keeps the largest: every kept structure outranks a dropped one within the layer
    assert v[mask].abs().mean() > v[~mask].abs().mean()


def test_z_and_u_updates_follow_the_formulas_on_a_hand_made_tensor():
    model = nn.Sequential(nn.Linear(4, 1, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[4.0, -1.0, 0.5, -3.0]]))
    session = Session(model, admm_recipe(sparsity=0.5, prune_epoch=2), None, steps_per_epoch=2)
    admm = admm_of(session)
    assert torch.equal(admm.z["0"], torch.tensor([[4.0, 0.0, 0.0, -3.0]]))  # Z0 = Proj(W)
    assert torch.equal(admm.u["0"], torch.zeros(1, 4))
    admm.u["0"] = torch.tensor([[-3.5, 2.0, 0.0, 0.0]])
    admm.update()
    # W + U = [0.5, 1, 0.5, -3]: keep the two largest magnitudes
    assert torch.equal(admm.z["0"], torch.tensor([[0.0, 1.0, 0.0, -3.0]]))
    assert torch.equal(admm.u["0"], torch.tensor([[0.5, 0.0, 0.5, 0.0]]))  # U + W - Z
    assert admm.primal == pytest.approx(math.sqrt(16 + 4 + 0.25))  # ||W - Z||
    assert admm.dual == pytest.approx(1e-3 * math.sqrt(16 + 1))  # rho ||Z - Z_old||
    penalty = session.loss(torch.tensor(0.0))
    assert penalty.item() == pytest.approx(0.5e-3 * (4.5**2 + 2**2 + 1**2))


def test_rho_schedule_and_dual_rescaling():
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    r = admm_recipe(sparsity=0.5, prune_epoch=4, rho=0.01, rho_growth=2.0, rho_every=1, rho_max=0.05)
    session = Session(model, r, opt, steps_per_epoch=5)
    admm = admm_of(session)
    assert [admm.rho_at(s) for s in (0, 4, 5, 9, 10, 15, 20, 100)] == pytest.approx(
        [0.01, 0.01, 0.02, 0.02, 0.04, 0.05, 0.05, 0.05]
    )
    run(model, session, opt, epochs=1, steps=4)
    u_before = {n: u.clone() for n, u in admm.u.items()}
    x, y = torch.randn(8, 16), torch.randint(0, 4, (8,))
    session.loss(F.cross_entropy(model(x), y)).backward()
    opt.step()
    session.step()  # step 5: Z/U update (admm_every = 1 epoch), then rho doubles
    assert admm.rho == pytest.approx(0.02) and session.metrics()["rho"] == pytest.approx(0.02)
    w = {n: m.weight.detach() for n, m in admm.layers.items()}
    for n in w:  # U = (U_old + W - Z) * rho_old / rho_new
        assert torch.allclose(admm.u[n], (u_before[n] + w[n] - admm.z[n]) / 2, atol=1e-6)


def test_hard_prune_hits_the_target_exactly_and_the_penalty_stops():
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    r = admm_recipe(sparsity=0.75, prune_epoch=2, admm_every=0.5, rho=0.05, rho_growth=2)
    session = Session(model, r, opt, steps_per_epoch=4)
    run(model, session, opt, epochs=1, steps=4)
    assert session.loss(torch.tensor(0.0)).item() > 0
    metrics = session.metrics()
    assert metrics["phase"] == "admm" and metrics["admm_primal_residual"] > 0
    assert metrics["admm_z_sparsity"] == pytest.approx(0.75, abs=1e-3) and metrics["sparsity"] < 0.1
    run(model, session, opt, epochs=1, steps=4)  # step 8 = prune_epoch 2: hard prune
    masks = {n: get_mask(m).clone() for n, m in masked_modules(model)}
    for _, m in masked_modules(model):
        assert (m.weight == 0).sum().item() == round(0.75 * m.weight.numel())
    assert session.loss(torch.tensor(1.5)).item() == 1.5  # no penalty after the hard prune
    run(model, session, opt, epochs=2, steps=4)  # masked retraining
    for n, m in masked_modules(model):
        assert torch.equal(get_mask(m), masks[n]) and torch.all(m.weight[~masks[n]] == 0)
    assert session.metrics()["phase"] == "retrain"
    assert global_sparsity(model) == pytest.approx(0.75, abs=1e-3)


def roundtrip(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


@pytest.mark.parametrize("epochs_before", [1, 3])
def test_state_dict_round_trip_resumes_exactly(epochs_before):
    r = admm_recipe(
        epochs=5, scheme={"name": "pattern", "library": "derive", "library_size": 3},
        sparsity=0.7, prune_epoch=2, admm_every=0.5, rho=0.05, rho_growth=2,
    )

    def fresh():
        model = convnet()
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        return model, opt, Session(model, r, opt, steps_per_epoch=3)

    model, opt, session = fresh()
    run(model, session, opt, epochs_before, 3, shape=(4, 2, 5, 5))
    saved = roundtrip({"model": model.state_dict(), "opt": opt.state_dict(), "session": session.state_dict()})
    model2, opt2, session2 = fresh()
    load_masked_state_dict(model2, saved["model"])
    opt2.load_state_dict(saved["opt"])
    session2.load_state_dict(saved["session"])
    a, b = admm_of(session), admm_of(session2)
    assert a.rho == b.rho and a.pruned == b.pruned == (epochs_before >= 2)
    assert b.projection.params["library"] == a.projection.params["library"]
    assert all(torch.equal(a.z[n], b.z[n]) and torch.equal(a.u[n], b.u[n]) for n in a.z)
    run(model, session, opt, 1, 3, shape=(4, 2, 5, 5), seed=7)
    run(model2, session2, opt2, 1, 3, shape=(4, 2, 5, 5), seed=7)
    for (n, m), (_, m2) in zip(masked_modules(model), masked_modules(model2), strict=True):
        assert torch.equal(m.weight, m2.weight), n
        ids = kernel_patterns(get_mask(m), a.projection.params["library"])
        assert torch.all(ids >= -1)


def test_unify_admm_in_a_user_loop_unifies_prunes_and_resumes():
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    r = admm_recipe(unify={"block": [1, 4], "prune": 0.5, "unify": 0.25}, prune_epoch=1, rho=0.05)
    session = Session(model, r, opt, steps_per_epoch=4)
    run(model, session, opt, epochs=1, steps=4)
    layer = model[1]
    kinds, mags = shared_values(layer)
    assert (kinds == PRUNE).float().mean().item() == 0.5 and (kinds == UNIFY).float().mean().item() == 0.25
    assert global_sparsity(model) == pytest.approx(0.5)
    before = mags.clone()
    run(model, session, opt, epochs=1, steps=4)
    _, after = shared_values(layer)
    assert not torch.allclose(after[kinds == UNIFY], before[kinds == UNIFY])  # learned
    w = as_matrix(layer.weight.detach()).reshape(32, 4, 4)  # (rows, blocks, 4)
    assert torch.all(w[kinds == PRUNE] == 0)
    unified = w[kinds == UNIFY].abs()
    assert torch.all(unified == unified[:, :1])  # one magnitude per unified block
    saved = roundtrip({"model": model.state_dict(), "session": session.state_dict()})
    model2 = mlp(seed=5)
    session2 = Session(model2, r, torch.optim.SGD(model2.parameters(), lr=0.05), steps_per_epoch=4)
    load_masked_state_dict(model2, saved["model"])
    session2.load_state_dict(saved["session"])
    assert get_unified(model2[1]) is not None and torch.equal(model2[1].weight, layer.weight)


def test_admm_config_errors_name_the_problem():
    with pytest.raises(ValueError, match="prune_epoch = 5.0 lies beyond train.epochs = 4"):
        Session(mlp(), admm_recipe(sparsity=0.5, prune_epoch=5), None, 2)
    with pytest.raises(ValueError, match=r"module '1': the pattern scheme needs 3x3.*exclude"):
        Session(mlp(), admm_recipe(scheme="pattern", sparsity=0.6, prune_epoch=1), None, 2)
    with pytest.raises(RecipeError, match="unify replaces the scheme"):
        Session(mlp(), admm_recipe(scheme="channel", unify={"prune": 0.5, "unify": 0.2}, prune_epoch=1), None, 2)
    with pytest.raises(RecipeError, match="contradicts the 2:4 scheme"):
        Session(mlp(), admm_recipe(scheme="2:4", sparsity=0.6, prune_epoch=1), None, 2)
    with pytest.raises(RecipeError, match="patterns alone prune 5/9"):
        Session(convnet(), admm_recipe(scheme="pattern", sparsity=0.3, prune_epoch=1), None, 2)
    with pytest.raises(RecipeError, match="criterion must be magnitude"):
        Session(mlp(), admm_recipe(sparsity=0.5, criterion="taylor", prune_epoch=1), None, 2)


def test_trainer_end_to_end_with_kernel_patterns(make_recipe, tmp_path):
    modifier = {
        "type": "admm", "scheme": {"name": "pattern", "connectivity": 0.5}, "layers": "features.*",
        "prune_epoch": 1, "admm_every": 0.5, "rho": 0.01, "rho_growth": 2.0, "rho_every": 0.5,
    }
    run_dir = train(make_recipe(train={"epochs": 2}, modifiers=[modifier]), tmp_path / "run", progress=False)
    lines = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["phase"] for m in lines] == ["admm", "retrain"]
    assert lines[0]["rho"] > 0.01 and lines[0]["admm_primal_residual"] > 0
    expected = 1 - (4 / 9) * 0.5  # patterns keep 4/9, connectivity drops half the kernels
    assert lines[1]["sparsity"] == pytest.approx(expected, abs=1e-6)
    _, _, model = load_run(run_dir)
    convs = dict(masked_modules(model))
    assert sorted(convs) == ["features.conv1", "features.conv2", "features.conv3", "features.conv4"]
    for name, conv in convs.items():
        ids = kernel_patterns(conv.weight.detach() != 0, DEFAULT_LIBRARY)
        assert torch.all(ids >= -1), name
        assert (ids == -1).sum().item() == round(0.5 * ids.numel()), name
