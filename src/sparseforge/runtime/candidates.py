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
        _name, (nn.Linear, nn.Conv2d), _sparse_applies(_fmt, _block), _sparse_build(_fmt, _block)
    ))
