"""Structured pruning that removes channels and heads for real: rank the units of the dependency
graph, pick which go (a ratio, a FLOPs reduction, or a measured speed-up), and shrink the model.
The result is a plan (kept indices per tensor) saved as JSON and replayable on a fresh model,
so a pruned checkpoint loads without tracing anything."""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from ..checkpoint import write_json_atomic
from ..profile.flops import count_flops
from ..profile.latency import interleaved
from .dependency import DependencyGraph, Key, dependency_graph
from .depth import ResidualBranch, drop_branches, residual_branches
from .importance import unit_scores
from .shrink import Fixup, shrink

SCOPES = ("layer", "global", "latency")


@dataclass
class PrunePlan:
    """What structured pruning did, as data: the kept indices of every sliced tensor (their
    original sizes alongside), the groups it ranked, what stayed dense and why, and the FLOPs
    and parameter counts before and after."""

    kept: dict[Key, list[int]]
    sizes: dict[Key, int]
    groups: list[dict] = field(default_factory=list)
    kept_dense: list[dict] = field(default_factory=list)
    unsupported: list[str] = field(default_factory=list)
    flops: tuple[int, int] = (0, 0)
    params: tuple[int, int] = (0, 0)
    dropped: list[dict] = field(default_factory=list)  # {"module", "add", "children", "shape"}

    def to_dict(self) -> dict:
        return {
            "kept": [{"tensor": n, "dim": d, "size": self.sizes[(n, d)], "indices": idx}
                     for (n, d), idx in self.kept.items()],
            "groups": self.groups, "kept_dense": self.kept_dense,
            "unsupported_ops": self.unsupported,
            "flops": {"before": self.flops[0], "after": self.flops[1]},
            "params": {"before": self.params[0], "after": self.params[1]},
            "dropped_branches": self.dropped,
        }

    @classmethod
    def from_dict(cls, data: dict) -> PrunePlan:
        kept = {(e["tensor"], int(e["dim"])): [int(i) for i in e["indices"]] for e in data["kept"]}
        sizes = {(e["tensor"], int(e["dim"])): int(e["size"]) for e in data["kept"]}
        return cls(kept, sizes, data.get("groups", []), data.get("kept_dense", []),
                   data.get("unsupported_ops", []),
                   (data["flops"]["before"], data["flops"]["after"]),
                   (data["params"]["before"], data["params"]["after"]),
                   data.get("dropped_branches", []))

    def save(self, path: str | Path) -> Path:
        """Write the plan as JSON atomically (temporary file, then rename): a run killed
        mid-write, or ranks writing the same plan, never leave a torn file."""
        return write_json_atomic(self.to_dict(), path)

    @classmethod
    def load(cls, path: str | Path) -> PrunePlan:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def summary(self) -> str:
        f0, f1 = self.flops
        p0, p1 = self.params
        lines = [f"FLOPs {f0 / 1e6:.1f} M -> {f1 / 1e6:.1f} M ({1 - f1 / max(f0, 1):.1%} fewer), "
                 f"parameters {p0 / 1e6:.3f} M -> {p1 / 1e6:.3f} M"]
        lines += [f"kept dense: {k['tensors']}: {k['channels']} units ({k['reason']})"
                  for k in self.kept_dense]
        lines += [f"dropped residual branch {d['module']}:{d['add']} ({', '.join(d['children'])})"
                  for d in self.dropped]
        lines += [f"unsupported op: {u}" for u in self.unsupported]
        return "\n".join(lines)


def apply_plan(model: nn.Module, plan: PrunePlan, *, fixups: dict[type[nn.Module], Fixup] | None = None) -> nn.Module:
    """Shrink a fresh copy of the original architecture as `plan` says (then load the pruned
    state dict into it); no tracing needed, except torch.fx on the modules whose residual
    branches the plan drops. A plan made for another model is refused."""
    tensors = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    for (name, dim), size in plan.sizes.items():
        if name not in tensors or tensors[name].shape[dim] != size:
            raise ValueError(f"this plan does not fit the model: {name} (dim {dim}) should have "
                             f"size {size}; build the model from the same recipe first")
    model = shrink(model, {k: torch.tensor(v, dtype=torch.long) for k, v in plan.kept.items()},
                   fixups=fixups)
    branches = [ResidualBranch(d["module"], d["add"], tuple(d["children"])) for d in plan.dropped]
    return drop_branches(model, branches, None, {b.name: tuple(d["shape"])
                                                 for b, d in zip(branches, plan.dropped, strict=True)})


def select_units(
    graph: DependencyGraph,
    scores: dict[int, float],
    ratio: float,
    *,
    scope: str = "layer",
    round_to: int = 1,
    max_ratio: float = 0.9,
    limits: dict[str, float] | None = None,
) -> list[int]:
    """The units to remove: `ratio` of each group's units (scope 'layer') or of all channels
    ranked together ('global'), never more than `max_ratio` of a group (or the `limits` value
    of a module prefix that produces the group's channels, the smallest that applies), with the
    kept channel count of every group a multiple of `round_to` where the group allows it.
    (Scope 'latency' has no ratio: `prune_channels` allocates it by measurement.)"""
    if scope not in SCOPES[:2]:
        raise ValueError(f"select_units takes scope 'layer' or 'global', got {scope!r}")
    if not 0 <= ratio < 1:
        raise ValueError(f"ratio must be in [0, 1), got {ratio}")
    cap = _caps(graph, max_ratio, limits)
    removed: dict[int, list[int]] = {}
    if scope == "layer":
        for i, g in enumerate(graph.groups):
            n = len(g.units)
            keep = math.floor(n * (1 - ratio) + 1e-9)  # keep the floor, as Torch-Pruning does
            k = min(n - keep, math.floor(cap[i] * n))
            removed[i] = sorted(g.units, key=scores.__getitem__)[:k]
    else:
        owner = {u: i for i, g in enumerate(graph.groups) for u in g.units}
        total = sum(len(g.units) * g.unit_size for g in graph.groups)
        budget, taken = ratio * total, 0
        removed = {i: [] for i in range(len(graph.groups))}
        for u in sorted(owner, key=scores.__getitem__):
            if taken >= budget:
                break
            g = graph.groups[owner[u]]
            if len(removed[owner[u]]) + 1 <= math.floor(cap[owner[u]] * len(g.units)):
                removed[owner[u]].append(u)
                taken += g.unit_size
    out: list[int] = []
    for i, gone in removed.items():
        g = graph.groups[i]
        step = _unit_step(g.unit_size, round_to)
        keep = len(g.units) - len(gone)
        rounded = min(len(g.units), max(step, math.ceil(keep / step) * step))
        gone = sorted(gone, key=scores.__getitem__)[: len(g.units) - rounded]
        out.extend(gone)
    return out


def _caps(graph: DependencyGraph, max_ratio: float, limits: dict[str, float] | None) -> list[float]:
    """The largest removable share of each group: `max_ratio`, or the smallest `limits` value of
    a module prefix that produces the group's channels."""
    if any(not 0 <= v < 1 for v in [max_ratio, *(limits or {}).values()]):
        raise ValueError(f"max_ratio and every limit must be in [0, 1), got {max_ratio}, {limits}")
    return [min([max_ratio] + [v for prefix, v in (limits or {}).items()
                               if any(n.startswith(prefix) for n, d in g.keys if d == 0)])
            for g in graph.groups]


def _unit_step(unit_size: int, round_to: int) -> int:
    """Units per `round_to` channels (a unit may span several channels, e.g. a head)."""
    return round_to // math.gcd(round_to, unit_size)


def prune_channels(
    model: nn.Module,
    example: Tensor | tuple,
    *,
    ratio: float | None = None,
    flops: float | None = None,
    speedup: float | None = None,
    importance: str = "l2",
    scope: str = "layer",
    round_to: int = 1,
    max_ratio: float = 0.9,
    limits: dict[str, float] | None = None,
    ignore: Iterable[str] = (),
    fixups: dict[type[nn.Module], Fixup] | None = None,
    latency_batch: int | None = None,
    depth: bool = False,
) -> tuple[nn.Module, PrunePlan]:
    """Remove channels/heads from a copy of `model`: `ratio` of the units, or as few as give
    `flops` (fraction of FLOPs removed), or a measured `speedup` on `example` (dense time over
    pruned time); exactly one target. `limits` caps the removed share per module prefix
    (e.g. {"layer1": 0.3}); `ignore` keeps modules whole. Scope 'latency' spends the target
    where it buys the most measured time per importance lost (`allocate_by_latency`).
    Timing runs on `example` repeated to `latency_batch` rows when given. `depth` (scope
    'latency' only) also offers the greedy whole residual branches to drop (graph.depth).
    Returns the smaller model and its plan."""
    targets = [t for t in (ratio, flops, speedup) if t is not None]
    if len(targets) != 1:
        raise ValueError("give exactly one target: ratio=, flops= (fraction of FLOPs removed) "
                         "or speedup= (measured, e.g. 1.6)")
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    if scope == "latency" and ratio is not None:
        raise ValueError("scope 'latency' chooses each group's ratio itself: give flops= or "
                         "speedup= as the target, not ratio=")
    if depth and scope != "latency":
        raise ValueError("depth: true needs scope 'latency' (only the measured greedy weighs "
                         "dropping a whole branch against thinning layers)")
    if flops is not None and not 0 < flops < 1:
        raise ValueError(f"flops is the fraction of FLOPs to remove, in (0, 1); got {flops}")
    if speedup is not None and speedup <= 1:
        raise ValueError(f"speedup must be > 1, got {speedup}")
    x = example[0] if isinstance(example, tuple) else example
    timing_x = x if latency_batch is None else torch.cat([x[:1]] * latency_batch)
    graph = dependency_graph(model, example, ignore=ignore)
    scores = unit_scores(model, graph, importance)
    base_flops = count_flops(model, x).dense_flops
    if flops is not None:
        target, what = flops, "FLOPs reduction"
        reached = lambda m: 1 - count_flops(m, x).dense_flops / base_flops  # noqa: E731
    else:
        target, what = speedup, "speed-up"
        reached = lambda m: _measured_speedup(model, m, timing_x)  # noqa: E731

    def build(r: float) -> tuple[nn.Module, list[int]]:
        removed = select_units(graph, scores, r, scope=scope, round_to=round_to,
                               max_ratio=max_ratio, limits=limits)
        return shrink(copy.deepcopy(model), graph.kept_indices(removed), fixups=fixups), removed

    dropped: list[ResidualBranch] = []
    if ratio is not None:
        small, removed = build(ratio)
    elif scope == "latency":
        small, removed, dropped = allocate_by_latency(
            model, graph, scores, timing_x, reached, target, what=what, round_to=round_to,
            caps=_caps(graph, max_ratio, limits), fixups=fixups,
            branches=residual_branches(model) if depth else (), example=x,
            counted=flops is not None,
        )
    else:
        small, removed = _search(build, reached, target, max_ratio, what)
    plan = _plan(model, small, graph, removed, x, base_flops)
    plan.dropped = [{"module": b.module, "add": b.add, "children": list(b.children),
                     "shape": list(getattr(small.get_submodule(b.module), f"const_{b.add}").shape)}
                    for b in dropped]
    return small, plan


def allocate_by_latency(
    model: nn.Module, graph: DependencyGraph, scores: dict[int, float], x: Tensor,
    reached: Callable[[nn.Module], float], target: float, *, what: str, round_to: int,
    caps: list[float], fixups: dict[type[nn.Module], Fixup] | None = None, steps: int = 8,
    branches: Iterable[ResidualBranch] = (), example: Tensor | None = None,
    counted: bool = False,
) -> tuple[nn.Module, list[int], list[ResidualBranch]]:
    """NetAdapt-style greedy allocation: until `reached(model) >= target`, propose for every
    group the removal of its next least important 1/`steps` of units (and, for every residual
    branch in `branches`, dropping it with all the units of the groups inside it), time all
    proposals side by side on `x`, and take the one that saves the most measured time per unit
    of importance lost. Per-group ratios thus follow the target machine: on small CNNs the
    wide, high-resolution layers, whose memory traffic dominates, go first. `example` (batch
    1) computes the constants dropped branches leave behind. When `reached` is counted, not
    timed (`counted`: a FLOPs target), the last move is the one that reaches the target and
    saves time losing least importance, so a big move (a whole branch) does not overshoot it. Returns
    the model, the removed units and the dropped branches."""
    order = [sorted(g.units, key=scores.__getitem__) for g in graph.groups]
    taken = [0] * len(order)
    inner = {b: [i for i, g in enumerate(graph.groups) if all(b.owns(k[0]) for k in g.keys)]
             for b in branches}
    inner = {b: groups for b, groups in inner.items() if groups}  # nothing to weigh: not offered
    dropped: list[ResidualBranch] = []

    def build(counts: list[int], drop: list[ResidualBranch]) -> tuple[nn.Module, list[int]]:
        removed = [u for units, k in zip(order, counts, strict=True) for u in units[:k]]
        small = shrink(copy.deepcopy(model), graph.kept_indices(removed), fixups=fixups)
        return drop_branches(small, drop, example), removed

    def lost(i: int, k: int) -> float:
        return sum(scores[u] for u in order[i][taken[i]:k])

    current = build(taken, dropped)
    while reached(current[0]) < target:
        gone = {i for b in dropped for i in inner[b]}
        proposals: dict[object, tuple[list[int], list[ResidualBranch], float]] = {}
        for i, g in enumerate(graph.groups):
            n, unit = len(g.units), _unit_step(g.unit_size, round_to)
            step = unit * math.ceil(max(1, math.ceil(n / steps)) / unit)
            kept = ((n - taken[i] - 1) // step) * step
            if i not in gone and kept >= 1 and n - kept <= math.floor(caps[i] * n):
                counts = [n - kept if j == i else t for j, t in enumerate(taken)]
                proposals[i] = (counts, dropped, lost(i, n - kept))
        for b, groups in inner.items():
            if b not in dropped:
                proposals[b.name] = (taken, [*dropped, b],
                                     sum(lost(i, len(order[i])) for i in groups))
        if not proposals:
            raise ValueError(f"{what} {target:g} is out of reach: every group is at its limit "
                             f"(reached {reached(current[0]):.3g}); raise max_ratio or lower the "
                             "target")
        built = {key: build(counts, drop) for key, (counts, drop, _) in proposals.items()}
        with torch.inference_mode():
            fns = {str(key): (lambda m=m: m(x)) for key, (m, _) in built.items()}
            times = interleaved({"current": lambda m=current[0]: m(x), **fns},
                                rounds=3, repeats=5)
        now = times["current"].median_s
        value = {key: (now - times[str(key)].median_s) / (proposals[key][2] + 1e-9)
                 for key in proposals}
        best = max(value, key=value.__getitem__)
        if counted:  # of the moves that finish and save time, the one losing least importance
            finishing = [key for key in proposals
                         if value[key] > 0 and reached(built[key][0]) >= target]
            if finishing:
                best = min(finishing, key=lambda key: proposals[key][2])
        taken, dropped = proposals[best][0], proposals[best][1]
        current = built[best]
    return current[0], current[1], dropped


def _search(build: Callable[[float], tuple[nn.Module, list[int]]], reached: Callable[[nn.Module], float],
            target: float, max_ratio: float, what: str, steps: int = 10) -> tuple[nn.Module, list[int]]:
    """The smallest ratio whose model reaches `target` (bisection; `reached` grows with it)."""
    best = build(max_ratio)
    top = reached(best[0])
    if top < target:
        raise ValueError(f"{what} {target:g} is out of reach: removing {max_ratio:.0%} of every "
                         f"group gives {top:.3g}; raise max_ratio or lower the target")
    lo, hi = 0.0, max_ratio
    for _ in range(steps):
        mid = (lo + hi) / 2
        candidate = build(mid)
        if reached(candidate[0]) >= target:
            hi, best = mid, candidate
        else:
            lo = mid
    return best


def _measured_speedup(dense: nn.Module, small: nn.Module, x: Tensor) -> float:
    with torch.inference_mode():
        t = interleaved({"dense": lambda: dense(x), "small": lambda: small(x)}, rounds=3, repeats=5)
    return t["dense"].median_s / t["small"].median_s


def _plan(model: nn.Module, small: nn.Module, graph: DependencyGraph, removed: list[int],
          x: Tensor, base_flops: int) -> PrunePlan:
    kept = graph.kept_indices(removed)
    tensors = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    sizes = {k: int(tensors[k[0]].shape[k[1]]) for k in kept if k[0] in tensors}
    changed = {k: v.tolist() for k, v in kept.items() if k in sizes and len(v) != sizes[k]}
    return PrunePlan(
        kept=changed, sizes={k: sizes[k] for k in changed},
        groups=[g.to_dict() for g in graph.groups], kept_dense=graph.kept,
        unsupported=graph.unsupported,
        flops=(base_flops, count_flops(small, x).dense_flops),
        params=(sum(p.numel() for p in model.parameters()),
                sum(p.numel() for p in small.parameters())),
    )
