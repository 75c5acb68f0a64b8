"""What to prune, validated: the scheme with its parameters, which layers, how a target is
shared between layers. Recipes embed these; `prune()` builds them from keywords."""

from __future__ import annotations

import fnmatch
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from torch import nn

from .masks import module_type_name

Fraction = Annotated[float, Field(ge=0.0, le=1.0)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Unstructured(_Strict):
    name: Literal["unstructured"] = "unstructured"


class NM(_Strict):
    name: Literal["nm"] = "nm"
    n: int = Field(2, ge=1)
    m: int = Field(4, ge=2)

    @model_validator(mode="after")
    def _n_below_m(self) -> NM:
        if self.n >= self.m:
            raise ValueError(f"N:M needs n < m, got {self.n}:{self.m}")
        return self


class Channel(_Strict):
    name: Literal["channel"] = "channel"


class Block(_Strict):
    name: Literal["block"] = "block"
    block: tuple[Annotated[int, Field(ge=1)], Annotated[int, Field(ge=1)]] = (4, 4)


class BCR(_Strict):
    name: Literal["bcr"] = "bcr"
    block: tuple[Annotated[int, Field(ge=1)], Annotated[int, Field(ge=1)]] = (8, 8)


class Pattern(_Strict):
    """PatDNN kernel patterns (3x3 convolutions only): every kernel keeps 4 of its 9 weights in
    one pattern of a library (centre always kept), then `connectivity` removes whole kernels.
    A pattern lists the kept positions of the row-major 3x3 kernel (0..8, centre 4)."""

    name: Literal["pattern"] = "pattern"
    library: Literal["default", "derive"] | list[tuple[int, int, int, int]] = "default"
    library_size: int = Field(8, ge=1, le=56, description="patterns kept when library: derive")
    connectivity: Fraction | None = Field(
        None, description="fraction of kernels removed whole; None: as many as the target needs"
    )

    @field_validator("library")
    @classmethod
    def _valid_patterns(cls, v: Any) -> Any:
        if isinstance(v, str):
            return v
        if not v:
            raise ValueError("the pattern library is empty; list patterns or use 'default'")
        seen = set()
        for p in v:
            if len(set(p)) != 4 or not all(0 <= i <= 8 for i in p) or 4 not in p:
                raise ValueError(
                    f"pattern {list(p)} is not 4 distinct positions in 0..8 including the "
                    "centre 4 (row-major 3x3 kernel)"
                )
            key = tuple(sorted(p))
            if key in seen:
                raise ValueError(f"pattern {list(p)} appears twice in the library")
            seen.add(key)
        return [tuple(sorted(p)) for p in v]


SchemeConfig = Annotated[
    Unstructured | NM | Channel | Block | BCR | Pattern, Field(discriminator="name")
]


def scheme_params(scheme: BaseModel) -> dict[str, Any]:
    """The keyword arguments the scheme function takes."""
    return scheme.model_dump(exclude={"name"})


def parse_scheme_shorthand(value: Any) -> Any:
    """'unstructured' -> {name: unstructured}; '2:4' -> {name: nm, n: 2, m: 4}."""
    if isinstance(value, str):
        nm = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", value)
        return {"name": "nm", "n": int(nm[1]), "m": int(nm[2])} if nm else {"name": value}
    return value


def _as_list(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


class LayerSelection(_Strict):
    """Modules to prune: names matching any `include` pattern and no `exclude` pattern, of one
    of `types`. Patterns are shell globs (`features.*`) or regexes prefixed `re:`."""

    include: list[str] = ["*"]
    exclude: list[str] = []
    types: list[str] = ["Conv2d", "Linear"]

    @field_validator("include", "exclude", "types", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        return _as_list(v)

    def matches(self, name: str, module: nn.Module) -> bool:
        return (
            module_type_name(module) in self.types
            and any(name_matches(name, p) for p in self.include)
            and not any(name_matches(name, p) for p in self.exclude)
        )


def name_matches(name: str, pattern: str) -> bool:
    """Glob match, or regex full match for patterns written `re:...`."""
    if pattern.startswith("re:"):
        return re.fullmatch(pattern[3:], name) is not None
    return fnmatch.fnmatchcase(name, pattern)


class Override(_Strict):
    """A fixed sparsity for the layers matching `layers` (taken out of global allocation)."""

    layers: list[str]
    sparsity: Fraction

    @field_validator("layers", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        return _as_list(v)


class PruningSpec(_Strict):
    """Scheme, criterion, layers and allocation: everything but the target and its timing."""

    scheme: SchemeConfig = Unstructured()
    criterion: str = "magnitude"
    layers: LayerSelection = LayerSelection()
    allocation: Literal["layerwise", "global"] = "layerwise"
    max_layer_sparsity: Fraction = 0.99
    overrides: list[Override] = []

    @field_validator("scheme", mode="before")
    @classmethod
    def _scheme_shorthand(cls, v: Any) -> Any:
        return parse_scheme_shorthand(v)

    @field_validator("layers", mode="before")
    @classmethod
    def _layers_shorthand(cls, v: Any) -> Any:
        return {"include": v} if isinstance(v, str | list) else v

    @field_validator("criterion")
    @classmethod
    def _known_criterion(cls, v: str) -> str:
        from .criteria import CRITERIA

        if v not in CRITERIA:
            raise ValueError(f"unknown criterion '{v}'; known: {', '.join(CRITERIA.names())}")
        return v

    @model_validator(mode="after")
    def _nm_is_layerwise(self) -> PruningSpec:
        if self.scheme.name == "nm" and self.allocation == "global":
            raise ValueError("N:M fixes every layer's sparsity; use allocation: layerwise")
        return self
