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


def _bsr_applies(block: tuple[int, int]) -> Callable[[nn.Module, Tensor | None], bool | str]:
    def applies(module: nn.Module, mask: Tensor | None) -> bool | str:
        from ..formats.bsr import to_tiles
        from ..kernels.sparse_linear import kernel_available

        weight = module.weight.detach()
        if weight.dtype != torch.float32:
            return f"weight is {weight.dtype}; the BSR kernel is float32 only"
        kept = (weight != 0) if mask is None else mask.to(weight.device)
        tiles = to_tiles(kept.float(), *block).any(dim=(2, 3))
        if bool(tiles.all()):
            return f"no all-zero {block[0]}x{block[1]} tile: nothing to skip"
        if not kernel_available():
            return "the BSR C++ kernel did not build here (see the warning); only the slow reference runs"
        return True

    return applies


def _bsr_build(block: tuple[int, int]) -> Callable[[nn.Module], nn.Module]:
    def build(module: nn.Module) -> nn.Module:
        from ..kernels import SparseLinear

        assert isinstance(module, nn.Linear)
        return SparseLinear.from_linear(module, block=block)

    return build


for _block in ((16, 16), (8, 8)):
    register_candidate(Candidate(
        f"bsr{_block[0]}" if _block[0] == _block[1] else f"bsr{_block[0]}x{_block[1]}",
        (nn.Linear,), _bsr_applies(_block), _bsr_build(_block),
    ))
