"""Channel dependency groups, proven from the captured aten graph.

Every element of every intermediate tensor carries a label: the id of the output channel (of a
conv, linear or embedding) it belongs to, or -1. Labels flow through the graph by the op rules
below; shape ops (view, permute, cat, split, ...) are simply run on the label tensors, so
reshapes that merge channel and spatial dims, concatenation and chunking need no rule of their
own. Where two labelled elements meet (a residual add, a gated FFN's product, q/k/v of one
attention head) their ids are united: what is united is removed together, as one *unit*.

A unit is removable only when the graph proves that zeroing all of its parameter slices makes
every tensor element it labels exactly zero wherever that element is consumed (a second,
boolean tensor tracks that). Anything the rules cannot follow (an unknown op, a norm over the
channel dim, the model output) marks the units it touches as kept, with the reason.
"""

from __future__ import annotations

import operator
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn
from torch.fx import Node
from torch.fx.node import map_aggregate, map_arg

from .capture import Captured, capture, module_path

UNTRACKED = -1
Key = tuple[str, int]  # (state-dict name, dim)


class _UnionFind:
    def __init__(self) -> None:
        self.parent: list[int] = []

    def fresh(self, n: int) -> np.ndarray:
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        return np.arange(start, start + n, dtype=np.int64)

    def find(self, a: int) -> int:
        parent = self.parent
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def union_pairs(self, a: np.ndarray, b: np.ndarray) -> None:
        both = (a >= 0) & (b >= 0) & (a != b)
        if both.any():
            for x, y in np.unique(np.stack([a[both], b[both]], 1), axis=0):
                self.union(int(x), int(y))

    def roots(self, ids: np.ndarray) -> np.ndarray:
        out = np.full(ids.shape, UNTRACKED, dtype=np.int64)
        flat, res = ids.reshape(-1), out.reshape(-1)
        for i in np.nonzero(flat >= 0)[0]:
            res[i] = self.find(int(flat[i]))
        return out


@dataclass
class _Val:
    """Labels (int64, -1 untracked) and 'is exactly zero once its unit is removed' flags, both
    of the real tensor's shape."""

    L: Tensor
    Z: Tensor


@dataclass
class ChannelGroup:
    """Units that share the same parameter slices: the channels of one layer, of a residual
    stage, or the heads of one attention. `unit_size` is how many channels one unit covers in
    the first producer slice (1 for a channel, head_dim for a head)."""

    name: str
    keys: list[Key]
    units: list[int]
    unit_size: int

    def to_dict(self) -> dict:
        return {"name": self.name, "units": len(self.units), "unit_size": self.unit_size,
                "tensors": [f"{n}[dim {d}]" for n, d in self.keys]}


@dataclass
class DependencyGraph:
    """The result of the analysis: for every (tensor, dim) slice, the unit of each index (-1:
    never removed), the prunable groups, and what was kept dense and why."""

    slices: dict[Key, np.ndarray]
    grids: dict[str, np.ndarray]
    groups: list[ChannelGroup]
    kept: list[dict] = field(default_factory=list)  # {"tensors", "channels", "reason"}
    unsupported: list[str] = field(default_factory=list)

    @property
    def units(self) -> list[int]:
        return [u for g in self.groups for u in g.units]

    def kept_indices(self, removed: Iterable[int]) -> dict[Key, Tensor]:
        """Index of every slice entry that stays when the `removed` units go, including the
        per-dim indices of tensors used as plain operands (a class token, a position
        embedding), whose kept elements must form a sub-grid."""
        gone = np.fromiter(removed, dtype=np.int64)
        kept = {k: torch.from_numpy(np.nonzero(~np.isin(u, gone))[0])
                for k, u in self.slices.items()}
        for name, units in self.grids.items():
            keep = ~np.isin(units, gone)
            for dim in range(keep.ndim):
                rows = keep.all(axis=tuple(d for d in range(keep.ndim) if d != dim))
                kept[(name, dim)] = torch.from_numpy(np.nonzero(rows)[0])
            grid = np.ix_(*[kept[(name, d)].numpy() for d in range(keep.ndim)])
            if keep.sum() != keep[grid].size or not keep[grid].all():
                raise ValueError(f"cannot remove these units: {name} would lose elements that "
                                 "do not form whole rows/columns")
        return kept


def dependency_graph(
    model: nn.Module, example: Tensor | tuple, *, ignore: Iterable[str] = (), **kwargs: object
) -> DependencyGraph:
    """Capture `model` on `example` and build its channel dependency groups. Modules named in
    `ignore` (prefix match) keep their channels. Ops the rules do not know warn, naming the
    module and the op; the channels they touch stay dense."""
    return _Analysis(capture(model, example, **kwargs), tuple(ignore)).run()


def _name(node: Node) -> str:
    target = node.target
    if isinstance(target, torch._ops.OpOverload):
        return target._overloadpacket.__name__
    return getattr(target, "__name__", str(target))


def _where(node: Node) -> str:
    path = module_path(node)
    return f"{_name(node)} in {path}" if path else f"{_name(node)} (top level)"


def _shape_of(meta: object) -> tuple[int, ...] | None:
    return tuple(int(s) for s in meta.shape) if isinstance(meta, Tensor) else None


def _untracked(meta: object) -> object:
    """An untracked value mirroring the structure of a node's example output."""
    return map_aggregate(
        meta,
        lambda m: _Val(torch.full(m.shape, UNTRACKED, dtype=torch.long),
                       torch.zeros(m.shape, dtype=torch.bool)) if isinstance(m, Tensor) else None,
    )


def _spread(per_channel: np.ndarray | Tensor, shape: tuple[int, ...], dim: int) -> Tensor:
    view = [1] * len(shape)
    view[dim] = shape[dim]
    return torch.as_tensor(per_channel).reshape(view).expand(shape).contiguous()


def _positive(x: object) -> bool:
    return isinstance(x, (int, float)) and x > 0


ZERO_PRESERVING = {
    "relu", "relu_", "gelu", "gelu_", "silu", "silu_", "hardswish", "hardswish_", "leaky_relu",
    "leaky_relu_", "tanh", "tanh_", "neg", "abs", "mish", "elu", "selu", "sin", "sqrt", "square",
    "erf", "relu6", "sign", "atan", "sinh", "asin", "hardshrink", "softshrink", "prelu",
}
NOT_ZERO_PRESERVING = {
    "sigmoid", "sigmoid_", "hardsigmoid", "hardsigmoid_", "exp", "rsqrt", "reciprocal", "cos",
    "log", "softplus", "log_sigmoid", "logit", "erfc", "cosh",
}
IDENTITY = {
    "_to_copy", "to", "type_as", "contiguous", "clone", "alias", "detach", "lift_fresh_copy",
    "dropout", "feature_dropout", "alpha_dropout", "native_dropout", "_assert_tensor_metadata",
}
MOVEMENT = {
    "view", "reshape", "_unsafe_view", "flatten", "unflatten", "permute", "transpose", "t",
    "unsqueeze", "squeeze", "expand", "select", "slice", "narrow", "cat", "concat", "stack",
    "split", "split_with_sizes", "chunk", "unbind", "repeat", "repeat_interleave", "flip", "roll",
    "pixel_shuffle", "pixel_unshuffle", "movedim", "swapaxes", "tensor_split", "unfold",
    "view_as", "reshape_as", "expand_as", "hstack", "vstack",
}
CUTTING = {"split", "split_with_sizes", "chunk", "tensor_split", "unbind", "select", "slice",
           "narrow"}
CHANNELWISE = {  # spatial ops that keep channels apart (dim 1) and map zeros to zeros
    "max_pool1d", "max_pool2d", "max_pool3d", "avg_pool1d", "avg_pool2d", "avg_pool3d",
    "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d", "adaptive_max_pool1d",
    "adaptive_max_pool2d", "max_pool2d_with_indices", "upsample_nearest2d",
    "upsample_bilinear2d", "_upsample_nearest_exact2d", "upsample_nearest1d",
}
REDUCTIONS_SUM = {"sum"}
REDUCTIONS = {"mean", "amax", "amin", "var", "std", "norm", "max", "min", "logsumexp", "prod"}
CONV = {"conv1d", "conv2d", "conv3d", "convolution"}
ADD_LIKE = {"add", "add_", "sub", "sub_", "rsub", "maximum", "minimum"}
MUL_LIKE = {"mul", "mul_"}
DIV_LIKE = {"div", "div_"}


class _Analysis:
    def __init__(self, captured: Captured, ignore: tuple[str, ...]) -> None:
        self.cap = captured
        self.ignore = ignore
        self.uf = _UnionFind()
        self.vals: dict[Node, object] = {}
        self.slices: dict[Key, np.ndarray] = {}
        self.grids: dict[str, np.ndarray] = {}
        self.producers: list[np.ndarray] = []
        self.unsafe: dict[int, str] = {}
        self.unsupported: list[tuple[str, np.ndarray]] = []
        self.cuts: list[tuple[np.ndarray, str]] = []
        self.passive: list[tuple[int, int]] = []  # id ranges of parameters used as operands

    # --- bookkeeping -------------------------------------------------------------------------
    def fresh(self, n: int, node: Node) -> np.ndarray:
        ids = self.uf.fresh(n)
        self.producers.append(ids)
        if any(module_path(node).startswith(p) for p in self.ignore if p):
            self.sink(ids, f"{module_path(node)} is in the ignore list")
        return ids

    def member(self, name: str | None, dim: int, ids: np.ndarray) -> None:
        if name is None:
            return
        key = (name, dim)
        if key in self.slices:  # a tensor used twice (tied weights): its slices go together
            self.uf.union_pairs(self.slices[key], ids)
            self.slices[key] = np.where(self.slices[key] >= 0, self.slices[key], ids)
        else:
            self.slices[key] = np.asarray(ids, dtype=np.int64).copy()

    def sink(self, ids: np.ndarray | Tensor, reason: str) -> None:
        arr = np.asarray(ids).reshape(-1)
        for i in np.unique(arr[arr >= 0]):
            self.unsafe.setdefault(int(i), reason)

    def val(self, arg: object) -> _Val | None:
        """The labels of a node argument; parameters used as plain operands get passive ids
        of their own (sliced along with whatever unit they join)."""
        if not isinstance(arg, Node):
            return None
        if arg in self.vals:
            v = self.vals[arg]
            return v if isinstance(v, _Val) else None
        name = self.cap.tensor_name(arg)
        shape = _shape_of(arg.meta.get("val"))
        if name is None or shape is None or not arg.meta["val"].is_floating_point():
            return None
        ids = self.uf.fresh(int(np.prod(shape, dtype=np.int64))).reshape(shape)
        if ids.size:
            self.passive.append((int(ids.min()), int(ids.max()) + 1))
        self.grids[name] = ids
        v = _Val(torch.from_numpy(ids), torch.ones(shape, dtype=torch.bool))
        self.vals[arg] = v
        return v

    def inputs(self, node: Node) -> list[_Val]:
        found: list[_Val] = []
        map_arg((node.args, node.kwargs), lambda n: found.append(v) if (v := self.val(n)) else None)
        return found

    def sink_inputs(self, node: Node, reason: str) -> None:
        for v in self.inputs(node):
            ids = v.L.numpy()
            if (ids >= 0).any():
                self.sink(ids, reason)
                if node.op == "call_function":
                    self.unsupported.append((_where(node), np.unique(ids[ids >= 0])))

    def per_channel(self, v: _Val, dim: int, node: Node) -> tuple[np.ndarray, np.ndarray]:
        """One id per index of `dim` (all ids in that slice united; -1 where none), and whether
        the slice is fully labelled and exactly zero. An id found at several indices unites
        them: they go together (the channels of one head; or, for ids that follow another dim,
        the whole layer, which is never removed)."""
        L = v.L.movedim(dim, 0).reshape(v.L.shape[dim], -1).numpy()
        Z = v.Z.movedim(dim, 0).reshape(v.Z.shape[dim], -1).numpy()
        rows, cols = np.nonzero(L >= 0)
        reps = np.full(L.shape[0], UNTRACKED, dtype=np.int64)
        if rows.size:
            pairs = np.unique(np.stack([rows, L[rows, cols]], 1), axis=0)  # sorted by row
            same_row = pairs[1:, 0] == pairs[:-1, 0]
            self.uf.union_pairs(pairs[1:, 1][same_row], pairs[:-1, 1][same_row])
            first = np.ones(len(pairs), dtype=bool)
            first[1:] = ~same_row
            reps[pairs[first, 0]] = pairs[first, 1]
        whole = (L >= 0).all(1) & Z.all(1)
        return reps, whole

    def consume(self, reps: np.ndarray, whole: np.ndarray, node: Node) -> None:
        """Units read by a contraction (conv/linear input) must be exactly zero there."""
        self.sink(reps[(reps >= 0) & ~whole],
                  f"{_where(node)} reads them where they are not provably zero")

    # --- the walk ----------------------------------------------------------------------------
    def run(self) -> DependencyGraph:
        for node in self.cap.graph.nodes:
            meta = node.meta.get("val")
            if node.op == "placeholder":
                if self.cap.tensor_name(node) is None:
                    self.vals[node] = _untracked(meta)
            elif node.op == "output":
                self.sink_inputs(node, "they reach the model's output")
            elif node.op == "call_function":
                self.vals[node] = self.apply(node, meta)
        return self.result()

    def apply(self, node: Node, meta: object) -> object:
        name = _name(node)
        if node.target is operator.getitem:
            src = self.vals.get(node.args[0])
            return src[node.args[1]] if isinstance(src, (list, tuple)) else _untracked(meta)
        rule = self.rule(name)
        if rule is None:
            self.sink_inputs(node, f"{_where(node)} is not understood")
            return _untracked(meta)
        out = rule(node, meta)
        return _untracked(meta) if out is None else out

    def rule(self, name: str) -> Callable[[Node, object], object] | None:
        if name in IDENTITY:
            return lambda node, meta: self.val(node.args[0]) if _shape_of(meta) else None
        if name in MOVEMENT:
            return self.movement
        if name in ZERO_PRESERVING or name in NOT_ZERO_PRESERVING or name in {
            "hardtanh", "hardtanh_", "clamp", "clamp_", "pow"
        }:
            return self.unary
        table = {
            **dict.fromkeys(CONV, self.conv), "linear": self.linear, "embedding": self.embedding,
            "batch_norm": self.batch_norm, "_native_batch_norm_legit_no_training": self.batch_norm,
            "group_norm": self.group_norm, "layer_norm": self.layer_norm,
            "rms_norm": self.layer_norm, "scaled_dot_product_attention": self.attention,
            **dict.fromkeys(ADD_LIKE | MUL_LIKE | DIV_LIKE, self.binary), "where": self.where,
            **dict.fromkeys(CHANNELWISE, self.channelwise),
            **dict.fromkeys(REDUCTIONS | REDUCTIONS_SUM, self.reduction),
            "softmax": self.softmax, "_softmax": self.softmax, "log_softmax": self.softmax,
            "constant_pad_nd": self.pad, "pad": self.pad,
        }
        return table.get(name)

    # --- rules -------------------------------------------------------------------------------
    def movement(self, node: Node, meta: object) -> object:
        if _name(node) in CUTTING:
            self.cut_check(node)

        def run(pick: Callable[[_Val], Tensor], fill: Callable[[Tensor], Tensor]) -> object:
            def sub(n: Node) -> object:
                v = self.val(n)
                if v is None:
                    m = n.meta.get("val")
                    return fill(torch.empty(m.shape)) if isinstance(m, Tensor) else m
                return pick(v)
            return node.target(*map_arg(node.args, sub), **map_arg(node.kwargs, sub))

        L = run(lambda v: v.L, lambda t: torch.full(t.shape, UNTRACKED, dtype=torch.long))
        Z = run(lambda v: v.Z, lambda t: torch.zeros(t.shape, dtype=torch.bool))
        if isinstance(L, Tensor):
            return _Val(L.contiguous(), Z.contiguous())
        return [_Val(a.contiguous(), b.contiguous()) for a, b in zip(L, Z, strict=True)]

    def cut_check(self, node: Node) -> None:
        """Split/slice/select cut a dim at positions fixed in the code: units that would change
        that dim's size (ids not spanning all of it) must stay."""
        x = self.val(node.args[0])
        if x is None or x.L.dim() == 0:
            return
        name, args = _name(node), list(node.args)
        if name in {"split", "split_with_sizes", "chunk", "tensor_split"}:
            dim = args[2] if len(args) > 2 else 0
        else:
            dim = args[1] if len(args) > 1 else 0
        dim = node.kwargs.get("dim", dim) % x.L.dim()
        if name == "slice":
            start, end, step = (args[2:] + [None, None, 1])[:3]
            if (start or 0) == 0 and (end is None or end >= x.L.shape[dim]) and step == 1:
                return  # the whole dim: nothing is cut
        L = x.L.movedim(dim, 0).reshape(x.L.shape[dim], -1).numpy()
        if (L >= 0).any():  # judged at the end, once all unions (e.g. whole heads) are known
            self.cuts.append((L.copy(), f"{_where(node)} cuts their dim at positions fixed "
                              "in the code"))

    def unary(self, node: Node, meta: object) -> _Val | None:
        v = self.val(node.args[0])
        if v is None:
            return None
        name = _name(node)
        if name in ZERO_PRESERVING:
            keeps_zero = True
        elif name in {"hardtanh", "hardtanh_", "clamp", "clamp_"}:
            lo, hi = (list(node.args[1:3]) + [None, None])[:2]
            if name.startswith("hardtanh"):
                lo = -1.0 if lo is None else lo
                hi = 1.0 if hi is None else hi
            keeps_zero = (lo is None or lo <= 0) and (hi is None or hi >= 0)
        elif name == "pow":
            keeps_zero = _positive(node.args[1])
            if isinstance(node.args[1], Node):
                self.sink_inputs(node, f"{_where(node)} has a tensor exponent")
                return None
        else:
            keeps_zero = False
        return _Val(v.L, v.Z if keeps_zero else torch.zeros_like(v.Z))

    @staticmethod
    def _operand(arg: object, v: _Val | None, shape: tuple[int, ...]) -> _Val:
        """`arg` (its labels `v`, or a constant) broadcast to `shape`."""
        if v is not None:
            return _Val(v.L.expand(shape), v.Z.expand(shape))
        zero = isinstance(arg, (int, float)) and arg == 0
        return _Val(torch.full(shape, UNTRACKED, dtype=torch.long),
                    torch.full(shape, zero, dtype=torch.bool))

    def _is_passive(self, ids: np.ndarray) -> bool:
        """Whether every id is a parameter's own (from `val`), none a layer's output channel."""
        ids = ids[ids >= 0]
        inside = np.zeros(ids.shape, dtype=bool)
        for lo, hi in self.passive:
            inside |= (ids >= lo) & (ids < hi)
        return bool(ids.size) and bool(inside.all())

    def _operands(self, node: Node, args: tuple, shape: tuple[int, ...]) -> list[_Val]:
        """The operands broadcast to `shape`. A parameter-derived operand (e.g. RoPE's cos/sin
        from `inv_freq`) broadcast along a dim where another operand's units differ (heads,
        layers) is shared by them: it must not be sliced with any one, so it joins none here
        (uniting through it would merge every head of every layer into one unit), and a unit it
        joins elsewhere keeps its channels."""
        raw = [self.val(a) for a in args]
        ops = [self._operand(a, r, shape) for a, r in zip(args, raw, strict=True)]
        for i, (v, r) in enumerate(zip(ops, raw, strict=True)):
            if r is None or not self._is_passive(r.L.numpy()):
                continue
            lead = len(shape) - r.L.dim()
            bcast = [d for d in range(len(shape))
                     if shape[d] > 1 and (d < lead or r.L.shape[d - lead] == 1)]
            others = [o.L for j, o in enumerate(ops) if j != i]
            if any(not torch.equal(L, L.narrow(d, 0, 1).expand_as(L)) for L in others for d in bcast):
                self.sink(r.L.numpy(), f"{_where(node)} also broadcasts them over several units")
                ops[i] = _Val(torch.full(shape, UNTRACKED, dtype=torch.long), v.Z)
        return ops

    def binary(self, node: Node, meta: object) -> _Val | None:
        shape = _shape_of(meta)
        if shape is None:
            return None
        a, b = self._operands(node, tuple(node.args[:2]), shape)
        La, Lb = a.L.numpy(), b.L.numpy()
        self.uf.union_pairs(La.reshape(-1), Lb.reshape(-1))
        L = torch.where(a.L >= 0, a.L, b.L)
        name = _name(node)
        if name in MUL_LIKE:
            Z = a.Z | b.Z
        elif name in DIV_LIKE:
            Z = a.Z.clone()
        else:
            Z = a.Z & b.Z
        return _Val(L.contiguous(), Z.contiguous())

    def where(self, node: Node, meta: object) -> _Val | None:
        cond = self.val(node.args[0])
        if cond is not None and (cond.L >= 0).any():
            self.sink(cond.L.numpy(), f"{_where(node)} uses them as a condition")
        shape = _shape_of(meta)
        a, b = self._operands(node, (node.args[1], node.args[2]), shape)
        self.uf.union_pairs(a.L.numpy().reshape(-1), b.L.numpy().reshape(-1))
        return _Val(torch.where(a.L >= 0, a.L, b.L).contiguous(), (a.Z & b.Z).contiguous())

    def conv(self, node: Node, meta: object) -> _Val | None:
        args = list(node.args)
        if _name(node) == "convolution":
            if args[6]:  # transposed
                self.sink_inputs(node, f"{_where(node)}: transposed convolution is not supported")
                return None
            groups = args[8]
        else:
            groups = args[6] if len(args) > 6 else node.kwargs.get("groups", 1)
        x, w = self.val(args[0]), args[1]
        bias = args[2] if len(args) > 2 else node.kwargs.get("bias")
        wname = self.cap.tensor_name(w)
        if wname is None or x is None:
            self.sink_inputs(node, f"{_where(node)} has a computed weight")
            return None
        out_ch = w.meta["val"].shape[0]
        out = self.fresh(out_ch, node)
        self.member(wname, 0, out)
        self.member(self.cap.tensor_name(bias), 0, out)
        reps, whole = self.per_channel(x, 1, node)
        if groups == 1:
            self.member(wname, 1, reps)
            self.consume(reps, whole, node)
        else:  # grouped/depthwise: a whole group (its inputs and outputs) is one unit
            ins, outs = reps.reshape(groups, -1), out.reshape(groups, -1)
            for g in range(groups):
                if (ins[g] < 0).any():
                    self.sink(outs[g], f"{_where(node)}: its group {g} reads channels that "
                              "cannot be removed")
                chain = np.concatenate([ins[g][ins[g] >= 0], outs[g]])
                self.uf.union_pairs(chain[1:], chain[:-1])
        shape = _shape_of(meta)
        return _Val(_spread(out, shape, 1), torch.ones(shape, dtype=torch.bool))

    def linear(self, node: Node, meta: object) -> _Val | None:
        x, w = self.val(node.args[0]), node.args[1]
        bias = node.args[2] if len(node.args) > 2 else node.kwargs.get("bias")
        wname = self.cap.tensor_name(w)
        if wname is None or x is None:
            self.sink_inputs(node, f"{_where(node)} has a computed weight")
            return None
        out = self.fresh(w.meta["val"].shape[0], node)
        self.member(wname, 0, out)
        self.member(self.cap.tensor_name(bias), 0, out)
        reps, whole = self.per_channel(x, x.L.dim() - 1, node)
        self.member(wname, 1, reps)
        self.consume(reps, whole, node)
        shape = _shape_of(meta)
        return _Val(_spread(out, shape, len(shape) - 1), torch.ones(shape, dtype=torch.bool))

    def embedding(self, node: Node, meta: object) -> _Val | None:
        wname = self.cap.tensor_name(node.args[0])
        idx = self.val(node.args[1])
        if idx is not None:
            self.sink(idx.L.numpy(), f"{_where(node)} uses them as indices")
        if wname is None:
            return None
        shape = _shape_of(meta)
        out = self.fresh(shape[-1], node)
        self.member(wname, 1, out)
        return _Val(_spread(out, shape, len(shape) - 1), torch.ones(shape, dtype=torch.bool))

    def batch_norm(self, node: Node, meta: object) -> object:
        x = self.val(node.args[0])
        if x is None:
            return None
        reps, _ = self.per_channel(x, 1, node)
        names = [self.cap.tensor_name(a) for a in node.args[1:5]]
        for n in names:
            self.member(n, 0, reps)
        affine = names[0] is not None and names[1] is not None
        shape = tuple(x.L.shape)
        out = _Val(_spread(reps, shape, 1), torch.full(shape, affine, dtype=torch.bool))
        return out if isinstance(meta, Tensor) else [out, *(_untracked(meta[1:]))]

    def group_norm(self, node: Node, meta: object) -> _Val | None:
        x = self.val(node.args[0])
        if x is None:
            return None
        groups = node.args[1]
        reps, _ = self.per_channel(x, 1, node)
        per_group = reps.reshape(groups, -1)
        for g in range(groups):
            row = per_group[g]
            if (row < 0).any():
                self.sink(row, f"{_where(node)}: group {g} mixes removable and fixed channels")
            tracked = row[row >= 0]
            self.uf.union_pairs(tracked[1:], tracked[:-1])
            per_group[g] = tracked[0] if tracked.size and (row >= 0).all() else UNTRACKED
        reps = per_group.reshape(-1)
        names = [self.cap.tensor_name(a) for a in node.args[2:4]]
        for n in names:
            self.member(n, 0, reps)
        shape = tuple(x.L.shape)
        affine = all(n is not None for n in names)
        return _Val(_spread(reps, shape, 1), torch.full(shape, affine, dtype=torch.bool))

    def _rows(self, v: _Val, dims: list[int]) -> tuple[Tensor, Tensor, Tensor]:
        keep = [d for d in range(v.L.dim()) if d not in dims]
        perm = keep + dims
        lead = [v.L.shape[d] for d in keep]
        L = v.L.permute(perm).reshape(*lead, -1)
        Z = v.Z.permute(perm).reshape(*lead, -1)
        const = (L == L[..., :1]).all(-1)
        return L, Z, const

    def layer_norm(self, node: Node, meta: object) -> _Val | None:
        x = self.val(node.args[0])
        if x is None:
            return None
        k = len(node.args[1])
        dims = list(range(x.L.dim() - k, x.L.dim()))
        L, _, const = self._rows(x, dims)
        self.sink(L[~const].numpy(), f"{_where(node)} normalizes over them")
        return _Val(x.L, torch.zeros_like(x.Z))

    def softmax(self, node: Node, meta: object) -> _Val | None:
        x = self.val(node.args[0])
        if x is None:
            return None
        dim = node.args[1] % x.L.dim()
        L, _, const = self._rows(x, [dim])
        self.sink(L[~const].numpy(), f"{_where(node)} normalizes over them")
        return _Val(x.L, torch.zeros_like(x.Z))

    def reduction(self, node: Node, meta: object) -> object:
        x = self.val(node.args[0])
        shape = _shape_of(meta if isinstance(meta, Tensor) else meta[0])
        if x is None or shape is None:
            return None
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        if dims is None or dims == []:
            dims = list(range(x.L.dim()))
        dims = [d % x.L.dim() for d in ([dims] if isinstance(dims, int) else dims)]
        L, Z, const = self._rows(x, dims)
        mixed = L[~const].numpy()
        if _name(node) in REDUCTIONS_SUM:
            zero = Z[~const].numpy()
            self.sink(mixed[~zero], f"{_where(node)} sums them where they are not zero")
        else:
            self.sink(mixed, f"{_where(node)} reduces over them")
        out_L = torch.where(const, L[..., 0], UNTRACKED).reshape(shape)
        out_Z = (Z.all(-1) & const).reshape(shape)
        out = _Val(out_L.contiguous(), out_Z.contiguous())
        return out if isinstance(meta, Tensor) else [out, *(_untracked(meta[1:]))]

    def channelwise(self, node: Node, meta: object) -> object:
        x = self.val(node.args[0])
        first = meta if isinstance(meta, Tensor) else meta[0]
        if x is None or x.L.dim() < 3:
            self.sink_inputs(node, f"{_where(node)} is not understood")
            return None
        reps, whole = self.per_channel(x, 1, node)
        shape = _shape_of(first)
        out = _Val(_spread(reps, shape, 1), _spread(torch.from_numpy(whole), shape, 1))
        return out if isinstance(meta, Tensor) else [out, *(_untracked(meta[1:]))]

    def pad(self, node: Node, meta: object) -> _Val | None:
        x = self.val(node.args[0])
        if x is None:
            return None
        pads = node.args[1]
        value = node.args[3] if _name(node) == "pad" and len(node.args) > 3 else (
            node.args[2] if _name(node) == "constant_pad_nd" and len(node.args) > 2 else 0)
        mode = node.args[2] if _name(node) == "pad" and len(node.args) > 2 else "constant"
        if len(pads) > 2 * (x.L.dim() - 2):
            self.sink_inputs(node, f"{_where(node)} pads the channel dim")
            return None
        out = self.channelwise(node, meta)
        if mode != "constant" or value:  # the padded border is not zero: neither is the channel
            out = _Val(out.L, torch.zeros_like(out.Z))
        return out

    def attention(self, node: Node, meta: object) -> _Val | None:
        q, k, v = (self.val(a) for a in node.args[:3])
        mask = self.val(node.args[3]) if len(node.args) > 3 else self.val(node.kwargs.get("attn_mask"))
        if mask is not None:
            self.sink(mask.L.numpy(), f"{_where(node)} uses them as a mask")
        shape = _shape_of(meta)
        if q is None or k is None or v is None or len(shape) < 3:
            self.sink_inputs(node, f"{_where(node)} is not understood")
            return None
        hq, hkv = q.L.shape[-3], k.L.shape[-3]
        heads = []
        for h in range(hq):
            j = h * hkv // hq
            ids = np.concatenate([t.L.select(-3, i).numpy().reshape(-1)
                                  for t, i in ((q, h), (k, j), (v, j))])
            ids = np.unique(ids[ids >= 0])
            self.uf.union_pairs(ids[1:], ids[:-1])
            vh = v.L.select(-3, j)
            zero = bool((vh >= 0).all() and v.Z.select(-3, j).all())
            heads.append((ids[0] if ids.size else UNTRACKED, zero))
        reps = np.array([r for r, _ in heads], dtype=np.int64)
        zeros = torch.tensor([z for _, z in heads])
        dim = len(shape) - 3
        return _Val(_spread(reps, shape, dim), _spread(zeros, shape, dim))

    # --- result ------------------------------------------------------------------------------
    def result(self) -> DependencyGraph:
        uf = self.uf
        for L, reason in self.cuts:
            R = uf.roots(L)
            rows, cols = np.nonzero(R >= 0)
            pairs = np.unique(np.stack([R[rows, cols], rows], 1), axis=0)
            roots, counts = np.unique(pairs[:, 0], return_counts=True)
            self.sink(roots[counts < L.shape[0]], reason)
        producer_roots = set(uf.roots(np.concatenate(self.producers)).tolist()) if self.producers else set()
        unsafe_roots: dict[int, str] = {}
        for i, reason in self.unsafe.items():
            unsafe_roots.setdefault(uf.find(i), reason)
        slices = {k: uf.roots(v) for k, v in self.slices.items()}
        grids = {n: uf.roots(v) for n, v in self.grids.items()}
        touched: dict[int, list[Key]] = defaultdict(list)
        for key, roots in slices.items():
            for r in np.unique(roots[roots >= 0]):
                touched[int(r)].append(key)
        prunable = {r for r in touched if r in producer_roots and r not in unsafe_roots}
        for roots in [*slices.values(), *grids.values()]:
            roots[~np.isin(roots, list(prunable))] = UNTRACKED
        by_keys: dict[tuple[Key, ...], list[int]] = defaultdict(list)
        for r in sorted(touched):
            by_keys[tuple(touched[r])].append(r)
        groups, kept = [], []
        for keys, roots in by_keys.items():
            ok = [r for r in roots if r in prunable]
            first = next((k for k in keys if k[1] == 0), keys[0])
            label = f"{first[0]} (+{len(keys) - 1} tensors)"
            if ok:
                size = int((slices[first] == ok[0]).sum())
                groups.append(ChannelGroup(label, list(keys), ok, max(size, 1)))
            bad = [r for r in roots if r not in prunable and r in producer_roots]
            if bad:
                reason = unsafe_roots.get(bad[0], "not produced by a prunable layer")
                kept.append({"tensors": label, "channels": len(bad), "reason": reason})
        unsupported = sorted({where for where, ids in self.unsupported
                              if producer_roots & set(uf.roots(ids).tolist())})
        for where in unsupported:
            warnings.warn(f"structured pruning: op {where} is not understood; the channels "
                          "that flow through it stay dense", stacklevel=4)
        return DependencyGraph(slices, grids, groups, kept, unsupported)
