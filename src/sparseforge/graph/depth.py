"""Depth pruning: drop whole residual branches (`y = x + f(x)` becomes `y = x + c`).

A branch is found in the module whose own forward writes the addition (a ResNet block, a
transformer layer), traced by torch.fx with every child module a leaf. It is droppable when
both operands of the add are computed from a common input and nothing outside the branch
reads its intermediate values (the skip side may have layers of its own, like a
downsampling shortcut). Dropping it is channel pruning taken to zero: `c` is the branch's output
once every weight of its convs/linears is zero (their biases pushed through the rest of the
branch), a per-channel constant kept as a trainable parameter. The module is replaced by its
traced graph with the branch gone, so the removed layers cost nothing at run time."""

from __future__ import annotations

import copy
import operator
from dataclasses import dataclass

import torch
from torch import Tensor, fx, nn

ADDS = (operator.add, operator.iadd, torch.add)
WEIGHTED = (nn.modules.conv._ConvNd, nn.Linear)


@dataclass(frozen=True)
class ResidualBranch:
    """The branch feeding `add` (an fx node name) in the forward of module `module`; `children`
    are the child modules it calls (their parameters go with it)."""

    module: str
    add: str
    children: tuple[str, ...]

    @property
    def name(self) -> str:
        return f"{self.module}:{self.add}"

    def owns(self, tensor: str) -> bool:
        """Whether parameter/buffer `tensor` (a state-dict name) lives in the branch."""
        prefix = f"{self.module}." if self.module else ""
        return any(tensor.startswith(f"{prefix}{c}.") for c in self.children)


class _ChildrenAsLeaves(fx.Tracer):
    """Traces only a module's own forward: every submodule call stays one node."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return True


def _trace(module: nn.Module) -> fx.GraphModule | None:
    try:
        graph = _ChildrenAsLeaves().trace(module)
    except Exception:  # noqa: BLE001 - untraceable forwards simply offer no branch
        return None
    return fx.GraphModule(module, graph, module.__class__.__name__)


def _ancestors(node: fx.Node) -> set[fx.Node]:
    """`node` and every node it is computed from."""
    seen, stack = set(), [node]
    while stack:
        n = stack.pop()
        if n not in seen:
            seen.add(n)
            stack.extend(n.all_input_nodes)
    return seen


def _branch_nodes(add: fx.Node) -> tuple[fx.Node, list[fx.Node]] | None:
    """(skip operand, branch nodes) of a residual add: both operands are computed from a
    common input, and the nodes only the branch operand needs feed nothing but each other and
    the add. Of two such readings the longer branch is taken; None if there is none."""
    operands = [a for a in add.args[:2] if isinstance(a, fx.Node)]
    if len(operands) != 2 or add.kwargs:
        return None
    found = []
    for skip, out in (operands, operands[::-1]):
        above_out, above_skip = _ancestors(out), _ancestors(skip)
        branch = [n for n in above_out if n not in above_skip]
        inside = set(branch) | {add}
        if (above_out & above_skip and all(set(n.users) <= inside for n in branch)):
            found.append((skip, branch))
    return max(found, key=lambda f: len(f[1])) if found else None


def residual_branches(model: nn.Module) -> list[ResidualBranch]:
    """Every droppable residual branch of `model`, in module order; a branch with no conv or
    linear layer (nothing to save) is left out."""
    found = []
    for name, module in model.named_modules():
        if not any(True for _ in module.children()):
            continue
        gm = _trace(module)
        if gm is None:
            continue
        for node in gm.graph.nodes:
            if node.op != "call_function" or node.target not in ADDS:
                continue
            got = _branch_nodes(node)
            if got is None:
                continue
            children = tuple(sorted({str(n.target) for n in got[1] if n.op == "call_module"}))
            if any(isinstance(module.get_submodule(c), WEIGHTED) for c in children):
                found.append(ResidualBranch(name, node.name, children))
    return found


def _constant(gm: fx.GraphModule, out: fx.Node, example_args: tuple) -> Tensor:
    """The branch output with every conv/linear weight in it zeroed, reduced to size 1 along
    the dims it does not vary on (all but the channel dim, for convs and linears)."""
    zeroed = copy.deepcopy(gm).eval()
    for node in zeroed.graph.nodes:
        if node.op == "call_module" and isinstance(m := zeroed.get_submodule(node.target), WEIGHTED):
            with torch.no_grad():
                m.weight.zero_()
    values: dict[str, Tensor] = {}

    class Recorder(fx.Interpreter):
        def run_node(self, n: fx.Node) -> object:
            result = super().run_node(n)
            if n.name == out.name:
                values["out"] = result
            return result

    with torch.no_grad():
        Recorder(zeroed).run(*example_args)
    value = values["out"]
    for dim in range(value.dim()):
        first = value.narrow(dim, 0, 1)
        if torch.equal(value, first.expand_as(value)):
            value = first
    if value.dim() and value.shape[0] != 1:
        raise ValueError(f"the branch into '{out.name}' still depends on its input with every "
                         "weight zeroed, so it has no constant to leave behind; keep it")
    return value.detach().clone()


def drop_branches(model: nn.Module, branches: list[ResidualBranch], example: Tensor | tuple | None,
                  shapes: dict[str, tuple[int, ...]] | None = None) -> nn.Module:
    """Replace each branch's module by its traced forward with the branch cut out (in place;
    returns the model). With an `example` input of the model the constants are computed (see
    the module docstring); without one they are zeros of `shapes[branch.name]` (`apply_plan`,
    before the state dict is loaded)."""
    args = example if isinstance(example, tuple) else (example,)
    by_module: dict[str, list[ResidualBranch]] = {}
    for b in branches:
        by_module.setdefault(b.module, []).append(b)
    inputs: dict[str, tuple] = {}
    if example is not None:  # every module's inputs on the example, recorded in one forward
        hooks = [model.get_submodule(m).register_forward_pre_hook(
            lambda mod, a, m=m: inputs.setdefault(m, a)) for m in by_module]
        try:
            with torch.no_grad():
                was = model.training
                model.eval()(*args)
                model.train(was)
        finally:
            for h in hooks:
                h.remove()
    for name, bs in sorted(by_module.items(), key=lambda kv: -kv[0].count(".") - bool(kv[0])):
        module = model.get_submodule(name)
        gm = _trace(module)
        if gm is None:
            raise ValueError(f"cannot drop a branch of '{name}': torch.fx no longer traces it")
        nodes = {n.name: n for n in gm.graph.nodes}
        for b in bs:
            add = nodes.get(b.add)
            got = _branch_nodes(add) if add is not None else None
            if got is None:
                raise ValueError(f"'{name}' has no residual add '{b.add}' to drop; the plan was "
                                 "made for another model")
            out = next(a for a in add.args[:2] if a is not got[0])
            if name in inputs:
                value = _constant(gm, out, inputs[name])
            else:
                value = torch.zeros((shapes or {}).get(b.name, ()))
            attr = f"const_{b.add}"
            gm.register_parameter(attr, nn.Parameter(value))
            with gm.graph.inserting_before(add):
                const = gm.graph.get_attr(attr)
            add.replace_input_with(out, const)
        gm.graph.eliminate_dead_code()
        gm.delete_all_unused_submodules()
        gm.recompile()
        gm.train(module.training)
        if name:
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, gm)
        else:
            model = gm
    return model
