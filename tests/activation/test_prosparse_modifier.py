import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparseforge import Session
from sparseforge.activation import FATReLU, measure_activation_sparsity, substitute_activations
from sparseforge.evaluate import load_run
from sparseforge.recipe import RecipeError
from sparseforge.trainer import build_loop
from sparseforge.trainer import train as train_run

SCHEDULE = {"lambdas": [2.0, 8.0], "starts": [0, 1], "warmups": [1, 1]}  # epochs


def mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(16, 64), nn.GELU(), nn.Linear(64, 4))


def density(model, x):
    acts = {n: m for n, m in model.named_modules() if isinstance(m, FATReLU)}
    return 1 - measure_activation_sparsity(acts, [x], model).overall


def train(model, session, steps=60):
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    torch.manual_seed(1)
    for step in range(steps):
        x, y = torch.randn(32, 16), torch.randint(0, 4, (32,))
        task = F.cross_entropy(model(x), y)
        loss = session.loss(task) if session else task
        loss.backward()
        opt.step()
        if session:
            session.step()
        opt.zero_grad()
        if session and (step + 1) % 20 == 0:
            session.epoch_end()


def test_prosparse_lowers_activation_density_vs_no_regularizer():
    x = torch.randn(256, 16, generator=torch.Generator().manual_seed(2))
    plain = mlp()
    substitute_activations(plain, ["1"])
    train(plain, None)

    model = mlp()
    recipe = {"modifiers": [{"type": "prosparse", "patterns": ["1"], "schedule": SCHEDULE}]}
    session = Session(model, recipe, steps_per_epoch=20)
    assert isinstance(model[1], FATReLU)  # substituted on start
    assert session.modifiers[0].sites == ["1"]
    train(model, session)
    metrics = session.metrics()
    assert metrics["prosparse_lambda"] == pytest.approx(8.0)
    assert density(model, x) < 0.75 * density(plain, x)  # measured: 0.32 vs 0.51


def test_prosparse_recipe_fails_loudly():
    bad = {"modifiers": [{"type": "prosparse", "schedule": SCHEDULE, "lambda": 1.0}]}
    with pytest.raises(RecipeError, match="lambda"):
        Session(mlp(), bad)
    no_site = {"modifiers": [{"type": "prosparse", "schedule": SCHEDULE}]}
    with pytest.raises(ValueError, match="no FFN activation site"):
        Session(mlp(), no_site)


def test_a_prosparse_run_reloads_and_resumes_with_its_fatrelus(make_recipe, tmp_path):
    recipe = make_recipe(
        train={"epochs": 1},
        modifiers=[{"type": "prosparse", "patterns": ["classifier"], "schedule": SCHEDULE}],
    )
    run = train_run(recipe, tmp_path / "run", progress=False)
    measured = json.loads((run / "summary.json").read_text())["activation_sparsity"]
    assert [la["name"] for la in measured["layers"]] == ["classifier.relu"]
    assert 0 < measured["overall"] < 1 and measured["layers"][0]["total"] > 0
    assert "## Activation sparsity" in (run / "report.md").read_text()
    assert (run / "plots" / "activation_sparsity.png").is_file()
    _, _, model = load_run(run)
    assert [n for n, m in model.named_modules() if isinstance(m, FATReLU)] == ["classifier.relu"]
    # a resumed run builds its loop without on_start: the FATReLUs must be there already
    loop, _, _ = build_loop(load_run(run)[0], tmp_path / "resumed", resume=True)
    assert any(isinstance(m, FATReLU) for m in loop.model.modules())
