"""Checkpoints written atomically (a kill mid-write never leaves a torn file) and read with
`weights_only=True`, so loading a model file never runs code."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import torch


def save_atomic(obj: Any, path: str | Path) -> Path:
    """torch.save to a temporary file in the same folder, fsync, then rename over `path`."""
    return _replace_atomically(path, lambda f: torch.save(obj, f))


def write_json_atomic(data: Any, path: str | Path) -> Path:
    """JSON (a run's plan, a report's data) written the same atomic way as checkpoints."""
    return _replace_atomically(path, lambda f: f.write(json.dumps(data, indent=1).encode()))


def _replace_atomically(path: str | Path, write: Callable[[BinaryIO], object]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_weights_only(path: str | Path) -> Any:
    """torch.load with weights_only=True on CPU; a clear error for a missing or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle refusals surface as UnpicklingError or RuntimeError
        raise ValueError(
            f"{path} is not a weights-only checkpoint ({type(err).__name__}: {err}); "
            "sparseforge loads only tensors and plain containers, never pickled code"
        ) from None
