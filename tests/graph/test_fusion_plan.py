"""DNNFusion operator classes and fusion plans: every op of the repo's models is classified, the
pair table, convexity, plans that partition the graph into blocks that still compute the model's
output when run one block at a time, custom ops as seeds, and the plan as data."""

import pytest
import torch
import torchvision
from torch import nn
from torch.fx.passes.split_module import split_module
from transformers import BertConfig, BertModel, LlamaConfig, LlamaForCausalLM

from sparseforge.graph.fusion_plan import FusionPlan, plan_fusion, plan_model
from sparseforge.graph.optypes import FUSE, NEVER, PROFILE, MapType, classify, pair_rule
from sparseforge.kernels import SparseLinear
from sparseforge.models import create_model


def repo_models():
    torch.manual_seed(0)
    small_bert = BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)
    small_llama = LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                              intermediate_size=128, vocab_size=100)
    tokens = torch.randint(0, 100, (1, 8))
    return {
        "cnn": (create_model("cnn", num_classes=10, in_channels=1), torch.randn(2, 1, 28, 28), {}),
        "resnet20": (create_model("resnet20", num_classes=10, in_channels=1), torch.randn(2, 1, 28, 28), {}),
        "resnet18": (torchvision.models.resnet18(num_classes=10), torch.randn(1, 3, 64, 64), {}),
        "mobilenet_v2": (torchvision.models.mobilenet_v2(num_classes=10), torch.randn(1, 3, 64, 64), {}),
        "bert": (BertModel(small_bert), tokens, {}),
        "llama": (LlamaForCausalLM(small_llama), tokens, {"use_cache": False}),
        "cnn_int8": (int8_cnn(), torch.randn(2, 1, 28, 28), {}),
    }


def int8_cnn() -> nn.Module:
    """The demo CNN after torchao's PT2E int8 conversion (the q/dq graph, uncompiled)."""
    from sparseforge.quant.deploy import to_int8

    calib = [torch.randn(8, 1, 28, 28) for _ in range(2)]
    return to_int8(create_model("cnn", num_classes=10, in_channels=1).eval(), calib, compile=False)


MODELS = repo_models()


def _outputs(out):
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict) or hasattr(out, "values"):
        return [v for v in out.values() if isinstance(v, torch.Tensor)]
    return [t for t in out if isinstance(t, torch.Tensor)]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_op_of_the_repos_models_is_classified_and_blocks_compute_the_model(name):
    model, x, kwargs = MODELS[name]
    model.eval()
    plan, gm = plan_model(model, x, **kwargs)
    assert plan.opaque == []  # the table covers every op these models use
    owner = plan.block_of()
    compute = [n for n in gm.graph.nodes if n.op == "call_function" and n.name in owner]
    assert len(owner) == plan.n_ops == len(compute)  # each op in exactly one block
    # run the graph one block at a time: only possible if every block is convex
    split = split_module(gm, None, lambda n: owner.get(n.name, -1))
    with torch.no_grad():
        expected = _outputs(gm(x, **kwargs) if kwargs else gm(x))
        got = _outputs(split(x, **kwargs) if kwargs else split(x))
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b)


def test_resnet_blocks_are_conv_bn_add_relu():
    plan, _ = plan_model(MODELS["resnet20"][0].eval(), MODELS["resnet20"][1])
    fused = [tuple(op for op in b.ops if op != "getitem") for b in plan.blocks if b.fused]
    assert ("conv2d", "_native_batch_norm_legit_no_training", "relu") in fused
    assert ("conv2d", "_native_batch_norm_legit_no_training", "add", "relu") in fused
    assert all(b.kind == MapType.MANY_TO_MANY.value for b in plan.blocks if "conv2d" in b.ops)


@pytest.mark.parametrize("training, kind", [(True, MapType.MANY_TO_MANY), (False, MapType.ONE_TO_ONE)])
def test_batch_norm_is_elementwise_only_with_running_statistics(training, kind):
    graph = torch.fx.Graph()
    x = graph.placeholder("x")
    bn = graph.call_function(torch.ops.aten.batch_norm.default, (x, None, None, None, None, training, 0.1, 1e-5, False))
    assert classify(bn) is kind


@pytest.mark.parametrize("first, second, rule, kind", [
    (MapType.ONE_TO_ONE, MapType.MANY_TO_MANY, FUSE, MapType.MANY_TO_MANY),
    (MapType.MANY_TO_MANY, MapType.ONE_TO_ONE, FUSE, MapType.MANY_TO_MANY),
    (MapType.REORGANIZE, MapType.SHUFFLE, FUSE, MapType.SHUFFLE),
    (MapType.REORGANIZE, MapType.REORGANIZE, FUSE, MapType.REORGANIZE),
    (MapType.ONE_TO_MANY, MapType.MANY_TO_MANY, NEVER, None),
    (MapType.MANY_TO_MANY, MapType.MANY_TO_MANY, NEVER, None),
    (MapType.MANY_TO_MANY, MapType.REORGANIZE, PROFILE, MapType.MANY_TO_MANY),
    (MapType.ONE_TO_MANY, MapType.REORGANIZE, PROFILE, MapType.REORGANIZE),
    (MapType.OPAQUE, MapType.ONE_TO_ONE, NEVER, None),
])
def test_pair_table(first, second, rule, kind):
    assert pair_rule(first, second) == (rule, kind)


class Diamond(nn.Module):
    """relu(conv1(x)) feeds both conv2 and the add after conv2: fusing the add into conv1's block
    would leave the block (through conv2) and come back."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        b = torch.relu(self.conv1(x))
        return b + self.conv2(b)


def test_a_merge_that_breaks_convexity_is_refused():
    plan, _ = plan_model(Diamond().eval(), torch.randn(1, 3, 8, 8))
    ops = {b.seed: b.ops for b in plan.blocks}
    assert [b.ops for b in plan.blocks] == [["conv2d", "relu"], ["conv2d", "add"]]
    assert len(ops) == 2


def test_profiled_pairs_follow_the_decider():
    model = nn.Sequential(nn.Linear(8, 8), nn.Flatten(0)).eval()  # Many-to-Many then Reorganize
    x = torch.randn(2, 8)
    never, _ = plan_model(model, x)
    always, _ = plan_model(model, x, decide=lambda block, cand: True)
    assert max(len(b.nodes) for b in never.blocks) == 1
    assert [b.ops for b in always.blocks] == [["linear", "view"]]


def test_our_kernels_are_seeds_that_take_their_epilogue():
    torch.manual_seed(0)
    lin = nn.Linear(32, 16)
    model = nn.Sequential(nn.ReLU(), SparseLinear.from_linear(lin, (4, 4), format="csr"), nn.ReLU()).eval()
    plan, _ = plan_model(model, torch.randn(2, 32))
    assert [b.ops for b in plan.blocks] == [["relu", "sparseforge::csr_linear", "relu"]]


def test_the_plan_is_data(tmp_path):
    plan, gm = plan_model(MODELS["cnn"][0].eval(), MODELS["cnn"][1])
    back = FusionPlan.load(plan.save(tmp_path / "plan.json"))
    assert back == plan
    assert "kernels" in plan.summary() and plan.summary().count("->") >= 4
    dot = plan.to_dot(gm.graph)
    assert dot.startswith("digraph") and dot.count("subgraph cluster_") == sum(b.fused for b in plan.blocks)


def test_an_unknown_op_is_opaque_and_listed():
    graph = torch.fx.Graph()
    x = graph.placeholder("x")
    y = graph.call_function(torch.ops.aten.relu.default, (x,))
    z = graph.call_function(torch.ops.aten.bucketize.Tensor, (y, y))
    graph.output(z)
    plan = plan_fusion(graph)
    assert plan.opaque == [{"node": z.name, "op": "bucketize", "module": ""}]
    assert [b.ops for b in plan.blocks] == [["relu"], ["bucketize"]]
