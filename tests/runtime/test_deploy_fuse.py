"""deploy(..., fuse=True): the deployed model is exported, planned and lowered; its output equals
the unfused deployment; it is lowered with and without inductor's freezing and keeps the faster;
the plan and that choice are saved with it and the fusion is made again on load; a model export
cannot trace falls back to the unfused deployment with a warning that says why."""

import importlib
import json

import pytest
import torch
from torch import nn

import sparseforge
from sparseforge.graph.lower import Fusion
from sparseforge.profile import Timing
from sparseforge.runtime import DeployedModel, deploy

deploy_module = importlib.import_module("sparseforge.runtime.deploy")
FAST = {"repeats": 2, "rounds": 1}


def residual_mlp() -> nn.Module:
    torch.manual_seed(0)

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(64, 128), nn.Linear(128, 64)

        def forward(self, x):
            return x + self.fc2(torch.relu(self.fc1(x)))

    model = nn.Sequential(Block(), Block())
    sparseforge.prune(model, {"name": "block", "block": [16, 16]}, 0.75)
    return model


def bsr_wins(modules, x, device, repeats, rounds):
    return {n: Timing.from_samples([1e-4 if n == "bsr16" else 1e-3]) for n in modules}


def test_fused_deploy_equals_unfused_and_is_saved_and_reloaded(monkeypatch, tmp_path):
    monkeypatch.setattr(deploy_module, "time_side_by_side", bsr_wins)
    model, x = residual_mlp(), torch.randn(1, 64)
    plain = deploy(model, x, **FAST)
    fused = deploy(model, x, **FAST, fuse=True)
    assert plain.fusion is None and isinstance(fused.fusion, Fusion)
    assert [lo.epilogue for lo in fused.fusion.report.lowered] == [["relu"], ["add"]] * 2
    with torch.no_grad():
        torch.testing.assert_close(fused(x), plain(x))
        z = torch.randn(1, 64)
        torch.testing.assert_close(fused(z), plain(z))
        assert fused(torch.randn(3, 64)).shape == (3, 64)  # another shape: the unfused module
    compiled = fused.fusion.report.compile
    assert set(compiled["measured_ms"]) == {"freezing", "no freezing"}
    assert compiled["freezing"] == (min(compiled["measured_ms"], key=compiled["measured_ms"].get)
                                    == "freezing")
    fused.save(tmp_path)
    settings = json.loads((tmp_path / "deploy.json").read_text())["settings"]
    assert settings["fuse"] is True and settings["freezing"] == compiled["freezing"]
    assert len(json.loads((tmp_path / "fusion_plan.json").read_text())["blocks"]) >= 4
    loaded = DeployedModel.load(tmp_path, model)
    assert loaded.fusion is not None  # lowered once, the saved way, without measuring again
    assert loaded.fusion.report.compile["freezing"] == compiled["freezing"]
    assert "measured_ms" not in loaded.fusion.report.compile
    with torch.no_grad():
        torch.testing.assert_close(loaded(z), plain(z))


@pytest.mark.parametrize("faster", ["freezing", "no freezing"])
def test_fused_deploy_keeps_the_freezing_measured_faster(monkeypatch, faster):
    monkeypatch.setattr(deploy_module, "time_side_by_side", bsr_wins)
    monkeypatch.setattr(deploy_module, "interleaved", lambda fns, rounds, repeats: {
        label: Timing.from_samples([1e-4 if label == faster else 1e-3]) for label in fns})
    fused = deploy(residual_mlp(), torch.randn(1, 64), **FAST, fuse=True)
    assert fused.fusion.report.compile["freezing"] == (faster == "freezing")
    assert fused.settings["freezing"] == (faster == "freezing")


class DataDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        return self.fc(x) if x.sum() > 0 else -self.fc(x)  # export cannot trace this branch


def test_a_model_export_cannot_trace_falls_back_with_a_warning():
    with pytest.warns(RuntimeWarning, match="cannot capture DataDependent.*runs unfused"):
        deployed = deploy(DataDependent(), torch.ones(1, 8), **FAST, fuse=True)
    assert deployed.fusion is None
    with torch.no_grad():
        assert deployed(torch.ones(1, 8)).shape == (1, 8)
