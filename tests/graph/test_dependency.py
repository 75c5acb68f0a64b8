"""Every dependency pattern: removing units physically gives the channel-masked model's outputs,
and what cannot be removed safely is kept and reported."""

import copy
import random

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparseforge.graph import channel_mask, dependency_graph, shrink
from sparseforge.models.resnet import resnet20


def randomize_norms(model: nn.Module) -> nn.Module:
    """Non-trivial norm statistics and affine parameters, so a wrong slice shows."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, (nn.modules.batchnorm._NormBase, nn.GroupNorm)):
            with torch.no_grad():
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.bias.shape, generator=g) - 0.5)
                if getattr(m, "running_mean", None) is not None:
                    m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) - 0.5)
                    m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return model.eval()


def output(model: nn.Module, x, **kw) -> torch.Tensor:
    with torch.no_grad():
        out = model(x, **kw)
    for attr in ("last_hidden_state", "logits"):
        out = getattr(out, attr, out)
    return out[0] if isinstance(out, tuple) else out


def remove_and_compare(model: nn.Module, x, fraction: float = 0.34, seed: int = 0, **kw):
    """Remove `fraction` of every group's units at random; the shrunk model must equal the
    masked one and be smaller. Returns the graph and the shrunk model."""
    model.eval()
    graph = dependency_graph(model, x, **kw)
    assert graph.groups, "nothing prunable found"
    rng = random.Random(seed)
    removed = [u for g in graph.groups for u in rng.sample(g.units, int(len(g.units) * fraction))]
    assert removed
    kept = graph.kept_indices(removed)
    masked = copy.deepcopy(model)
    channel_mask(masked, kept)
    small = shrink(copy.deepcopy(model), kept)
    expected, got = output(masked, x, **kw), output(small, x, **kw)
    assert got.shape == expected.shape
    scale = max(1.0, expected.abs().max().item())
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5 * scale)
    before = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for p in small.parameters()) < before
    # and the masked model really differs from the original: the removal was not a no-op
    assert not torch.allclose(output(model, x, **kw), expected)
    return graph, small


def conv_bn(cin, cout, k=3, groups=1, stride=1):
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU())


class Concat(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = conv_bn(3, 8), conv_bn(3, 6), conv_bn(14, 10)
        self.head = nn.Linear(10, 4)

    def forward(self, x):
        y = self.c(torch.cat([self.a(x), self.b(x)], dim=1))
        return self.head(y.mean((2, 3)))


class Chunk(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem, self.left, self.right = conv_bn(3, 16), conv_bn(8, 6), conv_bn(8, 6)
        self.mix, self.head = conv_bn(6, 10), nn.Linear(10, 4)

    def forward(self, x):
        a, b = self.stem(x).chunk(2, dim=1)
        return self.head(self.mix(self.left(a) + self.right(b)).amax((2, 3)))


class Grouped(nn.Module):
    def __init__(self, groups: int, mult: int = 1):
        super().__init__()
        self.stem = conv_bn(3, 8)
        self.grouped = conv_bn(8, 8 * mult, groups=groups)
        self.out = conv_bn(8 * mult, 6, k=1)
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        return self.head(self.out(self.grouped(self.stem(x))).mean((2, 3)))


class GroupNormNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 12, 3, padding=1)
        self.gn = nn.GroupNorm(4, 12)
        self.conv2 = nn.Conv2d(12, 5, 1)

    def forward(self, x):
        return self.conv2(F.silu(self.gn(self.conv(x)))).mean((2, 3))


class FlattenLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = conv_bn(1, 6, stride=2)
        self.fc1 = nn.Linear(6 * 4 * 4, 20)
        self.fc2 = nn.Linear(20, 5)

    def forward(self, x):
        y = self.conv(x)
        return self.fc2(F.gelu(self.fc1(y.view(y.shape[0], -1))))


class SqueezeExcite(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = conv_bn(3, 12)
        self.fc1, self.fc2 = nn.Conv2d(12, 4, 1), nn.Conv2d(4, 12, 1)
        self.out = nn.Conv2d(12, 5, 1)

    def forward(self, x):
        y = self.conv(x)
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(y, 1)))))
        return self.out(y * s).flatten(1)


class GatedFFN(nn.Module):
    def __init__(self, d=16, h=40):
        super().__init__()
        self.gate, self.up, self.down = nn.Linear(d, h, bias=False), nn.Linear(d, h), nn.Linear(h, d)

    def forward(self, x):
        return self.down(F.silu(self.gate(x)) * self.up(x))


class AttentionBlock(nn.Module):
    def __init__(self, d=32, heads=4):
        super().__init__()
        self.ln = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(d, 64), nn.GELU(), nn.Linear(64, d))

    def forward(self, x):
        h = self.ln(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln(x))


X = torch.randn(2, 3, 8, 8)


@pytest.mark.parametrize("model", [Concat(), Chunk(), GroupNormNet(), SqueezeExcite()],
                         ids=["concat", "chunk-split", "groupnorm", "squeeze-excite"])
def test_pattern_equals_masked(model):
    torch.manual_seed(0)
    remove_and_compare(randomize_norms(model), X)


def test_chunk_at_fixed_positions_keeps_those_channels():
    graph = dependency_graph(randomize_norms(Chunk()), X)
    prunable = {n for g in graph.groups for n, _ in g.keys}
    assert "stem.0.weight" not in prunable and {"left.0.weight", "mix.0.weight"} <= prunable
    assert any("chunk" in k["reason"] and "cuts" in k["reason"] for k in graph.kept)


@pytest.mark.parametrize("groups,mult", [(2, 1), (8, 1), (8, 2)], ids=["grouped", "depthwise", "depthwise-x2"])
def test_grouped_and_depthwise_remove_whole_groups(groups, mult):
    model = randomize_norms(Grouped(groups, mult))
    graph, small = remove_and_compare(model, X, fraction=0.5)
    conv = small.grouped[0]
    assert conv.groups < groups
    assert conv.in_channels // conv.groups == 8 // groups
    assert conv.out_channels // conv.groups == 8 * mult // groups


def test_groupnorm_loses_whole_groups():
    model = randomize_norms(GroupNormNet())
    graph, small = remove_and_compare(model, X)
    assert small.gn.num_channels % 3 == 0 and small.gn.num_groups == small.gn.num_channels // 3


def test_flatten_into_linear_drops_spatial_blocks():
    graph, small = remove_and_compare(randomize_norms(FlattenLinear()), torch.randn(3, 1, 8, 8))
    assert small.fc1.in_features == small.conv[0].out_channels * 16


def test_residual_stages_share_one_group():
    model = randomize_norms(resnet20(num_classes=10, in_channels=1))
    graph, _ = remove_and_compare(model, torch.randn(2, 1, 28, 28))
    stage1 = next(g for g in graph.groups if any(n == "conv1.weight" for n, _ in g.keys))
    names = {n for n, _ in stage1.keys}
    assert {"layer1.0.conv2.weight", "layer1.2.bn2.weight", "layer2.0.conv1.weight"} <= names
    assert len(stage1.units) == 16


def test_gated_ffn_prunes_gate_up_down_together():
    graph, small = remove_and_compare(GatedFFN(), torch.randn(2, 5, 16))
    assert small.gate.out_features == small.up.out_features == small.down.in_features < 40
    assert small.down.out_features == 16  # the output width is the model's: kept


def test_attention_heads_removed_whole():
    model = AttentionBlock()
    graph, small = remove_and_compare(model, torch.randn(2, 6, 32))
    heads = [g for g in graph.groups if g.keys[0][0] == "attn.in_proj_weight"]
    assert len(heads) == 1 and len(heads[0].units) == 4 and heads[0].unit_size == 3 * 8
    assert small.attn.num_heads == 3
    # the layer-normed residual width stays, and the report says why
    assert any("layer_norm" in k["reason"] for k in graph.kept)


class RotaryAttention(nn.Module):
    """Two attention layers with rotary embeddings computed from one `inv_freq` buffer by
    elementwise ops (as transformers 5.x writes it): cos/sin are shared by every head of
    every layer, broadcast over the head dim."""

    def __init__(self, d=32, heads=4, layers=2):
        super().__init__()
        self.hd = d // heads
        self.register_buffer("inv_freq", 1.0 / 100 ** (torch.arange(0, self.hd, 2) / self.hd),
                             persistent=False)
        self.qkv = nn.ModuleList(nn.ModuleList(nn.Linear(d, d) for _ in range(3)) for _ in range(layers))
        self.out = nn.ModuleList(nn.Linear(d, d) for _ in range(layers))

    def forward(self, x):  # (B, T, d)
        b, t, d = x.shape
        angles = torch.arange(t, dtype=x.dtype)[:, None] * self.inv_freq  # (T, hd/2)
        cos = torch.cat([angles, angles], -1).cos()  # (T, hd), broadcast over heads
        for qkv, out in zip(self.qkv, self.out, strict=True):
            q, k, v = (lin(x).view(b, t, -1, self.hd).transpose(1, 2) for lin in qkv)
            y = F.scaled_dot_product_attention(q * cos, k * cos, v)
            x = x + out(y.transpose(1, 2).reshape(b, t, -1))
        return x


def test_a_buffer_shared_by_every_head_does_not_merge_them():
    graph, small = remove_and_compare(RotaryAttention(), torch.randn(2, 5, 32), fraction=0.5)
    heads = [g for g in graph.groups if g.keys[0][0].startswith("qkv")]
    assert len(heads) == 2 and all(len(g.units) == 4 for g in heads)  # per layer, per head
    assert small.inv_freq.shape == (4,)  # shared: never sliced


def test_a_parameter_sliced_with_one_unit_and_shared_by_others_keeps_that_unit():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.head = nn.Linear(6, 8), nn.Linear(6, 16), nn.Linear(24, 3)
            self.s = nn.Parameter(torch.randn(8))

        def forward(self, x):  # s scales a's channels, and is broadcast over b's two halves
            y = self.a(x) * self.s
            z = (self.b(x).view(-1, 2, 8) * self.s).flatten(1)
            return self.head(torch.cat([y, z], 1))

    graph = dependency_graph(Net(), torch.randn(3, 6))
    prunable = {n for g in graph.groups for n, _ in g.keys}
    assert "a.weight" not in prunable and "b.weight" in prunable
    assert any("broadcasts them over several units" in k["reason"] for k in graph.kept)


def test_layernorm_over_channels_keeps_them_dense():
    model = nn.Sequential(nn.Linear(8, 12), nn.LayerNorm(12), nn.Linear(12, 3))
    graph = dependency_graph(model, torch.randn(2, 8))
    assert not graph.groups
    assert "layer_norm" in graph.kept[0]["reason"] and graph.kept[0]["channels"] == 12


def test_unknown_op_warns_with_module_and_op_and_stays_dense():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 2)

        def forward(self, x):
            return self.b(torch.cumsum(self.a(x), dim=-1))

    with pytest.warns(UserWarning, match=r"cumsum \(top level\)"):
        graph = dependency_graph(Odd(), torch.randn(2, 4))
    assert not graph.groups and graph.unsupported == ["cumsum (top level)"]


def test_ignored_modules_keep_their_channels():
    model = randomize_norms(Concat())
    graph = dependency_graph(model, X, ignore=["a"])
    assert all("a.0.weight" not in {n for n, _ in g.keys} for g in graph.groups)
    assert any("ignore list" in k["reason"] for k in graph.kept)


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "vit_b_16"])
def test_torchvision_architectures(name):
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    kwargs = {"image_size": 32} if name.startswith("vit") else {}
    model = randomize_norms(torchvision.models.get_model(name, weights=None, **kwargs))
    if name.startswith("vit"):  # torchvision zero-initializes the classifier
        nn.init.normal_(model.heads.head.weight)
    graph, small = remove_and_compare(model, torch.randn(2, 3, 32, 32))
    if name.startswith("vit"):  # heads and MLP widths go; the layer-normed width stays
        attn = small.encoder.layers[0].self_attention
        assert attn.num_heads < 12 and small.encoder.layers[0].mlp[0].out_features < 3072
        assert small.hidden_dim == 768


def test_huggingface_bert_heads_and_ffn():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=4, intermediate_size=64)
    model = transformers.BertModel(cfg)
    ids = torch.randint(0, 50, (2, 7))
    graph, small = remove_and_compare(model, ids)
    attn = small.encoder.layer[0].attention.self
    assert attn.num_attention_heads == 3 and attn.all_head_size == 24
    assert output(small, torch.randint(0, 50, (1, 11))).shape == (1, 11, 32)  # other shapes run


def test_huggingface_llama_gqa_and_swiglu():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2,
                                   intermediate_size=48, use_cache=False)
    model = transformers.LlamaForCausalLM(cfg)
    graph, small = remove_and_compare(model, torch.randint(0, 50, (2, 7)), fraction=0.5)
    attn = small.model.layers[0].self_attn
    # a key/value head goes with the query heads that read it
    assert attn.k_proj.out_features == 8 and attn.q_proj.out_features == 16
    mlp = small.model.layers[0].mlp
    assert mlp.gate_proj.out_features == mlp.up_proj.out_features == mlp.down_proj.in_features == 24


def test_user_fixup_runs_before_the_builtin_one():
    class Scaled(nn.Linear):
        pass

    seen = []
    model = nn.Sequential(Scaled(4, 8), nn.ReLU(), nn.Linear(8, 2)).eval()
    graph = dependency_graph(model, torch.randn(2, 4))
    kept = graph.kept_indices(graph.groups[0].units[:3])
    shrink(model, kept, fixups={Scaled: lambda m, old: seen.append(m.weight.shape[0])})
    assert seen == [5]


@pytest.mark.parametrize("value", [0.0, 1.0])
def test_padding_keeps_channels_removable_only_when_it_pads_zeros(value):
    class Padded(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = conv_bn(3, 8), nn.Conv2d(8, 4, 3)

        def forward(self, x):
            return self.b(F.pad(self.a(x), (1, 1, 1, 1), value=value)).flatten(1)

    model = randomize_norms(Padded())
    if value == 0.0:
        remove_and_compare(model, X)
    else:
        graph = dependency_graph(model, X)
        assert not graph.groups and "not provably zero" in graph.kept[0]["reason"]
