"""Export to ONNX and torch.export (.pt2): outputs match PyTorch at several batch sizes (the
batch dimension is dynamic), masks are baked, errors say what to do; `deploy --format`."""

import importlib.util
import subprocess
import sys

import pytest
import torch
import yaml
from torch import nn

import sparseforge as sf
from sparseforge.cli import main
from sparseforge.runtime import check_onnx, export_model

needs_onnx = pytest.mark.skipif(
    not all(importlib.util.find_spec(m) for m in ("onnx", "onnxscript", "onnxruntime")),
    reason="needs sparseforge[export]",
)


class ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.head = nn.Linear(8 * 4 * 4, 5)

    def forward(self, x):  # (B, 3, 8, 8)
        return self.head(self.features(x).flatten(1))  # (B, 5)


class TokenMLP(nn.Module):
    """Transformer-ish: pre-norm MLP block with a residual over tokens, mean pool, head."""

    def __init__(self, dim: int = 16) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.head = nn.Linear(dim, 3)

    def forward(self, x):  # (B, T, C)
        x = x + self.mlp(self.norm(x))
        return self.head(x.mean(1))  # (B, 3)


def conv_net() -> nn.Module:
    torch.manual_seed(0)
    model = ConvNet()
    bn = model.features[1]  # non-trivial running stats, so eval mode matters
    bn.running_mean.uniform_(-0.5, 0.5)
    bn.running_var.uniform_(0.5, 2.0)
    return model


def token_mlp() -> nn.Module:
    torch.manual_seed(0)
    return TokenMLP()


MODELS = {"conv": (conv_net, (3, 8, 8)), "token_mlp": (token_mlp, (6, 16))}


@needs_onnx
@pytest.mark.parametrize("name", MODELS)
def test_onnx_matches_pytorch_at_two_batch_sizes(name, tmp_path):
    build, shape = MODELS[name]
    model = build()
    path = export_model(model, torch.randn(2, *shape), tmp_path / f"{name}.onnx", "onnx")
    assert path.is_file()
    for batch in (1, 5):
        assert check_onnx(path, model, torch.randn(batch, *shape)) < 1e-4


@pytest.mark.parametrize("name", MODELS)
def test_pt2_reloads_and_matches_at_two_batch_sizes(name, tmp_path):
    build, shape = MODELS[name]
    model = build().eval()
    path = export_model(model, torch.randn(1, *shape), tmp_path / f"{name}.pt2", "pt2")
    loaded = torch.export.load(path).module()
    with torch.no_grad():
        for batch in (1, 7):
            x = torch.randn(batch, *shape)
            torch.testing.assert_close(loaded(x), model(x), atol=1e-4, rtol=0)


def test_masks_are_baked_and_the_model_left_as_it_was(tmp_path):
    model = conv_net()
    sf.prune(model, "unstructured", 0.5)
    model.train()
    path = export_model(model, torch.randn(2, 3, 8, 8), tmp_path / "m.pt2", "pt2")
    state = torch.export.load(path).state_dict
    weights = [v for k, v in state.items() if k.endswith("weight") and v.ndim > 1]
    assert weights and all((w == 0).float().mean() >= 0.5 for w in weights)
    assert model.training and sf.global_sparsity(model) == pytest.approx(0.5, abs=0.01)
    assert hasattr(model.features[0], "parametrizations")
    x = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(torch.export.load(path).module()(x), model.eval()(x),
                                   atol=1e-5, rtol=0)


def test_unknown_format_names_the_choices(tmp_path):
    with pytest.raises(ValueError, match="'tflite'.*onnx, pt2"):
        export_model(conv_net(), torch.randn(2, 3, 8, 8), tmp_path / "m.tflite", "tflite")
    with pytest.raises(ValueError, match=r"B >= 1, got shape \(0, 3, 8, 8\)"):
        export_model(conv_net(), torch.randn(0, 3, 8, 8), tmp_path / "m.pt2", "pt2")


def test_missing_onnx_packages_say_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` fail
    with pytest.raises(ImportError, match=r"pip install 'sparseforge\[export\]'"):
        check_onnx(tmp_path / "m.onnx", conv_net(), torch.randn(2, 3, 8, 8))
    monkeypatch.setitem(sys.modules, "onnxscript", None)
    with pytest.raises(ImportError, match=r"pip install 'sparseforge\[export\]'"):
        export_model(conv_net(), torch.randn(2, 3, 8, 8), tmp_path / "m.onnx", "onnx")


def test_import_sparseforge_loads_no_onnx():
    code = (
        "import sys, sparseforge\n"
        "print([m for m in ('onnx', 'onnxruntime', 'onnxscript') if m in sys.modules])\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


@needs_onnx
def test_deploy_format_exports_the_run_model(make_recipe, tmp_path, capsys):
    recipe = make_recipe(
        train={"epochs": 1}, modifiers=[{"type": "oneshot", "sparsity": 0.8}],
    )
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(recipe))
    run = tmp_path / "sparse"
    assert main(["compress", str(tmp_path / "s.yaml"), "--out", str(run)]) == 0
    capsys.readouterr()

    assert main(["deploy", str(run), "--format", "onnx", "--batch", "3"]) == 0
    out = capsys.readouterr().out
    assert str(run / "export" / "model.onnx") in out
    diff = float(out.rsplit("max abs difference", 1)[1])
    assert diff < 1e-4
    assert not (run / "deploy").exists()  # exporting picks no kernels

    assert main(["deploy", str(run), "--format", "pt2"]) == 0
    assert str(run / "export" / "model.pt2") in capsys.readouterr().out
    program = torch.export.load(run / "export" / "model.pt2")
    assert program.module()(torch.randn(4, 1, 28, 28)).shape == (4, 10)

    with pytest.raises(SystemExit):
        main(["deploy", str(run), "--format", "tflite"])
    assert "invalid choice: 'tflite'" in capsys.readouterr().err
