import gzip
from pathlib import Path

import numpy as np
import pytest

from sparseforge.data import FASHION_MNIST_CLASSES, load_dataset
from sparseforge.data.fashion_mnist import DEFAULT_ROOT, parse_idx


@pytest.mark.parametrize("gz", [True, False])
def test_loads_tiny_files(tmp_path: Path, gz: bool, write_fmnist) -> None:
    arrays = write_fmnist(tmp_path, 30, 10, gz=gz)
    s = load_dataset("fashion_mnist", root=str(tmp_path), val_fraction=0.1)
    assert (len(s.train), len(s.val), len(s.test)) == (27, 3, 10)
    assert s.input_shape == (1, 28, 28)
    assert s.num_classes == 10 and s.class_names == FASHION_MNIST_CLASSES
    raw_test = s.test.tensors[0][:, 0] * s.std[0] + s.mean[0]
    np.testing.assert_allclose(raw_test.numpy() * 255, arrays["test_images"], atol=1e-3)
    assert s.test.tensors[1].tolist() == arrays["test_labels"].tolist()


def test_parse_idx_handles_other_types(encode_idx) -> None:
    values = np.arange(-6, 6, dtype=np.int16).reshape(3, 4)
    np.testing.assert_array_equal(parse_idx(encode_idx(values, code=0x0B)), values)


def test_missing_folder_says_how_to_install(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist") as err:
        load_dataset("fashion_mnist", root=str(missing))
    assert str(missing) in str(err.value)


def test_missing_file_is_named(tmp_path: Path, write_fmnist) -> None:
    write_fmnist(tmp_path, 30, 10)
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
def test_corrupt_file_is_named(tmp_path: Path, corrupt, message: str, write_fmnist) -> None:
    write_fmnist(tmp_path, 30, 10)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(corrupt(gzip.decompress(path.read_bytes()))))
    with pytest.raises(ValueError, match=message) as err:
        load_dataset("fashion_mnist", root=str(tmp_path))
    assert "train-images-idx3-ubyte" in str(err.value)


def test_broken_gzip_is_named(tmp_path: Path, write_fmnist) -> None:
    write_fmnist(tmp_path, 30, 10)
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(ValueError, match="train-labels-idx1-ubyte"):
        load_dataset("fashion_mnist", root=str(tmp_path))


def test_image_label_count_mismatch(tmp_path: Path, write_fmnist, encode_idx) -> None:
    write_fmnist(tmp_path, 30, 10)
    labels = (np.arange(29) % 10).astype(np.uint8)
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(encode_idx(labels)))
    with pytest.raises(ValueError, match="30 images but 29 labels"):
        load_dataset("fashion_mnist", root=str(tmp_path))


@pytest.mark.skipif(not Path(DEFAULT_ROOT).is_dir(), reason="dataset-fashion-mnist not installed")
def test_real_fashion_mnist() -> None:
    s = load_dataset("fashion_mnist", limit=None)
    assert (len(s.train), len(s.val), len(s.test)) == (54000, 6000, 10000)
    assert s.train.tensors[0].shape == (54000, 1, 28, 28)
    assert s.test.tensors[1].bincount().tolist() == [1000] * 10
    assert s.mean[0] == pytest.approx(0.286, abs=0.002)
