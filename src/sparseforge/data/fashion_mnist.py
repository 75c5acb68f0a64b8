"""Fashion-MNIST from the four IDX files (gzipped or not), as installed by the Debian package
`dataset-fashion-mnist`; nothing is downloaded."""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np
import torch

from sparseforge.data.splits import DATASETS, DatasetSplits, Root, SplitOptions, make_splits

DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"
INSTALL_HINT = (
    "install it with: apt-get install dataset-fashion-mnist, "
    "or set data.root to a folder holding the four Fashion-MNIST IDX files"
)
FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

# IDX type code -> big-endian numpy dtype (http://yann.lecun.com/exdb/mnist/ "THE IDX FILE FORMAT").
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def parse_idx(data: bytes, source: str = "<bytes>") -> np.ndarray:
    """Decode an IDX byte string into a numpy array, validating magic number, type code and size."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{source}: not an IDX file (bad magic number); re-install the file")
    code, ndim = data[2], data[3]
    if code not in _IDX_DTYPES:
        raise ValueError(f"{source}: unknown IDX data type code 0x{code:02x}; the file is corrupt")
    if ndim == 0:
        raise ValueError(f"{source}: IDX header declares 0 dimensions; the file is corrupt")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{source}: truncated IDX header; re-install the file")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = _IDX_DTYPES[code]
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(data) - header != expected:
        raise ValueError(
            f"{source}: IDX header says {dims} values ({expected} bytes) but the file holds "
            f"{len(data) - header} bytes of data; the file is truncated or corrupt, re-install it"
        )
    return (
        np.frombuffer(data, dtype=dtype, offset=header)
        .reshape(dims)
        .astype(dtype.newbyteorder("="))
    )


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file, transparently gunzipping `*.gz`."""
    path = Path(path)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                data = f.read()
        else:
            data = path.read_bytes()
    except (EOFError, OSError, zlib.error) as err:
        if isinstance(err, FileNotFoundError):
            raise
        raise ValueError(
            f"{path}: cannot decompress ({err}); the file is corrupt, re-install it"
        ) from err
    return parse_idx(data, str(path))


def find_idx_file(root: Path, stem: str) -> Path:
    """`root/stem.gz` or `root/stem`, else a FileNotFoundError that says how to get the data."""
    for candidate in (root / f"{stem}.gz", root / stem):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"Fashion-MNIST file {root / stem}.gz not found; {INSTALL_HINT}")


def read_fashion_mnist(root: str | os.PathLike[str] | None = None) -> dict[str, np.ndarray]:
    """The four arrays (train/test images N x 28 x 28 uint8, labels N uint8), validated."""
    folder = Path(root if root is not None else DEFAULT_ROOT).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"Fashion-MNIST folder {folder} does not exist; {INSTALL_HINT}")
    arrays = {}
    for key, stem in FILES.items():
        path = find_idx_file(folder, stem)
        array = read_idx(path)
        want_ndim = 3 if key.endswith("images") else 1
        if array.dtype != np.uint8 or array.ndim != want_ndim:
            raise ValueError(
                f"{path}: expected {want_ndim}-d unsigned bytes, got {array.ndim}-d {array.dtype}; "
                "is this the right file?"
            )
        arrays[key] = array
    for split in ("train", "test"):
        n_images, n_labels = len(arrays[f"{split}_images"]), len(arrays[f"{split}_labels"])
        if n_images != n_labels:
            raise ValueError(
                f"{folder}: {split} has {n_images} images but {n_labels} labels; "
                "the files do not belong together"
            )
        labels = arrays[f"{split}_labels"]
        if labels.size and labels.max() >= len(FASHION_MNIST_CLASSES):
            raise ValueError(
                f"{folder / FILES[f'{split}_labels']}: label {int(labels.max())} out of range 0..9"
            )
    return arrays


@DATASETS.register("fashion_mnist")
def load_fashion_mnist(root: Root, options: SplitOptions) -> DatasetSplits:
    """Fashion-MNIST (60k train incl. val, 10k test, 1 x 28 x 28); it ships its own test set."""
    a = read_fashion_mnist(root)
    return make_splits(
        torch.from_numpy(a["train_images"]).unsqueeze(1),
        torch.from_numpy(a["train_labels"]).long(),
        torch.from_numpy(a["test_images"]).unsqueeze(1),
        torch.from_numpy(a["test_labels"]).long(),
        FASHION_MNIST_CLASSES,
        options,
    )
