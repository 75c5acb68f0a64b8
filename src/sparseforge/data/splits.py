"""Turn raw uint8 images into normalized train/val/test tensors: the one place where splitting,
channel conversion, resizing, limiting and normalization happen, so every dataset behaves alike."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import TensorDataset

from sparseforge.registry import Registry

# ITU-R 601-2 luma weights, the same that PIL's convert("L") uses.
_LUMA = (0.299, 0.587, 0.114)
_RESIZE_CHUNK = 2048  # images resized at a time, to bound peak memory


@dataclass
class DatasetSplits:
    """Normalized float32 images (N, C, H, W) with int64 labels, plus what a model needs to know."""

    train: TensorDataset
    val: TensorDataset
    test: TensorDataset
    num_classes: int
    input_shape: tuple[int, int, int]
    class_names: list[str]
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()


@dataclass(frozen=True)
class SplitOptions:
    """How every dataset is split and prepared (see `make_splits`). `test_fraction` only
    matters for datasets without their own test set (image_folder)."""

    val_fraction: float = 0.1
    split_seed: int = 0
    test_fraction: float = 0.1
    channels: int | None = None
    image_size: int | None = None
    limit: int | None = None


Root = str | os.PathLike[str] | None
DATASETS: Registry[Callable[[Root, SplitOptions], DatasetSplits]] = Registry("dataset")


def load_dataset(name: str, *, root: Root = None, **options: Any) -> DatasetSplits:
    """Load the registered dataset `name` from `root` and split it; keyword options are the
    fields of `SplitOptions` (val_fraction, split_seed, test_fraction, channels, image_size,
    limit)."""
    return DATASETS.get(name)(root, SplitOptions(**options))


def seeded_permutation(n: int, seed: int) -> Tensor:
    """A permutation of range(n) that depends only on `seed` (CPU generator: same on every machine)."""
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    return torch.randperm(n, generator=generator)


def split_count(n: int, fraction: float, what: str) -> int:
    """How many of `n` examples a `fraction` in [0, 1) selects (rounded)."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"{what} must be in [0, 1), got {fraction}; set e.g. {what}: 0.1")
    return int(round(n * fraction))


def make_splits(
    train_images: Tensor,
    train_labels: Tensor,
    test_images: Tensor,
    test_labels: Tensor,
    class_names: Sequence[str],
    options: SplitOptions = SplitOptions(),
) -> DatasetSplits:
    """Carve a seeded val split from uint8 (N, C, H, W) train images, keep only `limit` of each
    split, convert channels / resize, and normalize with per-channel train statistics."""
    val_fraction, split_seed, limit = options.val_fraction, options.split_seed, options.limit
    num_classes = len(class_names)
    _check_pair(train_images, train_labels, num_classes, "train")
    _check_pair(test_images, test_labels, num_classes, "test")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive number of examples, got {limit}")

    n = train_images.shape[0]
    perm = seeded_permutation(n, split_seed)
    n_val = split_count(n, val_fraction, "val_fraction")
    val_idx, train_idx = perm[:n_val], perm[n_val:]
    if train_idx.numel() == 0:
        raise ValueError(f"val_fraction={val_fraction} leaves no training examples out of {n}")
    test_idx = torch.arange(test_images.shape[0])
    if limit is not None:
        train_idx, val_idx, test_idx = train_idx[:limit], val_idx[:limit], test_idx[:limit]

    parts = {
        "train": (train_images[train_idx], train_labels[train_idx]),
        "val": (train_images[val_idx], train_labels[val_idx]),
        "test": (test_images[test_idx], test_labels[test_idx]),
    }
    images = {k: _prepare(x, options.channels, options.image_size) for k, (x, _) in parts.items()}
    mean, std = channel_stats(images["train"])
    view = (1, -1, 1, 1)
    datasets = {
        k: TensorDataset(images[k].sub_(mean.view(view)).div_(std.view(view)), parts[k][1].long())
        for k in parts
    }
    c, h, w = images["train"].shape[1:]
    return DatasetSplits(
        train=datasets["train"],
        val=datasets["val"],
        test=datasets["test"],
        num_classes=num_classes,
        input_shape=(int(c), int(h), int(w)),
        class_names=list(class_names),
        mean=tuple(mean.tolist()),
        std=tuple(std.tolist()),
    )


def channel_stats(images: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel mean and std (float32) of (N, C, H, W) images; a constant channel gets std 1."""
    if images.shape[0] == 0:
        raise ValueError("cannot compute normalization statistics of an empty training split")
    var, mean = torch.var_mean(images.float(), dim=(0, 2, 3), correction=0)
    std = var.sqrt()
    return mean, torch.where(std > 1e-6, std, torch.ones_like(std))


def convert_channels(x: Tensor, channels: int) -> Tensor:
    """Repeat a grayscale channel to 3, or reduce RGB to luma, for float (N, C, H, W) images."""
    have = x.shape[1]
    if channels not in (1, 3):
        raise ValueError(f"data.channels must be 1 or 3, got {channels}")
    if have == channels:
        return x
    if have == 1:
        return x.repeat(1, channels, 1, 1)
    if have == 3:
        weights = torch.tensor(_LUMA, dtype=x.dtype).view(1, 3, 1, 1)
        return (x * weights).sum(dim=1, keepdim=True)
    raise ValueError(f"cannot convert {have}-channel images to {channels} channels")


def resize(x: Tensor, image_size: int) -> Tensor:
    """Resize float (N, C, H, W) images to image_size x image_size (bilinear, antialiased)."""
    if image_size < 1:
        raise ValueError(f"data.image_size must be a positive number of pixels, got {image_size}")
    if tuple(x.shape[2:]) == (image_size, image_size):
        return x
    size = (image_size, image_size)
    chunks = [
        F.interpolate(chunk, size=size, mode="bilinear", antialias=True, align_corners=False)
        for chunk in x.split(_RESIZE_CHUNK)
    ]
    if not chunks:
        return x.new_empty((0, x.shape[1], image_size, image_size))
    return torch.cat(chunks).clamp_(0.0, 1.0)


def _prepare(x: Tensor, channels: int | None, image_size: int | None) -> Tensor:
    x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
    if channels is not None:
        x = convert_channels(x, channels)
    if image_size is not None:
        x = resize(x, image_size)
    return x.contiguous()


def _check_pair(images: Tensor, labels: Tensor, num_classes: int, split: str) -> None:
    if images.dim() != 4:
        raise ValueError(f"{split} images must be (N, C, H, W), got shape {tuple(images.shape)}")
    if labels.dim() != 1 or labels.shape[0] != images.shape[0]:
        raise ValueError(
            f"{split} has {images.shape[0]} images but labels of shape {tuple(labels.shape)}"
        )
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"{split} labels must be in [0, {num_classes}), got range "
            f"[{int(labels.min())}, {int(labels.max())}]"
        )
