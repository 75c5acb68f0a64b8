"""Build a model by name: a registered one (`resnet`, `cnn`, ...), `torchvision:NAME`, or a
user factory `path/to/file.py:function`, so recipes can name any of them the same way."""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from sparseforge.registry import Registry

MODELS: Registry[Callable[..., nn.Module]] = Registry("model")
TORCHVISION_PREFIX = "torchvision:"


def create_model(
    name: str,
    *,
    num_classes: int,
    in_channels: int,
    input_size: int | tuple[int, int] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """A fresh, randomly initialized model for `num_classes` classes and `in_channels` input
    channels; extra keyword arguments go to the model's builder. `input_size` (H, W) reaches
    registered builders that size layers by it (the compact CNN's classifier), unless given."""
    if num_classes < 1 or in_channels < 1:
        raise ValueError(
            f"num_classes and in_channels must be >= 1, got {num_classes} and {in_channels}"
        )
    if name.startswith(TORCHVISION_PREFIX):
        return torchvision_model(
            name[len(TORCHVISION_PREFIX) :],
            num_classes=num_classes,
            in_channels=in_channels,
            **kwargs,
        )
    path, sep, factory = name.rpartition(":")
    if sep and path.endswith(".py"):
        return user_model(path, factory, num_classes=num_classes, in_channels=in_channels, **kwargs)
    if name not in MODELS:
        hint = f" (did you mean '{name}:<function>'?)" if name.endswith(".py") else ""
        raise KeyError(
            f"unknown model '{name}'{hint}; registered: {', '.join(MODELS.names())}; "
            "or use 'torchvision:NAME' (e.g. torchvision:resnet18, needs sparseforge[vision]) "
            "or 'path/to/file.py:factory' for your own model"
        )
    builder = MODELS.get(name)
    if input_size is not None and "input_size" in inspect.signature(builder).parameters:
        kwargs.setdefault("input_size", input_size)
    return builder(num_classes=num_classes, in_channels=in_channels, **kwargs)


def torchvision_model(name: str, *, num_classes: int, in_channels: int, **kwargs: Any) -> nn.Module:
    """`torchvision.models.get_model(name)` with random weights; pretrained weights are refused
    because sparseforge never downloads anything."""
    for key in ("weights", "weights_backbone"):
        if kwargs.get(key) is not None:
            raise ValueError(
                f"torchvision:{name}: '{key}' is not supported; sparseforge builds models with "
                "random weights and never downloads. Load a checkpoint instead"
            )
        kwargs.pop(key, None)
    if in_channels != 3:
        raise ValueError(
            f"torchvision:{name} expects 3-channel images but the data has {in_channels}; set "
            "data.channels: 3 (and data.image_size if the model needs larger inputs, e.g. 224)"
        )
    try:
        import torchvision
    except Exception as err:  # a torchvision built for another torch fails in many ways
        raise ImportError(
            f"torchvision:{name} needs torchvision built for torch {torch.__version__}; "
            f"install it with: pip install 'sparseforge[vision]' (import failed: {err})"
        ) from err
    return torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)


def user_model(
    file: str, factory: str, *, num_classes: int, in_channels: int, **kwargs: Any
) -> nn.Module:
    """Import `file` and call `factory(...)`, passing num_classes / in_channels only if it
    accepts them, and every user kwarg; the result must be an nn.Module."""
    fn = load_factory(file, factory)
    wanted = {"num_classes": num_classes, "in_channels": in_channels}
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # no signature to inspect: pass everything
        accepted = dict(wanted)
    else:
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
            accepted = dict(wanted)
        else:
            names = {
                p.name
                for p in params
                if p.kind
                in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
            }
            accepted = {k: v for k, v in wanted.items() if k in names}
    model = fn(**accepted, **kwargs)
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"{file}:{factory} returned {type(model).__name__}, not a torch.nn.Module; "
            "make the factory return the model"
        )
    return model


def load_factory(file: str, factory: str) -> Callable[..., Any]:
    """The callable `factory` from the Python file `file`, imported under a unique module name."""
    path = Path(file).expanduser().resolve()
    if not path.is_file():
        raise FileNotFoundError(f"model file {path} not found (from model name '{file}:{factory}')")
    if not factory.isidentifier():
        raise ValueError(
            f"'{factory}' is not a function name; write the model as '{file}:function'"
        )
    module_name = "sparseforge_user_model_" + hashlib.sha1(str(path).encode()).hexdigest()[:16]
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path} as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # lets the file's classes pickle and use dataclasses
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(module_name, None)
        raise
    fn = getattr(module, factory, None)
    if fn is None:
        found = sorted(k for k, v in vars(module).items() if callable(v) and not k.startswith("_"))
        raise AttributeError(f"{path} has no '{factory}'; callables defined there: {found}")
    if not callable(fn):
        raise TypeError(f"{path}:{factory} is a {type(fn).__name__}, not a callable factory")
    return fn
