"""Lowering a fusion plan (fusion_plan.py) on CPU. A block seeded by one of our sparse kernels
(the BSR/BCR/CSR/N:M linears, the direct sparse conv) hands its epilogue to that kernel: an add
of a tensor shaped like the kernel's output, then relu or gelu, in that order (the kernel
computes act(x W^T + b + residual), see kernels/ops.py), becomes one call of the op with
`residual` and `activation` set; the int8 Winograd conv takes the same add and a following
relu into its output transform. Everything else (blocks of stock ops, what a kernel cannot
take) is left to TorchInductor, which compiles the rewritten graph; TorchInductor treats our
ops as opaque calls, so the epilogue would otherwise be a kernel of its own and one more trip
through memory."""

from __future__ import annotations

import copy
import json
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.utils._pytree as pytree
from torch import fx, nn
from torch.fx import Node

from .fusion_plan import FusionPlan, plan_model
from .optypes import NO_COMPUTE, op_name

aten = torch.ops.aten
# our ops whose C++ kernel applies the epilogue (activation, residual arguments)
EPILOGUE_KERNELS = frozenset({"sparseforge::bsr_linear", "sparseforge::bcr_linear",
                              "sparseforge::csr_linear", "sparseforge::nm_linear",
                              "sparseforge::gemv_linear",
                              "sparseforge::sparse_conv2d", "sparseforge::sparse_input_linear"})
# our ops whose kernel takes a residual but only a ReLU (a `relu` flag, in the output transform)
RELU_KERNELS = frozenset({"sparseforge::winograd_int8_conv2d"})
# our ops that take a FATReLU of their input as a prologue (`input_threshold`)
PROLOGUE_KERNELS = frozenset({"sparseforge::sparse_input_linear"})


def _activation(node: Node) -> str | None:
    """The kernel's name for the activation `node` computes, None if it is not one."""
    if node.target in (aten.relu.default, aten.relu_.default):
        return "relu"
    if node.target is aten.gelu.default:
        approx = node.kwargs.get("approximate", node.args[1] if len(node.args) > 1 else "none")
        return "gelu_tanh" if approx == "tanh" else "gelu"
    return None


def _like(a: Node, b: Node) -> bool:
    """Same shape and dtype (the residual must be exactly the output's shape: no broadcast)."""
    va, vb = a.meta.get("val"), b.meta.get("val")
    return (isinstance(va, torch.Tensor) and isinstance(vb, torch.Tensor)
            and tuple(va.shape) == tuple(vb.shape) and va.dtype == vb.dtype == torch.float32)


def _checks(node: Node) -> list[Node]:
    """The users of `node` that compute nothing (export's dtype/shape asserts)."""
    return [u for u in node.users if u.op == "call_function" and op_name(u.target) in NO_COMPUTE]


def _sole_user(node: Node) -> Node | None:
    """The one user of `node` that computes something, None when there are none or several."""
    users = [u for u in node.users if u not in _checks(node)]
    return users[0] if len(users) == 1 else None


def _only_user(node: Node, members: set[str]) -> Node | None:
    user = _sole_user(node)
    return user if user is not None and user.name in members else None


def _uint8_qparams(node: object, name: str) -> tuple[Node, float, int] | None:
    """(input, scale, zero point) when `node` is PT2E's per-tensor `name` (quantize_per_tensor
    or dequantize_per_tensor, quantized_decomposed) of a uint8 activation over 0..255 with
    constant parameters, else None."""
    schema = getattr(getattr(node, "target", None), "_schema", None)
    if (schema is None or schema.name != f"quantized_decomposed::{name}" or schema.overload_name
            or len(node.args) < 6):
        return None
    x, scale, zero_point, qmin, qmax, dtype = node.args[:6]
    if (qmin, qmax, dtype) != (0, 255, torch.uint8) or not isinstance(scale, float) \
            or not isinstance(zero_point, int):
        return None
    return x, scale, zero_point


def _has_epilogue(node: Node) -> bool:
    names = (a.name for a in node.target._schema.arguments)
    bound = dict(zip(names, node.args, strict=False)) | dict(node.kwargs)
    return (bound.get("activation", "none") != "none" or bound.get("residual") is not None
            or bool(bound.get("relu", False)) or bound.get("input_threshold") is not None)


def _fatrelu_input(seed: Node) -> tuple[Node, float, list[Node]] | None:
    """(v, t, nodes) when the seed's input is FATReLU(v, t) as export writes it,
    where(ge(v, t), v, zeros_like(v)), each node of it used only by the next. Its nodes may lie
    in the block before (grown as the epilogue of a kernel that cannot take a FATReLU, e.g. the
    GEMV up projection): used by nothing else, they move into the seed all the same."""
    where = seed.args[0]
    if not (isinstance(where, Node) and where.target is aten.where.self and len(where.args) == 3):
        return None
    cond, v, zero = where.args
    if not (isinstance(cond, Node) and cond.target is aten.ge.Scalar and cond.args[0] is v
            and isinstance(cond.args[1], (int, float)) and isinstance(zero, Node)
            and zero.target is aten.zeros_like.default and zero.args[0] is v):
        return None
    nodes = [cond, zero, where]
    if any(_sole_user(n) is not nxt for n, nxt in ((cond, where), (zero, where), (where, seed))):
        return None
    return v, float(cond.args[1]), nodes


def _every_kwarg(node: Node) -> dict[str, Any]:
    """`node`'s keyword arguments with every schema argument after its positional ones filled
    in: export drops those left at their default, and the sparse C++ kernels' own schemas
    declare no defaults."""
    schema = node.target._schema.arguments[len(node.args):]
    return {a.name: node.kwargs.get(a.name, a.default_value) for a in schema}


def _with_args(node: Node, **changes: Any) -> tuple[tuple, dict[str, Any]]:
    """`node`'s (args, kwargs) with the named schema arguments replaced, positional ones in place
    (a call that passed `activation` positionally must not get it again as a keyword)."""
    names = [a.name for a in node.target._schema.arguments]
    args, kwargs = list(node.args), dict(node.kwargs)
    for name, value in changes.items():
        i = names.index(name)
        if i < len(args):
            args[i] = value
        else:
            kwargs[name] = value
    return tuple(args), kwargs


@dataclass
class Lowered:
    """One block folded into one kernel call."""

    block: int
    kernel: str
    epilogue: list[str]  # e.g. ['add', 'relu']
    nodes: list[str]  # the graph nodes it replaced (seed first)
    left_to_inductor: list[str]  # ops of the block the kernel cannot take
    prologue: list[str] = field(default_factory=list)  # e.g. ['ge', 'zeros_like', 'where']


def _fold_epilogue(seed: Node, kind: str, members: set[str], absorbed: list[Node],
                   epilogue: list[str]) -> tuple[dict[str, Any], Node | None]:
    """The seed's argument changes for its single-user chain [add(same-shaped tensor)] ->
    [activation], appending the nodes to `absorbed` and their ops to `epilogue`; also the next
    user in the block after them (None when there is no single one)."""
    residual, activation = None, "none"
    user = _only_user(seed, members)
    if user is not None and user.target is aten.add.Tensor and user.kwargs.get("alpha", 1) == 1:
        other = [a for a in user.args if a is not seed]
        if len(user.args) == 2 and len(other) == 1 and isinstance(other[0], Node) and _like(other[0], seed):
            residual = other[0]
            absorbed.append(user)
            epilogue.append("add")
            user = _only_user(user, members)
    act = _activation(user) if user is not None else None
    if act is not None and (kind in EPILOGUE_KERNELS or act == "relu"):
        activation = act
        absorbed.append(user)
        epilogue.append(op_name(user.target))
        user = _only_user(user, members)
    if len(absorbed) == 1:
        return {}, user
    changes = ({"activation": activation, "residual": residual} if kind in EPILOGUE_KERNELS
               else {"relu": activation == "relu", "residual": residual})
    return changes, user


def lower_epilogues(gm: fx.GraphModule, plan: FusionPlan) -> list[Lowered]:
    """Rewrite `gm` in place: in each block seeded by an EPILOGUE_KERNELS op, the seed's single
    user chain [add(same-shaped tensor)] -> [relu | gelu] becomes the op's residual and
    activation arguments; a RELU_KERNELS seed takes the add as its residual and a following
    relu as its `relu` flag, then PT2E's uint8 quantize_per_tensor of the result as its
    `y_scale` (a uint8 output), and the dequantize_per_tensor that computes its input as
    `x_scale` (a uint8 input); a
    PROLOGUE_KERNELS seed takes the FATReLU that computes its input as `input_threshold`.
    Returns what was lowered, block by block."""
    nodes = {n.name: n for n in gm.graph.nodes}
    done = []
    for block in plan.blocks:
        seed = nodes.get(block.seed)
        kind = op_name(seed.target) if seed is not None else ""
        if kind not in EPILOGUE_KERNELS | RELU_KERNELS:
            continue
        members = set(block.nodes)
        absorbed, epilogue = [seed], []
        if _has_epilogue(seed):  # set by its module (e.g. WinogradConv2d's relu): kept
            changes, user = {}, _only_user(seed, members)
        else:
            changes, user = _fold_epilogue(seed, kind, members, absorbed, epilogue)
        if kind in RELU_KERNELS and (quant := _uint8_qparams(user, "quantize_per_tensor")) is not None:
            changes |= {"y_scale": quant[1], "y_zero_point": quant[2]}
            absorbed.append(user)
            epilogue.append("quantize_per_tensor")
        fat = _fatrelu_input(seed) if kind in PROLOGUE_KERNELS else None
        if fat is not None:
            changes |= {"a": fat[0], "input_threshold": fat[1]}
        # the dequantize may sit in the block before (the quantize -> dequantize pair after
        # the previous layer): the op reading the quantized tensor in its place is legal anyway
        dequant = seed.args[0]
        dq = _uint8_qparams(dequant, "dequantize_per_tensor") if kind in RELU_KERNELS else None
        if dq is not None:
            changes |= {"x": dq[0], "x_scale": dq[1], "x_zero_point": dq[2]}
        last = absorbed[-1]
        if changes:
            with gm.graph.inserting_before(last):
                fused = gm.graph.call_function(seed.target, *_with_args(seed, **changes))
            fused.meta = dict(last.meta)
            last.replace_all_uses_with(fused)
            for n in reversed(absorbed):
                for check in _checks(n):  # asserts on an intermediate that no longer exists
                    gm.graph.erase_node(check)
                gm.graph.erase_node(n)
        prologue = fat[2] if fat is not None else []
        if dq is not None:  # the dequantize stays where something else still reads it
            prologue = [dequant] if set(dequant.users) <= set(_checks(dequant)) else []
            prologue_ops = ["dequantize_per_tensor"]
        else:
            prologue_ops = [op_name(n.target) for n in prologue]
        for n in reversed(prologue):  # users first: where, then its inputs
            for check in _checks(n):
                gm.graph.erase_node(check)
            gm.graph.erase_node(n)
        taken = {n.name for n in [*prologue, *absorbed]}
        order = [n.name for n in prologue if n.name not in members] + block.nodes  # prologue first
        done.append(Lowered(block.id, op_name(seed.target), epilogue, sorted(taken, key=order.index), [],
                            prologue_ops))
    # what each block leaves to inductor, once every block is lowered: a later kernel's
    # prologue may have taken ops of an earlier block
    present = {n.name for n in gm.graph.nodes}
    blocks = {b.id: b for b in plan.blocks}
    for lo in done:
        block = blocks[lo.block]
        lo.left_to_inductor = [op for name, op in zip(block.nodes, block.ops, strict=True)
                               if name in present and name not in lo.nodes and op != "getitem"]
    gm.graph.lint()
    gm.recompile()
    return done


def bind_kernels(gm: fx.GraphModule) -> dict[str, str]:
    """Point every call of our EPILOGUE_KERNELS (float32) and RELU_KERNELS (any dtype: its CPU
    impl hands every input to the kernel as it is) on the CPU at the compiled C++ kernel itself
    (`kernels.ops.bound_kernel`): the trip through the dispatcher into the op's Python CPU impl,
    which picks the ISA variant, is skipped (12 us a call on a Xeon). Returns {node: kernel};
    a kernel that does not build here is left unbound (its op falls back as usual)."""
    from ..kernels import ops

    bound = {}
    for node in gm.graph.nodes:
        name = op_name(node.target) if node.op == "call_function" else ""
        if name not in EPILOGUE_KERNELS | RELU_KERNELS:
            continue
        val = node.meta.get("val")
        short = name.partition("::")[2]
        if not (isinstance(val, torch.Tensor) and val.device.type == "cpu"):
            continue
        if name in EPILOGUE_KERNELS and val.dtype != torch.float32:
            continue
        if not ops.kernel_builds(short):
            continue
        node.kwargs = _every_kwarg(node)
        node.target = ops.bound_kernel(short)
        bound[node.name] = op_name(node.target)
    gm.recompile()
    return bound


@dataclass
class LoweringReport:
    """What went into our kernels, what went to TorchInductor, and how it was compiled."""

    lowered: list[Lowered]
    to_inductor: list[dict[str, Any]]  # block id, ops, why
    compile: dict[str, Any] = field(default_factory=dict)  # backend, mode, freezing, kernels
    bound: dict[str, str] = field(default_factory=dict)  # node -> C++ kernel it calls

    def summary(self) -> str:
        folded = [lo for lo in self.lowered if lo.epilogue or lo.prologue]
        kernels = sorted(set(self.bound.values()))
        lines = [f"{len(folded)} prologues/epilogues folded into our kernels, {len(self.to_inductor)} blocks to "
                 f"TorchInductor ({self.compile or 'not compiled'}); calls bound to "
                 f"{', '.join(kernels) or 'no C++ kernel'}"]
        for lo in self.lowered:
            epi = " + ".join(lo.epilogue) if lo.epilogue else "none"
            rest = f"; to inductor: {', '.join(lo.left_to_inductor)}" if lo.left_to_inductor else ""
            pro = f"prologue: {' -> '.join(lo.prologue)}; " if lo.prologue else ""
            lines.append(f"  [{lo.block}] {lo.kernel} {pro}epilogue: {epi}{rest}")
        for b in self.to_inductor:
            lines.append(f"  [{b['block']}] inductor: {' -> '.join(b['ops'])} ({b['why']})")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {"lowered": [asdict(lo) for lo in self.lowered], "to_inductor": self.to_inductor,
                "compile": self.compile, "bound": self.bound}


def _to_inductor(plan: FusionPlan, lowered: list[Lowered]) -> list[dict[str, Any]]:
    ours = {lo.block for lo in lowered}
    out = []
    for b in plan.blocks:
        if b.id in ours:
            continue
        custom = [op for op in b.ops if "::" in op]
        why = (f"{custom[0]} takes no epilogue" if custom else
               "opaque op" if b.kind == "Opaque" else "stock ops")
        out.append({"block": b.id, "ops": [op for op in b.ops if op != "getitem"] or b.ops, "why": why})
    return out


def flat_graph(gm: fx.GraphModule) -> tuple[fx.GraphModule, Any, Any]:
    """The exported module's graph as a plain function of its flat tensor inputs returning a
    tuple: its input-shape check (`_guards_fn`, the example's static shapes) and pytree
    (un)flattening dropped, as FusedModule does those once; returns it with the in/out specs.
    (Those wrappers and torch.compile's own guards cost more than the kernels' epilogues at
    batch 1: see benchmarks/fusion.py.)"""
    info = gm.graph._codegen.pytree_info if hasattr(gm.graph._codegen, "pytree_info") else None
    graph = copy.deepcopy(gm.graph)
    for node in list(graph.nodes):
        if node.op == "call_module" and node.target == "_guards_fn":
            graph.erase_node(node)
    graph._codegen = fx.graph.CodeGen()
    flat = fx.GraphModule(gm, graph)
    flat.graph.eliminate_dead_code()
    flat.recompile()
    return flat, (info.in_spec if info else None), (info.out_spec if info else None)


def compile_inductor(flat: fx.GraphModule, example: list[torch.Tensor], *, freezing: bool = True,
                     mode: str | None = None, cpp_wrapper: bool = True,
                     ) -> tuple[Callable[..., Any], dict[str, Any]]:
    """TorchInductor (compile_fx: no Dynamo frame, so no guards to check per call) on the flat
    graph for the flat `example` inputs, compiled now under no_grad; returns the callable and
    its settings with the number of kernels inductor generated. `freezing` folds the weights
    into the compiled graph as constants (inference only); `mode` is torch.compile's (e.g.
    'max-autotune'); `cpp_wrapper` has inductor write the code that calls the kernels in C++
    (Python's cost per call of every kernel and op is gone: 4-14% at batch 1 on 2 cores, see
    docs/benchmarks.md; about 5 s more to compile). Where the C++ wrapper does not compile,
    it warns and compiles the Python one."""
    from torch._inductor import config, metrics
    from torch._inductor.compile_fx import compile_fx

    # size_asserts: no per-call check of every input's and extern output's size and stride
    # (FusedModule checks the input shapes once; our ops' fake impls are opcheck-tested)
    patches: dict[str, Any] = {"freezing": freezing, "size_asserts": False}
    if mode == "max-autotune":
        patches.update(max_autotune=True)
    elif mode not in (None, "default"):
        raise ValueError(f"mode must be None, 'default' or 'max-autotune', got {mode!r}")
    metrics.reset()
    try:
        with torch.no_grad(), config.patch(patches | {"cpp_wrapper": cpp_wrapper}):
            compiled = compile_fx(flat, list(example))
            compiled(*example)
    except Exception as err:  # inductor's C++ compile errors have no common type
        if not cpp_wrapper:
            raise
        warnings.warn(f"TorchInductor's C++ wrapper failed ({type(err).__name__}: "
                      f"{str(err).splitlines()[0][:200]}); compiling the Python wrapper",
                      RuntimeWarning, stacklevel=2)
        return compile_inductor(flat, example, freezing=freezing, mode=mode, cpp_wrapper=False)
    info = {"backend": "inductor", "mode": mode or "default", "freezing": freezing,
            "cpp_wrapper": cpp_wrapper, "generated_kernels": metrics.generated_kernel_count}
    return compiled, info


class FusedModule:
    """The lowered graph (`graph_module`, flat inputs) and its compiled form: call it like the
    model, in inference, on inputs shaped like the example it was exported on (static
    shapes; other shapes raise)."""

    def __init__(self, graph_module: fx.GraphModule, compiled: Callable[..., Any] | None,
                 in_spec: Any, out_spec: Any, shapes: list[tuple[int, ...]]) -> None:
        self.graph_module, self.compiled = graph_module, compiled
        self.in_spec, self.out_spec, self.shapes = in_spec, out_spec, shapes

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if not kwargs and all(isinstance(a, torch.Tensor) for a in args):
            flat = list(args)  # the common case, without pytree's cost
        else:
            flat, spec = pytree.tree_flatten((args, kwargs))
            if self.in_spec is not None and spec != self.in_spec:
                raise ValueError(f"the fused module takes inputs like its example ({self.in_spec})")
        if [tuple(t.shape) for t in flat] != self.shapes:
            raise ValueError(f"the fused module was lowered for input shapes {self.shapes}, got "
                             f"{[tuple(t.shape) for t in flat]}; lower again for these shapes")
        with torch.no_grad():
            out = (self.graph_module if self.compiled is None else self.compiled)(*flat)
        return pytree.tree_unflatten(list(out), self.out_spec) if self.out_spec is not None else out


@dataclass
class Fusion:
    """`module` (the fused, compiled callable), the plan it follows and the lowering report."""

    module: FusedModule
    plan: FusionPlan
    report: LoweringReport

    def save(self, directory: str | Path) -> Path:
        """fusion_plan.json (the plan, see FusionPlan.save) and lowering.json in `directory`."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "lowering.json").write_text(json.dumps(self.report.to_json(), indent=2))
        return self.plan.save(directory / "fusion_plan.json")

    def summary(self) -> str:
        return f"{self.plan.summary()}\n{self.report.summary()}"


def lower(gm: fx.GraphModule, plan: FusionPlan, example: torch.Tensor | tuple, *,
          compile: bool = True, freezing: bool = True, mode: str | None = None,
          cpp_wrapper: bool = True) -> Fusion:
    """Fold the epilogues of our kernels' blocks (`lower_epilogues`, in place on `gm`), call the
    C++ kernels directly (`bind_kernels`), then hand the graph to TorchInductor
    (`compile_inductor`; compile=False keeps the rewritten graph module, run eagerly)."""
    example = example if isinstance(example, tuple) else (example,)
    lowered = lower_epilogues(gm, plan)
    report = LoweringReport(lowered, _to_inductor(plan, lowered), bound=bind_kernels(gm))
    flat, in_spec, out_spec = flat_graph(gm)
    inputs = pytree.tree_leaves((example, {}))
    compiled = None
    if compile:
        compiled, report.compile = compile_inductor(flat, inputs, freezing=freezing, mode=mode,
                                                    cpp_wrapper=cpp_wrapper)
    module = FusedModule(flat, compiled, in_spec, out_spec, [tuple(t.shape) for t in inputs])
    return Fusion(module, plan, report)


def fuse_model(model: nn.Module, example: torch.Tensor | tuple, **kwargs: Any) -> Fusion:
    """Export `model` on `example`, plan its fusion and lower it (see `lower`): the planner's
    path from a module to a fused callable for inputs shaped like `example`."""
    plan, gm = plan_model(model, example)
    return lower(gm, plan, example, **kwargs)
