import gzip
import struct
import time
from pathlib import Path

import numpy as np
import pytest

from sparseforge.data import FASHION_MNIST_CLASSES, load_dataset
from sparseforge.data.fashion_mnist import DEFAULT_ROOT, FILES, parse_idx


def idx_bytes(array: np.ndarray, code: int = 0x08) -> bytes:
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_fashion(root: Path, n_train: int = 30, n_test: int = 10, gz: bool = True) -> dict:
    rng = np.random.default_rng(0)
    arrays = {
        "train_images": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_labels": (np.arange(n_train) % 10).astype(np.uint8),
        "test_images": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "test_labels": (np.arange(n_test) % 10).astype(np.uint8),
    }
    root.mkdir(parents=True, exist_ok=True)
    for key, stem in FILES.items():
        data = idx_bytes(arrays[key])
        if gz:
            (root / f"{stem}.gz").write_bytes(gzip.compress(data))
        else:
            (root / stem).write_bytes(data)
    return arrays


@pytest.mark.parametrize("gz", [True, False])
def test_loads_tiny_files(tmp_path: Path, gz: bool) -> None:
    arrays = write_fashion(tmp_path, gz=gz)
    s = load_dataset("fashion_mnist", root=str(tmp_path), val_fraction=0.1)
    assert (len(s.train), len(s.val), len(s.test)) == (27, 3, 10)
    assert s.input_shape == (1, 28, 28)
    assert s.num_classes == 10 and s.class_names == FASHION_MNIST_CLASSES
    raw_test = s.test.tensors[0][:, 0] * s.std[0] + s.mean[0]
    np.testing.assert_allclose(raw_test.numpy() * 255, arrays["test_images"], atol=1e-3)
    assert s.test.tensors[1].tolist() == arrays["test_labels"].tolist()


def test_parse_idx_handles_other_types() -> None:
    values = np.arange(-6, 6, dtype=np.int16).reshape(3, 4)
    np.testing.assert_array_equal(parse_idx(idx_bytes(values, code=0x0B)), values)


def test_missing_folder_says_how_to_install(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist") as err:
        load_dataset("fashion_mnist", root=str(missing))
    assert str(missing) in str(err.value)


def test_missing_file_is_named(tmp_path: Path) -> None:
    write_fashion(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte") as err:
        load_dataset("fashion_mnist", root=str(tmp_path))
    assert "data.root" in str(err.value)


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (lambda b: b"\x01\x02" + b[2:], "magic"),
        (lambda b: b[:2] + b"\x42" + b[3:], "type code"),
        (lambda b: b[:-5], "truncated"),
    ],
)
def test_corrupt_file_is_named(tmp_path: Path, corrupt, message: str) -> None:
    write_fashion(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(corrupt(gzip.decompress(path.read_bytes()))))
    with pytest.raises(ValueError, match=message) as err:
        load_dataset("fashion_mnist", root=str(tmp_path))
    assert "train-images-idx3-ubyte" in str(err.value)


def test_broken_gzip_is_named(tmp_path: Path) -> None:
    write_fashion(tmp_path)
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(ValueError, match="train-labels-idx1-ubyte"):
        load_dataset("fashion_mnist", root=str(tmp_path))


def test_image_label_count_mismatch(tmp_path: Path) -> None:
    write_fashion(tmp_path)
    labels = (np.arange(29) % 10).astype(np.uint8)
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(labels)))
    with pytest.raises(ValueError, match="30 images but 29 labels"):
        load_dataset("fashion_mnist", root=str(tmp_path))


@pytest.mark.skipif(not Path(DEFAULT_ROOT).is_dir(), reason="dataset-fashion-mnist not installed")
def test_real_fashion_mnist() -> None:
    start = time.perf_counter()
    s = load_dataset("fashion_mnist", limit=None)
    assert time.perf_counter() - start < 15
    assert (len(s.train), len(s.val), len(s.test)) == (54000, 6000, 10000)
    assert s.train.tensors[0].shape == (54000, 1, 28, 28)
    assert s.test.tensors[1].bincount().tolist() == [1000] * 10
    assert s.mean[0] == pytest.approx(0.286, abs=0.002)
