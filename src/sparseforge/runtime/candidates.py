"""Kernel candidates per layer type: what `deploy` may put in place of a baked layer. One
registry entry per kernel (name, where it runs, when it applies, how to build it), so a new
kernel (BCR, CSR, ...) plugs in with one `register_candidate` call and nothing else changes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..registry import Registry
from ..sparsity.masks import module_type_name


@dataclass
class Candidate:
    """A way to compute one layer. `applies(module, mask)` is True or a string saying why not;
    `build(module)` returns a module computing the same function (module: baked or masked)."""

    name: str
    layer_types: tuple[type[nn.Module], ...]
    applies: Callable[[nn.Module, Tensor | None], bool | str]
    build: Callable[[nn.Module], nn.Module]
    targets: tuple[str, ...] = ("cpu",)  # device types the kernel runs on


CANDIDATES: Registry[Candidate] = Registry("kernel candidate")
DENSE = "dense"


def register_candidate(candidate: Candidate) -> Candidate:
    """Add `candidate` under its name (a duplicate name is an error)."""
    return CANDIDATES.register(candidate.name)(candidate)


def check(candidate: Candidate, module: nn.Module, mask: Tensor | None, target: str) -> str | None:
    """None when `candidate` can replace `module` on `target`, else the reason it cannot."""
    if not isinstance(module, candidate.layer_types):
        kinds = "/".join(t.__name__ for t in candidate.layer_types)
        return f"only for {kinds}, not {module_type_name(module)}"
    if target not in candidate.targets:
        return f"runs on {'/'.join(candidate.targets)} only, not {target}"
    verdict = candidate.applies(module, mask)
    if verdict is True:
        return None
    return verdict if isinstance(verdict, str) and verdict else "does not apply"


def _dense_build(module: nn.Module) -> nn.Module:
    return module  # deploy hands over the baked module: it is its own dense kernel


register_candidate(Candidate(
    DENSE, (nn.Module,), lambda _m, _mask: True, _dense_build, targets=("cpu", "cuda"),
))


def _kept(module: nn.Module, mask: Tensor | None) -> Tensor:
    """Kept entries of the weight's GEMM view (out, in*kh*kw)."""
    weight = module.weight.detach()
    kept = (weight != 0) if mask is None else mask.to(weight.device)
    return kept.reshape(kept.shape[0], -1)


def _sparse_applies(
    fmt: str, block: tuple[int, int] | None
) -> Callable[[nn.Module, Tensor | None], bool | str]:
    """When a `fmt` kernel can replace a Linear or Conv2d: float32, plain zero-padded conv with
    groups 1, something to skip in its layout (any zero; an all-zero tile for BSR; a BCR-shaped
    mask for BCR), a built kernel."""

    def applies(module: nn.Module, mask: Tensor | None) -> bool | str:
        from ..formats import BCR
        from ..formats.bsr import to_tiles
        from ..kernels.extension import kernel_available

        if module.weight.dtype != torch.float32:
            return f"weight is {module.weight.dtype}; the {fmt.upper()} kernel is float32 only"
        if isinstance(module, nn.Conv2d) and (
            module.groups != 1 or isinstance(module.padding, str) or module.padding_mode != "zeros"
        ):
            return "im2col path needs groups=1 and numeric zero padding"
        kept = _kept(module, mask)
        if bool(kept.all()):
            return "no zero weight: nothing to skip"
        if fmt == "bsr" and bool(to_tiles(kept.float(), *block).any(dim=(2, 3)).all()):
            return f"no all-zero {block[0]}x{block[1]} tile: nothing to skip"
        if fmt == "bcr":
            try:
                weight = module.weight.detach().reshape(kept.shape)
                BCR.from_dense(weight * kept, block, mask=kept)
            except ValueError:
                return f"the mask is not BCR-shaped for {block[0]}x{block[1]} blocks"
        if not kernel_available(f"{fmt}_linear"):
            return f"the {fmt.upper()} C++ kernel did not build here (see the warning)"
        return True

    return applies


def _sparse_build(fmt: str, block: tuple[int, int] | None) -> Callable[[nn.Module], nn.Module]:
    def build(module: nn.Module) -> nn.Module:
        from ..kernels import SparseConv2d, SparseLinear

        if isinstance(module, nn.Conv2d):
            return SparseConv2d.from_conv(module, block=block or (1, 1), format=fmt)
        return SparseLinear.from_linear(module, block=block or (1, 1), format=fmt)

    return build


for _fmt, _block, _name in (
    ("bsr", (16, 16), "bsr16"), ("bsr", (8, 8), "bsr8"),
    ("bcr", (16, 16), "bcr16"), ("bcr", (8, 8), "bcr8"), ("csr", None, "csr"),
):
    register_candidate(Candidate(
        _name, (nn.Linear, nn.Conv2d), _sparse_applies(_fmt, _block), _sparse_build(_fmt, _block),
        targets=("cpu",) if _fmt == "csr" else ("cpu", "cuda"),  # BSR / BCR: Triton on CUDA
    ))


def _direct_applies(module: nn.Module, mask: Tensor | None) -> bool | str:
    """Direct sparse conv (kernels.sparse_conv.DirectSparseConv2d): float32, groups 1, dilation
    1, numeric zero padding, some zero weight, a built kernel."""
    from ..kernels.extension import kernel_available
    from ..kernels.sparse_conv import direct_conv_unsupported

    reason = direct_conv_unsupported(module)
    if reason:
        return reason
    if bool(_kept(module, mask).all()):
        return "no zero weight: nothing to skip"
    if not kernel_available("sparse_conv2d"):
        return "the direct sparse conv C++ kernel did not build here (see the warning)"
    return True


def _direct_build(module: nn.Module) -> nn.Module:
    from ..kernels.sparse_conv import DirectSparseConv2d

    return DirectSparseConv2d.from_conv(module)


register_candidate(Candidate("direct", (nn.Conv2d,), _direct_applies, _direct_build))


def _nm_applies(module: nn.Module, mask: Tensor | None) -> bool | str:
    """N:M linear (kernels.SparseLinear format 'nm'): the mask fits one of
    formats.nm.NM_PATTERNS (2:4, 1:4, 2:8, ...); float32 and a built kernel on CPU, float32 /
    float16 / bfloat16 and triton on CUDA."""
    from ..formats.nm import NM_PATTERNS, detect_nm

    weight = module.weight
    kept = _kept(module, mask)
    if bool(kept.all()):
        return "no zero weight: nothing to skip"
    if detect_nm(kept.cpu()) is None:
        return f"the mask is not N:M for any (n, m) in {NM_PATTERNS}"
    if weight.device.type == "cuda":
        from ..kernels.triton_sparse_linear import has_triton

        if weight.dtype not in (torch.float32, torch.float16, torch.bfloat16):
            return f"weight is {weight.dtype}; the Triton N:M kernel takes float32/16, bfloat16"
        return True if has_triton() else "triton is not installed (pip install triton)"
    from ..kernels.extension import kernel_available

    if weight.dtype != torch.float32:
        return f"weight is {weight.dtype}; the N:M CPU kernel is float32 only"
    if not kernel_available("nm_linear"):
        return "the N:M C++ kernel did not build here (see the warning)"
    return True


def _nm_build(module: nn.Module) -> nn.Module:
    from ..kernels import SparseLinear

    return SparseLinear.from_linear(module, format="nm")


register_candidate(Candidate("nm", (nn.Linear,), _nm_applies, _nm_build, targets=("cpu", "cuda")))


def _gemv_applies(module: nn.Module, mask: Tensor | None) -> bool | str:
    """The dense GEMV linear (kernels.GemvLinear): float32 and a built kernel. Dense weights, so
    any Linear fits; `deploy` keeps it where it measures faster, i.e. at a few rows."""
    from ..kernels.extension import kernel_available

    if module.weight.dtype != torch.float32:
        return f"weight is {module.weight.dtype}; the GEMV kernel is float32 only"
    if not kernel_available("gemv_linear"):
        return "the GEMV C++ kernel did not build here (see the warning)"
    return True


def _gemv_build(module: nn.Module) -> nn.Module:
    from ..kernels import GemvLinear

    return GemvLinear.from_linear(module)


register_candidate(Candidate("gemv", (nn.Linear,), _gemv_applies, _gemv_build))
