"""Recipes: YAML validated by pydantic. A recipe names the model, the data, the training
setup, the modifiers and where the run goes. Unknown keys are errors, and every error names
the field's path and its line in the file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .algorithms import MODIFIERS
from .quant.config import QuantizeConfig


class RecipeError(ValueError):
    """A recipe that cannot be used; the message names the field and the line."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelConfig(_Strict):
    name: str = "cnn"
    args: dict[str, Any] = {}
    checkpoint: str | None = Field(
        None, description="initial weights: a run folder or a .pt state dict (weights only)"
    )


class DataConfig(_Strict):
    name: str = "fashion_mnist"
    root: str | None = None
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    test_fraction: float = Field(0.1, gt=0.0, lt=1.0)
    split_seed: int = 0
    channels: Literal[1, 3] | None = None
    image_size: int | None = Field(None, ge=8)
    augment: bool = False
    limit: int | None = Field(None, ge=1, description="keep only this many examples per split")


class OptimizerConfig(_Strict):
    name: Literal["sgd", "adamw", "adam"] = "sgd"
    lr: float = Field(0.05, gt=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    nesterov: bool = True
    weight_decay: float = Field(5e-4, ge=0.0)
    betas: tuple[float, float] = (0.9, 0.999)


class LRScheduleConfig(_Strict):
    name: Literal["constant", "cosine", "step"] = "cosine"
    warmup_epochs: float = Field(0.0, ge=0.0)
    min_lr: float = Field(0.0, ge=0.0)
    step_epochs: float = Field(10.0, gt=0.0, description="step schedule: epochs per decay")
    gamma: float = Field(0.1, gt=0.0, le=1.0)


class TrainConfig(_Strict):
    epochs: int = Field(10, ge=0)
    batch_size: int = Field(128, ge=1)
    eval_batch_size: int = Field(1000, ge=1)
    optimizer: OptimizerConfig = OptimizerConfig()
    lr_schedule: LRScheduleConfig = LRScheduleConfig()
    seed: int = 0
    precision: Literal["fp32", "bf16"] = "fp32"
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    grad_clip: float | None = Field(None, gt=0.0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    channels_last: bool = Field(
        True, description="NHWC activations and weights for 4-D models (~20% faster CPU convs)"
    )


class OutputConfig(_Strict):
    dir: str = "runs/{name}"
    name: str = "run"
    latency_batch_sizes: list[int] = [1, 64]


def _modifier_union() -> Any:
    """The discriminated union of every registered modifier's config (by `type`)."""
    configs = tuple(MODIFIERS.get(n).config for n in MODIFIERS.names())
    return Annotated[Union[configs], Field(discriminator="type")]  # noqa: UP007


ModifierConfig = _modifier_union()


class FuseConfig(_Strict):
    """FuPruner's equivalence-preserving fusions, each switchable (graph.fusion)."""

    bn: bool = True
    pad: bool = True
    affine: bool = True
    identity: bool = True


class StructuredConfig(_Strict):
    """Channel/head removal (graph.prune). One target: `ratio` of each group's units, `flops`
    (fraction of FLOPs removed) or a measured `speedup`; `scope: latency` lets time measured
    on this machine decide how much each group gives (graph.prune.allocate_by_latency). `fuse`
    folds BatchNorm and friends into their conv/linear first (FuPruner); `soft` prunes
    dynamically during training (masks re-chosen every epoch, pruned filters keep training)
    and removes physically at the end, else the channels go before training and the smaller
    model is fine-tuned."""

    ratio: float | None = Field(None, gt=0.0, lt=1.0)
    flops: float | None = Field(None, gt=0.0, lt=1.0)
    speedup: float | None = Field(None, gt=1.0)
    importance: Literal["l1", "l2", "bn_scale", "fpgm"] = "l2"  # taylor: Python API only
    scope: Literal["layer", "global", "latency"] = "layer"
    latency_batch: int = Field(1, ge=1)  # batch the speedup target and scope latency time at
    round_to: int = Field(1, ge=1)
    max_ratio: float = Field(0.9, gt=0.0, lt=1.0)
    limits: dict[str, Annotated[float, Field(ge=0.0, lt=1.0)]] = {}  # module prefix -> max share
    ignore: list[str] = []
    depth: bool = False  # scope latency: may also drop whole residual branches (graph.depth)
    fuse: FuseConfig | None = None
    soft: bool = False

    @model_validator(mode="after")
    def _one_target(self) -> StructuredConfig:
        given = [n for n in ("ratio", "flops", "speedup") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of ratio, flops, speedup (got {given or 'none'})")
        if self.depth and self.scope != "latency":
            raise ValueError("depth: true needs scope: latency (the measured greedy decides "
                             "between dropping a branch and thinning layers)")
        return self

    def target(self) -> dict[str, float]:
        return {n: getattr(self, n) for n in ("ratio", "flops", "speedup") if getattr(self, n)}


class Recipe(_Strict):
    """A whole run: what to train, on what, how, with which modifiers, written where."""

    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    modifiers: list[ModifierConfig] = []
    structured: StructuredConfig | None = None
    quantize: QuantizeConfig | None = None  # read by `sparseforge quantize RUN_DIR`
    output: OutputConfig = OutputConfig()

    @model_validator(mode="after")
    def _modifiers_fit_training(self) -> Recipe:
        if self.structured is not None and self.modifiers:
            raise ValueError("structured pruning and weight-sparsity modifiers in one recipe "
                             "are not supported yet: run them as two recipes, one after the other")
        for i, mod in enumerate(self.modifiers):
            for field in ("end_epoch", "at_epoch", "start_epoch"):
                value = getattr(mod, field, None)
                if value is not None and value > self.train.epochs:
                    raise ValueError(
                        f"modifiers[{i}].{field} = {value} lies beyond train.epochs = "
                        f"{self.train.epochs}; it would never happen"
                    )
        return self

    def run_dir(self) -> Path:
        return Path(self.output.dir.format(name=self.output.name))


_known_modifiers = tuple(MODIFIERS.names())


def _accept_new_modifiers() -> None:
    """Let recipes name modifiers registered after this module was imported (plugins)."""
    global _known_modifiers
    if tuple(MODIFIERS.names()) != _known_modifiers:
        _known_modifiers = tuple(MODIFIERS.names())
        Recipe.model_fields["modifiers"].annotation = list[_modifier_union()]
        Recipe.model_rebuild(force=True)


def _yaml_line(node: yaml.Node | None, loc: tuple) -> int | None:
    """Line (1-based) of the YAML node at a pydantic error location; the deepest node found.
    Location parts that are not keys (discriminator tags) are skipped."""
    line = None if node is None else node.start_mark.line + 1
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            child = next((v for k, v in node.value if k.value == part), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            child = node.value[part] if part < len(node.value) else None
        else:
            child = None
        if child is not None:
            node, line = child, child.start_mark.line + 1
    return line


def _format_loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in MODIFIERS or str(part).startswith("function-"):
            continue  # the discriminator tag pydantic inserts for unions
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def _check_duplicate_keys(node: yaml.Node, source: str) -> None:
    if isinstance(node, yaml.MappingNode):
        seen = set()
        for key, value in node.value:
            if key.value in seen:
                raise RecipeError(
                    f"{source}:{key.start_mark.line + 1}: key '{key.value}' appears twice"
                )
            seen.add(key.value)
            _check_duplicate_keys(value, source)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _check_duplicate_keys(item, source)


def parse_recipe(text: str, source: str = "<recipe>") -> Recipe:
    """Validate YAML text into a Recipe, or raise RecipeError naming field and line."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        raise RecipeError(f"{where}: not valid YAML: {getattr(err, 'problem', err)}") from None
    if node is not None:
        _check_duplicate_keys(node, source)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RecipeError(f"{source}: a recipe is a mapping (model:, data:, train:, ...)")
    _accept_new_modifiers()
    try:
        return Recipe.model_validate(data)
    except ValidationError as err:
        lines = []
        for e in err.errors():
            line = _yaml_line(node, e["loc"])
            where = f"{source}:{line}" if line else source
            got = f" (got {e['input']!r})" if "input" in e and not isinstance(e["input"], dict) else ""
            lines.append(f"{where}: {_format_loc(e['loc'])}: {e['msg']}{got}")
        raise RecipeError("invalid recipe:\n  " + "\n  ".join(lines)) from None


def load_recipe(recipe: Recipe | str | Path | dict) -> Recipe:
    """A Recipe from a Recipe, a YAML file path, YAML text, or a dict."""
    if isinstance(recipe, Recipe):
        return recipe
    if isinstance(recipe, dict):
        return parse_recipe(yaml.safe_dump(recipe, sort_keys=False))
    looks_like_path = isinstance(recipe, Path) or (
        "\n" not in recipe and recipe.endswith((".yaml", ".yml"))
    )
    if looks_like_path:
        path = Path(recipe)
        if not path.is_file():
            raise FileNotFoundError(f"recipe file not found: {path}")
        return parse_recipe(path.read_text(), str(path))
    return parse_recipe(str(recipe))


def derive_recipe(
    base: Recipe,
    *,
    name: str,
    checkpoint: str | Path | None = None,
    modifiers: list[dict] | None = None,
    epochs: int | None = None,
) -> Recipe:
    """A validated copy of `base` renamed `name`, starting from `checkpoint` (if given), with
    `modifiers` replacing the base's and, if given, another epoch budget: how multi-run
    methods (lottery tickets, parallel GaP) derive each training from the user's recipe."""
    data = base.model_dump(mode="json")
    if checkpoint is not None:
        data["model"]["checkpoint"] = str(checkpoint)
    if epochs is not None:
        data["train"]["epochs"] = epochs
    data["modifiers"] = modifiers or []
    data["output"]["name"] = name
    return load_recipe(data)


def dump_recipe(recipe: Recipe) -> str:
    """YAML text of a validated recipe (defaults filled in), saved with every run."""
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)
