"""DNNFusion-style fusion plans on an exported (aten-level) graph: seeds are Many-to-Many ops (the
toolkit's own kernels first, then in graph order, so a producer takes the elementwise ops after it
as its epilogue before a consumer could take them as a prologue), each grown into its successors and then its
predecessors while the pair table allows it and the block stays convex (no path leaves the block
and comes back). The plan is data: printable, JSON, Graphviz DOT."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch.fx import Graph, Node

from .optypes import FUSE, PROFILE, MapType, classify, is_custom, op_name, pair_rule

# decides the pairs the table leaves to profiling: (block's nodes, candidate) -> fuse?
Decider = Callable[[list[Node], Node], bool]


@dataclass
class Block:
    id: int
    seed: str  # node name
    kind: str  # MapType value of the fused block
    nodes: list[str]
    ops: list[str]
    modules: list[str]
    saved_bytes: int  # intermediate outputs that no longer go through memory

    @property
    def fused(self) -> bool:
        return len(self.nodes) > 1


@dataclass
class FusionPlan:
    blocks: list[Block]
    opaque: list[dict[str, str]] = field(default_factory=list)  # node, op, module: never fused

    @property
    def n_ops(self) -> int:
        return sum(len(b.nodes) for b in self.blocks)

    def block_of(self) -> dict[str, int]:
        return {n: b.id for b in self.blocks for n in b.nodes}

    def summary(self) -> str:
        fused = [b for b in self.blocks if b.fused]
        saved = sum(b.saved_bytes for b in self.blocks)
        lines = [f"{self.n_ops} ops in {len(self.blocks)} kernels ({len(fused)} fused blocks); "
                 f"{saved / 2**20:.2f} MiB of intermediates kept out of memory"]
        for b in fused:
            lines.append(f"  [{b.id}] {b.kind:12s} {' -> '.join(b.ops)}  ({b.modules[0] or '-'})")
        for o in self.opaque:
            lines.append(f"  opaque: {o['op']} at {o['node']} ({o['module'] or '-'}): not in the op table")
        return "\n".join(lines)

    def save(self, path: str | Path) -> Path:
        from ..checkpoint import write_json_atomic

        return write_json_atomic({"blocks": [asdict(b) for b in self.blocks], "opaque": self.opaque}, path)

    @classmethod
    def load(cls, path: str | Path) -> FusionPlan:
        data = json.loads(Path(path).read_text())
        return cls([Block(**b) for b in data["blocks"]], data["opaque"])

    def to_dot(self, graph: Graph) -> str:
        """Graphviz: one cluster per fused block, edges of the graph between op nodes."""
        owner = self.block_of()
        lines = ["digraph plan {", "  node [shape=box, fontsize=9];"]
        for b in self.blocks:
            if b.fused:
                lines.append(f'  subgraph cluster_{b.id} {{ label="[{b.id}] {b.kind}"; style=filled; '
                             f'color="#dde8f5"; ' + " ".join(f'"{n}";' for n in b.nodes) + " }")
        for node in graph.nodes:
            if node.name in owner:
                lines.append(f'  "{node.name}" [label="{op_name(node.target)}"];')
                for user in node.users:
                    if user.name in owner:
                        lines.append(f'  "{node.name}" -> "{user.name}";')
        return "\n".join([*lines, "}"])


def _nbytes(node: Node) -> int:
    val = node.meta.get("val")
    if isinstance(val, torch.Tensor):
        return val.numel() * val.element_size()
    return 0


def _module(node: Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    return next(reversed(stack.values()))[0] if stack else ""


class _Reach:
    """Descendant sets as bit masks over the compute nodes (graph order is topological)."""

    def __init__(self, nodes: list[Node]) -> None:
        self.index = {n: i for i, n in enumerate(nodes)}
        self.below: dict[Node, int] = {}
        for n in reversed(nodes):
            mask = 0
            for u in n.users:
                if u in self.index:
                    mask |= (1 << self.index[u]) | self.below[u]
            self.below[n] = mask

    def mask(self, nodes: set[Node]) -> int:
        m = 0
        for n in nodes:
            m |= 1 << self.index[n]
        return m

    def convex_with(self, block: set[Node], extra: Node) -> bool:
        """block + extra has no path that leaves it and comes back: no node outside lies both
        below some member and above another."""
        members = block | {extra}
        inside = self.mask(members)
        below_members = 0
        for n in members:
            below_members |= self.below[n]
        outside_below = below_members & ~inside
        # an outside node below a member must not reach back into the block
        for n, i in self.index.items():
            if outside_below >> i & 1 and self.below[n] & inside:
                return False
        return True


def plan_fusion(graph: Graph, decide: Decider | None = None) -> FusionPlan:
    """Partition the graph's compute nodes into fused blocks. `decide` settles the pairs the
    table leaves to profiling (default: do not fuse them)."""
    nodes = [n for n in graph.nodes if classify(n) is not None]
    kinds = {n: classify(n) for n in nodes}
    reach = _Reach(nodes)
    owner: dict[Node, int] = {}
    blocks: list[Block] = []
    first_index: dict[int, int] = {}

    def can_join(block: set[Node], kind: MapType, cand: Node, producer_first: bool) -> MapType | None:
        if cand in owner or kinds[cand] is MapType.OPAQUE:
            return None
        first, second = (kind, kinds[cand]) if producer_first else (kinds[cand], kind)
        rule, merged = pair_rule(first, second)
        if rule == PROFILE and not (decide and decide(sorted(block, key=reach.index.get), cand)):
            return None
        if rule not in (FUSE, PROFILE) or not reach.convex_with(block, cand):
            return None
        return merged

    def grow(seed: Node) -> None:
        block, kind = {seed}, kinds[seed]
        changed = True
        while changed:  # successors first, then predecessors, until nothing joins
            changed = False
            for n in sorted(block, key=reach.index.get):
                for user in n.users:
                    if user in reach.index and user not in block:
                        merged = can_join(block, kind, user, producer_first=True)
                        if merged is not None:
                            block.add(user)
                            kind, changed = merged, True
            for n in sorted(block, key=reach.index.get):
                for arg in n.all_input_nodes:
                    if arg in reach.index and arg not in block and set(arg.users) <= block \
                            and op_name(arg.target) != "getitem":  # a projection stays with its producer
                        merged = can_join(block, kind, arg, producer_first=False)
                        if merged is not None:
                            block.add(arg)
                            kind, changed = merged, True
        members = sorted(block, key=reach.index.get)
        bid = len(blocks)
        first_index[bid] = reach.index[members[0]]
        for n in members:
            owner[n] = bid
        saved = sum(_nbytes(n) for n in members if n.users and set(n.users) <= block)
        blocks.append(Block(
            bid, seed.name, kind.value, [n.name for n in members], [op_name(n.target) for n in members],
            [_module(n) for n in members], saved,
        ))

    seeds = sorted(
        (n for n in nodes if kinds[n] is MapType.MANY_TO_MANY),
        key=lambda n: (not is_custom(n.target), reach.index[n]),
    )
    for n in seeds:
        if n not in owner:
            grow(n)
    for n in nodes:  # what no seed reached: chains of the other classes, in graph order
        if n not in owner and kinds[n] is not MapType.OPAQUE:
            grow(n)
    for n in nodes:
        if n not in owner:  # opaque ops stay alone
            grow(n)
    blocks.sort(key=lambda b: first_index[b.id])  # in graph order; ids stay the creation order
    opaque = [{"node": n.name, "op": op_name(n.target), "module": _module(n)}
              for n in nodes if kinds[n] is MapType.OPAQUE]
    return FusionPlan(blocks, opaque)


def plan_model(
    model: torch.nn.Module, example: torch.Tensor | tuple, decide: Decider | None = None, **kwargs: object,
) -> tuple[FusionPlan, torch.fx.GraphModule]:
    """Export `model` on `example` (aten level, functional: higher-order ops inlined) and plan
    its fusion; returns the plan and the graph module (parameters as attributes) it refers to."""
    from .capture import capture

    gm = capture(model, example, **kwargs).program.run_decompositions({}).module()
    return plan_fusion(gm.graph, decide), gm
