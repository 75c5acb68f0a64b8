"""Algebraic rewrites before fusion (DNNFusion's first step), on an exported aten-level graph
module: fold constants, cancel or merge permutes/transposes, collapse reshape chains,
reassociate constant scales, factor a shared multiplier out of a sum. Each pass returns what it
changed. BatchNorm folding is FuPruner's (`graph.fusion.fuse`, module level, before export)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import fx
from torch.fx import Node

aten = torch.ops.aten
PERMUTES = {aten.permute.default, aten.transpose.int, aten.t.default}
RESHAPES = {aten.view.default, aten.reshape.default, aten._unsafe_view.default}
MULS = {aten.mul.Tensor, aten.mul.Scalar}


def _perm(node: Node) -> list[int] | None:
    """The permutation a permute/transpose/t node applies, if its rank is known."""
    val = node.args[0].meta.get("val") if isinstance(node.args[0], Node) else None
    if val is None:
        return None
    rank = val.dim()
    if node.target is aten.permute.default:
        return [d % rank for d in node.args[1]]
    order = list(range(rank))
    a, b = (0, 1) if node.target is aten.t.default else (node.args[1] % rank, node.args[2] % rank)
    order[a], order[b] = order[b], order[a]
    return order


def _single_user(node: Node) -> bool:
    return len(node.users) == 1


def merge_permutes(gm: fx.GraphModule) -> list[str]:
    """permute(permute(x, p), q) -> permute(x, p∘q), or x when that is the identity."""
    changed = []
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target not in PERMUTES:
            continue
        inner = node.args[0]
        if not (isinstance(inner, Node) and inner.target in PERMUTES and _single_user(inner)):
            continue
        p, q = _perm(inner), _perm(node)
        if p is None or q is None:
            continue
        combined = [p[i] for i in q]
        source = inner.args[0]
        if combined == list(range(len(combined))):
            node.replace_all_uses_with(source)
        else:
            with gm.graph.inserting_before(node):
                merged = gm.graph.call_function(aten.permute.default, (source, combined))
            merged.meta = dict(node.meta)
            node.replace_all_uses_with(merged)
        gm.graph.erase_node(node)
        gm.graph.erase_node(inner)
        changed.append(node.name)
    return changed


def collapse_reshapes(gm: fx.GraphModule) -> list[str]:
    """view(view(x, a), b) -> view(x, b) (a reshape of a reshape reads the same elements in the
    same order); a view to the input's own shape disappears."""
    changed = []
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target not in RESHAPES:
            continue
        inner = node.args[0]
        if isinstance(inner, Node) and inner.target in RESHAPES and _single_user(inner):
            node.args = (inner.args[0], *node.args[1:])
            node.target = aten.reshape.default  # the source may not be viewable as the new shape
            gm.graph.erase_node(inner)
            changed.append(node.name)
        src = node.args[0]
        out, val = node.meta.get("val"), src.meta.get("val") if isinstance(src, Node) else None
        if out is not None and val is not None and tuple(out.shape) == tuple(val.shape):
            node.replace_all_uses_with(src)
            gm.graph.erase_node(node)
            changed.append(node.name)
    return changed


def _scalar(arg: object) -> float | None:
    return float(arg) if isinstance(arg, (int, float)) and not isinstance(arg, bool) else None


def reassociate_scales(gm: fx.GraphModule) -> list[str]:
    """mul(mul(x, c1), c2) -> mul(x, c1 * c2) for Python-number constants."""
    changed = []
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target not in MULS or _scalar(node.args[1]) is None:
            continue
        inner = node.args[0]
        if not (isinstance(inner, Node) and inner.target in MULS and _single_user(inner)):
            continue
        c1 = _scalar(inner.args[1])
        if c1 is None:
            continue
        node.args = (inner.args[0], c1 * _scalar(node.args[1]))
        gm.graph.erase_node(inner)
        changed.append(node.name)
    return changed


def factor_common_scale(gm: fx.GraphModule) -> list[str]:
    """add(mul(a, c), mul(b, c)) -> mul(add(a, b), c) for one constant c: one multiply instead
    of two."""
    changed = []
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target is not aten.add.Tensor or len(node.args) != 2:
            continue
        left, right = node.args
        if not all(isinstance(n, Node) and n.target in MULS and _single_user(n) for n in (left, right)):
            continue
        c = _scalar(left.args[1])
        if c is None or c != _scalar(right.args[1]) or node.kwargs.get("alpha", 1) != 1:
            continue
        with gm.graph.inserting_before(node):
            total = gm.graph.call_function(aten.add.Tensor, (left.args[0], right.args[0]))
            scaled = gm.graph.call_function(aten.mul.Tensor, (total, c))
        total.meta, scaled.meta = dict(node.meta), dict(node.meta)
        node.replace_all_uses_with(scaled)
        for n in (node, left, right):
            gm.graph.erase_node(n)
        changed.append(node.name)
    return changed


def _constant(gm: fx.GraphModule, arg: object) -> bool:
    if isinstance(arg, Node):
        return arg.op == "get_attr"
    if isinstance(arg, (list, tuple)):
        return all(_constant(gm, a) for a in arg)
    return True  # Python numbers, dtypes, None


def fold_constants(gm: fx.GraphModule) -> list[str]:
    """Ops whose inputs are all parameters/buffers/literals (a weight's transpose, a scale
    computed from buffers) run once now; their result becomes a buffer. Inference only: the
    folded values no longer follow the parameters."""
    changed = []
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or not isinstance(node.target, torch._ops.OpOverload):
            continue
        if node.target._schema.is_mutable or not node.all_input_nodes:
            continue
        if not all(_constant(gm, a) for a in (*node.args, *node.kwargs.values())):
            continue

        args = fx.node.map_arg(node.args, lambda a: _attr(gm, a.target))
        kwargs = fx.node.map_arg(node.kwargs, lambda a: _attr(gm, a.target))
        with torch.no_grad():
            value = node.target(*args, **kwargs)
        if not isinstance(value, torch.Tensor):
            continue
        name = f"_folded_{node.name}"
        gm.register_buffer(name, value.detach().clone())
        with gm.graph.inserting_before(node):
            const = gm.graph.get_attr(name)
        const.meta = dict(node.meta)
        node.replace_all_uses_with(const)
        gm.graph.erase_node(node)
        changed.append(node.name)
    return changed


def _attr(gm: fx.GraphModule, target: str) -> torch.Tensor:
    obj: object = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj  # type: ignore[return-value]


PASSES: dict[str, Callable[[fx.GraphModule], list[str]]] = {
    "fold_constants": fold_constants,
    "merge_permutes": merge_permutes,
    "collapse_reshapes": collapse_reshapes,
    "reassociate_scales": reassociate_scales,
    "factor_common_scale": factor_common_scale,
}


def rewrite(gm: fx.GraphModule, passes: tuple[str, ...] = tuple(PASSES)) -> dict[str, list[str]]:
    """Run the named passes in order until none changes anything; returns, per pass, the nodes
    it rewrote. Dead nodes are removed and the module recompiled."""
    unknown = set(passes) - set(PASSES)
    if unknown:
        raise ValueError(f"unknown rewrite passes {sorted(unknown)}; choose from {sorted(PASSES)}")
    done: dict[str, list[str]] = {p: [] for p in passes}
    while True:
        step = {p: PASSES[p](gm) for p in passes}
        for p, names in step.items():
            done[p] += names
        gm.graph.eliminate_dead_code()
        gm.recompile()
        if not any(step.values()):
            return done
