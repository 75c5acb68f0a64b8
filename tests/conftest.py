"""Shared fixtures: a tiny, learnable Fashion-MNIST-format dataset written as IDX files."""

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
from torch import nn

from sparseforge.data.fashion_mnist import FILES


def idx_bytes(array: np.ndarray, code: int = 0x08) -> bytes:
    """An array in the IDX format (big-endian header with the dims, then the data)."""
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def learnable_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """28x28 noise with a bright bar whose position encodes the class (0-9)."""
    rng = np.random.default_rng(seed)
    labels = (np.arange(n) % 10).astype(np.uint8)
    images = rng.integers(0, 60, (n, 28, 28), dtype=np.uint8)
    for i, c in enumerate(labels):
        images[i, 2 + 2 * c : 4 + 2 * c, 4:24] = 255
    return images, labels


def write_idx_dataset(root: Path, n_train: int = 200, n_test: int = 50, gz: bool = True) -> dict:
    """Write the four Fashion-MNIST IDX files under `root`; returns the arrays."""
    train_images, train_labels = learnable_images(n_train, 0)
    test_images, test_labels = learnable_images(n_test, 1)
    arrays = {
        "train_images": train_images, "train_labels": train_labels,
        "test_images": test_images, "test_labels": test_labels,
    }
    root.mkdir(parents=True, exist_ok=True)
    for key, stem in FILES.items():
        data = idx_bytes(arrays[key])
        if gz:
            (root / f"{stem}.gz").write_bytes(gzip.compress(data))
        else:
            (root / stem).write_bytes(data)
    return arrays


@pytest.fixture
def encode_idx():
    """`idx_bytes` for tests that build IDX files by hand."""
    return idx_bytes


@pytest.fixture
def write_fmnist():
    """`write_idx_dataset(root, n_train, n_test, gz)` for tests that need their own sizes."""
    return write_idx_dataset


@pytest.fixture
def tiny_fmnist(tmp_path: Path) -> Path:
    """Folder with a 200/50-example learnable dataset in Fashion-MNIST's file layout."""
    root = tmp_path / "fmnist"
    write_idx_dataset(root)
    return root


def tiny_recipe(data_root: Path, **overrides) -> dict:
    """A recipe dict that trains the compact CNN briefly on the tiny dataset."""
    recipe = {
        "model": {"name": "cnn", "args": {"width": 8, "hidden": 32}},
        "data": {"name": "fashion_mnist", "root": str(data_root), "val_fraction": 0.2},
        "train": {
            "epochs": 3, "batch_size": 32, "eval_batch_size": 64, "seed": 0,
            "optimizer": {"name": "sgd", "lr": 0.05},
        },
        "output": {"name": "tiny", "latency_batch_sizes": [1, 4]},
    }
    for section, values in overrides.items():
        recipe[section] = {**recipe.get(section, {}), **values} if isinstance(values, dict) else values
    return recipe


@pytest.fixture
def make_recipe(tiny_fmnist):
    """Factory for tiny recipes: make_recipe(train={"epochs": 2}, modifiers=[...])."""
    return lambda **overrides: tiny_recipe(tiny_fmnist, **overrides)


class Killed(Exception):
    """Stands for the process dying right after a checkpoint was written."""


@pytest.fixture
def train_killed_after_epoch(monkeypatch):
    """run(recipe, run_dir, epoch=1): train until the checkpoint of `epoch` is on disk, then
    die there, as a killed run would; the run folder is left for `resume=True`."""
    import sparseforge.trainer as trainer

    def run(recipe, run_dir, epoch: int = 1) -> None:
        real_save = trainer.save_atomic

        def save_then_die(obj, path):
            real_save(obj, path)
            if obj.get("epoch") == epoch:
                raise Killed

        monkeypatch.setattr(trainer, "save_atomic", save_then_die)
        try:
            with pytest.raises(Killed):
                trainer.train(recipe, run_dir, progress=False)
        finally:
            monkeypatch.setattr(trainer, "save_atomic", real_save)

    return run


@pytest.fixture
def fake_clock(monkeypatch):
    """Install a deterministic timer behind scope 'latency': a call's 'time' is the sum of
    `cost(conv, output)` over the Conv2d layers it runs. Call the fixture with `cost`."""
    from sparseforge.graph import prune as prune_module
    from sparseforge.profile.timing import Timing

    def install(cost):
        def fake_interleaved(fns, *, rounds, repeats):
            out = {}
            for name, fn in fns.items():
                total = [0.0]

                def hook(mod, _inp, output, total=total):
                    if isinstance(mod, nn.Conv2d):
                        total[0] += cost(mod, output)

                handle = nn.modules.module.register_module_forward_hook(hook)
                try:
                    fn()
                finally:
                    handle.remove()
                out[name] = Timing.from_samples([total[0]])
            return out

        monkeypatch.setattr(prune_module, "interleaved", fake_interleaved)

    return install
