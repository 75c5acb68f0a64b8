"""Physical channel removal: slice every parameter and buffer to the kept indices, then fix the
attributes of the modules that own them (in/out channels, groups, heads), so the model is a
smaller dense model. `channel_mask` is its twin that only zeroes the removed slices: the
shrunk model's outputs equal the masked model's (what the tests check)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F

Key = tuple[str, int]
Fixup = Callable[[nn.Module, nn.Module], "nn.Module | None"]


def channel_mask(model: nn.Module, kept: dict[Key, Tensor]) -> None:
    """Zero, in place, every parameter slice that `kept` leaves out: the channel-masked model
    (soft pruning uses this during training; buffers are left alone)."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for (name, dim), idx in kept.items():
            if name in params:
                p = params[name]
                drop = torch.ones(p.shape[dim], dtype=torch.bool)
                drop[idx] = False
                p.index_fill_(dim, torch.nonzero(drop).reshape(-1).to(p.device), 0)


def shrink(
    model: nn.Module,
    kept: dict[Key, Tensor],
    *,
    fixups: dict[type[nn.Module], Fixup] | None = None,
) -> nn.Module:
    """Slice `model`'s tensors in place to the `kept` indices and update every module's
    attributes; returns the model (a module that must change type, like nn.MultiheadAttention,
    is replaced). `fixups` maps user layer types to functions `(module, original) ->
    replacement or None`; they are tried before the built-in ones."""
    originals = {n: _shallow(m) for n, m in model.named_modules()}
    aliases: dict[int, list[str]] = {}
    tensors: dict[int, Tensor] = {}
    for name, t in [*model.named_parameters(remove_duplicate=False),
                    *model.named_buffers(remove_duplicate=False)]:
        aliases.setdefault(id(t), []).append(name)
        tensors[id(t)] = t
    for tid, names in aliases.items():
        t = tensors[tid]
        cut = t
        for (n, dim), idx in kept.items():
            if n in names and idx.numel() != cut.shape[dim]:
                cut = cut.index_select(dim, idx.to(cut.device))
        if cut is t:
            continue
        value = nn.Parameter(cut.detach().clone(), requires_grad=t.requires_grad) \
            if isinstance(t, nn.Parameter) else cut.detach().clone()
        for n in names:
            owner_name, _, attr = n.rpartition(".")
            setattr(model.get_submodule(owner_name), attr, value)
    table = [*(fixups or {}).items(), *FIXUPS.items()]  # first match wins: user types first
    for name, module in list(model.named_modules()):
        if _is_hf_attention(module):
            _hf_attention(module, originals[name])
        for kind, fix in table:
            if isinstance(module, kind):
                replacement = fix(module, originals[name])
                if replacement is not None:
                    model = _replace(model, name, replacement)
                break
    return model


def _shallow(module: nn.Module) -> nn.Module:
    """A copy of a module's attributes before slicing (tensors not copied)."""
    twin = nn.Module.__new__(type(module))
    twin.__dict__ = {k: (dict(v) if isinstance(v, dict) else v) for k, v in module.__dict__.items()}
    return twin


def _replace(model: nn.Module, name: str, new: nn.Module) -> nn.Module:
    if not name:
        return new
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, new)
    return model


def _conv(m: nn.Module, old: nn.Module) -> None:
    m.out_channels = m.weight.shape[0]
    if old.groups > 1:
        m.groups = old.groups * m.out_channels // old.out_channels
    m.in_channels = m.weight.shape[1] * m.groups


def _linear(m: nn.Linear, old: nn.Module) -> None:
    m.out_features, m.in_features = m.weight.shape


def _batchnorm(m: nn.Module, old: nn.Module) -> None:
    ref = m.running_mean if m.running_mean is not None else m.weight
    m.num_features = ref.shape[0]


def _groupnorm(m: nn.GroupNorm, old: nn.Module) -> None:
    m.num_channels = m.weight.shape[0]
    m.num_groups = old.num_groups * m.num_channels // old.num_channels


def _layernorm(m: nn.Module, old: nn.Module) -> None:
    if m.weight is not None:
        m.normalized_shape = tuple(m.weight.shape)


def _embedding(m: nn.Embedding, old: nn.Module) -> None:
    m.embedding_dim = m.weight.shape[1]


def _mha(m: nn.MultiheadAttention, old: nn.Module) -> nn.Module | None:
    inner = m.in_proj_weight.shape[0] // 3 if m.in_proj_weight is not None else m.embed_dim
    if inner == m.embed_dim:
        return None
    return HeadPrunedAttention(m, inner)


class HeadPrunedAttention(nn.Module):
    """nn.MultiheadAttention after head removal: the same parameters and call signature, with
    fewer heads than embed_dim // head_dim (which nn.MultiheadAttention cannot express)."""

    def __init__(self, mha: nn.MultiheadAttention, inner: int) -> None:
        super().__init__()
        if not mha._qkv_same_embed_dim or mha.bias_k is not None or mha.add_zero_attn:
            raise ValueError("head removal supports nn.MultiheadAttention with one in_proj, "
                             "no bias_k/bias_v and no add_zero_attn")
        self.embed_dim, self.batch_first = mha.embed_dim, mha.batch_first
        self.head_dim = mha.head_dim
        self.num_heads = inner // self.head_dim
        self.dropout = mha.dropout
        self.in_proj_weight, self.in_proj_bias, self.out_proj = (
            mha.in_proj_weight, mha.in_proj_bias, mha.out_proj)

    def forward(self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Tensor | None = None,
                need_weights: bool = True, attn_mask: Tensor | None = None,
                average_attn_weights: bool = True, is_causal: bool = False) -> tuple[Tensor, Tensor | None]:
        if not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        w = self.in_proj_weight.chunk(3)
        b = self.in_proj_bias.chunk(3) if self.in_proj_bias is not None else (None,) * 3
        B, T, S = query.shape[0], query.shape[1], key.shape[1]
        q, k, v = (F.linear(x, wi, bi).view(x.shape[0], x.shape[1], self.num_heads, self.head_dim)
                   .transpose(1, 2) for x, wi, bi in zip((query, key, value), w, b, strict=True))
        mask = F._canonical_mask(mask=attn_mask, mask_name="attn_mask", other_type=None,
                                 other_name="", target_type=q.dtype, check_other=False)
        if key_padding_mask is not None:
            pad = F._canonical_mask(mask=key_padding_mask, mask_name="key_padding_mask",
                                    other_type=None, other_name="", target_type=q.dtype,
                                    check_other=False).view(B, 1, 1, S)
            mask = pad if mask is None else mask + pad
        p = self.dropout if self.training else 0.0
        if need_weights:
            scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)
            if is_causal and mask is None:
                mask = torch.full((T, S), float("-inf"), device=q.device).triu(1)
            if mask is not None:
                scores = scores + mask
            attn = F.dropout(scores.softmax(-1), p)
            out = attn @ v
            weights = attn.mean(1) if average_attn_weights else attn
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p,
                                                 is_causal=is_causal and mask is None)
            weights = None
        out = self.out_proj(out.transpose(1, 2).reshape(B, T, self.num_heads * self.head_dim))
        return (out if self.batch_first else out.transpose(0, 1)), weights


def _hf_attention(m: nn.Module, old: nn.Module) -> None:
    """HuggingFace attention modules read their head count from attributes (BERT) or infer it
    from the projection size (LLaMA); keep the attributes true either way."""
    if hasattr(m, "query") and hasattr(m, "attention_head_size"):
        m.all_head_size = m.query.weight.shape[0]  # (children are fixed after their parent)
        m.num_attention_heads = m.all_head_size // m.attention_head_size
    if hasattr(m, "q_proj") and hasattr(m, "head_dim"):
        for attr, proj in (("num_heads", "q_proj"), ("num_key_value_heads", "k_proj")):
            if hasattr(m, attr):
                setattr(m, attr, getattr(m, proj).weight.shape[0] // m.head_dim)


def _is_hf_attention(m: nn.Module) -> bool:
    return (hasattr(m, "query") and hasattr(m, "attention_head_size")) or (
        hasattr(m, "q_proj") and hasattr(m, "head_dim"))


FIXUPS: dict[type[nn.Module], Fixup] = {
    nn.modules.conv._ConvNd: _conv,
    nn.Linear: _linear,
    nn.modules.batchnorm._NormBase: _batchnorm,
    nn.GroupNorm: _groupnorm,
    nn.LayerNorm: _layernorm,
    nn.Embedding: _embedding,
    nn.MultiheadAttention: _mha,
}
