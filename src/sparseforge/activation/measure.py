"""Activation sparsity (ProSparse step 4): the fraction of exact zeros at each FFN activation's
output over held-out inputs, per layer and overall, counted with forward hooks."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

Count = Literal["zero", "nonpositive"]


@dataclass
class LayerSparsity:
    name: str
    zeros: int = 0
    total: int = 0

    @property
    def sparsity(self) -> float:
        return self.zeros / self.total if self.total else 0.0


@dataclass
class ActivationSparsity:
    layers: list[LayerSparsity] = field(default_factory=list)

    @property
    def overall(self) -> float:
        total = sum(layer.total for layer in self.layers)
        return sum(layer.zeros for layer in self.layers) / total if total else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "overall": self.overall,
            "layers": [
                {"name": la.name, "sparsity": la.sparsity, "zeros": la.zeros, "total": la.total}
                for la in self.layers
            ],
        }


class ZeroCounter:
    """Forward hooks counting, per module, the output entries that are exactly zero
    (`count="zero"`) or <= 0 (`"nonpositive"`, for GELU/SiLU models, whose outputs are never
    exactly zero). Set `token_mask` (B, T) before a forward to count real tokens only."""

    def __init__(self, modules: Mapping[str, nn.Module], count: Count = "zero") -> None:
        if not modules:
            raise ValueError("ZeroCounter needs at least one activation module")
        if count not in ("zero", "nonpositive"):
            raise ValueError(f"count must be 'zero' or 'nonpositive', got {count!r}")
        self.count = count
        self.token_mask: Tensor | None = None
        self.result = ActivationSparsity([LayerSparsity(name) for name in modules])
        self._handles = [
            m.register_forward_hook(self._hook_for(layer))
            for m, layer in zip(modules.values(), self.result.layers, strict=True)
        ]

    def _hook_for(self, layer: LayerSparsity):
        def hook(module: nn.Module, args, output: Tensor) -> None:
            out = output.detach()
            hit = out == 0 if self.count == "zero" else out <= 0
            if self.token_mask is None:
                layer.zeros += int(hit.sum())
                layer.total += hit.numel()
            else:
                m = self.token_mask.to(torch.bool).unsqueeze(-1)  # (B, T, 1)
                layer.zeros += int((hit & m).sum())
                layer.total += int(m.sum()) * out.shape[-1]

        return hook

    def reset(self) -> None:
        """Zero the counts (keep the hooks)."""
        for layer in self.result.layers:
            layer.zeros = layer.total = 0

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def __enter__(self) -> ZeroCounter:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


@torch.no_grad()
def measure_activation_sparsity(
    modules: Mapping[str, nn.Module],
    batches: Iterable[Any],
    forward: Callable[[Any], object],
    token_mask: Callable[[Any], Tensor | None] | None = None,
    count: Count = "zero",
) -> ActivationSparsity:
    """Run `forward(batch)` for each batch with a `ZeroCounter` on `modules`; `token_mask(batch)`
    gives the (B, T) mask of real tokens when padding must not count."""
    with ZeroCounter(modules, count) as counter:
        for batch in batches:
            counter.token_mask = None if token_mask is None else token_mask(batch)
            forward(batch)
    return counter.result


def plot_activation_sparsity(series: Mapping[str, ActivationSparsity], path: Path) -> Path:
    """Horizontal bars per layer (model order, top to bottom), one colour per labelled series
    (e.g. GELU <= 0, ReLU, ProSparse), activation sparsity in percent; overall in the legend."""
    # imported here so that `import sparseforge` stays free of matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not series or not any(s.layers for s in series.values()):
        raise ValueError("plot_activation_sparsity needs at least one series with layers")
    names = [layer.name for layer in next(iter(series.values())).layers]
    k = len(series)
    height = 0.8 / k
    fig = Figure(figsize=(8.0, max(2.5, 0.3 * k * len(names) + 2.0)), dpi=120, layout="constrained")
    ax = fig.add_subplot()
    for j, (label, result) in enumerate(series.items()):
        values = [100.0 * layer.sparsity for layer in result.layers]
        pos = [i + (j - (k - 1) / 2) * height for i in range(len(values))]
        bars = ax.barh(
            pos, values, height=height, label=f"{label} (overall {100 * result.overall:.1f}%)"
        )
        ax.bar_label(bars, labels=[f"{v:.1f}%" for v in values], padding=2, fontsize=7)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 112)
    ax.set_xlabel("FFN activation sparsity (%)")
    ax.set_title("FFN activation sparsity per layer")
    fig.legend(fontsize=8, loc="outside lower center", ncols=2)
    ax.grid(axis="x", alpha=0.3)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig).print_png(str(path))
    return path
