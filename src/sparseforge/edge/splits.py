"""Split points of a model: places in its fx graph where exactly one tensor crosses, so the
edge can run the head up to there and ship that one tensor to the cloud, which runs the tail."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, fx, nn

INPUT = "input"  # the cut before the first op: all-cloud
OUTPUT = "output"  # the cut after the last op: all-edge


@dataclass(frozen=True)
class SplitPoint:
    """A cut after graph node `index` (-1: before everything); `name` is the module path of the
    node (e.g. `layer2.0.relu2`) or its fx name for a function call."""

    name: str
    index: int


def _trace(model: nn.Module) -> fx.GraphModule:
    try:
        return fx.symbolic_trace(model)
    except Exception as err:  # fx raises many types; the advice is the same
        raise ValueError(
            f"{type(model).__name__} cannot be traced by torch.fx ({err}); edge splitting needs a "
            "model whose forward is traceable (no data-dependent Python control flow)"
        ) from err


def _body(gm: fx.GraphModule) -> tuple[fx.Node, list[fx.Node], fx.Node]:
    nodes = list(gm.graph.nodes)
    inputs = [n for n in nodes if n.op == "placeholder"]
    if len(inputs) != 1:
        raise ValueError(f"edge splitting needs a model with one input, got {len(inputs)}")
    return inputs[0], [n for n in nodes if n.op not in ("placeholder", "output")], nodes[-1]


def _node_name(node: fx.Node) -> str:
    return str(node.target) if node.op == "call_module" else node.name


def split_points(model: nn.Module) -> list[SplitPoint]:
    """Every single-tensor cut of `model` in execution order, from `input` (all-cloud) to
    `output` (all-edge)."""
    gm = _trace(model)
    placeholder, body, _ = _body(gm)
    position = {n: i for i, n in enumerate(body)}
    position[placeholder] = -1
    last_use = {n: max((position.get(u, len(body)) for u in n.users), default=-1)
                for n in [placeholder, *body]}
    points = [SplitPoint(INPUT, -1)]
    for i, node in enumerate(body[:-1]):
        live = [n for n, last in last_use.items() if position[n] <= i < last]
        if live == [node] and node.type is not tuple:
            points.append(SplitPoint(_node_name(node), i))
    points.append(SplitPoint(OUTPUT, len(body) - 1))
    return points


def find_split(model: nn.Module, name: str) -> SplitPoint:
    """The split point called `name`; the error lists the valid names."""
    points = split_points(model)
    for p in points:
        if p.name == name:
            return p
    raise ValueError(f"no split point {name!r}; valid: {', '.join(p.name for p in points)}")


def split_model(model: nn.Module, name: str) -> tuple[nn.Module, nn.Module]:
    """(head, tail) with tail(head(x)) == model(x) bit for bit; `input` gives an identity head,
    `output` an identity tail. Both share the model's parameters (no copies)."""
    point = find_split(model, name)
    gm = _trace(model)
    placeholder, body, output = _body(gm)
    head_graph, tail_graph = fx.Graph(), fx.Graph()
    env: dict[fx.Node, fx.Node] = {placeholder: head_graph.placeholder("x")}
    for node in body[: point.index + 1]:
        env[node] = head_graph.node_copy(node, lambda n: env[n])
    cut = body[point.index] if point.index >= 0 else placeholder
    head_graph.output(env[cut])
    env = {cut: tail_graph.placeholder("x")}
    for node in body[point.index + 1:]:
        env[node] = tail_graph.node_copy(node, lambda n: env[n])
    tail_graph.output(fx.map_arg(output.args[0], lambda n: env[n]))
    return fx.GraphModule(gm, head_graph), fx.GraphModule(gm, tail_graph)


def tails_for(model: nn.Module, example: Tensor, names: list[str] | None = None
              ) -> dict[str, tuple[nn.Module, tuple[int, ...]]]:
    """{split: (tail, per-sample input shape of the tail)} for `names` (default: every split but
    `output`), the shapes read off running each head on `example`."""
    names = names or [p.name for p in split_points(model) if p.name != OUTPUT]
    out = {}
    with torch.no_grad():
        for name in names:
            head, tail = split_model(model, name)
            out[name] = (tail.eval(), tuple(head(example).shape[1:]))
    return out
