"""FuPruner's equivalence-preserving fusion on a torch.fx graph: BatchNorm, zero padding,
scale/shift chains, Identity and eval-mode Dropout are folded into the neighbouring conv/linear
(or removed), so structured pruning later removes them together with the filters they touch.

Inference semantics: BatchNorm is folded with its running statistics, so the model must be in
eval mode. Every pass rewrites a GraphModule and its layers in place (a GraphModule from
`fx.symbolic_trace` shares its layers with the traced model) and returns one readable line per
fusion; `fuse` runs them on a traced deep copy. Layers are matched by exact type (Conv1d/2d/3d,
Linear), so subclasses, parametrized (masked) layers and layers called more than once are left
alone. Inputs are assumed batched, and those of a Linear or BatchNorm1d 2-D `(N, C)`: a
BatchNorm1d normalizes dim 1 while a Linear mixes the last dim, which a graph cannot tell apart."""

from __future__ import annotations

import copy
import inspect
import operator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_LAYERS = (*_CONVS, nn.Linear)
_BN_FOR_LAYER = {
    nn.Conv1d: nn.BatchNorm1d, nn.Conv2d: nn.BatchNorm2d, nn.Conv3d: nn.BatchNorm3d,
    nn.Linear: nn.BatchNorm1d,
}
_BNS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
_ZERO_PADS = (nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d)
_CONSTANT_PADS = (nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d)
_DROPOUTS = (
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout,
)
_F_DROPOUTS = (
    F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout, F.feature_alpha_dropout,
)
_AFFINE_FUNCTIONS = {
    operator.mul: "mul", torch.mul: "mul", operator.truediv: "div", torch.div: "div",
    torch.true_divide: "div", operator.add: "add", torch.add: "add", operator.sub: "sub",
    torch.sub: "sub",
}
_AFFINE_METHODS = {
    "mul": "mul", "mul_": "mul", "div": "div", "div_": "div", "true_divide": "div",
    "add": "add", "add_": "add", "sub": "sub", "sub_": "sub",
}


@dataclass
class FusionResult:
    """The fused copy of the model and one line per fusion, in the order they were applied."""

    module: fx.GraphModule
    fused: list[str] = field(default_factory=list)


def fuse(
    model: nn.Module, *, bn: bool = True, pad: bool = True, affine: bool = True,
    identity: bool = True,
) -> FusionResult:
    """Trace a deep copy of `model` (a GraphModule is copied as is) and run the enabled passes:
    `remove_identity`, `fold_padding`, then `fold_batchnorm` and `fold_affine` until neither
    finds anything more (a fold can expose another: conv -> mul -> bn). `model` is untouched."""
    gm = _trace(copy.deepcopy(model))
    fused = remove_identity(gm) if identity else []
    if pad:
        fused += fold_padding(gm)
    passes = [p for p, on in ((fold_batchnorm, bn), (fold_affine, affine)) if on]
    while passes:
        lines = [line for p in passes for line in p(gm)]
        fused += lines
        if not lines:
            break
    _finish(gm)
    return FusionResult(gm, fused)


def _trace(model: nn.Module) -> fx.GraphModule:
    if isinstance(model, fx.GraphModule):
        return model
    try:
        return fx.symbolic_trace(model)
    except Exception as e:
        raise ValueError(
            f"cannot fuse {type(model).__name__}: fusion needs an fx-traceable model and "
            f"torch.fx.symbolic_trace failed: {e}. Make the untraceable part a leaf module or "
            "wrap it with torch.fx.wrap, or trace the model yourself and pass the GraphModule."
        ) from e


def _finish(gm: fx.GraphModule) -> None:
    gm.graph.eliminate_dead_code()
    gm.graph.lint()
    gm.recompile()
    gm.delete_all_unused_submodules()


# -- shared helpers -------------------------------------------------------------------------


def _sole_layer(gm: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    """The conv/linear that `node` calls, if folding into its parameters can change nothing but
    this call: exact type, one positional input, and no other node calls it or reads its
    parameters."""
    if node.op != "call_module" or len(node.args) != 1 or node.kwargs:
        return None
    layer = gm.get_submodule(node.target)
    if type(layer) not in _LAYERS:
        return None
    prefix = f"{node.target}."
    for other in gm.graph.nodes:
        if other is not node and other.op in ("call_module", "get_attr") and (
            other.target == node.target or other.target.startswith(prefix)
        ):
            return None
    return layer


def _only_user(node: fx.Node) -> fx.Node | None:
    return next(iter(node.users)) if len(node.users) == 1 else None


def _channels(layer: nn.Module, *, out: bool) -> int:
    if isinstance(layer, nn.Linear):
        return layer.out_features if out else layer.in_features
    return layer.out_channels if out else layer.in_channels


def _weight_bias64(layer: nn.Module) -> tuple[Tensor, Tensor]:
    w = layer.weight.detach().double()
    b = layer.bias.detach().double() if layer.bias is not None else w.new_zeros(w.shape[0])
    return w, b


def _set_weight_bias(layer: nn.Module, weight: Tensor, bias: Tensor) -> None:
    """New parameters (never in place, so a weight tied elsewhere keeps its value)."""
    old = layer.weight
    grad = layer.bias.requires_grad if layer.bias is not None else old.requires_grad
    layer.weight = nn.Parameter(weight.to(old.dtype), requires_grad=old.requires_grad)
    layer.bias = nn.Parameter(bias.to(old.dtype), requires_grad=grad)


def _fold_output(layer: nn.Module, scale: Tensor, shift: Tensor) -> None:
    """layer(x) * scale + shift per output channel (float64 (C,) vectors), into the layer."""
    w, b = _weight_bias64(layer)  # (C_out, C_in/groups, *k) or (C_out, C_in)
    _set_weight_bias(layer, w * scale.view(-1, *(1,) * (w.dim() - 1)), b * scale + shift)


def _fold_input(layer: nn.Module, scale: Tensor, shift: Tensor) -> None:
    """layer(x * scale + shift) per input channel, into the layer; exact when no zero padding
    is added around the shifted input."""
    w, b = _weight_bias64(layer)
    groups, out, per_group = getattr(layer, "groups", 1), w.shape[0], w.shape[1]
    kernel = (1,) * (w.dim() - 2)

    def rows(v: Tensor) -> Tensor:  # (C_in,) -> (C_out, C_in/groups, 1...): what each row reads
        v = v.view(groups, 1, per_group).expand(groups, out // groups, per_group)
        return v.reshape(out, per_group, *kernel)

    _set_weight_bias(layer, w * rows(scale), b + (w * rows(shift)).flatten(1).sum(1))


def _get_attr(gm: fx.GraphModule, arg: object) -> Tensor | None:
    """The tensor a get_attr node reads, else None."""
    if not isinstance(arg, fx.Node) or arg.op != "get_attr":
        return None
    obj = gm
    for part in arg.target.split("."):
        obj = getattr(obj, part, None)
    return obj if isinstance(obj, Tensor) else None


# -- BatchNorm ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Norm:
    """An inference-mode BatchNorm as `x * scale + shift` per channel (float64 vectors)."""

    name: str
    input: object
    scale: Tensor
    shift: Tensor
    kind: type | None  # BatchNorm1d/2d/3d; None when any layer fits (SyncBatchNorm, F.batch_norm)
    training: bool


def _norm(gm: fx.GraphModule, node: fx.Node) -> _Norm | None:
    if node.op == "call_module":
        bn = gm.get_submodule(node.target)
        if type(bn) not in _BNS or bn.running_mean is None or len(node.args) != 1 or node.kwargs:
            return None
        stats = bn.running_mean, bn.running_var, bn.weight, bn.bias
        eps, training, x = bn.eps, bn.training, node.args[0]
        name, kind = node.target, (None if type(bn) is nn.SyncBatchNorm else type(bn))
    elif node.op == "call_function" and node.target is F.batch_norm:
        a = inspect.signature(F.batch_norm).bind(*node.args, **node.kwargs).arguments
        stats = tuple(_get_attr(gm, a.get(k)) for k in ("running_mean", "running_var", "weight", "bias"))
        if stats[0] is None or stats[1] is None or any(
            s is None and a.get(k) is not None for s, k in zip(stats[2:], ("weight", "bias"), strict=True)
        ):
            return None
        eps, training, x = a.get("eps", 1e-5), a.get("training", False), a["input"]
        name, kind = node.name, None
        if not isinstance(training, bool) or not isinstance(eps, (int, float)):
            return None
    else:
        return None
    mean, var, gamma, beta = (None if s is None else s.detach().double() for s in stats)
    scale = torch.rsqrt(var + eps) * (gamma if gamma is not None else 1.0)
    shift = (beta if beta is not None else 0.0) - mean * scale
    return _Norm(name, x, scale, shift, kind, training)


def _fits(layer: nn.Module, norm: _Norm, *, out: bool) -> bool:
    kind_ok = norm.kind is None or _BN_FOR_LAYER[type(layer)] is norm.kind
    return kind_ok and _channels(layer, out=out) == norm.scale.numel()


def _bn_producer(gm: fx.GraphModule, norm: _Norm) -> fx.Node | None:
    """conv/linear -> BN, the layer's output used by the BN alone."""
    x = norm.input
    if not isinstance(x, fx.Node) or len(x.users) != 1:
        return None
    layer = _sole_layer(gm, x)
    return x if layer is not None and _fits(layer, norm, out=True) else None


def _bn_consumer(gm: fx.GraphModule, node: fx.Node, norm: _Norm) -> fx.Node | None:
    """BN -> conv/linear, the BN's output used by the layer alone, and the conv adds no zero
    padding (which would see the BN's shift); replicate/reflect/circular padding commutes."""
    user = _only_user(node)
    layer = _sole_layer(gm, user) if user is not None else None
    if layer is None or not _fits(layer, norm, out=False):
        return None
    if isinstance(layer, _CONVS) and layer.padding_mode == "zeros" and layer.padding != "valid":
        if isinstance(layer.padding, str) or any(layer.padding):
            return None
    return user


def _refuse_training(norm: _Norm) -> None:
    raise ValueError(
        f"BatchNorm '{norm.name}' is in training mode (it normalizes with batch statistics), and "
        "fusion folds running statistics: call model.eval() before fusing"
    )


def fold_batchnorm(gm: fx.GraphModule) -> list[str]:
    """Fold each eval-mode BatchNorm into the conv/linear before it (its output used by the BN
    alone) or else into the conv/linear after it (BN output used by the layer alone, no zero
    padding in the conv). BN modules and `F.batch_norm` on get_attr statistics are handled.
    A foldable BN in training mode raises ValueError before anything changes."""
    norms = [(node, n) for node in gm.graph.nodes if (n := _norm(gm, node)) is not None]
    for node, norm in norms:
        if norm.training and (_bn_producer(gm, norm) or _bn_consumer(gm, node, norm)):
            _refuse_training(norm)
    lines = []
    for node, norm in norms:
        if (layer_node := _bn_producer(gm, norm)) is not None:
            if norm.training:  # exposed by an earlier fold (conv -> bn -> bn)
                _refuse_training(norm)
            _fold_output(gm.get_submodule(layer_node.target), norm.scale, norm.shift)
            node.replace_all_uses_with(layer_node)
            lines.append(f"bn: {norm.name} folded into {layer_node.target}")
        elif (layer_node := _bn_consumer(gm, node, norm)) is not None:
            if norm.training:
                _refuse_training(norm)
            _fold_input(gm.get_submodule(layer_node.target), norm.scale, norm.shift)
            layer_node.replace_input_with(node, norm.input)
            lines.append(f"bn: {norm.name} folded into {layer_node.target} (input side)")
        else:
            continue
        gm.graph.erase_node(node)
    if lines:
        _finish(gm)
    return lines


# -- padding --------------------------------------------------------------------------------


def _zero_pad(gm: fx.GraphModule, node: fx.Node) -> tuple[object, tuple[int, ...]] | None:
    """(input, F.pad-order amounts: last dim's left, right, then the dim before, ...) of a
    constant-zero pad node."""
    if node.op == "call_module" and len(node.args) == 1 and not node.kwargs:
        m = gm.get_submodule(node.target)
        if type(m) in _ZERO_PADS or (type(m) in _CONSTANT_PADS and m.value == 0):
            return node.args[0], tuple(m.padding)
    elif node.op == "call_function" and node.target is F.pad:
        a = dict(zip(("input", "pad", "mode", "value"), node.args, strict=False)) | dict(node.kwargs)
        pads = a.get("pad")
        if (
            a.get("mode", "constant") == "constant" and a.get("value") in (None, 0)
            and isinstance(pads, (list, tuple)) and all(type(p) is int for p in pads)
        ):
            return a["input"], tuple(pads)
    return None


def fold_padding(gm: fx.GraphModule) -> list[str]:
    """Fold a zero pad (`nn.ZeroPad*d`, `nn.ConstantPad*d` with value 0, `F.pad` constant 0)
    that is symmetric in each padded spatial dim into the zero padding of the conv it feeds.
    Asymmetric, negative or non-spatial pads, and convs with another padding mode, stay."""
    lines = []
    for node in list(gm.graph.nodes):
        found, conv_node = _zero_pad(gm, node), _only_user(node)
        if found is None or conv_node is None:
            continue
        conv = _sole_layer(gm, conv_node)
        if type(conv) not in _CONVS or conv.padding_mode != "zeros" or conv.padding == "same":
            continue
        x, pads = found
        nd = len(conv.kernel_size)
        lefts, rights = pads[0::2], pads[1::2]
        if len(pads) % 2 or len(pads) > 2 * nd or lefts != rights or min(pads, default=0) < 0:
            continue
        old = (0,) * nd if conv.padding == "valid" else tuple(conv.padding)
        extra = (0,) * (nd - len(lefts)) + tuple(reversed(lefts))  # F.pad lists the last dim first
        conv.padding = tuple(p + e for p, e in zip(old, extra, strict=True))
        conv_node.replace_input_with(node, x)
        gm.graph.erase_node(node)
        name = node.target if node.op == "call_module" else node.name
        lines.append(f"pad: {name} folded into {conv_node.target} (padding {old} -> {conv.padding})")
    if lines:
        _finish(gm)
    return lines


# -- scale/shift chains ---------------------------------------------------------------------


def _channel_vector(gm: fx.GraphModule, arg: object, layer: nn.Module) -> Tensor | None:
    """A constant (Python number or get_attr tensor) that broadcasts against the layer's output
    per output channel and keeps its dtype, as a float64 (C_out,) vector."""
    c = _channels(layer, out=True)
    if isinstance(arg, (int, float)) and not isinstance(arg, bool):
        return torch.full((c,), float(arg), dtype=torch.float64, device=layer.weight.device)
    t = _get_attr(gm, arg)
    if t is None or t.dtype == torch.bool or t.is_complex():
        return None
    if t.is_floating_point() and t.dim() > 0 and t.dtype != layer.weight.dtype:
        return None  # would promote the output's dtype
    # output shape (N, C) for a linear, (N, C, *spatial) for a conv; only C may exceed 1
    rank = 2 if isinstance(layer, nn.Linear) else 2 + len(layer.kernel_size)
    if t.dim() > rank:
        return None
    shape = (1,) * (rank - t.dim()) + tuple(t.shape)
    if shape[1] not in (1, c) or any(s != 1 for i, s in enumerate(shape) if i != 1):
        return None
    return t.detach().double().reshape(-1).expand(c).to(layer.weight.device)


def _affine_step(
    gm: fx.GraphModule, node: fx.Node, y: fx.Node, layer: nn.Module
) -> tuple[Tensor, Tensor, str] | None:
    """(scale, shift, label) when `node` is y*c, c*y, y/c, y+c, c+y, y-c or c-y for a constant
    per-channel c."""
    if node.op == "call_function":
        kind = _AFFINE_FUNCTIONS.get(node.target)
    elif node.op == "call_method":
        kind = _AFFINE_METHODS.get(node.target)
    else:
        kind = None
    if kind is None or len(node.args) != 2 or node.kwargs:
        return None
    a, b = node.args
    if a is y and b is not y:
        other, y_first = b, True
    elif b is y and a is not y and kind != "div":
        other, y_first = a, False
    else:
        return None
    c = _channel_vector(gm, other, layer)
    if c is None:
        return None
    one, zero = torch.ones_like(c), torch.zeros_like(c)
    label = f"{kind} {other.target if isinstance(other, fx.Node) else other}"
    if kind == "mul":
        return c, zero, label
    if kind == "div":
        return None if bool((c == 0).any()) else (1 / c, zero, label)
    if kind == "add":
        return one, c, label
    return (one, -c, label) if y_first else (-one, c, f"{label} (reversed)")


def fold_affine(gm: fx.GraphModule) -> list[str]:
    """Fold chains of mul/div/add/sub by constants (Python numbers, or buffers, parameters and
    tensor attributes broadcastable per output channel) right after a conv/linear into its
    weight and bias; a chain becomes one fold, composed in float64."""
    lines = []
    for node in list(gm.graph.nodes):
        layer = _sole_layer(gm, node)
        if layer is None:
            continue
        scale = torch.ones(_channels(layer, out=True), dtype=torch.float64, device=layer.weight.device)
        shift, chain, labels, y = torch.zeros_like(scale), [], [], node
        while (op := _only_user(y)) is not None and (step := _affine_step(gm, op, y, layer)):
            s, t, label = step
            scale, shift = scale * s, shift * s + t
            chain.append(op)
            labels.append(label)
            y = op
        if not chain:
            continue
        _fold_output(layer, scale, shift)
        chain[-1].replace_all_uses_with(node)
        for op in reversed(chain):
            gm.graph.erase_node(op)
        lines.append(f"affine: {', '.join(labels)} folded into {node.target}")
    if lines:
        _finish(gm)
    return lines


# -- identities -----------------------------------------------------------------------------


def remove_identity(gm: fx.GraphModule) -> list[str]:
    """Remove `nn.Identity`, eval-mode `nn.Dropout*`/`nn.AlphaDropout` modules, and `F.dropout*`
    calls traced with `training=False`."""
    lines = []
    for node in list(gm.graph.nodes):
        if node.op == "call_module" and len(node.args) == 1 and not node.kwargs:
            m = gm.get_submodule(node.target)
            removable = type(m) is nn.Identity or (type(m) in _DROPOUTS and not m.training)
            x, name = node.args[0], node.target
        elif node.op == "call_function" and node.target in _F_DROPOUTS:
            a = inspect.signature(node.target).bind(*node.args, **node.kwargs)
            a.apply_defaults()
            removable = a.arguments["training"] is False
            x, name = a.arguments["input"], node.name
        else:
            continue
        if removable:
            node.replace_all_uses_with(x)
            gm.graph.erase_node(node)
            lines.append(f"identity: {name} removed")
    if lines:
        _finish(gm)
    return lines
