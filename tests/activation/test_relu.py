import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparseforge.activation import (
    FATReLU,
    find_activation_sites,
    set_threshold,
    substitute_activations,
)


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn_act = nn.GELU()  # not in an FFN: must stay
        self.ffn = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 8))


def test_fatrelu_threshold_semantics():
    x = torch.tensor([-1.0, 0.0, 0.05, 0.1, 0.2])
    assert torch.equal(FATReLU()(x), torch.relu(x))
    assert torch.equal(FATReLU(0.1)(x), torch.tensor([0.0, 0.0, 0.0, 0.1, 0.2]))


def test_bert_substitution_replaces_intermediate_act(tiny_bert):
    model = tiny_bert()
    names = substitute_activations(model)
    assert names == [f"encoder.layer.{i}.intermediate.intermediate_act_fn" for i in range(2)]
    inter = model.encoder.layer[0].intermediate
    assert isinstance(inter.intermediate_act_fn, FATReLU)
    x = torch.randn(2, 5, 16)
    assert torch.allclose(inter(x), torch.relu(inter.dense(x)))
    assert (model(torch.randint(0, 40, (2, 5))).last_hidden_state.isfinite()).all()


def test_llama_substitution_keeps_gate_structure(tiny_llama):
    model = tiny_llama()
    names = substitute_activations(model)
    assert names == [f"model.layers.{i}.mlp.act_fn" for i in range(2)]
    mlp = model.model.layers[1].mlp
    assert isinstance(mlp.act_fn, FATReLU)
    set_threshold([mlp.act_fn], 0.05)
    x = torch.randn(3, 4, 16)
    g = mlp.gate_proj(x)
    manual = mlp.down_proj(torch.where(g >= 0.05, g, torch.zeros(())) * mlp.up_proj(x))
    assert torch.allclose(mlp(x), manual, atol=1e-6)
    assert not torch.allclose(mlp(x), mlp.down_proj(F.silu(g) * mlp.up_proj(x)))


def test_plain_ffn_by_pattern_leaves_other_activations():
    model = nn.ModuleDict({"blocks": nn.ModuleList([Block(), Block()])})
    names = substitute_activations(model, ["blocks.*.ffn"])
    assert names == ["blocks.0.ffn.1", "blocks.1.ffn.1"]
    assert isinstance(model["blocks"][0].ffn[1], FATReLU)
    assert isinstance(model["blocks"][0].attn_act, nn.GELU)


def test_pattern_may_name_the_activation_itself():
    model = nn.Sequential(nn.Linear(4, 8), nn.SiLU(), nn.Linear(8, 4))
    assert substitute_activations(model, ["1"]) == ["1"]
    assert isinstance(model[1], FATReLU)


def test_no_site_is_a_clear_error():
    with pytest.raises(ValueError, match="intermediate_act_fn.*patterns="):
        find_activation_sites(nn.Sequential(nn.Linear(4, 4), nn.GELU()))
    with pytest.raises(ValueError, match=r"matching \['mlp\.\*'\]"):
        find_activation_sites(nn.Sequential(nn.Linear(4, 4), nn.GELU()), ["mlp.*"])
    with pytest.raises(TypeError, match="list of name patterns"):
        find_activation_sites(nn.Sequential(nn.GELU()), "0")
    with pytest.raises(ValueError, match=">= 0"):
        set_threshold([FATReLU()], -0.1)
