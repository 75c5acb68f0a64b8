"""deploy: per-layer kernel choice by measurement on a tiny block-sparse model. Timings are
never asserted; where a test needs a particular winner it fakes the measurement."""

import importlib
import json

import pytest
import torch
from torch import nn

import sparseforge
from sparseforge.kernels import SparseLinear
from sparseforge.profile import Timing
from sparseforge.runtime import CANDIDATES, DENSE, Candidate, DeployedModel, deploy, format_plan
from sparseforge.sparsity import get_mask

deploy_module = importlib.import_module("sparseforge.runtime.deploy")  # the module, not the function
FAST = {"repeats": 2, "rounds": 1}


def tiny_model(conv: bool = False) -> nn.Module:
    torch.manual_seed(0)
    head = [nn.Conv2d(1, 4, 3, padding=1), nn.Flatten()] if conv else []
    model = nn.Sequential(*head, nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 10))
    layers = ["2", "4"] if conv else None  # prune the Linears only
    sparseforge.prune(model, {"name": "block", "block": [16, 16]}, 0.9, layers=layers)
    return model


def example(conv: bool = False, batch: int = 1) -> torch.Tensor:
    return torch.randn(batch, 1, 8, 8) if conv else torch.randn(batch, 256)


def fake_timings(winner: str):
    """A stand-in for the side-by-side timing where `winner` is fastest."""
    def timings(modules, x, device, repeats, rounds):
        return {n: Timing.from_samples([1e-4 if n == winner else 1e-3]) for n in modules}
    return timings


def test_deployed_outputs_equal_the_masked_model_and_model_is_untouched():
    model = tiny_model()
    x = example()
    deployed = deploy(model, x, **FAST)
    with torch.no_grad():
        for batch in (x, example(batch=5)):
            assert torch.allclose(deployed(batch), model(batch), rtol=1e-4, atol=1e-5)
    assert get_mask(model[0]) is not None  # the original stays masked
    assert not deployed.module.training


def test_plan_lists_every_layer_with_timings_or_a_reason_for_each_candidate():
    model = tiny_model(conv=True)
    deployed = deploy(model, example(conv=True), **FAST)
    assert [r["name"] for r in deployed.plan] == ["0", "2", "4"]
    for r in deployed.plan:
        assert set(r["candidates"]) | set(r["skipped"]) == set(CANDIDATES.names())
        assert not set(r["candidates"]) & set(r["skipped"])
        assert all(t["median_ms"] > 0 and t["samples"] == 2 for t in r["candidates"].values())
        assert r["choice"] in r["candidates"] and r["note"]
    conv, fc1, _ = deployed.plan
    assert conv["type"] == "Conv2d" and conv["input_shape"] == [1, 1, 8, 8]
    # the conv is not pruned: every sparse candidate applies to Conv2d but has nothing to skip
    assert conv["choice"] == DENSE
    assert conv["note"] == "no applicable candidate (see skipped): dense kept"
    assert conv["skipped"]["bsr16"] == "no zero weight: nothing to skip"
    assert fc1["input_shape"] == [1, 256] and set(fc1["candidates"]) >= {"dense", "bsr16", "bsr8"}
    assert fc1["sparsity"] >= 0.85
    assert "Conv2d" in format_plan(deployed.plan)


def test_inapplicable_candidate_says_why():
    torch.manual_seed(0)
    dense_model = nn.Sequential(nn.Linear(32, 16))
    record = deploy(dense_model, torch.randn(1, 32), **FAST).plan[0]
    assert record["skipped"]["bsr16"] == "no zero weight: nothing to skip"
    assert record["choice"] == DENSE and "dense kept" in record["note"]
    scattered = nn.Sequential(nn.Linear(32, 16))
    sparseforge.prune(scattered, "unstructured", 0.5)
    record = deploy(scattered, torch.randn(1, 32), **FAST).plan[0]
    assert record["skipped"]["bsr16"] == "no all-zero 16x16 tile: nothing to skip"
    assert record["skipped"]["bcr16"] == "the mask is not BCR-shaped for 16x16 blocks"
    assert "csr" in record["candidates"]


def test_sparse_conv_candidates_are_timed_and_exact():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 4, 3, groups=4))
    sparseforge.prune(model, "unstructured", 0.9)
    x = torch.randn(2, 8, 10, 10)
    deployed = deploy(model, x, **FAST)
    first, grouped = deployed.plan
    assert {"dense", "csr"} <= set(first["candidates"])
    assert grouped["skipped"]["csr"] == "im2col path needs groups=1 and numeric zero padding"
    with torch.no_grad():
        assert torch.allclose(deployed(x), model(x), rtol=1e-4, atol=1e-5)


def test_fastest_candidate_replaces_the_layer(monkeypatch):
    monkeypatch.setattr(deploy_module, "time_side_by_side", fake_timings("bsr16"))
    model, x = tiny_model(), example()
    deployed = deploy(model, x, **FAST)
    assert deployed.choices() == {"0": "bsr16", "2": "bsr16"}
    assert isinstance(deployed.module[0], SparseLinear) and deployed.plan[0]["speedup"] == 10.0
    assert deployed.plan[0]["note"] == "fastest measured"
    with torch.no_grad():
        assert torch.allclose(deployed(x), model(x), rtol=1e-4, atol=1e-5)


def test_nothing_faster_keeps_dense(monkeypatch):
    monkeypatch.setattr(deploy_module, "time_side_by_side", fake_timings(DENSE))
    deployed = deploy(tiny_model(), example(), **FAST)
    assert all(r["choice"] == DENSE for r in deployed.plan)
    assert all(r["note"] == "no faster kernel: dense kept" for r in deployed.plan)
    assert isinstance(deployed.module[0], nn.Linear)


def test_a_wrong_kernel_is_rejected_and_dense_kept(monkeypatch):
    monkeypatch.setattr(deploy_module, "time_side_by_side", fake_timings("bsr16"))

    def wrong(module):
        return nn.Linear(module.in_features, module.out_features)  # random weights

    monkeypatch.setattr(CANDIDATES.get("bsr16"), "build", wrong)
    model, x = tiny_model(), example()
    deployed = deploy(model, x, candidates=["bsr16"], **FAST)
    for r in deployed.plan:
        assert r["choice"] == DENSE and "bsr16" not in r["candidates"]
        assert r["skipped"]["bsr16"].startswith("output differs from dense")
        assert r["note"] == "no applicable candidate (see skipped): dense kept"
    with torch.no_grad():
        assert torch.allclose(deployed(x), model(x), rtol=1e-4, atol=1e-5)


def test_a_kernel_that_fails_to_build_is_skipped(monkeypatch):
    def broken(module):
        raise ValueError("tile too odd")

    monkeypatch.setattr(CANDIDATES.get("bsr8"), "build", broken)
    record = deploy(tiny_model(), example(), candidates=["bsr8"], **FAST).plan[0]
    assert record["skipped"]["bsr8"] == "build failed: ValueError: tile too odd"


def test_a_new_kernel_plugs_in_with_one_registry_entry(monkeypatch):
    class Twin(nn.Module):  # a "kernel": same function, another module
        def __init__(self, linear):
            super().__init__()
            self.inner = linear

        def forward(self, x):
            return self.inner(x)

    entry = Candidate("twin", (nn.Linear,), lambda m, mask: True, Twin)
    monkeypatch.setitem(CANDIDATES._items, "twin", entry)
    monkeypatch.setattr(deploy_module, "time_side_by_side", fake_timings("twin"))
    deployed = deploy(tiny_model(), example(), **FAST)
    assert deployed.choices() == {"0": "twin", "2": "twin"}
    assert isinstance(deployed.module[2], Twin)


def test_save_writes_json_with_machine_info_and_load_rebuilds(monkeypatch, tmp_path):
    monkeypatch.setattr(deploy_module, "time_side_by_side", fake_timings("bsr8"))
    model, x = tiny_model(), example()
    deployed = deploy(model, x, **FAST)
    path = deployed.save(tmp_path)
    saved = json.loads(path.read_text())
    assert saved["target"] == "cpu" and saved["machine"]["cpu_model"]
    assert saved["machine"]["torch_version"] == torch.__version__
    assert [r["choice"] for r in saved["layers"]] == ["bsr8", "bsr8"]
    assert saved["settings"] == FAST and saved["example_input_shape"] == [1, 256]
    torch.load(tmp_path / "deployed.pt", weights_only=True)
    loaded = DeployedModel.load(tmp_path, model)
    assert isinstance(loaded.module[0], SparseLinear) and loaded.plan == saved["layers"]
    with torch.no_grad():
        assert torch.equal(loaded(x), deployed(x))
    with pytest.raises(ValueError, match="deployed from a different model"):
        DeployedModel.load(tmp_path, _other())


def _other() -> nn.Module:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 10))
    sparseforge.prune(model, {"name": "block", "block": [16, 16]}, 0.9)
    return model


def test_targets_fail_clearly():
    with pytest.raises(ValueError, match="unknown deploy target 'tpu'"):
        deploy(tiny_model(), example(), target="tpu")
    with pytest.raises(KeyError, match="unknown kernel candidate 'nope'"):
        deploy(tiny_model(), example(), candidates=["nope"])
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="deploy with --target cpu"):
            deploy(tiny_model(), example(), target="cuda")


class Untraceable(nn.Module):
    """No BatchNorm, and data-dependent control flow that torch.fx cannot trace."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        return self.fc(x) if x.sum() > 0 else -self.fc(x)


def test_fold_bn_on_a_model_without_batchnorm_traces_nothing(monkeypatch):
    monkeypatch.setattr(deploy_module, "time_side_by_side", fake_timings(DENSE))
    model, x = Untraceable().eval(), torch.ones(2, 16)
    deployed = deploy(model, x, fold_bn=True, **FAST)
    with torch.no_grad():
        torch.testing.assert_close(deployed(x), model(x))


def test_fold_bn_folds_before_choosing_and_reloads(monkeypatch, tmp_path):
    monkeypatch.setattr(deploy_module, "time_side_by_side", fake_timings("direct"))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()).eval()
    with torch.no_grad():
        for bn in (model[1], model[4]):
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
    sparseforge.prune(model, "unstructured", 0.8, layers=["3"])
    x = example(conv=True, batch=2)
    deployed = deploy(model, x, fold_bn=True, **FAST)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in deployed.module.modules())
    assert deployed.choices()["3"] == "direct" and deployed.settings["fold_bn"] is True
    with torch.no_grad():
        torch.testing.assert_close(deployed(x), model(x), rtol=1e-4, atol=1e-5)
    deployed.save(tmp_path)
    with torch.no_grad():
        assert torch.equal(DeployedModel.load(tmp_path, model)(x), deployed(x))
