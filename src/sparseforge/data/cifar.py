"""CIFAR-10 from its "python version" pickle batches, read with an unpickler that can only rebuild
numpy arrays and plain containers, so a tampered data file cannot run code."""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sparseforge.data.splits import DATASETS, DatasetSplits, Root, SplitOptions, make_splits

CIFAR10_CLASSES = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]
TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_BATCH = "test_batch"
META = "batches.meta"
SUBFOLDER = "cifar-10-batches-py"
_PIXELS = 3 * 32 * 32

# The globals a numpy array pickle needs (old and new numpy module paths), nothing that runs code.
_NUMPY_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}
_PLAIN_GLOBALS = {
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "bytearray"),
    ("builtins", "complex"),
    ("_codecs", "encode"),  # how Python 3 pickles bytes at protocol < 3
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the numpy/builtin globals needed for arrays and containers."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _NUMPY_GLOBALS:
            modern = module.replace("numpy.core.", "numpy._core.")  # numpy>=2 path, no warning
            try:
                return super().find_class(modern, name)
            except (ImportError, AttributeError):
                return super().find_class(module.replace("numpy._core.", "numpy.core."), name)
        if (module, name) in _PLAIN_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"refusing to load {module}.{name}: CIFAR batch files only hold numpy arrays and "
            "plain containers; use the original 'CIFAR-10 python version' files"
        )


def safe_unpickle(path: str | os.PathLike[str]) -> Any:
    """Unpickle `path` (Python 2 or 3 pickles) with `RestrictedUnpickler`; errors name the file."""
    path = Path(path)
    data = path.read_bytes()
    try:
        return RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
    except pickle.UnpicklingError as err:
        raise pickle.UnpicklingError(f"{path}: {err}") from err
    except (EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError) as err:
        raise ValueError(
            f"{path}: not a readable CIFAR pickle ({err}); re-extract the archive"
        ) from err


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 3, 32, 32) uint8 and labels (N,) int64 from one CIFAR batch file."""
    if not path.is_file():
        raise FileNotFoundError(
            f"CIFAR-10 batch {path} not found; data.root must hold data_batch_1..5 and test_batch "
            "from the CIFAR-10 python version (cifar-10-python.tar.gz)"
        )
    batch = safe_unpickle(path)
    if not isinstance(batch, dict):
        raise ValueError(f"{path}: expected a dict, got {type(batch).__name__}")
    data, labels = _field(batch, "data", path), _field(batch, "labels", path)
    data = np.asarray(data)
    labels = np.asarray(labels)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != _PIXELS:
        raise ValueError(
            f"{path}: b'data' must be uint8 of shape (N, {_PIXELS}), got {data.dtype} {data.shape}"
        )
    if labels.ndim != 1 or len(labels) != len(data) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"{path}: need one integer label per image, got {labels.shape} {labels.dtype}"
        )
    images = np.require(data.reshape(-1, 3, 32, 32), requirements=["C", "W"])
    return images, labels.astype(np.int64)


def read_class_names(folder: Path) -> list[str]:
    """Class names from `batches.meta` if present, else the standard CIFAR-10 names."""
    path = folder / META
    if not path.is_file():
        return list(CIFAR10_CLASSES)
    meta = safe_unpickle(path)
    names = _field(meta, "label_names", path) if isinstance(meta, dict) else None
    if not isinstance(names, (list, tuple)) or not names:
        raise ValueError(f"{path}: b'label_names' must be a non-empty list")
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]


def find_folder(root: str | os.PathLike[str] | None) -> Path:
    """`root` or `root/cifar-10-batches-py`, whichever holds the batches."""
    if root is None:
        raise ValueError(
            "cifar10 needs data.root: the folder holding data_batch_1..5 and test_batch "
            "(extract cifar-10-python.tar.gz there; sparseforge does not download data)"
        )
    folder = Path(root).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"CIFAR-10 folder {folder} does not exist; set data.root")
    nested = folder / SUBFOLDER
    if not (folder / TEST_BATCH).exists() and nested.is_dir():
        return nested
    return folder


@DATASETS.register("cifar10")
def load_cifar10(root: Root, options: SplitOptions) -> DatasetSplits:
    """CIFAR-10 (50k train incl. val, 10k test, 3 x 32 x 32); it ships its own test set."""
    folder = find_folder(root)
    train = [read_batch(folder / name) for name in TRAIN_BATCHES]
    test_x, test_y = read_batch(folder / TEST_BATCH)
    return make_splits(
        torch.from_numpy(np.concatenate([x for x, _ in train])),
        torch.from_numpy(np.concatenate([y for _, y in train])),
        torch.from_numpy(test_x),
        torch.from_numpy(test_y),
        read_class_names(folder),
        options,
    )


def _field(d: dict[Any, Any], key: str, path: Path) -> Any:
    for k in (key.encode(), key):
        if k in d:
            return d[k]
    raise ValueError(f"{path}: missing key b'{key}'; is this a CIFAR-10 python batch file?")
