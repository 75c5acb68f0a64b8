import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from sparseforge.data import CIFAR10_CLASSES, load_dataset


def write_batch(path: Path, n: int, seed: int, protocol: int = 4, label_offset: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    batch = {
        b"batch_label": b"tiny",
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        b"labels": [(i + label_offset) % 10 for i in range(n)],
    }
    path.write_bytes(pickle.dumps(batch, protocol=protocol))
    return batch


def write_cifar(root: Path, per_batch: int = 2, n_test: int = 6, protocol: int = 4) -> dict:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(1, 6):
        write_batch(root / f"data_batch_{i}", per_batch, seed=i, protocol=protocol, label_offset=i)
    return write_batch(root / "test_batch", n_test, seed=0, protocol=protocol)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_loads_tiny_batches(tmp_path: Path, protocol: int) -> None:
    test = write_cifar(tmp_path, protocol=protocol)
    s = load_dataset("cifar10", root=tmp_path, val_fraction=0.2)
    assert (len(s.train), len(s.val), len(s.test)) == (8, 2, 6)
    assert s.input_shape == (3, 32, 32)
    assert s.class_names == CIFAR10_CLASSES and s.num_classes == 10
    # rows are channel-major: the first 1024 bytes are the red plane
    mean, std = torch.tensor(s.mean).view(1, 3, 1, 1), torch.tensor(s.std).view(1, 3, 1, 1)
    raw = (s.test.tensors[0] * std + mean) * 255
    expected = torch.from_numpy(test[b"data"].reshape(-1, 3, 32, 32)).float()
    assert torch.allclose(raw, expected, atol=1e-3)
    assert s.test.tensors[1].tolist() == test[b"labels"]


def test_nested_folder_and_meta_names(tmp_path: Path) -> None:
    nested = tmp_path / "cifar-10-batches-py"
    write_cifar(nested)
    names = [f"c{i}".encode() for i in range(10)]
    (nested / "batches.meta").write_bytes(pickle.dumps({b"label_names": names}))
    s = load_dataset("cifar10", root=str(tmp_path), val_fraction=0.0)
    assert len(s.train) == 10
    assert s.class_names == [f"c{i}" for i in range(10)]


def test_missing_batch_is_named(tmp_path: Path) -> None:
    for i in (1, 2):
        write_batch(tmp_path / f"data_batch_{i}", 6, seed=i)
    write_batch(tmp_path / "test_batch", 6, seed=0)
    with pytest.raises(FileNotFoundError, match="data_batch_3"):
        load_dataset("cifar10", root=tmp_path)


def test_root_is_required() -> None:
    with pytest.raises(ValueError, match="data.root"):
        load_dataset("cifar10")


class Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def test_pickle_that_runs_code_is_refused(tmp_path: Path) -> None:
    write_cifar(tmp_path)
    exploit = Exploit()
    exploit.target = tmp_path / "pwned"
    batch = {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1], b"x": exploit}
    (tmp_path / "data_batch_2").write_bytes(pickle.dumps(batch))
    with pytest.raises(pickle.UnpicklingError, match="refusing to load") as err:
        load_dataset("cifar10", root=tmp_path)
    assert "data_batch_2" in str(err.value)
    assert not (tmp_path / "pwned").exists()


def test_wrong_shape_is_named(tmp_path: Path) -> None:
    write_cifar(tmp_path)
    bad = {b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}
    (tmp_path / "test_batch").write_bytes(pickle.dumps(bad))
    with pytest.raises(ValueError, match="test_batch"):
        load_dataset("cifar10", root=tmp_path)
