import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparseforge import Session
from sparseforge.evaluate import load_run
from sparseforge.quant import TensorQuant, weight_qparams
from sparseforge.quant.layers import weight_fake_quant
from sparseforge.sparsity import get_mask, masked_modules
from sparseforge.trainer import train


def codes_are_integers(w: torch.Tensor, spec: TensorQuant | None = None) -> bool:
    spec = spec or TensorQuant()
    scale, _ = weight_qparams(w, spec)
    codes = w / scale.reshape((-1,) + (1,) * (w.dim() - 1))
    return torch.allclose(codes, codes.round(), atol=1e-3)


def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))


def steps(model, session, opt, n):
    torch.manual_seed(1)
    for _ in range(n):
        x, y = torch.randn(8, 16), torch.randint(0, 4, (8,))
        opt.zero_grad()
        session.loss(F.cross_entropy(model(x), y)).backward()
        opt.step()
        session.step()


def test_fake_quant_starts_at_start_epoch_and_gradients_pass_straight_through():
    model = net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    recipe = {"train": {"epochs": 2}, "modifiers": [{"type": "qat", "start_epoch": 1}]}
    session = Session(model, recipe, opt, steps_per_epoch=4)
    fc = model[1]
    assert not weight_fake_quant(fc).enabled
    stored = fc.parametrizations.weight.original
    assert torch.equal(fc.weight, stored)  # off before start_epoch
    steps(model, session, opt, 4)
    assert weight_fake_quant(fc).enabled
    assert not torch.equal(fc.weight, stored) and codes_are_integers(fc.weight.detach())
    opt.zero_grad()
    F.cross_entropy(model(torch.randn(8, 16)), torch.randint(0, 4, (8,))).backward()
    assert stored.grad is not None and stored.grad.abs().sum() > 0
    steps(model, session, opt, 4)
    session.epoch_end()
    session.epoch_end()  # the end of training: weights written onto their grid
    assert weight_fake_quant(fc) is None
    assert codes_are_integers(fc.weight.detach())
    assert session.metrics()["quantized"] == 1.0


def test_recipe_errors_name_the_field():
    from sparseforge.recipe import RecipeError, load_recipe

    with pytest.raises(RecipeError, match="start_epoch"):
        load_recipe({"train": {"epochs": 1}, "modifiers": [{"type": "qat", "start_epoch": 3}]})
    with pytest.raises(RecipeError, match="bitz"):
        load_recipe({"modifiers": [{"type": "qat", "weights": {"bitz": 8}}]})


def test_gmp_then_qat_in_one_recipe(make_recipe, tmp_path):
    recipe = make_recipe(
        train={"epochs": 3},
        modifiers=[
            {"type": "gmp", "sparsity": 0.9, "end_epoch": 2, "update_every": 0.5},
            {"type": "qat", "start_epoch": 2},
        ],
    )
    run_dir = train(recipe, tmp_path / "run", progress=False)
    _, _, model = load_run(run_dir)  # the saved model loads into a fresh one
    layers = dict(masked_modules(model))
    assert set(layers) == {"features.conv1", "features.conv2", "features.conv3",
                           "features.conv4", "classifier.fc1", "classifier.fc2"}
    kept = sum(int(get_mask(m).sum()) for m in layers.values())
    total = sum(get_mask(m).numel() for m in layers.values())
    assert kept / total == pytest.approx(0.1, abs=0.01)
    for m in layers.values():
        w = m.weight.detach()
        assert (w[~get_mask(m)] == 0).all()  # zeros stayed zero
        assert codes_are_integers(w)  # on the int8 grid
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["compressed"]["test_accuracy"] > 0.5


def test_activation_observers_resume(make_recipe, tmp_path, train_killed_after_epoch):
    recipe = make_recipe(train={"epochs": 2}, modifiers=[{"type": "qat"}])
    train_killed_after_epoch(recipe, tmp_path / "run", epoch=1)
    resumed = train(recipe, tmp_path / "run", resume=True, progress=False)
    straight = train(recipe, tmp_path / "straight", progress=False)
    a = torch.load(resumed / "model" / "masked.pt", weights_only=True)
    b = torch.load(straight / "model" / "masked.pt", weights_only=True)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
