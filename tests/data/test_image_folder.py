from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sparseforge.data import load_dataset


def write_image(path: Path, value: int, mode: str = "L", size: tuple[int, int] = (8, 6)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], 3)
    Image.fromarray(np.full(shape, value, dtype=np.uint8)).save(path)


def write_classes(root: Path, per_class: int = 5, mode: str = "L", **kwargs) -> None:
    for c, name in enumerate(["cat", "dog"]):
        for i in range(per_class):
            write_image(root / name / f"{i}.png", 100 * c + 10 * i, mode, **kwargs)


def raw(s, x: torch.Tensor) -> torch.Tensor:
    c = x.shape[1]
    return x * torch.tensor(s.std).view(1, c, 1, 1) + torch.tensor(s.mean).view(1, c, 1, 1)


def test_single_folder_carves_a_test_split(tmp_path: Path) -> None:
    write_classes(tmp_path)
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    s = load_dataset("image_folder", root=tmp_path, test_fraction=0.2, val_fraction=0.25)
    assert (len(s.train), len(s.val), len(s.test)) == (6, 2, 2)
    assert s.class_names == ["cat", "dog"] and s.num_classes == 2
    assert s.input_shape == (1, 6, 8)  # all grayscale -> 1 channel; (C, H, W)
    values = [
        round(v * 255)
        for part in (s.train, s.val, s.test)
        for v in raw(s, part.tensors[0])[:, 0, 0, 0].tolist()
    ]
    assert sorted(values) == sorted(100 * c + 10 * i for c in range(2) for i in range(5))
    # labels follow the class folder
    for part in (s.train, s.val, s.test):
        pixels = raw(s, part.tensors[0])[:, 0, 0, 0] * 255
        assert part.tensors[1].tolist() == (pixels > 95).long().tolist()


def test_carved_split_is_deterministic(tmp_path: Path) -> None:
    write_classes(tmp_path)
    a = load_dataset("image_folder", root=tmp_path)
    b = load_dataset("image_folder", root=tmp_path)
    assert torch.equal(a.test.tensors[0], b.test.tensors[0])
    assert torch.equal(a.train.tensors[1], b.train.tensors[1])


def test_train_test_subfolders_are_used(tmp_path: Path) -> None:
    write_classes(tmp_path / "train", per_class=4)
    write_classes(tmp_path / "test", per_class=3)
    s = load_dataset("image_folder", root=tmp_path, val_fraction=0.0)
    assert (len(s.train), len(s.val), len(s.test)) == (8, 0, 6)
    assert sorted(s.test.tensors[1].tolist()) == [0, 0, 0, 1, 1, 1]


def test_train_test_class_mismatch(tmp_path: Path) -> None:
    write_classes(tmp_path / "train")
    write_image(tmp_path / "test" / "cat" / "0.png", 1)
    write_image(tmp_path / "test" / "bird" / "0.png", 1)
    with pytest.raises(ValueError, match=r"only in train: \['dog'\], only in test: \['bird'\]"):
        load_dataset("image_folder", root=tmp_path)


def test_rgb_defaults_to_three_channels_and_converts(tmp_path: Path) -> None:
    write_classes(tmp_path)
    write_image(tmp_path / "dog" / "rgb.jpg", 50, mode="RGB")
    write_image(tmp_path / "cat" / "rgb.bmp", 60, mode="RGB")
    assert load_dataset("image_folder", root=tmp_path).input_shape == (3, 6, 8)
    assert load_dataset("image_folder", root=tmp_path, channels=1).input_shape == (1, 6, 8)


def test_gray_to_three_channels_repeats(tmp_path: Path) -> None:
    write_classes(tmp_path)
    s = load_dataset("image_folder", root=tmp_path, channels=3)
    x = raw(s, s.train.tensors[0])
    assert x.shape[1] == 3
    assert torch.allclose(x[:, 0], x[:, 1], atol=1e-5)
    assert torch.allclose(x[:, 0], x[:, 2], atol=1e-5)


def test_mixed_sizes_need_image_size(tmp_path: Path) -> None:
    write_classes(tmp_path)
    write_image(tmp_path / "dog" / "big.png", 7, size=(12, 12))
    with pytest.raises(ValueError, match="data.image_size"):
        load_dataset("image_folder", root=tmp_path)
    s = load_dataset("image_folder", root=tmp_path, image_size=5)
    assert s.input_shape == (1, 5, 5) and s.test.tensors[0].shape[1:] == (1, 5, 5)


def test_same_size_images_are_resized(tmp_path: Path) -> None:
    write_classes(tmp_path)
    s = load_dataset("image_folder", root=tmp_path, image_size=16)
    assert s.train.tensors[0].shape[1:] == (1, 16, 16)


def test_empty_class_folder_is_named(tmp_path: Path) -> None:
    write_classes(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty.*holds no images"):
        load_dataset("image_folder", root=tmp_path)


def test_no_class_folders(tmp_path: Path) -> None:
    write_image(tmp_path / "loose.png", 3)
    with pytest.raises(ValueError, match="no class subfolders"):
        load_dataset("image_folder", root=tmp_path)


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="data.root"):
        load_dataset("image_folder", root=tmp_path / "absent")


def test_unreadable_image_is_named(tmp_path: Path) -> None:
    write_classes(tmp_path)
    (tmp_path / "dog" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="broken.png"):
        load_dataset("image_folder", root=tmp_path)
